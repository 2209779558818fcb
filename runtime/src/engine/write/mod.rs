//! Write coalescing: many concurrent single-key writes become one batch of net
//! writes per key, and each writer is answered after the commit that carries
//! its write.
//!
//! The shared machinery (groups, lanes, windows, drivers, timeouts, panics,
//! re-entrancy) is the read path's; what differs is the mode ([`mode`]: per-key
//! folding, per-key order, answers after commit) and the caller's side (here: a
//! writer waits on its key's acknowledgement, and leaving does not withdraw
//! its write).

pub(crate) mod entries;
pub(crate) mod mode;

use std::any::TypeId;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::hash::Hash;
use std::sync::{Arc as StdArc, Mutex as StdMutex, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use self::entries::{Ack, Folded, Merge};
use self::mode::{Answering, Write, WriteMaker, WriteSettings};
use super::batch::hash_of;
use super::clock::{Clock, Sleep};
use super::deliver::{catching, drop_quietly};
use super::driver::Driver;
use super::group::{GroupKey, Identity};
use super::policy::{self, Arrival};
use super::sync::lock;
use super::{reentry, spawn, Inner};
use crate::config::Config;
use crate::error::{Error, Unsure};
use crate::metrics::MetricsSnapshot;
use crate::output::WriteOutput;

/// The engine behind every coalesced write: many concurrent single-key writes
/// become one batch call per group, with one net value per key.
///
/// Writes to one key inside a batch fold into one entry: the last write wins,
/// or a merge fn folds them ([`WriteCore::with_merge`]). Each writer resolves
/// `Ok` only after the batch that carries its write (or the later write of its
/// key that absorbed it) has committed. At most one write per key is in flight
/// in a group: a key whose previous write still runs waits for it, while other
/// keys go ahead, so a key's writes commit in call order whatever
/// `max_in_flight` is. A writer that drops its future does not withdraw its
/// write. Failures are shared by every writer of the batch and are never
/// retried.
///
/// ```
/// # use coalesce_runtime as coalesce;
/// use coalesce::{Config, WriteCore};
/// use std::sync::{Arc, Mutex};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// static TOTALS: std::sync::LazyLock<WriteCore<(), &'static str, u64>> =
///     std::sync::LazyLock::new(|| {
///         WriteCore::with_merge(Config::new("totals"), |sum: &mut u64, n| *sum += n)
///     });
/// static TABLE: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());
///
/// async fn upsert(rows: Vec<(&'static str, u64)>) {
///     TABLE.lock().unwrap().extend(rows); // one statement for the batch
/// }
///
/// let (a, b, c) = tokio::join!(
///     TOTALS.save((), "a", 1, |_, rows| upsert(rows)),
///     TOTALS.save((), "b", 5, |_, rows| upsert(rows)),
///     TOTALS.save((), "a", 20, |_, rows| upsert(rows)),
/// );
/// assert!(a.is_ok() && b.is_ok() && c.is_ok());
/// let mut table = TABLE.lock().unwrap().clone();
/// table.sort();
/// assert_eq!(table, [("a", 21), ("b", 5)]);
/// assert_eq!(TOTALS.metrics().batches, 1);
/// # }
/// ```
pub struct WriteCore<G, K, W, E = Infallible>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    inner: StdArc<Inner<Write<G, K, W, E>>>,
}

/// What a [`WriteCore::flush`] waited for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Flushed {
    /// Net writes (keys of batches) that were pending when the flush began.
    pub keys: usize,
    /// Of those, the ones that failed (their writers got an error).
    pub failed: usize,
}

/// What a [`WriteCore::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Net writes (keys) committed or failed by their batch before the deadline.
    pub settled: usize,
    /// Net writes not yet sent at the deadline, failed with [`Error::Drained`].
    pub dropped: usize,
    /// Net writes running at the deadline, failed with
    /// [`Error::MaybeCommitted`] (their batch may still commit).
    pub unsure: usize,
}

