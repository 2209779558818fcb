//! A sub-millisecond sleep for batch windows shorter than Tokio's timer can serve.
//!
//! Tokio's timer wheel has a granularity of one millisecond and rounds every
//! deadline *up* to the next tick, so `tokio::time::sleep(200µs)` lasts anywhere
//! from about 1 ms to 2 ms: a window of a few hundred microseconds would cost ten
//! times its length. [`PreciseSleep`] is instead woken by one process-wide OS
//! thread, `coalesce-timer`, that keeps every pending deadline in a min-heap and
//! blocks on a condition variable with a timeout until the earliest one.
//!
//! Precision: the thread asks for a timer slack of 1 ns (Linux's default is
//! 50 µs), so its wake-up is delayed by scheduling latency only, and the woken
//! task still has to be polled by its executor; expect a sleep to last its
//! duration plus some microseconds to tens of microseconds on an idle machine,
//! more under load. A sleep never completes *before* its deadline.
//!
//! The sleep does not follow Tokio's clock: it reads `std::time::Instant`, so a
//! paused Tokio clock (`tokio::time::pause`) neither stops nor advances it.
//!
//! If the thread cannot be spawned, sleeps still complete: they fall back to
//! re-checking the clock each time they are polled and waking themselves at once,
//! which busy-yields the task (and burns its worker's CPU) until the spawn,
//! tried again every 100 ms, succeeds or the deadline passes.
//!
//! The thread calls each fired sleep's `Waker::wake`. A waker that blocks (a
//! custom executor's, say) delays every other sleep's wake-up behind it: wakers
//! must return promptly, as every executor's do. One that panics, in `wake` or
//! in its `Drop`, is caught, and the thread goes on.
// The module uses std's primitives even under `--cfg loom` (the loom model never
// creates a sleep), so it compiles there as is.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU8, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Instant;

/// The name of the timer thread, as shown by `ps`, `top` and debuggers.
const THREAD_NAME: &str = "coalesce-timer";

/// [`Entry::state`]: registered, neither fired nor cancelled.
const PENDING: u8 = 0;
/// [`Entry::state`]: the deadline passed and the timer thread woke the waker.
const FIRED: u8 = 1;
/// [`Entry::state`]: the sleep was dropped before it fired.
const CANCELLED: u8 = 2;

