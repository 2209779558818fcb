//! The caller's side: admission into a group, the wait for the batch's answer,
//! and cancellation.
//!
//! # Implementation details
//!
//! Admission runs under the state lock and calls no user code but `Eq` of the
//! group and of the key (caught; a panic there changes nothing and fails this
//! call alone). Hashes are computed before the lock: a panicking `Hash` fails
//! the call before it is counted anywhere.
//!
//! A waiting caller holds an `Arc<Batch>` and a ticket ([`Waiting`]). Dropping
//! it before the answer is a cancellation: the caller leaves its slot; the last
//! caller of a batch that has not run yet abandons it (takes it out of its
//! group, gives back its lane if it held one, wakes its driver to exit); the
//! last caller of a running batch wakes its driver, which stops the run and
//! gives the lane back. An abandoned batch is never found by a later call, which
//! is what keeps an address identity (`group::Identity::Object`) sound.

use std::future::poll_fn;
use std::hash::Hash;
use std::sync::Arc as StdArc;
use std::task::Poll;

use super::batch::{hash_of, Batch, BatchState, Phase, UserPanic};
use super::clock::Clock;
use super::deliver::{catching, drop_quietly};
use super::driver::Driver;
use super::group::{GroupKey, Identity};
use super::join::{self, Joined, Joiner};
use super::policy::{self, Arrival};
use super::read::Read;
use super::solo::{Ended, Solo, SoloCell, SoloGroup};
use super::sync::{lock, Arc};
use super::{reentry, spawn, Inner, Source};
use crate::error::Error;
use crate::recorder::caller_span;

/// Lost batches a call follows (enqueuing its key again) before it gives up
/// with [`Error::Shutdown`].
const MAX_REQUEUES: u32 = 3;

/// Which group a call is admitted into.
enum Target<G> {
    /// Its own group value, as passed by the caller.
    New(GroupKey<G>),
    /// The group of a batch it was in before (lost).
    Known(StdArc<GroupKey<G>>),
}

/// How a call was admitted.
enum Admitted<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    Alone(Solo<G, K>),
    /// Attached to a lone call's run of an equal key (see `join`).
    Attached {
        joiner: StdArc<Joiner<K, V, E>>,
        cell: StdArc<SoloCell<K, V, E>>,
        group: StdArc<GroupKey<G>>,
    },
    Joined {
        batch: Arc<Batch<Read<G, K, V, E>>>,
        ticket: u32,
        opened: bool,
    },
}

/// An admitted call, with its place in its group's `max_pending_per_group`,
/// or why it was refused.
type Admission<G, K, V, E> = Result<(Admitted<G, K, V, E>, super::GroupSlot), Error<E>>;

/// How a wait ended.
enum Waited<K, V, E> {
    Answered(Result<Option<V>, Error<E>>),
    /// The batch was lost: the key, to enqueue again.
    Lost(K),
}