impl<G, K, W, E> WriteCore<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    /// A write coalescer where the last write to a key in a batch wins.
    /// `config.isolate` is ignored (see [`WriteCore::isolating`]).
    pub fn new(config: Config) -> Self {
        Self::make(config.isolate(0), None, None)
    }

    /// As [`WriteCore::new`], with `config.isolate` applied: a failed batch is
    /// split in halves and each half written again, down to the writes that
    /// fail on their own (which get the error as their own). Re-sending a
    /// last-write-wins batch is harmless: a half that had committed commits
    /// the same values again. Needs `W: Clone` to re-send.
    pub fn isolating(config: Config) -> Self
    where
        W: Clone,
    {
        Self::isolating_by(config, W::clone)
    }

    /// [`WriteCore::isolating`], with the values copied by `copy` (for the
    /// `#[coalesce]` expansion, which cannot name `W: Clone` as a bound).
    #[doc(hidden)]
    pub fn isolating_by(config: Config, copy: fn(&W) -> W) -> Self {
        Self::make(config, None, Some(copy))
    }

    /// A write coalescer that folds the writes to a key in a batch with
    /// `merge(&mut earlier, later)`: counters that add, patches that merge,
    /// deletes that the merge handles as values. `config.isolate` is ignored
    /// (re-applying a folded batch would apply its increments twice).
    pub fn with_merge(config: Config, merge: impl Fn(&mut W, W) + Send + Sync + 'static) -> Self {
        let merge: Merge<W> = StdArc::new(merge);
        Self::make(config.isolate(0), Some(merge), None)
    }

    fn make(config: Config, merge: Option<Merge<W>>, isolate: Option<fn(&W) -> W>) -> Self {
        let settings = WriteSettings {
            merge,
            isolate,
            types: std::marker::PhantomData,
        };
        let inner = StdArc::new(Inner::new(config, settings));
        let erased: StdArc<dyn Flush> = inner.clone();
        register(StdArc::downgrade(&erased));
        WriteCore { inner }
    }

    /// The configuration this coalescer runs with (after [`configure`](crate::configure)).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This coalescer's metrics, read now. For writes, `calls` counts writes,
    /// `dedup_hits` the writes absorbed by a later write (or folded into an
    /// earlier one) of the same key, `keys` the net writes sent, `batches` the
    /// batches run (flushes).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.snapshot()
    }

    /// Writes `value` to `key` through the batch of `group`.
    ///
    /// Resolves `Ok(())` once the batch carrying the write (or a later write
    /// of the key that absorbed it) has committed, or to an [`Error`]. If this
    /// call opens the batch, `batch` becomes its batch function; otherwise it is
    /// dropped unused. Once the first poll has accepted the write, dropping the
    /// future does not withdraw it.
    pub fn save<F, Fut>(
        &self,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + '_
    where
        F: Fn(&G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        self.inner
            .save(Identity::Shared, group, key, value, move || maker(batch))
    }

    /// Writes through the batch of `group` *for the object `this`*: writes
    /// through the same object coalesce; the batch runs with a clone of the
    /// opener's object. See [`Core::load_for`](crate::Core::load_for).
    pub fn save_for<'a, S, F, Fut>(
        &'a self,
        this: &'a S,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        let identity = Identity::Object {
            ty: TypeId::of::<S>(),
            addr: this as *const S as usize,
        };
        self.inner.save(identity, group, key, value, move || {
            object_maker(this, batch)
        })
    }

    /// Writes through the batch of `group`, with `this` as the instance the
    /// batch runs with, whatever object the write comes through. See
    /// [`Core::load_with`](crate::Core::load_with).
    pub fn save_with<'a, S, F, Fut>(
        &'a self,
        this: &'a S,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        self.inner
            .save(Identity::Shared, group, key, value, move || {
                object_maker(this, batch)
            })
    }

    /// Writes through the batch of `group` for the object behind `this`. See
    /// [`Core::load_for_arc`](crate::Core::load_for_arc).
    pub fn save_for_arc<'a, T, F, Fut>(
        &'a self,
        this: &'a StdArc<T>,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + 'a
    where
        T: ?Sized + Send + Sync + 'static,
        F: Fn(StdArc<T>, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        let identity = Identity::Object {
            ty: TypeId::of::<T>(),
            addr: StdArc::as_ptr(this) as *const () as usize,
        };
        self.inner.save(identity, group, key, value, move || {
            object_maker(this, batch)
        })
    }

    /// Sends every batch now and waits until everything accepted before this
    /// call has been answered (committed or failed).
    pub fn flush(&self) -> impl Future<Output = Flushed> + Send + '_ {
        self.inner.flush()
    }

    /// Graceful shutdown: as [`WriteCore::flush`], but at `deadline` every
    /// write not yet answered fails: [`Error::Drained`] if it was not sent yet
    /// (it will not be), [`Error::MaybeCommitted`] if its batch was running.
    /// Writes made after the drain begins are accepted as usual: stop writing
    /// first.
    pub fn drain(&self, deadline: Duration) -> impl Future<Output = Drained> + Send + '_ {
        self.inner.drain(deadline)
    }

    /// Waits until the writes to `key` accepted so far (in any group) are
    /// answered: a read that must see them calls this first (what
    /// `#[coalesce(after_writes = …)]` does). Keys are told apart by hash, so
    /// a key whose hash collides with a pending one may wait for it too.
    pub fn settled(&self, key: &K) -> impl Future<Output = ()> + Send + 'static {
        let acks = match hash_of(&self.inner.hasher, key) {
            Ok(hash) => lock(&self.inner.state).extra.of_hash(hash),
            Err(_) => Vec::new(),
        };
        async move {
            for ack in acks {
                wait_ack(&ack).await;
            }
        }
    }
}