/// Asks the kernel to wake this thread at its deadlines, not up to its timer
/// slack later (50 µs by default on Linux for a normal thread). Only this thread:
/// it sleeps until the next deadline and does almost nothing else.
fn exact_wakeups() {
    #[cfg(target_os = "linux")]
    // SAFETY: `prctl(PR_SET_TIMERSLACK, n)` takes an integer and changes only the
    // calling thread's timer slack; it reads and writes no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Locks `m`, recovering the guard if a panic elsewhere poisoned it: every
/// critical section here leaves the heap and the waker slot consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one registered sleep shares with the timer thread.
#[derive(Debug)]
struct Entry {
    /// [`PENDING`], then [`FIRED`] (by the thread) or [`CANCELLED`] (by a drop);
    /// exactly one of the two transitions wins.
    state: AtomicU8,
    /// The waker of the task that polled the sleep last.
    waker: Mutex<Option<Waker>>,
}

impl Entry {
    /// Whether the timer thread has fired this entry.
    fn fired(&self) -> bool {
        self.state.load(Acquire) == FIRED
    }

    /// Whether the sleep was dropped before the entry fired.
    fn cancelled(&self) -> bool {
        self.state.load(Acquire) == CANCELLED
    }
}

/// One deadline in the timer's heap.
#[derive(Debug)]
struct Queued {
    /// When to fire.
    deadline: Instant,
    /// Registration order: ties on `deadline` fire first-registered first.
    seq: u64,
    /// The entry to fire.
    entry: Arc<Entry>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed, so that `BinaryHeap` (a max-heap) yields the earliest deadline.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// The timer's state behind its lock.
#[derive(Debug)]
struct Heap {
    /// Pending deadlines, earliest first; cancelled entries are removed lazily.
    heap: BinaryHeap<Queued>,
    /// The next registration's [`Queued::seq`].
    seq: u64,
}

/// A timer: a heap of deadlines served by one thread (see [`Timer::run`]).
#[derive(Debug)]
struct Timer {
    /// The deadlines.
    state: Mutex<Heap>,
    /// Signalled when a deadline earlier than every queued one is registered.
    cond: Condvar,
    /// How many heap entries are cancelled (may be briefly off by the drops in
    /// flight, hence signed); it decides when to purge them.
    cancelled: AtomicIsize,
    /// The heap's length, mirrored for the lock-free check in [`Timer::cancel`].
    len: AtomicUsize,
}

impl Timer {
    /// A timer with no thread yet.
    const fn new() -> Timer {
        Timer {
            state: Mutex::new(Heap {
                heap: BinaryHeap::new(),
                seq: 0,
            }),
            cond: Condvar::new(),
            cancelled: AtomicIsize::new(0),
            len: AtomicUsize::new(0),
        }
    }

    /// Spawns this timer's thread (which never exits); false if it could not
    /// be spawned.
    fn spawn(&'static self) -> bool {
        thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                exact_wakeups();
                self.run()
            })
            .is_ok()
    }

    /// A timer of its own with its thread (tests: exact counts).
    #[cfg(test)]
    fn start() -> Option<&'static Timer> {
        let timer: &'static Timer = Box::leak(Box::new(Timer::new()));
        timer.spawn().then_some(timer)
    }

    /// The timer thread: fires every expired entry, then sleeps until the next
    /// deadline (or until a new earliest deadline is registered).
    fn run(&self) {
        let mut due: Vec<Arc<Entry>> = Vec::new();
        let mut st = lock(&self.state);
        loop {
            let now = Instant::now();
            while st.heap.peek().is_some_and(|q| q.deadline <= now) {
                if let Some(q) = st.heap.pop() {
                    if q.entry.cancelled() {
                        self.cancelled.fetch_sub(1, Relaxed);
                    } else {
                        due.push(q.entry);
                    }
                }
            }
            self.len.store(st.heap.len(), Relaxed);
            if !due.is_empty() {
                // Never wake while holding the lock: a waker may run arbitrary code.
                drop(st);
                for entry in due.drain(..) {
                    // The last handle on an entry may be this one, holding a
                    // waker stored after the fire took the first: its drop
                    // is user code too.
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        self.fire(&entry);
                        drop(entry);
                    }));
                }
                st = lock(&self.state);
                continue;
            }
            st = match st.heap.peek().map(|q| q.deadline) {
                None => self.cond.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let timeout = deadline.saturating_duration_since(now);
                    match self.cond.wait_timeout(st, timeout) {
                        Ok((guard, _)) => guard,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                }
            };
        }
    }

    /// Fires `entry` (already out of the heap) unless its sleep was dropped.
    fn fire(&self, entry: &Entry) {
        match entry
            .state
            .compare_exchange(PENDING, FIRED, AcqRel, Acquire)
        {
            Ok(_) => {
                let waker = lock(&entry.waker).take();
                if let Some(waker) = waker {
                    // A panicking waker must not take the thread, and every other
                    // sleep with it, down.
                    let _ = catch_unwind(AssertUnwindSafe(|| waker.wake()));
                }
            }
            // Cancelled between leaving the heap and here: it is gone for good.
            Err(_) => {
                self.cancelled.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Queues `entry` to fire at `deadline`, waking the thread if it now has to
    /// wake up earlier than it planned.
    fn register(&self, deadline: Instant, entry: Arc<Entry>) {
        let mut st = lock(&self.state);
        let seq = st.seq;
        st.seq = st.seq.wrapping_add(1);
        let earlier = st.heap.peek().is_none_or(|q| deadline < q.deadline);
        st.heap.push(Queued {
            deadline,
            seq,
            entry,
        });
        self.len.store(st.heap.len(), Relaxed);
        drop(st);
        // The thread re-reads the heap whenever it holds the lock, so a notify
        // that arrives while it is not waiting is not needed.
        if earlier {
            self.cond.notify_one();
        }
    }

    /// Notes that a queued entry was cancelled, and purges the cancelled entries
    /// once they are more than half the heap: a process that creates and drops
    /// sleeps forever keeps a heap at most about twice its live sleeps, at an
    /// amortised O(1) per drop.
    fn cancel(&self) {
        let cancelled = self.cancelled.fetch_add(1, Relaxed).saturating_add(1);
        if Self::too_many(cancelled, self.len.load(Relaxed)) {
            self.purge();
        }
    }

    /// Whether `cancelled` entries out of `len` warrant a purge.
    fn too_many(cancelled: isize, len: usize) -> bool {
        usize::try_from(cancelled).is_ok_and(|c| c > 0 && c.saturating_mul(2) > len)
    }

    /// Removes every cancelled entry from the heap.
    fn purge(&self) {
        let mut st = lock(&self.state);
        // Another drop may have purged since the check.
        if !Self::too_many(self.cancelled.load(Relaxed), st.heap.len()) {
            return;
        }
        let before = st.heap.len();
        st.heap.retain(|q| !q.entry.cancelled());
        let removed = before - st.heap.len();
        self.len.store(st.heap.len(), Relaxed);
        self.cancelled
            .fetch_sub(isize::try_from(removed).unwrap_or(isize::MAX), Relaxed);
    }

    /// How many entries the heap holds, cancelled ones included.
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.state).heap.len()
    }
}

