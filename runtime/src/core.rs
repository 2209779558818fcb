//! The coalescer's state machine: enqueue, dispatch, complete, cancel.
//!
//! There is no background task. The first caller of a batch is its *driver*: it
//! waits out the window, takes an in-flight slot, runs the batch function inside its
//! own future, and hands each caller its entry. Every other caller just waits. A
//! driver that is dropped passes the role, and the running batch future with it, to
//! another caller of the same batch, so one caller's cancellation never cancels the
//! batch for the others. Because batches are driven by their callers' futures, a
//! static coalescer is not bound to any one Tokio runtime.
//!
//! Locks: `Core::state` (groups, counters) is always taken before a batch's own
//! lock, never the other way round, and no lock is held across an await or while
//! user code runs, except `Hash`/`Eq`/`Clone` of keys and values.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use tokio::time::{Instant, Sleep};

use crate::config::{Config, Dispatch};
use crate::error::Error;
use crate::isolate;
use crate::metrics::{add, Metrics, MetricsSnapshot};
use crate::output::{BatchOutput, Delivery, Entries};
use crate::sync::{lock, Arc, Mutex};
use crate::telemetry;

/// A running batch, type-erased so that any caller of the batch can drive it.
type Run<K, V, E> = Pin<Box<dyn Future<Output = Delivery<K, V, E>> + Send + 'static>>;

/// The engine behind every coalesced function: many concurrent single-key loads
/// become one batch call per group.
///
/// `G` partitions calls: only calls with equal groups share a batch (use `()` for
/// none). The batch function is passed with each call rather than stored, so that it
/// may borrow (see [`Core::load_in`]); the first caller's function runs the batch.
/// Most code wants [`Coalescer`](crate::Coalescer), which stores one batch function;
/// `#[coalesce]` expands to a `static` `Core`.
///
/// ```
/// use coalesce_runtime::{Config, Core};
/// use std::collections::HashMap;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// static SQUARES: std::sync::LazyLock<Core<(), u64, u64>> =
///     std::sync::LazyLock::new(|| Core::new(Config::new("squares")));
///
/// async fn squares(keys: Vec<u64>) -> HashMap<u64, u64> {
///     keys.into_iter().map(|k| (k, k * k)).collect()
/// }
///
/// let (a, b) = tokio::join!(SQUARES.load((), 3, squares), SQUARES.load((), 4, squares));
/// assert_eq!((a.unwrap(), b.unwrap()), (Some(9), Some(16)));
/// assert_eq!(SQUARES.metrics().batches, 1);
/// # }
/// ```
pub struct Core<G, K, V, E = Infallible> {
    config: Config,
    name: std::sync::Arc<str>,
    metrics: std::sync::Arc<Metrics>,
    telemetry: telemetry::Telemetry,
    hasher: DefaultHashBuilder,
    state: Mutex<State<G, K, V, E>>,
}

struct State<G, K, V, E> {
    /// Keyed by (instance address, group): see `Core::load_in`.
    groups: HashMap<(usize, G), Group<G, K, V, E>>,
    pending: usize,
    /// Distinct keys of the last batch dispatched: a new batch reserves this much.
    size_hint: usize,
}

struct Group<G, K, V, E> {
    /// The batch new keys join.
    open: Option<Arc<Batch<G, K, V, E>>>,
    /// Batches of this group holding an in-flight slot.
    in_flight: usize,
    /// Due batches waiting for an in-flight slot, oldest first.
    queue: std::collections::VecDeque<Arc<Batch<G, K, V, E>>>,
}

struct Batch<G, K, V, E> {
    group: (usize, G),
    st: Mutex<BatchState<K, V, E>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Open to new keys.
    Gathering,
    /// Holds `max_batch` keys; no longer open, not yet running.
    Full,
    Running,
    Done,
}

struct Slot<V, E> {
    /// Live callers of this key that have not read their entry.
    waiters: u32,
    value: Option<Result<V, std::sync::Arc<E>>>,
}

struct Ticket {
    slot: u32,
    span: telemetry::CallerSpan,
    live: bool,
    waker: Option<Waker>,
}

struct BatchState<K, V, E> {
    phase: Phase,
    keys: Vec<K>,
    index: HashTable<u32>,
    slots: Vec<Slot<V, E>>,
    /// Slots with waiters > 0.
    live_keys: usize,
    tickets: Vec<Ticket>,
    /// Tickets of callers that left before dispatch, for reuse: a batch held open
    /// while callers come and go stays as large as its live callers.
    free_tickets: Vec<usize>,
    /// Live tickets.
    callers: usize,
    driver: usize,
    /// The driver should stop gathering (full, road empty).
    kicked: bool,
    /// Kicked when it opened: before it leaves, the driver lets the calls made in
    /// the same instant join, by yielding (every task runnable now runs first)
    /// until a yield brings no new caller, the batch is full or the window is over.
    /// Holds the calls admitted as of the last yield.
    settle: Option<u64>,
    /// Waiting in the group's queue for an in-flight slot.
    queued: bool,
    /// Holds an in-flight slot.
    permit: bool,
    dedup_hits: u64,
    /// Calls admitted into this batch, including those that left.
    admitted: u64,
    opened: Instant,
    deadline: Instant,
    started: Option<Instant>,
    run_deadline: Option<Instant>,
    /// Output position -> slot, when abandoned slots were left out of the dispatch.
    dispatched: Option<Vec<u32>>,
    dispatched_len: usize,
    span: telemetry::BatchSpan,
    /// The running batch, parked here when its driver was dropped.
    orphan: Option<Run<K, V, E>>,
    failure: Option<Error<E>>,
}