/// A run's output that is never produced: the run panics with `message`
/// (caught by the driver, which fails the batch with it).
fn fail_with<O>(message: String) -> O {
    panic!("{message}")
}

/// Waits for `ack` to be resolved, ignoring its result.
async fn wait_ack<E>(ack: &Ack<E>) {
    let mut pos = None;
    let _ = poll_fn(|cx| ack.poll(cx, &mut pos)).await;
}

fn maker<G, K, W, E, F, Fut>(f: F) -> WriteMaker<G, K, W, E>
where
    F: Fn(&G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: WriteOutput<K, Error = E>,
{
    StdArc::new(move |g: &G, items: Vec<(K, W)>| {
        let fut = f(g, items);
        Box::pin(async move { fut.await.into_delivery() })
    })
}

fn object_maker<S, G, K, W, E, F, Fut>(this: &S, f: F) -> WriteMaker<G, K, W, E>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: WriteOutput<K, Error = E>,
{
    // The batch owns its instance: a clone of the opener's.
    let this = this.clone();
    StdArc::new(move |g: &G, items: Vec<(K, W)>| {
        let fut = f(this.clone(), g, items);
        Box::pin(async move { fut.await.into_delivery() })
    })
}

impl<G, K, W, E> Inner<Write<G, K, W, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    /// One write, from admission to its acknowledgement.
    async fn save(
        self: &StdArc<Self>,
        identity: Identity,
        group: G,
        key: K,
        value: W,
        make: impl FnOnce() -> WriteMaker<G, K, W, E>,
    ) -> Result<(), Error<E>> {
        let target = GroupKey { identity, group };
        let key_hash =
            hash_of(&self.hasher, &key).map_err(|p| self.write_panic("`Hash` of the key", p.0))?;
        let group_hash = hash_of(&self.hasher, &target)
            .map_err(|p| self.write_panic("`Hash` of the group", p.0))?;
        let accepted = Instant::now();
        let object = matches!(target.identity, Identity::Object { .. });
        let (mut target, mut key, mut value) = (target, key, value);
        let (ack, opened, group) = loop {
            match self.admit(target, group_hash, key_hash, key, value)? {
                Admission::Accepted { ack, opened, group } => break (ack, opened, group),
                Admission::Wait {
                    acks,
                    target: t,
                    key: k,
                    value: v,
                } => {
                    // The object's group is tainted (see `WriteGroup::tainted`):
                    // everything accepted so far is answered first.
                    for ack in &acks {
                        wait_ack(ack).await;
                    }
                    drop_quietly(acks);
                    (target, key, value) = (t, k, v);
                }
            }
        };
        if let Some(batch) = opened {
            // A panic building the batch function (`Clone` of the instance)
            // fails this batch's writers, through a run that reports it.
            let maker = catching(make).unwrap_or_else(|message| {
                let message = format!(
                    "building the batch function panicked (`Clone` of the instance?): {message}"
                );
                StdArc::new(move |_: &G, _: Vec<(K, W)>| {
                    let message = message.clone();
                    Box::pin(async move { fail_with(message) }) as super::mode::RunOf<_>
                })
            });
            spawn::spawn(Driver::new(self.clone(), batch, maker, Clock::detect()));
        }
        let mut writer = Writer {
            inner: self,
            ack,
            pos: None,
            done: false,
            group: object.then_some((group_hash, group)),
        };
        let result = poll_fn(|cx| writer.poll(cx)).await;
        self.rec.ack_time(accepted.elapsed());
        // A failure is counted where it is given, once per writer, whether
        // or not the writer stayed to read it (see `Answering::count`).
        result
    }

    /// Admits a write: folds it into its group's open batch, or opens one
    /// (returned, for its driver to be started).
    #[allow(clippy::type_complexity)]
    fn admit(
        self: &StdArc<Self>,
        target: GroupKey<G>,
        group_hash: u64,
        key_hash: u64,
        key: K,
        value: W,
    ) -> Result<Admission<G, K, W, E>, Error<E>> {
        let config = &self.config;
        let (reentrant, ancestry) = reentry::here(self.id);
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.pending >= config.max_pending {
            drop(guard);
            drop_quietly((target, key, value));
            return Err(self.overloaded());
        }
        let (group, spare) = match state.groups.find_or_insert(group_hash, target) {
            Ok(found) => found,
            Err(p) => {
                drop(guard);
                drop_quietly((key, value));
                return Err(self.write_panic("`Eq` of the group", p.0));
            }
        };
        let created = spare.is_none();
        if group.extra.tainted {
            if group.idle() {
                group.extra.tainted = false;
            } else if let Some(target) = spare {
                // Its earlier writes go first (and the open batch now).
                let kick = group.open.as_ref().and_then(|open| {
                    let mut st = lock(&open.st);
                    st.kicked = true;
                    st.driver_waker()
                });
                let acks = state.extra.all();
                drop(guard);
                if let Some(w) = kick {
                    w.wake();
                }
                return Ok(Admission::Wait {
                    acks,
                    target,
                    key,
                    value,
                });
            }
        }
        let group_addr = StdArc::as_ptr(&group.key) as usize;
        // The writer's place in its group's bound: its ack gives it back.
        let group_pending = match self.group_slot(group) {
            Ok(slot) => slot.hand_over(),
            Err(e) => {
                drop(guard);
                drop_quietly((key, value, spare));
                return Err(e);
            }
        };
        let give_back = |c: &Option<StdArc<std::sync::atomic::AtomicUsize>>| {
            if let Some(c) = c {
                c.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let merge = self.settings.merge.as_ref();
        // A key not yet sent lives in one batch: a later write folds there.
        let (key, value) = match group.extra.placed(key_hash, &key) {
            Err(p) => {
                give_back(&group_pending);
                drop(guard);
                drop_quietly((key, value, spare));
                return Err(self.write_panic("`Eq` of the key", p.0));
            }
            Ok(None) => (key, value),
            Ok(Some(batch)) => {
                let mut st = lock(&batch.st);
                match st.entries.fold_existing(key_hash, key, value, merge) {
                    Folded::Done(wrote) => {
                        st.dedup_hits += 1;
                        let kick = self.joined(state, &batch, &mut st, reentrant, &ancestry);
                        drop(st);
                        state.pending += 1;
                        self.rec.counts(state.in_flight, state.pending);
                        drop(guard);
                        self.rec.publish();
                        drop_quietly((spare, wrote.garbage));
                        if let Some(w) = kick {
                            w.wake();
                        }
                        return Ok(Admission::Accepted {
                            ack: wrote.ack,
                            opened: None,
                            group: group_addr,
                        });
                    }
                    // Unreachable (`placed` found the key under the same locks).
                    Folded::Absent(key, value) => (key, value),
                    Folded::Panicked(p, key, value) => {
                        give_back(&group_pending);
                        drop(st);
                        drop(guard);
                        drop_quietly((key, value, spare));
                        return Err(self.write_panic("`Eq` of the key", p.0));
                    }
                }
            }
        };
        group.tuned(config);
        let (dispatch, window) = group.policy(config.dispatch, config.window);
        let (batch, opened) = match &group.open {
            Some(b) => (b.clone(), false),
            None => {
                let settle =
                    match policy::arrival(dispatch, group.road(self.lanes), window.is_zero()) {
                        // No lone runs for writes: an empty adaptive road sends the
                        // calls of this instant together.
                        Arrival::Alone => true,
                        Arrival::Open { settle } => settle,
                    };
                (
                    self.open_batch(&mut state.gathering, group, group_hash, settle),
                    true,
                )
            }
        };
        let mut st = lock(&batch.st);
        let wrote = match st
            .entries
            .write(key_hash, key, value, merge, group_pending.clone())
        {
            Ok(w) => w,
            Err(p) => {
                give_back(&group_pending);
                if opened {
                    // Nobody else has seen the batch: take it back.
                    drop(st);
                    if let Some(g) = state.groups.by_key(group_hash, &batch.group) {
                        g.open = None;
                    }
                    state.gathering -= 1;
                } else {
                    drop(st);
                }
                drop(guard);
                drop(spare);
                return Err(self.write_panic("`Eq` of the key", p.0));
            }
        };
        if wrote.new {
            state.extra.insert(wrote.ack.clone());
            if let Some(g) = state.groups.by_key(group_hash, &batch.group) {
                g.extra.place(key_hash, st.entries.id, &batch);
            }
        } else {
            st.dedup_hits += 1;
        }
        let kick = self.joined(state, &batch, &mut st, reentrant, &ancestry);
        drop(st);
        state.pending += 1;
        self.rec.counts(state.in_flight, state.pending);
        if created {
            state.groups_changed(&self.rec);
        }
        drop(guard);
        self.rec.publish();
        drop_quietly((spare, wrote.garbage));
        if let Some(w) = kick {
            w.wake();
        }
        Ok(Admission::Accepted {
            ack: wrote.ack,
            opened: opened.then_some(batch),
            group: group_addr,
        })
    }

    fn write_panic(&self, what: &str, message: String) -> Error<E> {
        let err = Error::Panicked {
            name: self.name.clone(),
            message: format!("{what} panicked: {message}").into(),
        };
        self.rec.failed(&err);
        err
    }

    /// Sends every open batch now; returns the acknowledgements pending.
    fn kick_all(&self) -> Vec<StdArc<Ack<E>>> {
        // The acks first: everything accepted before the flush is in them.
        let acks = lock(&self.state).extra.all();
        self.kick_open().1.into_iter().for_each(|w| w.wake());
        acks
    }

    async fn flush(&self) -> Flushed {
        let acks = self.kick_all();
        let mut failed = 0;
        for ack in &acks {
            let mut pos = None;
            if poll_fn(|cx| ack.poll(cx, &mut pos)).await.is_err() {
                failed += 1;
            }
        }
        Flushed {
            keys: acks.len(),
            failed,
        }
    }

    async fn drain(&self, deadline: Duration) -> Drained {
        let acks = self.kick_all();
        let clock = Clock::detect();
        let mut sleep = Sleep::new(clock, deadline);
        let mut next = 0;
        let in_time = poll_fn(|cx| {
            while next < acks.len() {
                let mut pos = None;
                match acks[next].poll(cx, &mut pos) {
                    Poll::Ready(_) => next += 1,
                    Poll::Pending => {
                        return match sleep.poll(cx) {
                            Poll::Ready(()) => Poll::Ready(false),
                            Poll::Pending => Poll::Pending,
                        }
                    }
                }
            }
            Poll::Ready(true)
        })
        .await;
        if in_time {
            return Drained {
                settled: acks.len(),
                ..Drained::default()
            };
        }
        // Answered by the deadline, of the writes accepted before the drain
        // (those accepted since, which the drain fails too, are not in
        // `acks`: subtracting the failures from its length miscounted).
        let settled = acks.iter().filter(|a| a.is_resolved()).count();
        let (dropped, unsure, garbage) = self.fail_pending();
        drop_quietly(garbage);
        Drained {
            settled,
            dropped,
            unsure,
        }
    }

    /// A drain's deadline: fails every write not answered yet. Writes not sent
    /// are taken out of their batches; running ones may still commit.
    #[allow(clippy::type_complexity)]
    fn fail_pending(&self) -> (usize, usize, Vec<(K, Option<W>)>) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let mut out = Answering::default();
        let mut garbage = Vec::new();
        let mut dropped = 0;
        let drained = || Error::Drained {
            name: self.name.clone(),
        };
        let super::State { groups, extra, .. } = state;
        for group in groups.iter_mut() {
            let mut batches: Vec<_> = group
                .open
                .iter()
                .chain(group.queue.iter())
                .cloned()
                .collect();
            for b in group.extra.unsent() {
                if !batches.iter().any(|x| super::sync::Arc::ptr_eq(x, &b)) {
                    batches.push(b);
                }
            }
            for batch in &batches {
                let mut st = lock(&batch.st);
                if !st.phase.is_before_run() {
                    continue;
                }
                for slot in st.entries.take_all() {
                    out.answer(extra, &slot.acks, Err(drained()));
                    dropped += 1;
                    garbage.push((slot.key, slot.value));
                }
            }
            group.extra.unplace_emptied();
            for slot in group.extra.take_held() {
                out.answer(extra, &slot.acks, Err(drained()));
                dropped += 1;
                garbage.push((slot.key, slot.value));
            }
        }
        // What is left runs now (or is about to: a batch leaving for its lane
        // keeps its writes, which may commit).
        let running = extra.all();
        let unsure = running.len();
        for ack in running {
            out.answer(
                extra,
                std::slice::from_ref(&ack),
                Err(Error::MaybeCommitted {
                    name: self.name.clone(),
                    why: Unsure::Drained,
                }),
            );
        }
        state.pending -= out.writers;
        self.rec.counts(state.in_flight, state.pending);
        drop(guard);
        self.rec.publish();
        out.count(&self.rec);
        out.wakers.into_iter().for_each(|w| w.wake());
        (dropped, unsure, garbage)
    }
}

/// A writer waiting for its acknowledgement.
struct Writer<'a, G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    inner: &'a StdArc<Inner<Write<G, K, W, E>>>,
    ack: StdArc<Ack<E>>,
    pos: Option<usize>,
    done: bool,
    /// For a write through an object (`save_for`): its group (hash, and the
    /// address of its key), tainted if the writer leaves before its answer.
    group: Option<(u64, usize)>,
}