/// The process-wide timer, started on first use; `None` while its thread
/// cannot be spawned (then a sleep busy-yields, see [`PreciseSleep`], and the
/// spawn is tried again, at most once per [`RETRY`]: a thread limit or a
/// memory shortage that passes does not leave every sleep of the process
/// spinning).
fn global() -> Option<&'static Timer> {
    static TIMER: Timer = Timer::new();
    static STARTER: Starter = Starter::new();
    STARTER.get(&TIMER, Timer::spawn, Instant::now)
}

/// How long after a failed spawn of the timer thread it is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts a timer's thread once, trying again after a failure (see [`global`]).
#[derive(Debug)]
struct Starter {
    /// The thread runs.
    running: AtomicBool,
    /// When a spawn was last tried and failed.
    failed_at: Mutex<Option<Instant>>,
}

impl Starter {
    const fn new() -> Starter {
        Starter {
            running: AtomicBool::new(false),
            failed_at: Mutex::new(None),
        }
    }

    /// `timer` once its thread runs, spawning it with `spawn` if it does not
    /// and the last failure is at least [`RETRY`] old (as `now` tells).
    fn get(
        &self,
        timer: &'static Timer,
        spawn: impl FnOnce(&'static Timer) -> bool,
        now: impl Fn() -> Instant,
    ) -> Option<&'static Timer> {
        if self.running.load(Acquire) {
            return Some(timer);
        }
        let mut failed_at = lock(&self.failed_at);
        if self.running.load(Acquire) {
            return Some(timer);
        }
        if failed_at.is_some_and(|at| now().saturating_duration_since(at) < RETRY) {
            return None;
        }
        if spawn(timer) {
            self.running.store(true, Release);
            Some(timer)
        } else {
            *failed_at = Some(now());
            None
        }
    }
}

/// How many entries the global timer's heap holds, cancelled ones included.
#[cfg(test)]
fn queued() -> usize {
    global().map_or(0, Timer::queued)
}