impl<K, V, E> BatchState<K, V, E> {
    /// Takes a caller out of the batch (answered or cancelled). Returns its slot,
    /// and whether it was the last caller of that key.
    fn leave(&mut self, ticket: usize) -> (usize, bool) {
        let t = &mut self.tickets[ticket];
        t.live = false;
        t.waker = None;
        let slot = t.slot as usize;
        self.callers -= 1;
        self.slots[slot].waiters -= 1;
        (slot, self.slots[slot].waiters == 0)
    }
}

impl<K: Hash + Eq, V, E> BatchState<K, V, E> {
    /// Drops the keys every caller of which has left, before dispatch. Returns how
    /// many were dropped.
    fn compact(&mut self, hasher: &DefaultHashBuilder) -> usize {
        let before = self.keys.len();
        let mut remap = vec![u32::MAX; before];
        let mut keys = Vec::with_capacity(self.live_keys);
        let mut slots = Vec::with_capacity(self.live_keys);
        for (i, (k, slot)) in self.keys.drain(..).zip(self.slots.drain(..)).enumerate() {
            if slot.waiters > 0 {
                remap[i] = keys.len() as u32;
                keys.push(k);
                slots.push(slot);
            }
        }
        let mut index = HashTable::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            index.insert_unique(hasher.hash_one(k), i as u32, |&j| {
                hasher.hash_one(&keys[j as usize])
            });
        }
        for t in self.tickets.iter_mut().filter(|t| t.live) {
            t.slot = remap[t.slot as usize];
        }
        self.keys = keys;
        self.slots = slots;
        self.index = index;
        before - self.keys.len()
    }
}

/// Idle groups are kept (not removed and re-inserted batch after batch) while the
/// coalescer has at most this many groups.
const IDLE_GROUPS_KEPT: usize = 16;

impl<G: Hash + Eq, K, V, E> State<G, K, V, E> {
    /// Forgets an idle group, unless there are few enough groups to keep it for the
    /// next batch: a group that comes and goes costs nothing, and many groups
    /// (tenants, shards) never pile up.
    fn retire(&mut self, group: &(usize, G)) {
        if self.groups.len() > IDLE_GROUPS_KEPT {
            self.groups.remove(group);
        }
    }
}

/// How a call was admitted.
enum Admission<'c, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Into a shared batch; `true` if this caller drives it.
    Joined(Call<'c, G, K, V, E>, bool),
    /// Alone, on a free lane of an adaptive road.
    Solo(Solo<'c, G, K, V, E>),
}

/// A batch outcome that delivered entries.
enum Settled<K, V, E> {
    Keyed(Entries<K, V, E>),
    Ordered(Vec<V>),
}

/// What a caller's future does next.
enum Step<V, E> {
    Finished(Result<Option<V>, Error<E>>),
    /// Admitted alone: run the batch of this one key.
    Solo,
    /// The driver's batch is due: take an in-flight slot and start it.
    Due,
    /// Adopt the running batch of a dropped driver.
    Adopt,
}

enum Outcome<K, V, E> {
    Delivered(Delivery<K, V, E>),
    Panicked(String),
    TimedOut,
}

/// A call dispatched alone because its adaptive road was empty (a free lane, and
/// nothing of its group running or gathering): it holds that lane and runs the
/// batch function for its one key itself, with no shared batch to coordinate
/// (nobody else can join it, so nobody needs a hand-off). Dropping it before it has
/// finished is a cancellation: the lane is released and the batch future dropped.
struct Solo<'c, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    core: &'c Core<G, K, V, E>,
    group: (usize, G),
    key: K,
    run: Option<Run<K, V, E>>,
    finished: bool,
}

/// One caller's registration in a batch. Dropping it before it has finished is a
/// cancellation, which it reports to the batch.
struct Call<'c, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    core: &'c Core<G, K, V, E>,
    batch: Arc<Batch<G, K, V, E>>,
    ticket: usize,
    finished: bool,
    /// The batch this caller is driving, while it runs.
    run: Option<Run<K, V, E>>,
}

