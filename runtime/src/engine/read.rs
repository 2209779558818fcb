//! Reads: a batch carries keys, each with a slot for its entry and the tickets of
//! the callers waiting for it; the batch function gets the keys and returns
//! entries (a map, an ordered `Vec`, one `Result` per key); a batch nobody waits
//! for any more is stopped.
//!
//! # Implementation details
//!
//! Callers hold an `Arc<Batch>` and a ticket. Keys have a slot each (dedup by
//! hash and `Eq`, hashes kept so that the index never calls user `Hash` again).
//! At `freeze` the keys move out to the driver ([`Frozen`]), which clones them
//! for the batch function and matches its entries to slots outside every lock;
//! at `complete` each slot gets its entry (and one clone per extra waiter, made
//! outside the locks) and each caller is woken once. A lost batch puts its keys
//! back, so that its callers can enqueue them again.

use std::hash::Hash;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc as StdArc;
use std::task::Waker;

use hashbrown::HashTable;

use super::DefaultHashBuilder;

use super::batch::{hash_of, panic_message, Batch, BatchState, Phase, UserPanic};
use super::deliver::{self, catching, drop_quietly, Lookup, Outcome, Settled};
use super::group::{Group, GroupKey};
use super::mode::{Completed, Freeze, Lost, Mode, RunOf};
use super::solo::SoloCell;
use super::sync::{lock, Arc};
use super::{Inner, Maker, State};
use crate::error::Error;
use crate::output::Delivery;
use crate::recorder::CallerSpan;

/// The read mode: a `Core<G, K, V, E>` coalesces loads of `K` into batches
/// that return `V` or fail with `E`.
pub(crate) struct Read<G, K, V, E>(PhantomData<Types<G, K, V, E>>);

/// The types a `Read` mode is generic over, invariant and `Send + Sync`.
type Types<G, K, V, E> = fn() -> (G, K, V, E);

/// What a read batch's driver holds while it runs.
pub(crate) struct ReadFrozen<K> {
    /// Shared with the batch ([`Entries::running`]): calls for these keys join
    /// the run while it lasts.
    keys: StdArc<Frozen<K>>,
    /// Slots whose key's `Clone` panicked: their callers fail alone.
    failed: Vec<(u32, String)>,
}