/// Which timer wakes a [`PreciseSleep`].
#[derive(Debug, Clone, Copy)]
enum Clock {
    /// The process-wide timer, falling back to [`Clock::Busy`] if its thread
    /// could not be spawned.
    Global,
    /// No timer thread: re-check the clock on every poll and wake at once.
    Busy,
    /// A timer of the test's own, so that its heap is not shared.
    #[cfg(test)]
    Private(&'static Timer),
}

/// A future that completes at `deadline`, woken by a process-wide timer thread.
///
/// Unlike `tokio::time::Sleep` it is not rounded up to a millisecond, and it runs
/// on any executor. It completes once the timer thread has fired it or, checked on
/// every poll, once `Instant::now() >= deadline`, never earlier. The thread is only
/// started (and the deadline only registered) by the first poll that finds the
/// deadline still ahead. Dropping an unfired sleep cancels it.
///
/// Fallback: while the timer thread cannot be spawned, a pending poll wakes its
/// own task at once, so the task busy-yields, re-checking the clock on each
/// poll; the spawn is tried again every [`RETRY`], and the sleep registers
/// with the timer once it runs. Correct, but it costs a worker's CPU while the
/// thread cannot be had.
#[derive(Debug)]
pub(crate) struct PreciseSleep {
    /// When the sleep completes.
    deadline: Instant,
    /// The timer to register with on the first pending poll.
    clock: Clock,
    /// The timer and the entry, once registered.
    registered: Option<(&'static Timer, Arc<Entry>)>,
}

impl PreciseSleep {
    /// A sleep that completes at `deadline`, woken by the process-wide timer.
    pub(crate) fn until(deadline: Instant) -> Self {
        Self::new(deadline, true)
    }

    /// A sleep until `deadline`; with `thread == false`, as if the timer thread
    /// could not be spawned (the busy-yield fallback).
    fn new(deadline: Instant, thread: bool) -> Self {
        let clock = if thread { Clock::Global } else { Clock::Busy };
        Self::with_clock(deadline, clock)
    }

    /// A sleep until `deadline`, woken by `clock`.
    fn with_clock(deadline: Instant, clock: Clock) -> Self {
        Self {
            deadline,
            clock,
            registered: None,
        }
    }