impl<G, K, V, E> Core<G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A coalescer with `config`, registered in the metrics registry under its name.
    ///
    /// A run-time adjustment registered with [`configure`](crate::configure) for
    /// the config's name applies.
    pub fn new(config: Config) -> Self {
        let config = config.adjusted();
        let name: std::sync::Arc<str> = std::sync::Arc::from(config.name());
        Core {
            metrics: Metrics::register(name.clone()),
            telemetry: telemetry::Telemetry::new(&name),
            name,
            config,
            hasher: DefaultHashBuilder::default(),
            state: Mutex::new(State {
                groups: HashMap::new(),
                pending: 0,
                size_hint: 1,
            }),
        }
    }

    /// The configuration this coalescer was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This coalescer's metrics, read now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Loads `key` through the batch of `group`.
    ///
    /// Resolves to the batch function's entry for `key` (`None` if it returned
    /// none), or to an [`Error`]. If this call ends up driving the batch, `batch`
    /// runs it with every distinct key the batch gathered; otherwise another caller's
    /// function does, and `batch` is dropped unused. Dropping the returned future
    /// cancels this call only: the batch still runs for its other callers.
    pub async fn load<F, Fut>(&self, group: G, key: K, batch: F) -> Result<Option<V>, Error<E>>
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, V, Error = E>,
    {
        let depth = self.config.isolate;
        self.call((0, group), key, move |keys| {
            let start = move |keys| {
                let fut = batch(keys);
                Box::pin(async move { fut.await.into_delivery() }) as Run<K, V, E>
            };
            if depth == 0 {
                start(keys)
            } else {
                isolate::run(std::sync::Arc::new(start), keys, depth)
            }
        })
        .await
    }

    /// Loads `key` through the batch of `(this, group)`, for a batch function that
    /// borrows `this` (a method's `&self`).
    ///
    /// Calls through the same `this` (the same address) coalesce; calls through
    /// different instances never share a batch. The batch future may borrow `this`
    /// but nothing else that is not `'static` (`batch` itself is `'static`). This is
    /// what makes it sound for another caller of the same instance to keep driving
    /// the batch after the first caller was dropped: every caller of the batch
    /// borrows the same live instance. Zero-sized instances share an address, and so
    /// share batches.
    pub async fn load_in<'a, S, F, Fut>(
        &self,
        this: &'a S,
        group: G,
        key: K,
        batch: F,
    ) -> Result<Option<V>, Error<E>>
    where
        S: ?Sized + Sync,
        F: Fn(&'a S, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'a,
        Fut::Output: BatchOutput<K, V, Error = E>,
    {
        let address = this as *const S as *const () as usize;
        let depth = self.config.isolate;
        self.call((address, group), key, move |keys| {
            let start = move |keys| {
                let fut = batch(this, keys);
                Box::pin(async move { fut.await.into_delivery() }) as isolate::RunFor<'a, K, V, E>
            };
            let run: isolate::RunFor<'a, K, V, E> = if depth == 0 {
                start(keys)
            } else {
                isolate::run(std::sync::Arc::new(start), keys, depth)
            };
            // SAFETY: the future borrows only `'static` data (what `batch` captured)
            // and `*this`. It is polled only by callers of this batch, and every such
            // caller holds a shared borrow of the instance at `address` (the batch's
            // group includes the address, and a borrowed instance can neither move
            // nor be dropped), so `*this` outlives every poll. The last caller to
            // leave drops the future (`Call::drop`) before its own borrow ends, so
            // the future never outlives all of them.
            unsafe { std::mem::transmute::<isolate::RunFor<'a, K, V, E>, Run<K, V, E>>(run) }
        })
        .await
    }

    /// Loads `key` with a batch function shared behind an `Arc` (for [`Coalescer`],
    /// whose function is stored, not passed per call).
    ///
    /// [`Coalescer`]: crate::Coalescer
    pub(crate) async fn load_shared(
        &self,
        key: K,
        factory: &isolate::Factory<'static, K, V, E>,
    ) -> Result<Option<V>, Error<E>>
    where
        G: Default,
    {
        let depth = self.config.isolate;
        self.call((0, G::default()), key, |keys| {
            if depth == 0 {
                factory(keys)
            } else {
                isolate::run(factory.clone(), keys, depth)
            }
        })
        .await
    }

    async fn call(
        &self,
        group: (usize, G),
        key: K,
        make: impl FnOnce(Vec<K>) -> Run<K, V, E>,
    ) -> Result<Option<V>, Error<E>> {
        let mut make = Some(make);
        let mut args = Some((group, key));
        let mut call: Option<Call<'_, G, K, V, E>> = None;
        let mut solo: Option<Solo<'_, G, K, V, E>> = None;
        let mut timer: Option<WindowWait> = None;
        loop {
            let step = poll_fn(|cx| match &mut call {
                Some(c) => c.poll_step(cx, &mut timer),
                None => {
                    let Some((group, key)) = args.take() else {
                        return Poll::Pending;
                    };
                    match self.enqueue(group, key, cx.waker()) {
                        Err(e) => Poll::Ready(Step::Finished(Err(e))),
                        Ok(Admission::Solo(s)) => {
                            solo = Some(s);
                            Poll::Ready(Step::Solo)
                        }
                        Ok(Admission::Joined(c, driver)) => {
                            let c = call.insert(c);
                            if driver {
                                c.poll_step(cx, &mut timer)
                            } else {
                                Poll::Pending
                            }
                        }
                    }
                }
            })
            .await;
            let Some(c) = call.as_mut() else {
                // Only an overload rejection and a solo call finish before joining.
                return match (step, solo.take(), make.take()) {
                    (Step::Finished(r), _, _) => r,
                    (Step::Solo, Some(solo), Some(make)) => self.run_solo(solo, make).await,
                    _ => Err(Error::Missing {
                        name: self.name.clone(),
                    }),
                };
            };
            match step {
                Step::Finished(r) => {
                    c.finished = true;
                    return r;
                }
                Step::Adopt | Step::Solo => {}
                Step::Due => {
                    let Some((keys, span)) = self.try_start(c) else {
                        continue;
                    };
                    let Some(make) = make.take() else {
                        // Unreachable: a caller starts at most one batch, the one it
                        // joined, and finishes with it. Fail the batch rather than
                        // leave it running with nothing to run.
                        c.complete(Outcome::Panicked("batch started twice".to_owned()));
                        continue;
                    };
                    match catch_unwind(AssertUnwindSafe(move || make(keys))) {
                        Ok(run) => c.run = Some(telemetry::instrument(run, &span)),
                        Err(p) => {
                            c.complete(Outcome::Panicked(panic_message(&*p)));
                            continue;
                        }
                    }
                }
            }
            let mut run_timer: Option<Pin<Box<Sleep>>> = None;
            let batch = &c.batch;
            let outcome = poll_fn(|cx| {
                poll_batch(
                    &mut c.run,
                    || lock(&batch.st).run_deadline,
                    &mut run_timer,
                    cx,
                )
            })
            .await;
            c.complete(outcome);
        }
    }

    /// Runs the batch of a solo call's one key and reads its entry.
    #[allow(clippy::let_unit_value)]
    async fn run_solo(
        &self,
        mut solo: Solo<'_, G, K, V, E>,
        make: impl FnOnce(Vec<K>) -> Run<K, V, E>,
    ) -> Result<Option<V>, Error<E>> {
        let started = Instant::now();
        self.metrics.solo.fetch_add(1, Relaxed);
        let span = self.telemetry.batch_started(
            1,
            1,
            0,
            Duration::ZERO,
            std::iter::once(&telemetry::caller_span()),
        );
        let key = solo.key.clone();
        let outcome = match catch_unwind(AssertUnwindSafe(move || make(vec![key]))) {
            Ok(run) => {
                solo.run = Some(telemetry::instrument(run, &span));
                let deadline = self.config.timeout.map(|t| started + t);
                let mut timer = None;
                poll_fn(|cx| poll_batch(&mut solo.run, || deadline, &mut timer, cx)).await
            }
            Err(p) => Outcome::Panicked(panic_message(&*p)),
        };
        let run = Instant::now().saturating_duration_since(started);
        self.metrics.run_ns.record(run.as_nanos() as u64);
        let result = match self.settle(outcome) {
            Ok(Settled::Keyed(entries)) => {
                let mut mine = None;
                let mut unrequested = 0u64;
                let key = &solo.key;
                // A panic in user code (the iterator, `Eq`) fails the call.
                let read = catch_unwind(AssertUnwindSafe(|| {
                    for (k, r) in entries {
                        if mine.is_none() && k == *key {
                            mine = Some(r);
                        } else {
                            unrequested += 1;
                        }
                    }
                }));
                add(&self.metrics.unrequested_entries, unrequested);
                match read {
                    Ok(()) => Ok(mine),
                    Err(p) => Err(Error::Panicked {
                        name: self.name.clone(),
                        message: std::sync::Arc::from(panic_message(&*p)),
                    }),
                }
            }
            Ok(Settled::Ordered(mut values)) => match (values.pop(), values.len()) {
                (Some(v), 0) => Ok(Some(Ok(v))),
                (last, rest) => Err(Error::Shape {
                    name: self.name.clone(),
                    keys: 1,
                    values: rest + usize::from(last.is_some()),
                }),
            },
            Err(e) => Err(e),
        };
        let failure = result.as_ref().err();
        self.telemetry.batch_finished(
            &span,
            run,
            outcome_label(failure),
            u64::from(failure.is_some()) as usize,
        );
        solo.finished = true;
        solo.release();
        match result {
            Ok(entry) => self.entry_result(entry),
            Err(e) => {
                self.count_failure(&e);
                Err(e)
            }
        }
    }

    /// The entries a batch delivered, or the error every caller of the batch gets.
    fn settle(&self, outcome: Outcome<K, V, E>) -> Result<Settled<K, V, E>, Error<E>> {
        let name = self.name.clone();
        match outcome {
            Outcome::Delivered(Delivery::Keyed(entries)) => Ok(Settled::Keyed(entries)),
            Outcome::Delivered(Delivery::Ordered(values)) => Ok(Settled::Ordered(values)),
            Outcome::Delivered(Delivery::Failed(e)) => Err(Error::Batch {
                name,
                source: std::sync::Arc::new(e),
            }),
            Outcome::Panicked(message) => Err(Error::Panicked {
                name,
                message: std::sync::Arc::from(message),
            }),
            Outcome::TimedOut => Err(Error::Timeout {
                name,
                after: self.config.timeout.unwrap_or_default(),
            }),
        }
    }

    /// Counts one caller failed by its batch.
    fn count_failure(&self, err: &Error<E>) {
        let m = &self.metrics;
        let counter = match err {
            Error::Panicked { .. } => &m.panics,
            Error::Timeout { .. } => &m.timeouts,
            Error::Shape { .. } => &m.shape_errors,
            _ => &m.batch_errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// One caller's result from its key's entry.
    fn entry_result(
        &self,
        entry: Option<Result<V, std::sync::Arc<E>>>,
    ) -> Result<Option<V>, Error<E>> {
        match entry {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(source)) => {
                self.metrics.key_errors.fetch_add(1, Relaxed);
                self.telemetry.key_errors(1);
                Err(Error::Key {
                    name: self.name.clone(),
                    source,
                })
            }
        }
    }

    /// Counts a batch that starts now and opens its span. `counts` is (calls
    /// admitted, distinct keys dispatched, duplicate calls, keys abandoned).
    fn batch_started<'a>(
        &self,
        counts: (u64, usize, u64, u64),
        wait: Duration,
        callers: impl Iterator<Item = &'a telemetry::CallerSpan>,
    ) -> telemetry::BatchSpan {
        let (admitted, keys, dedup_hits, abandoned) = counts;
        let m = &self.metrics;
        m.calls.fetch_add(admitted, Relaxed);
        add(&m.dedup_hits, dedup_hits);
        add(&m.abandoned_keys, abandoned);
        m.keys.fetch_add(keys as u64, Relaxed);
        m.batches.fetch_add(1, Relaxed);
        m.batch_size.record(keys as u64);
        m.wait_ns.record(wait.as_nanos() as u64);
        self.telemetry
            .batch_started(admitted as usize, keys, dedup_hits, wait, callers)
    }

    fn lock_state(&self) -> crate::sync::MutexGuard<'_, State<G, K, V, E>> {
        lock(&self.state)
    }

    /// Admits a call into its group's open batch. Returns the registration and
    /// whether this caller drives the batch.
    fn enqueue(
        &self,
        group: (usize, G),
        key: K,
        waker: &Waker,
    ) -> Result<Admission<'_, G, K, V, E>, Error<E>> {
        let mut guard = self.lock_state();
        let state = &mut *guard;
        if state.pending >= self.config.max_pending {
            drop(guard);
            self.metrics.overloaded.fetch_add(1, Relaxed);
            self.telemetry.overloaded();
            return Err(Error::Overloaded {
                name: self.name.clone(),
                max_pending: self.config.max_pending,
            });
        }
        state.pending += 1;
        self.metrics.pending.store(state.pending as u64, Relaxed);
        let hint = state.size_hint.min(self.config.max_batch);
        let mut entry = match state.groups.entry(group) {
            hashbrown::hash_map::Entry::Occupied(o) => o,
            hashbrown::hash_map::Entry::Vacant(v) => v.insert_entry(Group {
                open: None,
                in_flight: 0,
                queue: Default::default(),
            }),
        };
        let batch = match &entry.get().open {
            Some(b) => b.clone(),
            None => {
                // An adaptive call that finds a free lane leaves at once: alone
                // when nothing of its group runs (the road is empty), or else with
                // the calls made in the same instant (see `BatchState::settle`).
                let g = entry.get_mut();
                let free = self.config.dispatch == Dispatch::Adaptive
                    && g.in_flight < self.config.lanes()
                    && g.queue.is_empty();
                if free && g.in_flight == 0 {
                    g.in_flight += 1;
                    self.metrics.in_flight.fetch_add(1, Relaxed);
                    let group = entry.key().clone();
                    drop(guard);
                    return Ok(Admission::Solo(Solo {
                        core: self,
                        group,
                        key,
                        run: None,
                        finished: false,
                    }));
                }
                let now = Instant::now();
                let b = Arc::new(Batch {
                    group: entry.key().clone(),
                    st: Mutex::new(BatchState {
                        phase: Phase::Gathering,
                        keys: Vec::with_capacity(hint),
                        index: HashTable::with_capacity(hint),
                        slots: Vec::with_capacity(hint),
                        live_keys: 0,
                        tickets: Vec::with_capacity(hint),
                        free_tickets: Vec::new(),
                        callers: 0,
                        driver: 0,
                        kicked: free,
                        settle: free.then_some(0),
                        queued: false,
                        permit: false,
                        dedup_hits: 0,
                        admitted: 0,
                        opened: now,
                        deadline: now + self.config.window,
                        started: None,
                        run_deadline: None,
                        dispatched: None,
                        dispatched_len: 0,
                        orphan: None,
                        failure: None,
                        span: telemetry::no_span(),
                    }),
                });
                entry.get_mut().open = Some(b.clone());
                b
            }
        };
        let mut st = lock(&batch.st);
        let hash = self.hasher.hash_one(&key);
        let BatchState {
            keys, index, slots, ..
        } = &mut *st;
        let slot = match index.find(hash, |&i| keys[i as usize] == key) {
            Some(&i) => {
                let slot = &mut slots[i as usize];
                slot.waiters += 1;
                if slot.waiters == 1 {
                    st.live_keys += 1;
                } else {
                    st.dedup_hits += 1;
                }
                i
            }
            None => {
                let i = keys.len() as u32;
                keys.push(key);
                slots.push(Slot {
                    waiters: 1,
                    value: None,
                });
                let hasher = &self.hasher;
                index.insert_unique(hash, i, |&j| hasher.hash_one(&keys[j as usize]));
                st.live_keys += 1;
                i
            }
        };
        let t = Ticket {
            slot,
            live: true,
            waker: Some(waker.clone()),
            span: telemetry::caller_span(),
        };
        let ticket = match st.free_tickets.pop() {
            Some(i) => {
                st.tickets[i] = t;
                i
            }
            None => {
                st.tickets.push(t);
                st.tickets.len() - 1
            }
        };
        st.callers += 1;
        st.admitted += 1;
        if st.callers == 1 {
            st.driver = ticket;
        }
        let driver = st.driver == ticket;
        let mut kick = None;
        if st.live_keys >= self.config.max_batch {
            st.phase = Phase::Full;
            entry.get_mut().open = None;
            if !driver {
                kick = st.tickets[st.driver].waker.clone();
            }
        }
        drop(st);
        drop(guard);
        if let Some(w) = kick {
            w.wake();
        }
        Ok(Admission::Joined(
            Call {
                core: self,
                batch,
                ticket,
                finished: false,
                run: None,
            },
            driver,
        ))
    }

    /// Takes an in-flight slot for the driver's due batch and starts it, returning
    /// the keys to run; or queues the batch for a slot and returns `None`.
    #[allow(clippy::let_unit_value, clippy::clone_on_copy)]
    fn try_start(&self, call: &mut Call<'_, G, K, V, E>) -> Option<(Vec<K>, telemetry::BatchSpan)> {
        let mut guard = self.lock_state();
        let state = &mut *guard;
        let batch = &call.batch;
        let mut st = lock(&batch.st);
        if st.driver != call.ticket || !matches!(st.phase, Phase::Gathering | Phase::Full) {
            return None;
        }
        // A full batch no longer sits in its group, which may have been removed
        // meanwhile as idle.
        if !state.groups.contains_key(&batch.group) {
            state.groups.insert(
                batch.group.clone(),
                Group {
                    open: None,
                    in_flight: 0,
                    queue: Default::default(),
                },
            );
        }
        let group = state.groups.get_mut(&batch.group)?;
        if !st.permit {
            if group.in_flight >= self.config.max_in_flight {
                if !st.queued {
                    st.queued = true;
                    group.queue.push_back(batch.clone());
                }
                return None;
            }
            group.in_flight += 1;
            st.permit = true;
            self.metrics.in_flight.fetch_add(1, Relaxed);
        }
        if group
            .open
            .as_ref()
            .is_some_and(|open| Arc::ptr_eq(open, batch))
        {
            group.open = None;
        }
        state.size_hint = st.live_keys.max(1);
        drop(guard);
        let now = Instant::now();
        st.phase = Phase::Running;
        st.started = Some(now);
        st.run_deadline = self.config.timeout.map(|t| now + t);
        let keys = if st.live_keys == st.keys.len() {
            st.dispatched_len = st.keys.len();
            st.keys.clone()
        } else {
            let mut order = Vec::with_capacity(st.live_keys);
            let mut keys = Vec::with_capacity(st.live_keys);
            for (i, slot) in st.slots.iter().enumerate() {
                if slot.waiters > 0 {
                    order.push(i as u32);
                    keys.push(st.keys[i].clone());
                }
            }
            st.dispatched_len = keys.len();
            st.dispatched = Some(order);
            keys
        };
        let span = self.batch_started(
            (
                st.admitted,
                keys.len(),
                st.dedup_hits,
                (st.keys.len() - st.live_keys) as u64,
            ),
            now.saturating_duration_since(st.opened),
            st.tickets.iter().map(|t| &t.span),
        );
        st.span = span.clone();
        Some((keys, span))
    }

    /// Gives up a batch's in-flight slot: to the oldest queued batch of the group,
    /// or, on an adaptive road that is now empty, by waking the open batch.
    fn release_permit(&self, state: &mut State<G, K, V, E>, group: &(usize, G)) {
        let Some(g) = state.groups.get_mut(group) else {
            return;
        };
        let mut wake = None;
        let mut handed = false;
        while let Some(next) = g.queue.pop_front() {
            let mut st = lock(&next.st);
            st.queued = false;
            if st.callers > 0 && matches!(st.phase, Phase::Gathering | Phase::Full) {
                st.permit = true;
                if g.open.as_ref().is_some_and(|open| Arc::ptr_eq(open, &next)) {
                    g.open = None;
                }
                wake = st.tickets[st.driver].waker.clone();
                handed = true;
                break;
            }
        }
        if !handed {
            g.in_flight -= 1;
            self.metrics.in_flight.fetch_sub(1, Relaxed);
            if self.config.dispatch == Dispatch::Adaptive && g.in_flight < self.config.lanes() {
                if let Some(open) = &g.open {
                    let mut st = lock(&open.st);
                    st.kicked = true;
                    wake = st.tickets.get(st.driver).and_then(|t| t.waker.clone());
                }
            }
        }
        if g.open.is_none() && g.in_flight == 0 && g.queue.is_empty() {
            state.retire(group);
        }
        if let Some(w) = wake {
            w.wake();
        }
    }
}