impl<G, K, V, E> Mode for Read<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    type G = G;
    type E = E;
    type Entries = Entries<K, V, E>;
    type Solo = SoloCell<K, V, E>;
    type GroupExtra = InFlight<G, K, V, E>;
    type Settings = ();
    type Shared = ();
    type Maker = Maker<G, K, V, E>;
    type Frozen = ReadFrozen<K>;
    type Output = Delivery<K, V, E>;
    const ABANDONS: bool = true;

    fn entries(capacity: usize) -> Self::Entries {
        Entries::with_capacity(capacity)
    }

    fn live_keys(entries: &Self::Entries) -> usize {
        entries.live_keys
    }

    fn idle(extra: &Self::GroupExtra) -> bool {
        extra.0.is_empty()
    }

    fn keep(extra: &mut Self::GroupExtra, batch: &Arc<Batch<Self>>) {
        if !extra.0.iter().any(|(b, _)| Arc::ptr_eq(b, batch)) {
            extra.0.push((batch.clone(), None));
        }
    }

    fn forget(extra: &mut Self::GroupExtra, batch: &Batch<Self>) {
        extra.0.retain(|(b, _)| !std::ptr::eq(&**b, batch));
    }

    fn freeze(
        inner: &Inner<Self>,
        batch: &Arc<Batch<Self>>,
        st: &mut BatchState<Self>,
        group: &mut Group<Self>,
    ) -> Freeze<Self> {
        let abandoned = (st.entries.key_count() - st.entries.live_keys) as u64;
        let keys = st.entries.freeze();
        // Calls probe the running keys without the batch's lock (see `InFlight`).
        for (b, frozen) in &mut group.extra.0 {
            if Arc::ptr_eq(b, batch) {
                *frozen = Some(keys.clone());
            }
        }
        Freeze {
            counts: (st.admitted, keys.dispatched(), st.dedup_hits, abandoned),
            callers: inner.rec.caller_spans(&st.entries.tickets),
            frozen: ReadFrozen {
                keys,
                failed: Vec::new(),
            },
        }
    }

    fn make(
        inner: &StdArc<Inner<Self>>,
        batch: &Arc<Batch<Self>>,
        maker: &Self::Maker,
        group: &StdArc<GroupKey<G>>,
        frozen: &mut Self::Frozen,
    ) -> RunOf<Self::Output> {
        let (keys, failed) = frozen.keys.clone_keys();
        let target = frozen.keys.dispatched() - failed.len();
        let unsent: Vec<u32> = failed.iter().map(|(slot, _)| *slot).collect();
        frozen.failed = failed;
        if target == 0 {
            // Every key's `Clone` panicked: nothing to send. The batch fn is
            // not called with no keys (a stream would owe nothing and might
            // never end), and each caller gets its key's failure.
            drop_quietly(keys);
            return Box::pin(std::future::ready(Delivery::Keyed(Box::new(
                std::iter::empty(),
            ))));
        }
        // Halves of a split batch that stream are read by `isolate`, under
        // the idle timeout too; one that went idle says so here.
        let idle = match inner.config.idle_timeout {
            Some(after) if inner.config.isolate > 0 => Some(crate::isolate::Idle {
                after,
                clock: super::clock::Clock::detect(),
                timed_out: StdArc::new(std::sync::atomic::AtomicBool::new(false)),
            }),
            _ => None,
        };
        let split_idle = idle.as_ref().map(|i| i.timed_out.clone());
        let run = inner.start_run(maker.clone(), group.clone(), keys, idle);
        // A run that returns a stream is read here, item by item, as the
        // driver polls it (see `stream::Feed`).
        Box::pin(super::stream::Feed::new(
            inner.clone(),
            batch.clone(),
            frozen.keys.clone(),
            unsent,
            target,
            run,
            split_idle,
        ))
    }

    fn complete(
        inner: &Inner<Self>,
        batch: &Batch<Self>,
        frozen: Self::Frozen,
        outcome: Outcome<Self::Output>,
    ) -> Completed<Self> {
        let ReadFrozen { keys, failed } = frozen;
        let mut settled: Settled<Vec<_>, E> = deliver::settle(
            outcome,
            &*keys,
            &inner.hasher,
            &inner.name,
            inner.config.timeout,
        );
        // Keys whose `Clone` panicked were never sent: their callers fail with
        // that, whatever the batch's outcome.
        for (slot, message) in failed {
            settled.values.retain(|(s, _)| *s != slot);
            settled.values.push((
                slot,
                Err(Error::Panicked {
                    name: inner.name.clone(),
                    message: format!("`Clone` of this call's key panicked: {message}").into(),
                }),
            ));
        }
        // Deduplicated keys get one clone of their value per extra caller, made
        // here, outside every lock (`Clone` is user code).
        let extra: Vec<(usize, u32)> = {
            let st = lock(&batch.st);
            settled
                .values
                .iter()
                .enumerate()
                .filter(|(_, (_, v))| v.is_ok())
                .filter_map(|(i, (slot, _))| {
                    let waiters = st.entries.slots[*slot as usize].waiters;
                    (waiters > 1).then(|| (i, waiters - 1))
                })
                .collect()
        };
        let mut copies: Vec<(usize, Vec<V>)> = Vec::with_capacity(extra.len());
        for (i, n) in extra {
            if let Ok(v) = &settled.values[i].1 {
                let cloned = catching(|| (0..n).map(|_| v.clone()).collect::<Vec<V>>());
                match cloned {
                    Ok(c) => copies.push((i, c)),
                    Err(message) => {
                        settled.values[i].1 = Err(Error::Panicked {
                            name: inner.name.clone(),
                            message: format!("`Clone` of the value panicked: {message}").into(),
                        });
                    }
                }
            }
        }
        let mut failure = settled.failure.take();
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&batch.st);
        // The run is over: no call joins it any more.
        let shared_keys = st.entries.running.take();
        if let Some(g) = state.groups.by_key(batch.group_hash, &batch.group) {
            g.forget(batch);
        }
        let streamed = st.entries.stream.take();
        if streamed.as_ref().is_some_and(|s| s.idle_timed_out) && failure.is_none() {
            failure = Some(Error::IdleTimeout {
                name: inner.name.clone(),
                after: inner.config.idle_timeout.unwrap_or_default(),
            });
        }
        let label = deliver::label(failure.as_ref());
        let (wakers, failed) = if matches!(st.phase, Phase::Running) {
            let mut copies = copies.into_iter().peekable();
            for (i, (slot, value)) in settled.values.drain(..).enumerate() {
                let s = &mut st.entries.slots[slot as usize];
                if copies.peek().is_some_and(|(j, _)| *j == i) {
                    if let Some((_, c)) = copies.next() {
                        s.copies = c;
                    }
                }
                if !s.delivered {
                    s.value = Some(value);
                }
            }
            let answered = st.entries.callers;
            state.pending -= answered;
            let failed = match (&failure, streamed.is_some()) {
                (None, _) => 0,
                // A stream's failure is each undelivered key's own: delivered
                // values stand.
                (Some(f), true) => {
                    let mut failed = 0;
                    for s in st.entries.slots.iter_mut() {
                        if !s.delivered && s.value.is_none() {
                            s.value = Some(Err(f.clone()));
                            failed += s.waiters as usize;
                        }
                    }
                    failure = None;
                    failed
                }
                (Some(_), false) => answered,
            };
            st.phase = Phase::Done { failure };
            (st.entries.wakers(), failed)
        } else {
            // Abandoned meanwhile: nobody to answer.
            (Vec::new(), 0)
        };
        drop(st);
        drop(guard);
        let unrequested = settled.unrequested + streamed.as_ref().map_or(0, |s| s.unrequested);
        drop_quietly((keys, shared_keys, settled));
        drop(streamed);
        Completed {
            label,
            ran: true,
            failed,
            unrequested,
            wakers,
            respawn: Vec::new(),
        }
    }

    fn lose(
        _: &Inner<Self>,
        batch: &Batch<Self>,
        st: &mut BatchState<Self>,
        frozen: Option<Self::Frozen>,
        state: &mut State<Self>,
    ) -> Lost {
        let uncounted_calls = if frozen.is_none() { st.admitted } else { 0 };
        if let Some(frozen) = frozen {
            st.entries.restore(frozen.keys);
        }
        if let Some(g) = state.groups.by_key(batch.group_hash, &batch.group) {
            g.forget(batch);
        }
        state.pending -= st.entries.callers;
        Lost {
            wakers: st.entries.wakers(),
            uncounted_calls,
        }
    }

    fn promote(
        inner: &StdArc<Inner<Self>>,
        solos: Vec<StdArc<Self::Solo>>,
        batch: &Arc<Batch<Self>>,
    ) {
        inner.promote(solos, &batch.group, batch.group_hash);
    }
}