/// How an admission went.
enum Admission<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    /// The write is in a batch: its ack, the batch it opened (for its driver
    /// to be started), and its group (the address of its key).
    Accepted {
        ack: StdArc<Ack<E>>,
        opened: Option<self::mode::WriteBatch<G, K, W, E>>,
        group: usize,
    },
    /// Its object's group is tainted and busy: wait for these, then again.
    Wait {
        acks: Vec<StdArc<Ack<E>>>,
        target: GroupKey<G>,
        key: K,
        value: W,
    },
}

impl<G, K, W, E> Writer<'_, G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Error<E>>> {
        let polled = self.ack.poll(cx, &mut self.pos);
        if polled.is_ready() {
            self.done = true;
        }
        polled
    }
}

impl<G, K, W, E> Drop for Writer<'_, G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    /// The writer left before its answer: the write stays (and is counted).
    /// Through an object, its group is tainted: the object may go now.
    fn drop(&mut self) {
        if !self.done && !self.ack.is_resolved() {
            self.inner.rec.withdrawn();
            if let Some((hash, addr)) = self.group {
                if let Some(g) = lock(&self.inner.state).groups.by_addr(hash, addr) {
                    g.extra.tainted = true;
                }
            }
        }
    }
}

/// What `flush_all` and `drain_all` reach of a write coalescer.
trait Flush: Send + Sync {
    fn name(&self) -> &str;
    fn flush_erased(&self) -> std::pin::Pin<Box<dyn Future<Output = Flushed> + Send + '_>>;
    fn drain_erased(
        &self,
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Drained> + Send + '_>>;
}

impl<G, K, W, E> Flush for Inner<Write<G, K, W, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn flush_erased(&self) -> std::pin::Pin<Box<dyn Future<Output = Flushed> + Send + '_>> {
        Box::pin(self.flush())
    }
    fn drain_erased(
        &self,
        deadline: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Drained> + Send + '_>> {
        Box::pin(self.drain(deadline))
    }
}