impl<G, K, V, E> Call<'_, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        timer: &mut Option<WindowWait>,
    ) -> Poll<Step<V, E>> {
        let mut st = lock(&self.batch.st);
        if st.phase == Phase::Done {
            self.finished = true;
            return Poll::Ready(Step::Finished(take_result(self.core, self.ticket, &mut st)));
        }
        register(&mut st.tickets[self.ticket].waker, cx.waker());
        if st.driver != self.ticket {
            return Poll::Pending;
        }
        match st.phase {
            Phase::Running => match st.orphan.take() {
                Some(run) => {
                    self.run = Some(run);
                    Poll::Ready(Step::Adopt)
                }
                None => Poll::Pending,
            },
            Phase::Gathering | Phase::Full => {
                if st.permit {
                    return Poll::Ready(Step::Due);
                }
                if st.queued {
                    return Poll::Pending;
                }
                if st.kicked || st.phase == Phase::Full {
                    if let Some(seen) = st.settle.take() {
                        if st.phase != Phase::Full
                            && st.admitted > seen
                            && Instant::now() < st.deadline
                        {
                            st.settle = Some(st.admitted);
                            drop(st);
                            // Let the calls made in the same instant join: this task
                            // is woken after every task runnable now has run.
                            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                            return Poll::Pending;
                        }
                    }
                    return Poll::Ready(Step::Due);
                }
                let deadline = st.deadline;
                drop(st);
                if timer.is_none() && Instant::now() >= deadline {
                    return Poll::Ready(Step::Due);
                }
                let window = self.core.config.window;
                match timer
                    .get_or_insert_with(|| WindowWait::new(deadline, window))
                    .poll(cx)
                {
                    Poll::Ready(()) => {
                        *timer = None;
                        Poll::Ready(Step::Due)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            Phase::Done => Poll::Pending,
        }
    }

    /// Hands the batch's outcome to every caller and frees its in-flight slot.
    fn complete(&mut self, outcome: Outcome<K, V, E>) {
        let core = self.core;
        let m = &core.metrics;
        let mut st = lock(&self.batch.st);
        let now = Instant::now();
        if let Some(started) = st.started {
            m.run_ns
                .record(now.saturating_duration_since(started).as_nanos() as u64);
        }
        match core.settle(outcome) {
            Ok(Settled::Keyed(entries)) => {
                let mut unrequested = 0u64;
                let BatchState {
                    keys, index, slots, ..
                } = &mut *st;
                // A panic in user code (the iterator, `Hash`, `Eq`) is caught below.
                let placed = catch_unwind(AssertUnwindSafe(|| {
                    for (k, r) in entries {
                        let hash = core.hasher.hash_one(&k);
                        match index.find(hash, |&i| keys[i as usize] == k) {
                            Some(&i) if slots[i as usize].value.is_none() => {
                                slots[i as usize].value = Some(r);
                            }
                            _ => unrequested += 1,
                        }
                    }
                }));
                add(&m.unrequested_entries, unrequested);
                if let Err(p) = placed {
                    st.failure = Some(Error::Panicked {
                        name: core.name.clone(),
                        message: std::sync::Arc::from(panic_message(&*p)),
                    });
                }
            }
            Ok(Settled::Ordered(values)) => {
                if values.len() != st.dispatched_len {
                    st.failure = Some(Error::Shape {
                        name: core.name.clone(),
                        keys: st.dispatched_len,
                        values: values.len(),
                    });
                } else {
                    let order = st.dispatched.take();
                    for (pos, v) in values.into_iter().enumerate() {
                        let i = order.as_ref().map_or(pos, |o| o[pos] as usize);
                        st.slots[i].value = Some(Ok(v));
                    }
                }
            }
            Err(e) => st.failure = Some(e),
        }
        st.phase = Phase::Done;
        let answered = st.callers;
        let run = st
            .started
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        core.telemetry.batch_finished(
            &st.span,
            run,
            outcome_label(st.failure.as_ref()),
            if st.failure.is_some() { answered } else { 0 },
        );
        let wakers: Vec<Waker> = st
            .tickets
            .iter_mut()
            .enumerate()
            .filter(|(i, t)| *i != self.ticket && t.live)
            .filter_map(|(_, t)| t.waker.take())
            .collect();
        let had_permit = std::mem::replace(&mut st.permit, false);
        drop(st);
        {
            let mut guard = core.lock_state();
            let state = &mut *guard;
            state.pending -= answered;
            m.pending.store(state.pending as u64, Relaxed);
            if had_permit {
                core.release_permit(state, &self.batch.group);
            }
            core.telemetry
                .gauges(m.in_flight.load(Relaxed), state.pending as u64);
        }
        for w in wakers {
            w.wake();
        }
    }
}

impl<G, K, V, E> Solo<'_, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Gives the lane back (to a queued batch, or by waking the open one).
    fn release(&mut self) {
        let core = self.core;
        let mut guard = core.lock_state();
        let state = &mut *guard;
        state.pending -= 1;
        core.metrics.pending.store(state.pending as u64, Relaxed);
        core.release_permit(state, &self.group);
        core.telemetry
            .gauges(core.metrics.in_flight.load(Relaxed), state.pending as u64);
    }
}

impl<G, K, V, E> Drop for Solo<'_, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let m = &self.core.metrics;
        m.cancelled_calls.fetch_add(1, Relaxed);
        m.cancelled_batches.fetch_add(1, Relaxed);
        self.core.telemetry.cancelled();
        let run = self.run.take();
        self.release();
        // User code (the batch future's destructor) runs outside every lock.
        if let Some(run) = run {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(run)));
        }
    }
}