/// A read batch, shared.
pub(crate) type ReadBatch<G, K, V, E> = Arc<Batch<Read<G, K, V, E>>>;

/// A group's batches that left its `open` slot but still take calls for the
/// keys they hold: full ones not yet started (any call) and running ones
/// (calls outside every batch, when `join_running` is on), each with its keys
/// once it runs, so that a call probes them without taking the batch's lock
/// (it does only on a hit).
#[allow(clippy::type_complexity)]
pub(crate) struct InFlight<G, K, V, E>(
    pub(crate) Vec<(ReadBatch<G, K, V, E>, Option<StdArc<Frozen<K>>>)>,
)
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static;

impl<G, K, V, E> Default for InFlight<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn default() -> Self {
        InFlight(Vec::new())
    }
}

/// A key's place in a batch.
pub(crate) struct Slot<V, E> {
    /// Live callers of this key that have not taken their entry.
    pub(crate) waiters: u32,
    /// The key's entry, once delivered: `None` after delivery means "no entry".
    pub(crate) value: Option<Result<V, Error<E>>>,
    /// Clones of an `Ok` value, made by the driver outside every lock, one per
    /// waiter beyond the first; takers use these before the value itself.
    pub(crate) copies: Vec<V>,
    /// Its entry came early, from a stream, while the batch still runs: its
    /// callers take it at once.
    pub(crate) delivered: bool,
}

