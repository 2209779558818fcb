//! Streamed batches: a run whose batch fn returns its entries as a stream
//! ([`Streamed`](crate::Streamed)) is read item by item, and each item answers
//! its own key's callers at once, while the batch still runs.
//!
//! # Implementation details
//!
//! [`Feed`] wraps every read run (it is what the driver polls). Until the
//! batch fn's future yields a stream it is a pass-through. Then, per item:
//! the key's slot is found through the run's shared keys (outside every lock:
//! `Hash` and `Eq` are user code), the value is cloned for the slot's extra
//! waiters (outside the lock), stored under the batch lock with the slot marked
//! `delivered`, and only that slot's callers are woken (the batch indexes its
//! tickets by slot from the stream's start) — in groups of [`WAKE_EVERY`]
//! and when the driver's poll returns, so that a task awaiting many callers is
//! woken once per group, not once per item (if the stream panicked, when the
//! run is dropped). A woken caller takes its entry and leaves while the batch
//! runs on.
//!
//! The stream ends the run when every key sent is delivered (a stream that
//! never ends frees its lane then), when it ends, fails or panics (the driver
//! catches it), when the gap between items passes the idle timeout, or when
//! the driver stops the run (every caller left, or the `timeout`). The batch's
//! completion then gives each key not delivered its `None` or the failure, and
//! leaves delivered values as they are.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::batch::Phase;
use super::clock::{self, Clock, Sleep};
use super::deliver::{catching, drop_quietly, Lookup};
use super::read::{Frozen, Read, ReadBatch};
use super::sync::lock;
use super::{Inner, Run};
use crate::error::Error;
use crate::output::{Delivery, EntryStream};

/// Items read in one poll before the driver yields to other tasks.
const BUDGET: usize = 256;
/// Answered callers are woken in groups of this many (and when the poll
/// returns): a task awaiting many callers (`join_all`, `FuturesUnordered`) is
/// then scheduled once per group, not once per item, and no caller waits for
/// more than this many further answers or the poll's end (at most [`BUDGET`]
/// items).
const WAKE_EVERY: usize = 32;

/// A read run, reading the stream its batch fn may return (see the module docs).
pub(crate) struct Feed<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    inner: StdArc<Inner<Read<G, K, V, E>>>,
    batch: ReadBatch<G, K, V, E>,
    keys: StdArc<Frozen<K>>,
    /// Slots whose key's `Clone` panicked at dispatch: never sent.
    unsent: Vec<u32>,
    /// Distinct keys sent: the run is over once each is delivered.
    target: usize,
    run: Option<Run<K, V, E>>,
    stream: Option<EntryStream<K, V, E>>,
    started: Instant,
    /// When the last item came (or the stream started).
    last: Instant,
    first_seen: bool,
    clock: Clock,
    /// The idle timeout's wait, for the deadline it was made for.
    idle: Option<(Instant, Sleep)>,
    /// Items for keys nobody asked for, or repeats: counted here and handed
    /// to the batch when the run ends (see `Drop`), not one lock per item.
    unrequested: u64,
    /// Callers answered and not yet woken (see [`WAKE_EVERY`]).
    woken: Vec<Waker>,
    /// Set by `isolate` when a streamed half of a split batch went idle past
    /// the idle timeout: the keys it did not deliver fail with the timeout.
    split_idle: Option<StdArc<std::sync::atomic::AtomicBool>>,
}