impl<G, K, V, E> Inner<Read<G, K, V, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// One call, from admission to its answer.
    pub(crate) async fn call<S: Source<G, K, V, E>>(
        self: &StdArc<Self>,
        identity: Identity,
        group: G,
        key: K,
        mut src: S,
    ) -> Result<Option<V>, Error<E>> {
        let target = GroupKey { identity, group };
        let key_hash =
            hash_of(&self.hasher, &key).map_err(|p| self.user_panic("`Hash` of the key", p))?;
        let group_hash = hash_of(&self.hasher, &target)
            .map_err(|p| self.user_panic("`Hash` of the group", p))?;
        let mut target = Target::New(target);
        let mut key = key;
        let mut requeues = 0;
        // Whether the call may wait on a lone call's run: not after that run
        // turned out to fetch another key of the same hash.
        let mut join_solo = true;
        loop {
            // The call's place in its group's bound, held until it ends (or
            // is enqueued again).
            let (admitted, _group_slot) =
                self.admit(target, group_hash, key_hash, key, join_solo, src.streamed())?;
            let (batch, ticket, opened) = match admitted {
                Admitted::Attached {
                    joiner,
                    cell,
                    group,
                } => {
                    // The run must not depend on its first caller being polled.
                    self.promote(vec![cell], &group, group_hash);
                    let mut attached = Attached {
                        inner: self,
                        joiner: &joiner,
                        done: false,
                    };
                    match attached.wait().await {
                        Joined::Answered(result) => {
                            if let Err(e) = &result {
                                self.rec.failed(e);
                            }
                            return result;
                        }
                        Joined::Retry => {
                            drop(attached);
                            key = catching(|| joiner.key.clone()).map_err(|message| {
                                Error::Panicked {
                                    name: self.name.clone(),
                                    message: format!("`Clone` of the key panicked: {message}")
                                        .into(),
                                }
                            })?;
                            target = Target::Known(group);
                            join_solo = false;
                            continue;
                        }
                    }
                }
                Admitted::Alone(solo) => match self.run_alone(solo, &mut src).await {
                    Ended::Done(result) => return result,
                    Ended::Lost(k, group) => {
                        key = k;
                        target = match group {
                            SoloGroup::Own(own) => Target::New(own),
                            SoloGroup::Shared(shared) => Target::Known(shared),
                        };
                        requeues += 1;
                        if requeues > MAX_REQUEUES {
                            return Err(self.shutdown());
                        }
                        continue;
                    }
                },
                Admitted::Joined {
                    batch,
                    ticket,
                    opened,
                } => (batch, ticket, opened),
            };
            let mut waiting = Waiting {
                inner: self,
                batch,
                ticket,
                done: false,
            };
            if opened {
                if let Err(message) = self.start_driver(&waiting.batch, &mut src) {
                    // This call's own user code panicked: it fails alone; the
                    // batch is lost for its other callers, who enqueue again.
                    let batch = waiting.batch.clone();
                    waiting.leave(false);
                    drop(waiting);
                    self.lose(&batch);
                    let err = Error::Panicked {
                        name: self.name.clone(),
                        message: format!("building the batch function panicked (`Clone` of the instance?): {message}").into(),
                    };
                    self.rec.failed(&err);
                    return Err(err);
                }
            }
            match waiting.wait().await {
                Waited::Answered(result) => return result,
                Waited::Lost(k) => {
                    key = k;
                    target = Target::Known(waiting.batch.group.clone());
                    requeues += 1;
                    if requeues > MAX_REQUEUES {
                        return Err(self.shutdown());
                    }
                }
            }
        }
    }

    /// Spawns the driver of a batch this call opened. Fails if the batch
    /// function cannot be built (user code: `Clone` of the instance panicked).
    fn start_driver<S: Source<G, K, V, E>>(
        self: &StdArc<Self>,
        batch: &Arc<Batch<Read<G, K, V, E>>>,
        src: &mut S,
    ) -> Result<(), String> {
        let clock = Clock::detect();
        let maker = catching(|| src.maker())?;
        spawn::spawn(Driver::new(self.clone(), batch.clone(), maker, clock));
        Ok(())
    }

    /// Loses a batch that never got a driver: its callers enqueue again.
    fn lose(self: &StdArc<Self>, batch: &Arc<Batch<Read<G, K, V, E>>>) {
        let unused: super::Maker<G, K, V, E> =
            StdArc::new(|_: &G, _: Vec<K>| -> super::Run<K, V, E> {
                Box::pin(std::future::pending())
            });
        // A driver dropped before it ran loses its batch (see `Driver::drop`).
        drop(Driver::new(
            self.clone(),
            batch.clone(),
            unused,
            Clock::Real,
        ));
    }

    /// Admits a call: joins the open batch of its group, opens one, or takes a
    /// lane to run alone. The call's place in its group's bound comes with it.
    fn admit(
        self: &StdArc<Self>,
        target: Target<G>,
        group_hash: u64,
        key_hash: u64,
        mut key: K,
        join_solo: bool,
        streamed: bool,
    ) -> Admission<G, K, V, E> {
        let config = &self.config;
        let (reentrant, ancestry) = reentry::here(self.id);
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.pending >= config.max_pending {
            drop(guard);
            return Err(self.overloaded());
        }
        // The caller's own group value, if a group equal to it already exists:
        // dropped once the lock is released (user `Drop`).
        let (group, mut spare) = match target {
            Target::New(key) => match state.groups.find_or_insert(group_hash, key) {
                Ok(found) => found,
                Err(p) => {
                    drop(guard);
                    return Err(self.user_panic("`Eq` of the group", p));
                }
            },
            Target::Known(key) => (state.groups.by_key_or_insert(group_hash, &key), None),
        };
        let group_slot = match self.group_slot(group) {
            Ok(slot) => slot,
            Err(e) => {
                drop(guard);
                drop_quietly(spare);
                return Err(e);
            }
        };
        // Work already on its way: a batch of the group that holds the key
        // (full and not yet started, or running).
        if !group.extra.0.is_empty() {
            // A call made inside a batch never waits for a run: that run may be
            // waiting for the call's own batch.
            let join_running = config.join_running && ancestry.is_empty();
            match in_flight_slot(&group.extra, key_hash, &key, join_running) {
                Err(p) => {
                    drop(guard);
                    drop_quietly(spare);
                    return Err(self.user_panic("`Eq` of the key", p));
                }
                Ok(Some((batch, slot, running))) => {
                    let mut st = lock(&batch.st);
                    st.entries.add_waiter(slot);
                    let ticket = st.entries.add_ticket(slot, caller_span());
                    let kick = if running {
                        None
                    } else {
                        st.dedup_hits += 1;
                        self.joined(state, &batch, &mut st, reentrant, &ancestry)
                    };
                    drop(st);
                    state.pending += 1;
                    self.rec.counts(state.in_flight, state.pending);
                    drop(guard);
                    if running {
                        self.rec.joined_running();
                    }
                    self.rec.publish();
                    drop_quietly(spare);
                    drop_quietly(key);
                    if let Some(w) = kick {
                        w.wake();
                    }
                    let joined = Admitted::Joined {
                        batch,
                        ticket,
                        opened: false,
                    };
                    return Ok((joined, group_slot));
                }
                Ok(None) => {}
            }
        }
        // A lone call fetching a key of the same hash: wait for its run (its
        // key's `Eq` is checked when it ends).
        if join_solo && config.join_running && ancestry.is_empty() {
            for cell in &group.solos {
                match join::attach(&cell.joint, key_hash, key) {
                    Ok(joiner) => {
                        let attached = Admitted::Attached {
                            joiner,
                            cell: cell.clone(),
                            group: group.key.clone(),
                        };
                        state.pending += 1;
                        self.rec.counts(state.in_flight, state.pending);
                        drop(guard);
                        self.rec.joined_running();
                        self.rec.publish();
                        drop_quietly(spare);
                        return Ok((attached, group_slot));
                    }
                    Err(k) => key = k,
                }
            }
        }
        group.tuned(config);
        let (dispatch, window) = group.policy(config.dispatch, config.window);
        let mut promote = Vec::new();
        let (batch, opened) = match &group.open {
            Some(b) => (b.clone(), false),
            None => match policy::arrival(dispatch, group.road(self.lanes), window.is_zero()) {
                // A streamed batch is read by a driver: it leaves at once
                // through one (after the calls of the same instant join).
                Arrival::Alone if streamed => (
                    self.open_batch(&mut state.gathering, group, group_hash, true),
                    true,
                ),
                Arrival::Alone => {
                    if let Some(t) = group.tune.as_mut() {
                        if t.alone() {
                            self.rec.tuned(t.view());
                        }
                    }
                    group.lanes_used += 1;
                    let cell = match group.spare.take() {
                        Some(cell) if StdArc::strong_count(&cell) == 1 => {
                            cell.reuse();
                            cell
                        }
                        _ => StdArc::new(SoloCell::new()),
                    };
                    let created = spare.is_none();
                    // The caller's own equal value, when it has one (no reference
                    // count touched on the idle road); `isolate` needs the shared
                    // key.
                    let solo_group = match spare.take() {
                        Some(own) if config.isolate == 0 => SoloGroup::Own(own),
                        other => {
                            spare = other;
                            SoloGroup::Shared(group.key.clone())
                        }
                    };
                    let solo = Solo {
                        group: solo_group,
                        group_addr: StdArc::as_ptr(&group.key) as usize,
                        group_hash,
                        cell: StdArc::as_ptr(&cell) as usize,
                        key,
                        key_hash,
                        ancestry,
                    };
                    group.solos.push(cell);
                    state.in_flight += 1;
                    state.pending += 1;
                    self.rec.counts(state.in_flight, state.pending);
                    if created {
                        state.groups_changed(&self.rec);
                    }
                    drop(guard);
                    self.rec.publish();
                    drop_quietly(spare);
                    return Ok((Admitted::Alone(solo), group_slot));
                }
                Arrival::Open { settle } => {
                    if !group.road(self.lanes).lane_free() {
                        // Calls gather behind busy lanes: demand beyond them.
                        if let Some(t) = group.tune.as_mut() {
                            t.waited();
                        }
                        // Lone calls hold those lanes: their runs go on
                        // without their callers from now on, so that one
                        // alive but not polled cannot hold this batch back
                        // (until its window ends, or forever).
                        if !group.solos.is_empty() {
                            promote = group.solos.clone();
                        }
                    }
                    (
                        self.open_batch(&mut state.gathering, group, group_hash, settle),
                        true,
                    )
                }
            },
        };
        let mut st = lock(&batch.st);
        let (slot, dedup) = match st.entries.slot_for(key_hash, key) {
            Ok(found) => found,
            Err(p) => {
                if opened {
                    // Nobody else has seen the batch: take it back.
                    st.phase = Phase::Abandoned;
                    drop(st);
                    if let Some(g) = state.groups.by_key(group_hash, &batch.group) {
                        g.open = None;
                    }
                    state.gathering -= 1;
                } else {
                    drop(st);
                }
                drop(guard);
                drop_quietly(spare);
                return Err(self.user_panic("`Eq` of the key", p));
            }
        };
        let ticket = st.entries.add_ticket(slot, caller_span());
        if dedup {
            st.dedup_hits += 1;
        }
        let kick = self.joined(state, &batch, &mut st, reentrant, &ancestry);
        drop(st);
        state.pending += 1;
        self.rec.counts(state.in_flight, state.pending);
        if spare.is_none() {
            state.groups_changed(&self.rec);
        }
        drop(guard);
        self.rec.publish();
        drop_quietly(spare);
        if let Some(w) = kick {
            w.wake();
        }
        if !promote.is_empty() {
            self.promote(promote, &batch.group, group_hash);
        }
        Ok((
            Admitted::Joined {
                batch,
                ticket,
                opened,
            },
            group_slot,
        ))
    }

    pub(crate) fn user_panic(&self, what: &str, p: UserPanic) -> Error<E> {
        Error::Panicked {
            name: self.name.clone(),
            message: format!("{what} panicked: {}", p.0).into(),
        }
    }

    fn shutdown(&self) -> Error<E> {
        self.rec.shutdown_error();
        Error::Shutdown {
            name: self.name.clone(),
        }
    }
}