/// One caller's registration.
pub(crate) struct Ticket {
    pub(crate) slot: u32,
    pub(crate) live: bool,
    pub(crate) waker: Option<Waker>,
    /// The caller's span, linked from the batch's span (`tracing` feature).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) span: CallerSpan,
}

/// The keys, slots and tickets of a batch.
pub(crate) struct Entries<K, V, E> {
    /// Keys by slot. Moved out to the driver while the batch runs ([`Frozen`]).
    keys: Vec<K>,
    /// The keys while the batch runs, shared with its driver: a call for one
    /// of them joins the run (see [`Entries::find`]).
    pub(crate) running: Option<StdArc<Frozen<K>>>,
    /// The hash of each key, so that the index never calls user `Hash` again.
    hashes: Vec<u64>,
    /// Key -> slot.
    index: HashTable<u32>,
    pub(crate) slots: Vec<Slot<V, E>>,
    /// Slots with waiters.
    pub(crate) live_keys: usize,
    pub(crate) tickets: Vec<Ticket>,
    /// Tickets of callers that left before the run, for reuse: a batch held open
    /// while callers come and go stays as large as its live callers.
    free: Vec<u32>,
    /// Live tickets.
    pub(crate) callers: usize,
    /// A streamed run's state, from its stream's start.
    pub(crate) stream: Option<Box<StreamState>>,
}

/// What a streamed run has delivered so far, and which tickets wait on each
/// slot (so that an item wakes only its own callers).
pub(crate) struct StreamState {
    /// Slots delivered.
    pub(crate) delivered: usize,
    /// Slots sent (whose keys the batch fn got): the stream owes this many.
    pub(crate) target: usize,
    /// Items for keys nobody asked for, or for a key delivered already.
    pub(crate) unrequested: u64,
    /// The gap between items passed the idle timeout.
    pub(crate) idle_timed_out: bool,
    /// Per slot, its first ticket (`u32::MAX`: none); per ticket, the next of
    /// its slot.
    heads: Vec<u32>,
    next: Vec<u32>,
}

impl<K, V, E> Entries<K, V, E> {
    fn with_capacity(capacity: usize) -> Self {
        Entries {
            keys: Vec::with_capacity(capacity),
            running: None,
            hashes: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            live_keys: 0,
            tickets: Vec::with_capacity(capacity),
            free: Vec::new(),
            callers: 0,
            stream: None,
        }
    }

    /// Registers a caller of `slot` (its waker is stored when it first waits).
    pub(crate) fn add_ticket(&mut self, slot: u32, span: CallerSpan) -> u32 {
        let ticket = Ticket {
            slot,
            live: true,
            waker: None,
            span,
        };
        self.callers += 1;
        let i = match self.free.pop() {
            Some(i) => {
                self.tickets[i as usize] = ticket;
                i
            }
            None => {
                self.tickets.push(ticket);
                (self.tickets.len() - 1) as u32
            }
        };
        if let Some(stream) = &mut self.stream {
            // A call that joined the running stream.
            stream.link(slot, i);
        }
        i
    }

    /// A stream starts: index the tickets by slot.
    pub(crate) fn begin_stream(&mut self, target: usize) {
        let mut stream = StreamState {
            delivered: 0,
            target,
            unrequested: 0,
            idle_timed_out: false,
            heads: vec![u32::MAX; self.slots.len()],
            next: Vec::with_capacity(self.tickets.len()),
        };
        for (i, t) in self.tickets.iter().enumerate() {
            if t.live {
                stream.link(t.slot, i as u32);
            }
        }
        self.stream = Some(Box::new(stream));
    }