impl<G, K, V, E> Feed<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    pub(crate) fn new(
        inner: StdArc<Inner<Read<G, K, V, E>>>,
        batch: ReadBatch<G, K, V, E>,
        keys: StdArc<Frozen<K>>,
        unsent: Vec<u32>,
        target: usize,
        run: Run<K, V, E>,
        split_idle: Option<StdArc<std::sync::atomic::AtomicBool>>,
    ) -> Self {
        let now = Instant::now();
        Feed {
            inner,
            batch,
            keys,
            unsent,
            target,
            run: Some(run),
            stream: None,
            started: now,
            last: now,
            first_seen: false,
            clock: Clock::detect(),
            idle: None,
            unrequested: 0,
            woken: Vec::new(),
            split_idle,
        }
    }

    /// Hands one item to its slot's callers. True: the run is over (every key
    /// delivered, or the batch stopped).
    fn deliver(&mut self, key: K, value: V) -> bool {
        let sent = |i: u32| self.keys.was_dispatched(i) && !self.unsent.contains(&i);
        let (slot, value) = match self.keys.slot_of(&key, &self.inner.hasher) {
            Ok(Some(i)) if sent(i) => (Some(i), Some(value)),
            // `Eq` of the item's key panicked against this slot's: the
            // slot's callers fail with that (as for a map), the item is not
            // theirs to take.
            Err(i) if sent(i) => {
                drop_quietly(value);
                (Some(i), None)
            }
            _ => (None, Some(value)),
        };
        drop_quietly(key);
        let Some(slot) = slot else {
            self.unrequested += 1;
            drop_quietly(value);
            return false;
        };
        let mut st = lock(&self.batch.st);
        if !matches!(st.phase, Phase::Running) {
            drop(st);
            drop_quietly(value);
            return true;
        }
        let s = &st.entries.slots[slot as usize];
        if s.delivered {
            // A second item for the key: the first one won.
            drop(st);
            self.unrequested += 1;
            drop_quietly(value);
            return false;
        }
        let extra = s.waiters.saturating_sub(1) as usize;
        let mut entry = value.ok_or_else(|| Error::Panicked {
            name: self.inner.name.clone(),
            message: "`Eq` of this call's key panicked while the batch's output was matched \
                      to its callers"
                .into(),
        });
        let mut copies = Vec::new();
        if extra > 0 && entry.is_ok() {
            // One clone per deduplicated caller, made outside the lock (user
            // `Clone`); callers that join meanwhile clone for themselves.
            drop(st);
            if let Ok(v) = &entry {
                match catching(|| (0..extra).map(|_| v.clone()).collect::<Vec<V>>()) {
                    Ok(c) => copies = c,
                    Err(message) => {
                        entry = Err(Error::Panicked {
                            name: self.inner.name.clone(),
                            message: format!("`Clone` of the value panicked: {message}").into(),
                        });
                    }
                }
            }
            st = lock(&self.batch.st);
            if !matches!(st.phase, Phase::Running) {
                drop(st);
                drop_quietly((entry, copies));
                return true;
            }
        }
        let entries = &mut st.entries;
        let s = &mut entries.slots[slot as usize];
        s.delivered = true;
        s.value = Some(entry);
        s.copies = copies;
        let done = match &mut entries.stream {
            Some(stream) => {
                stream.delivered += 1;
                stream.delivered >= stream.target
            }
            None => false,
        };
        entries.slot_wakers(slot, &mut self.woken);
        drop(st);
        done
    }

    /// The stream starts: the batch indexes its callers by key. False if the
    /// batch no longer runs.
    fn begin(&mut self, stream: EntryStream<K, V, E>) -> bool {
        let mut st = lock(&self.batch.st);
        if !matches!(st.phase, Phase::Running) {
            drop(st);
            drop_quietly(stream);
            return false;
        }
        st.entries.begin_stream(self.target);
        drop(st);
        self.stream = Some(stream);
        self.last = Instant::now();
        true
    }

    /// Whether the idle timeout has passed since the last item (registering
    /// its wake-up if not).
    fn idle_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.inner.config.idle_timeout else {
            return false;
        };
        let deadline = clock::after(self.last, idle);
        if !matches!(&self.idle, Some((d, _)) if *d == deadline) {
            self.idle = Some((deadline, Sleep::until(self.clock, deadline)));
        }
        match &mut self.idle {
            Some((_, sleep)) => sleep.poll(cx).is_ready(),
            None => false,
        }
    }

    /// Ends the stream's part of the run: drops the stream (user code, outside
    /// every lock) and returns what the completion settles the rest with.
    fn finish(&mut self, rest: Delivery<K, V, E>) -> Poll<Delivery<K, V, E>> {
        drop_quietly(self.stream.take());
        self.idle = None;
        Poll::Ready(rest)
    }

    /// Wakes the callers answered since the last call (no lock held).
    fn wake_answered(&mut self) {
        for w in self.woken.drain(..) {
            w.wake();
        }
    }

    /// Runs the batch fn's future, then reads its stream (up to [`BUDGET`]
    /// items), collecting the wakers of the callers it answers.
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Delivery<K, V, E>> {
        if let Some(run) = &mut self.run {
            match run.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Delivery::Streamed(stream)) => {
                    self.run = None;
                    if !self.begin(stream) {
                        return Poll::Ready(nothing_more());
                    }
                }
                Poll::Ready(other) => {
                    self.run = None;
                    if self
                        .split_idle
                        .as_ref()
                        .is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed))
                    {
                        // A half went idle: its keys with no entry fail with
                        // the idle timeout (as a stream's would), the entries
                        // read stand.
                        let mut st = lock(&self.batch.st);
                        if matches!(st.phase, Phase::Running) {
                            st.entries.begin_stream(self.target);
                            if let Some(stream) = &mut st.entries.stream {
                                stream.idle_timed_out = true;
                            }
                        }
                    }
                    return Poll::Ready(other);
                }
            }
        }
        for _ in 0..BUDGET {
            let Some(stream) = &mut self.stream else {
                return Poll::Ready(nothing_more());
            };
            match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok((key, value)))) => {
                    if !self.first_seen {
                        self.first_seen = true;
                        self.inner.rec.first_item(self.started.elapsed());
                    }
                    if self.inner.config.idle_timeout.is_some() {
                        // A clock read per item only when the gap is bounded.
                        self.last = Instant::now();
                    }
                    if self.deliver(key, value) {
                        return self.finish(nothing_more());
                    }
                    if self.woken.len() >= WAKE_EVERY {
                        self.wake_answered();
                    }
                }
                // Fails the keys not delivered yet; the stream is not polled
                // again.
                Poll::Ready(Some(Err(e))) => return self.finish(Delivery::Failed(e)),
                Poll::Ready(None) => return self.finish(nothing_more()),
                Poll::Pending => {
                    if self.idle_passed(cx) {
                        if let Some(stream) = &mut lock(&self.batch.st).entries.stream {
                            stream.idle_timed_out = true;
                        }
                        return self.finish(nothing_more());
                    }
                    return Poll::Pending;
                }
            }
        }
        // A stream with many items ready: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn nothing_more<K: 'static, V: 'static, E: 'static>() -> Delivery<K, V, E> {
    Delivery::Keyed(Box::new(std::iter::empty()))
}

impl<G, K, V, E> Drop for Feed<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// The driver drops the run before it completes the batch (and with no
    /// lock held): the completion counts what this run ignored.
    fn drop(&mut self) {
        // A poll that unwound (the stream panicked) left its answered callers
        // unwoken: wake them now, before the completion.
        self.wake_answered();
        if self.unrequested > 0 {
            if let Some(stream) = &mut lock(&self.batch.st).entries.stream {
                stream.unrequested += self.unrequested;
            }
        }
    }
}

// No field is pinned: the run and the stream are boxed and pinned on their own.
impl<G, K, V, E> Unpin for Feed<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
}

impl<G, K, V, E> Future for Feed<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    type Output = Delivery<K, V, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Delivery<K, V, E>> {
        let this = self.get_mut();
        let out = this.read(cx);
        this.wake_answered();
        out
    }
}