impl<G, K, V, E> Drop for Call<'_, G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let core = self.core;
        let m = &core.metrics;
        m.cancelled_calls.fetch_add(1, Relaxed);
        core.telemetry.cancelled();
        let mut guard = core.lock_state();
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        let (slot_index, key_left) = st.leave(self.ticket);
        if key_left {
            st.slots[slot_index].value = None;
        }
        let phase = st.phase;
        if phase == Phase::Done {
            // Answered already (and no longer pending); the entry is simply unread.
            return;
        }
        state.pending -= 1;
        m.pending.store(state.pending as u64, Relaxed);
        if phase != Phase::Running {
            st.free_tickets.push(self.ticket);
            if key_left {
                st.live_keys -= 1;
                if st.keys.len() > 2 * st.live_keys + 64 {
                    let dropped = st.compact(&core.hasher);
                    m.abandoned_keys.fetch_add(dropped as u64, Relaxed);
                }
            }
        }
        let mut dropped_run = self.run.take();
        let mut wake = None;
        if st.callers > 0 {
            if st.driver == self.ticket {
                if let Some(run) = dropped_run.take() {
                    st.orphan = Some(run);
                }
                if let Some((i, t)) = st.tickets.iter().enumerate().find(|(_, t)| t.live) {
                    wake = t.waker.clone();
                    st.driver = i;
                }
            }
        } else {
            // The last caller left: nobody wants this batch any more.
            if dropped_run.is_none() {
                dropped_run = st.orphan.take();
            }
            match phase {
                Phase::Running => m.cancelled_batches.fetch_add(1, Relaxed),
                _ => {
                    m.calls.fetch_add(st.admitted, Relaxed);
                    m.abandoned_keys.fetch_add(st.keys.len() as u64, Relaxed);
                    m.abandoned_batches.fetch_add(1, Relaxed)
                }
            };
            st.phase = Phase::Done;
            let release = std::mem::replace(&mut st.permit, false);
            let queued = std::mem::replace(&mut st.queued, false);
            drop(st);
            if let Some(g) = state.groups.get_mut(&self.batch.group) {
                if g.open.as_ref().is_some_and(|b| Arc::ptr_eq(b, &self.batch)) {
                    g.open = None;
                }
                if queued {
                    g.queue.retain(|b| !Arc::ptr_eq(b, &self.batch));
                }
                if !release && g.open.is_none() && g.in_flight == 0 && g.queue.is_empty() {
                    state.retire(&self.batch.group);
                }
            }
            if release {
                core.release_permit(state, &self.batch.group);
            }
            drop(guard);
            // User code (the batch future's destructor) runs outside every lock.
            if let Some(run) = dropped_run {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(run)));
            }
            return;
        }
        drop(st);
        drop(guard);
        if let Some(w) = wake {
            w.wake();
        }
    }
}