    /// Moves the wakers of the live tickets of `slot` (streamed runs only)
    /// into `out`, to be woken after the batch lock is released.
    pub(crate) fn slot_wakers(&mut self, slot: u32, out: &mut Vec<Waker>) {
        let Some(stream) = &self.stream else {
            return;
        };
        let mut t = stream.heads[slot as usize];
        while t != u32::MAX {
            let ticket = &mut self.tickets[t as usize];
            if ticket.live {
                out.extend(ticket.waker.take());
            }
            t = stream.next[t as usize];
        }
    }

    /// Takes a caller out (answered or cancelled). Returns its slot and whether
    /// it was the last caller of that key. `reuse`: the ticket may be handed to a
    /// later caller (only before the batch runs).
    pub(crate) fn leave(&mut self, ticket: u32, reuse: bool) -> (usize, bool) {
        let t = &mut self.tickets[ticket as usize];
        t.live = false;
        t.waker = None;
        let slot = t.slot as usize;
        self.callers -= 1;
        let s = &mut self.slots[slot];
        s.waiters -= 1;
        let last = s.waiters == 0;
        if reuse {
            self.free.push(ticket);
            if last {
                self.live_keys -= 1;
            }
        }
        (slot, last)
    }

    /// Stores `waker` for `ticket` unless the stored one wakes the same task.
    pub(crate) fn register(&mut self, ticket: u32, waker: &Waker) {
        let slot = &mut self.tickets[ticket as usize].waker;
        match slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// The wakers of every live ticket.
    pub(crate) fn wakers(&mut self) -> Vec<Waker> {
        self.tickets
            .iter_mut()
            .filter(|t| t.live)
            .filter_map(|t| t.waker.take())
            .collect()
    }

    /// Whether enough keys were abandoned before the run that compacting pays.
    pub(crate) fn worth_compacting(&self) -> bool {
        self.keys.len() > 2 * self.live_keys + 64
    }

    /// Drops the keys every caller of which has left (before the run). Returns
    /// the keys dropped, to be dropped by the caller outside the lock.
    pub(crate) fn compact(&mut self) -> Vec<K> {
        let before = self.keys.len();
        let mut remap = vec![u32::MAX; before];
        let mut keys = Vec::with_capacity(self.live_keys);
        let mut hashes = Vec::with_capacity(self.live_keys);
        let mut slots = Vec::with_capacity(self.live_keys);
        let mut dropped = Vec::new();
        let old = self
            .keys
            .drain(..)
            .zip(self.hashes.drain(..))
            .zip(self.slots.drain(..));
        for (i, ((k, h), slot)) in old.enumerate() {
            if slot.waiters > 0 {
                remap[i] = keys.len() as u32;
                keys.push(k);
                hashes.push(h);
                slots.push(slot);
            } else {
                dropped.push(k);
            }
        }
        let mut index = HashTable::with_capacity(keys.len());
        for (i, &h) in hashes.iter().enumerate() {
            index.insert_unique(h, i as u32, |&j| hashes[j as usize]);
        }
        for t in self.tickets.iter_mut().filter(|t| t.live) {
            t.slot = remap[t.slot as usize];
        }
        self.keys = keys;
        self.hashes = hashes;
        self.slots = slots;
        self.index = index;
        dropped
    }

    /// Keys (distinct, including abandoned ones not yet compacted away).
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The key of `slot`: held by the batch, or shared with its run.
    pub(crate) fn key(&self, slot: u32) -> Option<&K> {
        match &self.running {
            Some(frozen) => frozen.keys.get(slot as usize),
            None => self.keys.get(slot as usize),
        }
    }

    /// Adds a caller to the waiters of `slot`, found by [`Entries::find`].
    pub(crate) fn add_waiter(&mut self, slot: u32) {
        self.slots[slot as usize].waiters += 1;
    }

    /// Moves the keys out for the run: the driver matches entries to slots with
    /// them, outside the lock. `order` lists the slots with waiters, in the
    /// order their keys are given to the batch function.
    pub(crate) fn freeze(&mut self) -> StdArc<Frozen<K>> {
        let order = if self.live_keys == self.keys.len() {
            None
        } else {
            Some(
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.waiters > 0)
                    .map(|(i, _)| i as u32)
                    .collect(),
            )
        };
        let frozen = StdArc::new(Frozen {
            keys: std::mem::take(&mut self.keys),
            index: std::mem::take(&mut self.index),
            order,
        });
        self.hashes = Vec::new();
        self.running = Some(frozen.clone());
        frozen
    }