    /// The deadline.
    #[cfg(test)]
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some((_, entry)) = &this.registered {
            if entry.fired() {
                return Poll::Ready(());
            }
            {
                let mut slot = lock(&entry.waker);
                match &*slot {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *slot = Some(cx.waker().clone()),
                }
            }
            // Checked after the waker is stored: the thread sets `FIRED` before it
            // takes the waker, so either it wakes the new waker or this sees it.
            if entry.fired() || Instant::now() >= this.deadline {
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        let timer = match this.clock {
            Clock::Global => global(),
            Clock::Busy => None,
            #[cfg(test)]
            Clock::Private(timer) => Some(timer),
        };
        let Some(timer) = timer else {
            // No timer thread: poll again as soon as the executor gets to it.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let entry = Arc::new(Entry {
            state: AtomicU8::new(PENDING),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        timer.register(this.deadline, Arc::clone(&entry));
        this.registered = Some((timer, entry));
        Poll::Pending
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        let Some((timer, entry)) = self.registered.take() else {
            return;
        };
        if entry
            .state
            .compare_exchange(PENDING, CANCELLED, AcqRel, Acquire)
            .is_ok()
        {
            // Release the task now rather than when the deadline passes.
            let waker = lock(&entry.waker).take();
            drop(waker);
            timer.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::poll_fn;
    use std::sync::mpsc;
    use std::task::Wake;
    use std::time::Duration;

    /// A waker that counts its wakes and reports each on a channel.
    struct Probe {
        /// How many times it was woken.
        wakes: AtomicUsize,
        /// Told of every wake.
        tx: Mutex<mpsc::Sender<()>>,
    }

    impl Probe {
        /// A probe, and the receiver of its wakes.
        fn new() -> (Arc<Probe>, mpsc::Receiver<()>) {
            let (tx, rx) = mpsc::channel();
            let probe = Arc::new(Probe {
                wakes: AtomicUsize::new(0),
                tx: Mutex::new(tx),
            });
            (probe, rx)
        }

        /// How many times it was woken.
        fn wakes(&self) -> usize {
            self.wakes.load(Relaxed)
        }
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Relaxed);
            let _ = lock(&self.tx).send(());
        }
    }

    /// A small xorshift generator: deterministic, and no extra dependency.
    struct Rng(u64);

    impl Rng {
        /// A number in `0..n`.
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A timer whose thread is never spawned (the starter's tests).
    fn idle_timer() -> &'static Timer {
        Box::leak(Box::new(Timer::new()))
    }

    #[test]
    fn a_failed_spawn_is_tried_again_after_the_retry_interval() {
        let starter = Starter::new();
        let timer = idle_timer();
        let t0 = Instant::now();
        let spawns = AtomicUsize::new(0);
        let failing = |_: &'static Timer| {
            spawns.fetch_add(1, Relaxed);
            false
        };
        let working = |_: &'static Timer| {
            spawns.fetch_add(1, Relaxed);
            true
        };
        // The first try fails: no timer, and none tried again within RETRY.
        assert!(starter.get(timer, failing, || t0).is_none());
        assert!(starter.get(timer, working, || t0 + RETRY / 2).is_none());
        assert_eq!(spawns.load(Relaxed), 1);
        // Past RETRY: tried again; a failure again waits another RETRY.
        assert!(starter.get(timer, failing, || t0 + RETRY).is_none());
        assert_eq!(spawns.load(Relaxed), 2);
        assert!(starter
            .get(timer, working, || t0 + RETRY + RETRY / 2)
            .is_none());
        // Then it works, for good, with no spawn more.
        let later = t0 + RETRY * 2;
        assert!(std::ptr::eq(
            starter.get(timer, working, || later).unwrap(),
            timer
        ));
        assert_eq!(spawns.load(Relaxed), 3);
        assert!(starter.get(timer, failing, || later).is_some());
        assert_eq!(spawns.load(Relaxed), 3);
    }

    /// A waker whose `Drop` panics, left in a fired entry (stored by a poll
    /// after the fire took the first waker) and dropped by the timer thread:
    /// the thread lives on, and later sleeps fire.
    #[test]
    fn a_waker_whose_drop_panics_does_not_take_the_thread_down() {
        struct PanicsOnDrop;
        impl Wake for PanicsOnDrop {
            fn wake(self: Arc<Self>) {}
        }
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                if !std::thread::panicking() {
                    panic!("a waker's drop panics");
                }
            }
        }
        let timer = private_timer();
        // An entry fired by the thread whose slot holds the panicking waker
        // when the thread drops it.
        let entry = Arc::new(Entry {
            state: AtomicU8::new(FIRED),
            waker: Mutex::new(Some(Waker::from(Arc::new(PanicsOnDrop)))),
        });
        timer.register(Instant::now(), entry);
        // The thread dropped it (and caught the panic): a later sleep fires.
        let (probe, rx) = Probe::new();
        let waker = Waker::from(probe.clone());
        let mut sleep = PreciseSleep::with_clock(
            Instant::now() + Duration::from_millis(5),
            Clock::Private(timer),
        );
        assert!(poll_once(&mut sleep, &waker).is_pending());
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the timer thread died");
        assert!(poll_once(&mut sleep, &waker).is_ready());
    }

    /// A timer with its own thread and heap, for exact counts.
    fn private_timer() -> &'static Timer {
        match Timer::start() {
            Some(timer) => timer,
            None => panic!("could not spawn a timer thread"),
        }
    }

    /// Polls `sleep` once with `waker`.
    fn poll_once(sleep: &mut PreciseSleep, waker: &Waker) -> Poll<()> {
        Pin::new(sleep).poll(&mut Context::from_waker(waker))
    }

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn is_send_sync_and_unpin() {
        fn check<T: Send + Sync + Unpin>() {}
        check::<PreciseSleep>();
    }