/// Every live write coalescer, for `flush_all` and `drain_all`.
static WRITERS: StdMutex<Vec<Weak<dyn Flush>>> = StdMutex::new(Vec::new());

fn register(writer: Weak<dyn Flush>) {
    let mut all = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
    if all.len() >= 64 && all.len().is_power_of_two() {
        // Amortised O(1): dead entries are swept when the list doubles.
        all.retain(|w| w.strong_count() > 0);
    }
    all.push(writer);
}

fn live_writers() -> Vec<StdArc<dyn Flush>> {
    WRITERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}

/// Flushes every write coalescer in the process (see [`WriteCore::flush`]);
/// returns the sum of their reports.
pub async fn flush_all() -> Flushed {
    flush_where(|_| true).await
}

/// Flushes the write coalescers named `name` (a `#[coalesce]` write fn's, by
/// its name in metrics: `module::path::fn`, or what `name = "…"` says).
pub async fn flush(name: &str) -> Flushed {
    flush_where(|n| n == name).await
}

async fn flush_where(pick: impl Fn(&str) -> bool) -> Flushed {
    let mut total = Flushed::default();
    for w in live_writers().into_iter().filter(|w| pick(w.name())) {
        let f = w.flush_erased().await;
        total.keys += f.keys;
        total.failed += f.failed;
    }
    total
}

/// Drains every write coalescer in the process, all against one `deadline`
/// (see [`WriteCore::drain`]); returns the sum of their reports.
pub async fn drain_all(deadline: Duration) -> Drained {
    drain_where(deadline, |_| true).await
}

/// Drains the write coalescers named `name` (a `#[coalesce]` write fn's, by its
/// name in metrics), against `deadline` (see [`WriteCore::drain`]).
pub async fn drain(name: &str, deadline: Duration) -> Drained {
    drain_where(deadline, |n| n == name).await
}

async fn drain_where(deadline: Duration, pick: impl Fn(&str) -> bool) -> Drained {
    let writers: Vec<_> = live_writers()
        .into_iter()
        .filter(|w| pick(w.name()))
        .collect();
    let drains = writers.iter().map(|w| w.drain_erased(deadline));
    let mut total = Drained::default();
    for d in futures_util::future::join_all(drains).await {
        total.settled += d.settled;
        total.dropped += d.dropped;
        total.unsure += d.unsure;
    }
    total
}