    /// Gives frozen keys back to the batch (the run was lost): its callers
    /// read their keys there, to enqueue them again.
    pub(crate) fn restore(&mut self, frozen: StdArc<Frozen<K>>) {
        self.running = Some(frozen);
    }
}

impl<K, V: Clone, E> Entries<K, V, E> {
    /// Reads this ticket's entry after `Done`.
    pub(crate) fn take(
        &mut self,
        ticket: u32,
        failure: Option<&Error<E>>,
        name: &StdArc<str>,
    ) -> Result<Option<V>, Error<E>> {
        let (slot, last) = self.leave(ticket, false);
        let s = &mut self.slots[slot];
        // A key's own failure (its `Clone` panicked at dispatch) stands even when
        // the batch failed as a whole.
        if let (Some(err), Some(Err(own))) = (failure, &s.value) {
            let _ = err;
            return Err(own.clone());
        }
        if let Some(err) = failure {
            return Err(err.clone());
        }
        match &s.value {
            None => Ok(None),
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(_)) => match s.copies.pop() {
                Some(v) => Ok(Some(v)),
                None if last => match s.value.take() {
                    Some(Ok(v)) => Ok(Some(v)),
                    _ => Ok(None),
                },
                // More takers than the driver made copies for (it counts the
                // waiters before cloning, outside the lock): clone here.
                None => match &s.value {
                    Some(Ok(v)) => catch_unwind(AssertUnwindSafe(|| v.clone()))
                        .map(Some)
                        .map_err(|p| Error::panicked(name, "`Clone` of the value", &*p)),
                    _ => Ok(None),
                },
            },
        }
    }
}

impl<K: Hash + Eq, V, E> Entries<K, V, E> {
    /// The slot of `key` (hash `hash`), inserting it if new. Returns the slot and
    /// whether the key was already there. `Eq` is user code: a panic in it leaves
    /// the entries as they were and is returned.
    pub(crate) fn slot_for(&mut self, hash: u64, key: K) -> Result<(u32, bool), UserPanic> {
        let keys = &self.keys;
        let found = catch_unwind(AssertUnwindSafe(|| {
            self.index.find(hash, |&i| keys[i as usize] == key).copied()
        }))
        .map_err(|p| UserPanic(panic_message(&*p)))?;
        match found {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                slot.waiters += 1;
                let dedup = slot.waiters > 1;
                if !dedup {
                    self.live_keys += 1;
                }
                Ok((i, dedup))
            }
            None => {
                let i = self.keys.len() as u32;
                self.keys.push(key);
                self.hashes.push(hash);
                self.slots.push(Slot {
                    waiters: 1,
                    value: None,
                    copies: Vec::new(),
                    delivered: false,
                });
                let hashes = &self.hashes;
                self.index.insert_unique(hash, i, |&j| hashes[j as usize]);
                self.live_keys += 1;
                Ok((i, false))
            }
        }
    }
}

impl<K: Eq, V, E> Entries<K, V, E> {
    /// The slot of `key` (hash `hash`) that a call may join: a key with live
    /// callers in a batch not yet started, or any key of a running one. `Eq`
    /// is user code: a panic in it is returned, nothing changed.
    pub(crate) fn find(&self, hash: u64, key: &K) -> Result<Option<u32>, UserPanic> {
        let found = catch_unwind(AssertUnwindSafe(|| match &self.running {
            Some(frozen) => frozen
                .index
                .iter_hash(hash)
                .copied()
                // A streamed entry already handed out: fetch it afresh.
                .filter(|&i| frozen.was_dispatched(i) && !self.slots[i as usize].delivered)
                .find(|&i| frozen.keys[i as usize] == *key),
            None => self
                .index
                .find(hash, |&i| self.keys[i as usize] == *key)
                .copied()
                .filter(|&i| self.slots[i as usize].waiters > 0),
        }))
        .map_err(|p| UserPanic(panic_message(&*p)))?;
        Ok(found)
    }
}