    #[test]
    fn completes_not_before_its_deadline_on_a_current_thread_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for micros in [0, 1, 50, 200, 700, 1500] {
                let deadline = Instant::now() + Duration::from_micros(micros);
                let sleep = PreciseSleep::until(deadline);
                assert_eq!(sleep.deadline(), deadline);
                sleep.await;
                assert!(Instant::now() >= deadline, "woke early for {micros}µs");
            }
        });
    }

    #[test]
    fn completes_not_before_its_deadline_on_a_multi_thread_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..16u64)
                .map(|i| {
                    tokio::spawn(async move {
                        let deadline = Instant::now() + Duration::from_micros(100 * i);
                        PreciseSleep::until(deadline).await;
                        assert!(Instant::now() >= deadline, "task {i} woke early");
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    #[test]
    fn a_past_deadline_is_ready_on_the_first_poll_without_registering() {
        let timer = private_timer();
        let (probe, _rx) = Probe::new();
        let waker = Waker::from(Arc::clone(&probe));
        let past = Instant::now();
        let mut sleep = PreciseSleep::with_clock(past, Clock::Private(timer));
        assert_eq!(poll_once(&mut sleep, &waker), Poll::Ready(()));
        assert!(sleep.registered.is_none());
        assert_eq!(timer.queued(), 0);
        assert_eq!(probe.wakes(), 0);

        let mut sleep = PreciseSleep::until(Instant::now() - Duration::from_millis(1));
        assert_eq!(poll_once(&mut sleep, &waker), Poll::Ready(()));
        assert!(sleep.registered.is_none());
    }

    #[test]
    fn a_thousand_concurrent_sub_millisecond_sleeps_all_complete_on_time() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(8)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let tasks: Vec<_> = (0..1000)
                .map(|i| {
                    let micros = rng.below(1000);
                    tokio::spawn(async move {
                        let deadline = Instant::now() + Duration::from_micros(micros);
                        PreciseSleep::until(deadline).await;
                        assert!(Instant::now() >= deadline, "sleep {i} woke early");
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }

    #[test]
    fn dropping_unfired_sleeps_keeps_the_heap_bounded() {
        // Create, register and drop one at a time, on the shared timer (other
        // tests' live sleeps share its heap, hence the slack in the bound).
        let waker = futures_util::task::noop_waker_ref();
        let mut most = 0;
        for _ in 0..100_000 {
            let mut sleep = PreciseSleep::until(far());
            assert_eq!(poll_once(&mut sleep, waker), Poll::Pending);
            drop(sleep);
            most = most.max(queued());
        }
        assert!(most < 10_000, "the heap grew to {most} entries");

        // All registered at once, then all dropped, on a timer of its own.
        let timer = private_timer();
        let mut sleeps: Vec<_> = (0..100_000)
            .map(|_| PreciseSleep::with_clock(far(), Clock::Private(timer)))
            .collect();
        for sleep in &mut sleeps {
            assert_eq!(poll_once(sleep, waker), Poll::Pending);
        }
        assert_eq!(timer.queued(), 100_000);
        let mut live = sleeps.len();
        while let Some(sleep) = sleeps.pop() {
            drop(sleep);
            live -= 1;
            assert!(timer.queued() <= 2 * live + 1);
        }
        assert_eq!(timer.queued(), 0);
        assert_eq!(timer.cancelled.load(Relaxed), 0);
    }

    #[test]
    fn fired_sleeps_leave_the_heap() {
        let timer = private_timer();
        let (probe, rx) = Probe::new();
        let waker = Waker::from(Arc::clone(&probe));
        let now = Instant::now();
        let mut sleeps: Vec<_> = [300, 100, 600, 200]
            .into_iter()
            .map(|micros| {
                let deadline = now + Duration::from_micros(micros);
                PreciseSleep::with_clock(deadline, Clock::Private(timer))
            })
            .collect();
        for sleep in &mut sleeps {
            // A poll may already find its deadline passed on a slow machine.
            let _ = poll_once(sleep, &waker);
        }
        let registered = sleeps.iter().filter(|s| s.registered.is_some()).count();
        // Blocks until the timer thread has woken every registered sleep.
        for _ in 0..registered {
            rx.recv().unwrap();
        }
        assert_eq!(probe.wakes(), registered);
        // Every entry was popped before its waker was woken.
        assert_eq!(timer.queued(), 0);
        assert_eq!(timer.cancelled.load(Relaxed), 0);
        for sleep in &mut sleeps {
            assert_eq!(poll_once(sleep, &waker), Poll::Ready(()));
            assert!(Instant::now() >= sleep.deadline());
        }
        // Dropping fired sleeps cancels nothing.
        drop(sleeps);
        assert_eq!(timer.cancelled.load(Relaxed), 0);
    }

    #[test]
    fn re_polling_with_another_waker_wakes_the_latest() {
        // On a loaded machine the deadline may pass between the two polls; then
        // try again with a longer sleep (no bound on how long the polls take).
        let mut delay = Duration::from_millis(2);
        loop {
            let (first, _first_rx) = Probe::new();
            let (second, second_rx) = Probe::new();
            let first_waker = Waker::from(Arc::clone(&first));
            let second_waker = Waker::from(Arc::clone(&second));
            let deadline = Instant::now() + delay;
            let mut sleep = PreciseSleep::until(deadline);
            let polls = [
                poll_once(&mut sleep, &first_waker),
                poll_once(&mut sleep, &second_waker),
            ];
            if polls != [Poll::Pending, Poll::Pending] {
                assert!(Instant::now() >= deadline);
                delay *= 2;
                continue;
            }
            // Blocks until the timer thread wakes the second waker.
            second_rx.recv().unwrap();
            assert!(Instant::now() >= deadline);
            assert_eq!(first.wakes(), 0);
            assert_eq!(second.wakes(), 1);
            assert_eq!(poll_once(&mut sleep, &second_waker), Poll::Ready(()));
            return;
        }
    }

    #[test]
    fn a_sleep_moved_between_tasks_wakes_its_new_task() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut delay = Duration::from_millis(2);
            loop {
                let deadline = Instant::now() + delay;
                let mut sleep = PreciseSleep::until(deadline);
                // Poll once in this task...
                let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut sleep).poll(cx))).await;
                if polled.is_ready() {
                    // Too slow a machine to register in time: sleep longer.
                    assert!(Instant::now() >= deadline);
                    delay *= 2;
                    continue;
                }
                // ...then finish it in another.
                tokio::spawn(async move {
                    sleep.await;
                    assert!(Instant::now() >= deadline);
                })
                .await
                .unwrap();
                return;
            }
        });
    }

    #[test]
    fn re_polling_with_the_same_waker_does_not_replace_it() {
        let (probe, _rx) = Probe::new();
        let waker = Waker::from(Arc::clone(&probe));
        let mut sleep = PreciseSleep::until(far());
        assert_eq!(poll_once(&mut sleep, &waker), Poll::Pending);
        let count = Arc::strong_count(&probe);
        let stored = sleep.registered.as_ref().map(|(_, e)| Arc::clone(e));
        for _ in 0..10 {
            assert_eq!(poll_once(&mut sleep, &waker.clone()), Poll::Pending);
        }
        assert_eq!(Arc::strong_count(&probe), count);
        drop(sleep);
        // Dropping releases the stored waker at once.
        assert_eq!(Arc::strong_count(&probe), count - 1);
        assert!(stored.is_some_and(|e| e.cancelled()));
    }

    #[test]
    fn the_fallback_without_a_thread_busy_yields_until_the_deadline() {
        let (probe, _rx) = Probe::new();
        let waker = Waker::from(Arc::clone(&probe));
        let mut sleep = PreciseSleep::new(far(), false);
        assert_eq!(poll_once(&mut sleep, &waker), Poll::Pending);
        assert_eq!(probe.wakes(), 1, "a pending poll wakes itself at once");
        assert_eq!(poll_once(&mut sleep, &waker), Poll::Pending);
        assert_eq!(probe.wakes(), 2);
        assert!(sleep.registered.is_none());

        let deadline = Instant::now() + Duration::from_micros(500);
        let mut sleep = PreciseSleep::new(deadline, false);
        let mut polls = 0;
        while poll_once(&mut sleep, &waker).is_pending() {
            polls += 1;
            assert_eq!(probe.wakes(), 2 + polls);
        }
        assert!(Instant::now() >= deadline);

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_micros(800);
            PreciseSleep::new(deadline, false).await;
            assert!(Instant::now() >= deadline);
        });
    }
}