/// A caller attached to a lone call's run; dropping it before the answer is a
/// cancellation.
struct Attached<'a, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    inner: &'a StdArc<Inner<Read<G, K, V, E>>>,
    joiner: &'a Joiner<K, V, E>,
    done: bool,
}

impl<G, K, V, E> Attached<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    async fn wait(&mut self) -> Joined<V, E> {
        let joined = self.joiner.wait().await;
        self.done = true;
        self.count_out();
        joined
    }

    /// The call is no longer pending.
    fn count_out(&self) {
        let mut state = lock(&self.inner.state);
        state.pending -= 1;
        self.inner.rec.counts(state.in_flight, state.pending);
        drop(state);
        self.inner.rec.publish();
    }
}

impl<G, K, V, E> Drop for Attached<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if !self.done {
            let unread = self.joiner.leave();
            self.count_out();
            self.inner.rec.cancelled_call();
            drop_quietly(unread);
        }
    }
}

/// A caller registered in a batch.
struct Waiting<'a, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    inner: &'a StdArc<Inner<Read<G, K, V, E>>>,
    batch: Arc<Batch<Read<G, K, V, E>>>,
    ticket: u32,
    done: bool,
}

impl<G, K, V, E> Waiting<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    async fn wait(&mut self) -> Waited<K, V, E> {
        poll_fn(|cx| {
            let mut st = lock(&self.batch.st);
            let BatchState { phase, entries, .. } = &mut *st;
            let slot = entries.tickets[self.ticket as usize].slot as usize;
            if entries.slots[slot].delivered && !matches!(phase, Phase::Done { .. }) {
                // Streamed: this key's entry came while the batch runs on.
                drop(st);
                return Poll::Ready(Waited::Answered(self.take_early()));
            }
            match phase {
                Phase::Done { failure } => {
                    let result = entries.take(self.ticket, failure.as_ref(), &self.inner.name);
                    self.done = true;
                    drop(st);
                    if let Err(e) = &result {
                        self.inner.rec.failed(e);
                    }
                    Poll::Ready(Waited::Answered(result))
                }
                Phase::Lost | Phase::Abandoned => {
                    // The run was lost (its driver's runtime went away): take
                    // this call's key back to enqueue it again.
                    let slot = entries.tickets[self.ticket as usize].slot;
                    let key = catching(|| entries_key(entries, slot));
                    entries.leave(self.ticket, false);
                    self.done = true;
                    drop(st);
                    Poll::Ready(match key {
                        Ok(Some(k)) => Waited::Lost(k),
                        Ok(None) => Waited::Answered(Err(self.inner.shutdown())),
                        Err(message) => Waited::Answered(Err(Error::Panicked {
                            name: self.inner.name.clone(),
                            message: format!("`Clone` of the key panicked: {message}").into(),
                        })),
                    })
                }
                _ => {
                    entries.register(self.ticket, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// The batch (and slot) of `in_flight` that a call for `key` joins: one not yet
/// started that holds the key, or, if `running` is allowed, one running with it.
/// Returns whether that batch runs.
#[allow(clippy::type_complexity)]
fn in_flight_slot<G, K, V, E>(
    in_flight: &super::read::InFlight<G, K, V, E>,
    hash: u64,
    key: &K,
    running: bool,
) -> Result<Option<(Arc<Batch<Read<G, K, V, E>>>, u32, bool)>, UserPanic>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    for (batch, frozen) in &in_flight.0 {
        if let Some(frozen) = frozen {
            // Running: a look at its keys first, without its lock (most calls
            // miss).
            if !running || !frozen.holds(hash, key)? {
                continue;
            }
        }
        let st = lock(&batch.st);
        let runs = match st.phase {
            Phase::Gathering | Phase::Queued | Phase::Leaving => false,
            Phase::Running if running => true,
            _ => continue,
        };
        if let Some(slot) = st.entries.find(hash, key)? {
            drop(st);
            return Ok(Some((batch.clone(), slot, runs)));
        }
    }
    Ok(None)
}

impl<G, K, V, E> Waiting<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Takes an entry delivered by a stream while its batch still runs (or
    /// after the batch was lost: a delivered value stands), and counts the
    /// caller out of `pending` if the batch's end has not. The last caller
    /// to leave a stream that still owes keys (their callers all left)
    /// stops its run, as a cancellation does (see `leave`).
    fn take_early(&mut self) -> Result<Option<V>, Error<E>> {
        let inner = &**self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        let counted_out = st.phase.is_over();
        let failure = match &st.phase {
            Phase::Done { failure } => failure.clone(),
            _ => None,
        };
        let result = st.entries.take(self.ticket, failure.as_ref(), &inner.name);
        self.done = true;
        let stop = st.entries.callers == 0
            && matches!(st.phase, Phase::Running)
            && st
                .entries
                .stream
                .as_ref()
                .is_some_and(|s| s.delivered < s.target);
        let mut wake = None;
        if stop {
            // Nobody waits for the rest: the driver drops the stream and
            // frees the lane.
            st.phase = Phase::Abandoned;
            wake = st.driver_waker();
        }
        drop(st);
        if stop {
            self.stopped_running(state);
        }
        if !counted_out {
            state.pending -= 1;
        }
        inner.rec.counts(state.in_flight, state.pending);
        drop(guard);
        inner.rec.publish();
        if let Some(w) = wake {
            w.wake();
        }
        if let Err(e) = &result {
            inner.rec.failed(e);
        }
        result
    }
}

/// A clone of the key in `slot` of a lost batch (its keys were put back).
fn entries_key<K: Clone, V, E>(entries: &super::read::Entries<K, V, E>, slot: u32) -> Option<K> {
    entries.key(slot).cloned()
}

impl<G, K, V, E> Drop for Waiting<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A cancellation (the caller dropped its future before the answer).
    fn drop(&mut self) {
        if !self.done {
            self.leave(true);
        }
    }
}

impl<G, K, V, E> Waiting<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// This caller was the last of a running batch, now `Abandoned`: the
    /// batch takes no more joiners and counts as cancelled (its driver stops
    /// the run and gives the lane back). Under the state lock.
    fn stopped_running(&self, state: &mut super::State<Read<G, K, V, E>>) {
        if let Some(g) = state
            .groups
            .by_key(self.batch.group_hash, &self.batch.group)
        {
            g.forget(&self.batch);
        }
        self.inner.rec.cancelled_batch();
    }

    /// Leaves the batch before its answer: a cancellation, or a call that failed
    /// on its own.
    fn leave(&mut self, cancelled: bool) {
        self.done = true;
        let inner = &**self.inner;
        if cancelled {
            inner.rec.cancelled_call();
        }
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        if st.phase.is_over() {
            // Answered already (and no longer pending): the entry stays unread.
            st.entries.leave(self.ticket, false);
            return;
        }
        let before_run = st.phase.is_before_run();
        let held_lane = matches!(st.phase, Phase::Leaving);
        let (_, key_left) = st.entries.leave(self.ticket, before_run);
        state.pending -= 1;
        let mut wake = None;
        let mut garbage_keys = Vec::new();
        let mut lane = (None, None);
        if st.entries.callers == 0 {
            // Nobody wants this batch any more.
            let abandoned_keys = st.entries.key_count() as u64;
            let admitted = st.admitted;
            st.phase = Phase::Abandoned;
            wake = st.driver_waker();
            drop(st);
            if before_run {
                if let Some(g) = state
                    .groups
                    .by_key(self.batch.group_hash, &self.batch.group)
                {
                    if g.withdraw(&self.batch) {
                        state.gathering -= 1;
                    }
                }
                if held_lane {
                    lane = inner.release_lane(state, &self.batch.group, self.batch.group_hash);
                }
                inner.rec.abandoned_batch(admitted, abandoned_keys);
            } else {
                self.stopped_running(state);
            }
        } else {
            if before_run && key_left && st.entries.worth_compacting() {
                garbage_keys = st.entries.compact();
                inner.rec.abandoned_keys(garbage_keys.len() as u64);
            }
            drop(st);
        }
        inner.rec.counts(state.in_flight, state.pending);
        drop(guard);
        inner.rec.publish();
        if let Some(w) = wake {
            w.wake();
        }
        if let Some(w) = lane.0 {
            w.wake();
        }
        drop(lane.1);
        drop_quietly(garbage_keys);
    }
}