impl StreamState {
    fn link(&mut self, slot: u32, ticket: u32) {
        let t = ticket as usize;
        if self.next.len() <= t {
            self.next.resize(t + 1, u32::MAX);
        }
        self.next[t] = self.heads[slot as usize];
        self.heads[slot as usize] = ticket;
    }
}

/// A running batch's keys, owned by its driver.
pub(crate) struct Frozen<K> {
    keys: Vec<K>,
    index: HashTable<u32>,
    /// Slots dispatched, in order; `None`: every slot, in slot order.
    order: Option<Vec<u32>>,
}

impl<K> Drop for Frozen<K> {
    /// Shared by a running batch, its group's list and its stream reader:
    /// whichever lets go last drops the keys (user types) here, quietly.
    fn drop(&mut self) {
        drop_quietly(std::mem::take(&mut self.keys));
    }
}

impl<K: Clone> Frozen<K> {
    /// Clones the dispatched keys for the batch function. A key whose `Clone`
    /// panics is left out; its slot is returned with the panic's message.
    pub(crate) fn clone_keys(&self) -> (Vec<K>, Vec<(u32, String)>) {
        let n = self.dispatched();
        let mut out = Vec::with_capacity(n);
        let mut failed = Vec::new();
        let mut pos = 0;
        while pos < n {
            let cloned = catch_unwind(AssertUnwindSafe(|| {
                while pos < n {
                    let slot = self.slot_at(pos);
                    out.push(self.keys[slot as usize].clone());
                    pos += 1;
                }
            }));
            if let Err(p) = cloned {
                failed.push((self.slot_at(pos), panic_message(&*p)));
                pos += 1;
            }
        }
        (out, failed)
    }
}

impl<K> Frozen<K> {
    /// How many keys the batch function is given.
    pub(crate) fn dispatched(&self) -> usize {
        self.order.as_ref().map_or(self.keys.len(), Vec::len)
    }

    /// Whether the key of `slot` was given to the batch function (a key every
    /// caller of which left before the run was not).
    pub(crate) fn was_dispatched(&self, slot: u32) -> bool {
        self.order
            .as_ref()
            .is_none_or(|o| o.binary_search(&slot).is_ok())
    }

    /// The slot of the key at position `pos` of the batch function's keys.
    pub(crate) fn slot_at(&self, pos: usize) -> u32 {
        self.order.as_ref().map_or(pos as u32, |o| o[pos])
    }
}

impl<K: Eq> Frozen<K> {
    /// Whether a key equal to `key` (hash `hash`) was sent to the batch fn.
    /// `Eq` is user code: a panic in it is returned.
    pub(crate) fn holds(&self, hash: u64, key: &K) -> Result<bool, UserPanic> {
        catch_unwind(AssertUnwindSafe(|| {
            self.index
                .iter_hash(hash)
                .any(|&i| self.was_dispatched(i) && self.keys[i as usize] == *key)
        }))
        .map_err(|p| UserPanic(panic_message(&*p)))
    }
}

impl<K: Hash + Eq> Lookup<K> for Frozen<K> {
    fn slot_of(&self, key: &K, hasher: &DefaultHashBuilder) -> Result<Option<u32>, u32> {
        let Ok(hash) = hash_of(hasher, key) else {
            return Ok(None);
        };
        for &i in self.index.iter_hash(hash) {
            match catch_unwind(AssertUnwindSafe(|| self.keys[i as usize] == *key)) {
                Ok(true) => return Ok(Some(i)),
                Ok(false) => {}
                Err(_) => return Err(i),
            }
        }
        Ok(None)
    }
    fn dispatched(&self) -> usize {
        Frozen::dispatched(self)
    }
    fn slot_at(&self, pos: usize) -> u32 {
        Frozen::slot_at(self, pos)
    }
    fn slots(&self) -> usize {
        self.keys.len()
    }
}