/// Windows shorter than this are timed by the precise timer thread.
const PRECISE_BELOW: Duration = Duration::from_millis(1);

/// A driver's wait for its batch's window: Tokio's timer, and for a window shorter
/// than a millisecond (which Tokio's timer rounds up to its next tick, one to two
/// milliseconds away) also the process-wide precise timer thread, whichever fires
/// first. On a real clock the precise timer does; on a paused Tokio clock (tests),
/// Tokio's auto-advancing timer does, so a paused test never waits on real time.
struct WindowWait {
    tokio: Pin<Box<Sleep>>,
    precise: Option<crate::timer::PreciseSleep>,
}

impl WindowWait {
    fn new(deadline: Instant, window: Duration) -> Self {
        let precise = (window < PRECISE_BELOW).then(|| {
            let left = deadline.saturating_duration_since(Instant::now());
            crate::timer::PreciseSleep::until(std::time::Instant::now() + left)
        });
        WindowWait {
            tokio: Box::pin(tokio::time::sleep_until(deadline)),
            precise,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(precise) = &mut self.precise {
            if Pin::new(precise).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        self.tokio.as_mut().poll(cx)
    }
}

/// Polls a running batch, catching a panic and enforcing the timeout (`deadline` is
/// read only while the batch is pending). Drops the batch future once it is done.
fn poll_batch<K, V, E>(
    run: &mut Option<Run<K, V, E>>,
    deadline: impl FnOnce() -> Option<Instant>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Outcome<K, V, E>> {
    let Some(fut) = run.as_mut() else {
        return Poll::Ready(Outcome::Panicked("the batch was lost".to_owned()));
    };
    let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
    let outcome = match polled {
        Ok(Poll::Ready(delivery)) => Outcome::Delivered(delivery),
        Err(p) => Outcome::Panicked(panic_message(&*p)),
        Ok(Poll::Pending) => {
            let Some(deadline) = deadline() else {
                return Poll::Pending;
            };
            let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Outcome::TimedOut,
                Poll::Pending => return Poll::Pending,
            }
        }
    };
    if let Some(done) = run.take() {
        // A future that panicked may panic again when dropped.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(done)));
    }
    Poll::Ready(outcome)
}

/// The outcome label of a batch in telemetry.
fn outcome_label<E>(failure: Option<&Error<E>>) -> &'static str {
    match failure {
        None => "ok",
        Some(Error::Batch { .. }) => "batch",
        Some(Error::Panicked { .. }) => "panic",
        Some(Error::Timeout { .. }) => "timeout",
        Some(Error::Shape { .. }) => "shape",
        Some(_) => "error",
    }
}

/// Reads this caller's entry from its completed batch.
fn take_result<G, K, V, E>(
    core: &Core<G, K, V, E>,
    ticket: usize,
    st: &mut BatchState<K, V, E>,
) -> Result<Option<V>, Error<E>>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    let (slot_index, last) = st.leave(ticket);
    if let Some(err) = &st.failure {
        core.count_failure(err);
        return Err(err.clone());
    }
    let slot = &mut st.slots[slot_index];
    let entry = if last {
        slot.value.take()
    } else {
        slot.value.clone()
    };
    core.entry_result(entry)
}

/// Stores `waker` unless the stored one already wakes the same task.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// One call in each of 1,000 groups (tenants, say): idle groups are forgotten
    /// once there are more than a handful, so the group table stays small.
    #[tokio::test]
    async fn idle_groups_do_not_pile_up() {
        for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
            let core: Core<u64, u64, u64> = Core::new(
                Config::new("t.idle_groups")
                    .window(Duration::ZERO)
                    .dispatch(dispatch),
            );
            for g in 0..1000u64 {
                let got = core.load(g, g, |keys: Vec<u64>| async move { keys }).await;
                assert_eq!(got.unwrap(), Some(g));
            }
            let groups = lock(&core.state).groups.len();
            assert!(groups <= IDLE_GROUPS_KEPT, "{groups} groups kept");
            assert_eq!(core.metrics().batches, 1000);
        }
    }
}
