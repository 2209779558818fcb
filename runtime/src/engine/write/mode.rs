//! The write mode: batches of net writes per key, at most one write per key in
//! flight, writers answered after the commit that carries (or absorbed) their
//! write.
//!
//! # Implementation details
//!
//! ## Per-key order
//!
//! Each group keeps the hashes of the keys whose write is running
//! ([`WriteGroup::running`]). When a batch starts ([`Mode::freeze`]), a slot
//! whose key is running is *held back* in [`WriteGroup::held`] (folded after
//! any earlier held write of the key) instead of being sent; every other slot
//! is sent and its key marked running. When a batch completes, its keys stop
//! running and their held slots join the group's open batch, folded *before*
//! that batch's own writes to the key (they are older), or a new batch that
//! leaves at once. So a key's writes commit in call order, one batch at a
//! time, whatever `max_in_flight` is, while other keys go ahead.
//!
//! Keys are compared by hash only in `running`: two keys whose hashes collide
//! may wait for each other, which delays but never reorders.
//!
//! ## Invariants
//!
//! - A key's hash is in `running` iff a running batch of the group sent it; a
//!   held slot's key is in `running` (held slots leave when it stops).
//! - Every writer is counted in `State::pending` from its admission until its
//!   [`Ack`] is resolved; an ack is resolved once, and is listed in
//!   `State::extra` ([`Pending`]) exactly until then.
//! - A write batch is never abandoned: writers that leave do not withdraw
//!   their write.

use std::hash::Hash;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc as StdArc;
use std::task::Waker;

use hashbrown::HashTable;

use super::super::DefaultHashBuilder;

use super::super::batch::{hash_of, Batch, BatchState, Phase, UserPanic};
use super::super::deliver::{self, catching, drop_quietly, Lookup, Outcome, Settled};
use super::super::group::{Group, GroupKey};
use super::super::mode::{Completed, Freeze, Lost, Mode, RunOf};
use super::super::sync::{lock, Arc};
use super::super::{Inner, State};
use super::entries::{Ack, Garbage, Merge, NotAbsorbed, Pending, WriteEntries, WriteSlot};
use crate::error::{Error, Unsure};
use crate::output::Delivery;

/// Starts one run of a write batch function.
pub(crate) type WriteMaker<G, K, W, E> =
    StdArc<dyn Fn(&G, Vec<(K, W)>) -> RunOf<Delivery<K, (), E>> + Send + Sync + 'static>;

/// A write batch, shared by its driver and its group.
pub(crate) type WriteBatch<G, K, W, E> = Arc<Batch<Write<G, K, W, E>>>;

/// The write mode: a `WriteCore<G, K, W, E>` folds writes of `W` per key `K`.
pub(crate) struct Write<G, K, W, E>(PhantomData<Types<G, K, W, E>>);

type Types<G, K, W, E> = fn() -> (G, K, W, E);

/// A write coalescer's settings.
pub(crate) struct WriteSettings<G, K, W, E> {
    /// How writes to one key fold; `None`: the last write wins.
    pub(crate) merge: Option<Merge<W>>,
    /// Bisects failed batches (`config.isolate` levels) when set, re-sending
    /// values copied with this fn (last write wins only).
    pub(crate) isolate: Option<fn(&W) -> W>,
    pub(crate) types: PhantomData<Types<G, K, W, E>>,
}

/// Runs `items` through `maker`; if the whole batch fails and `depth` allows,
/// splits them in halves and writes each half again (concurrently),
/// recursively. Items of a part that still fails share its error as a per-key
/// error. Sound for last-write-wins batches only: a half may commit twice.
pub(crate) fn bisect<G, K, W, E>(
    maker: WriteMaker<G, K, W, E>,
    group: StdArc<GroupKey<G>>,
    items: Vec<(K, W)>,
    depth: u32,
    copy: fn(&W) -> W,
) -> RunOf<Delivery<K, (), E>>
where
    G: Send + Sync + 'static,
    K: Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    Box::pin(async move {
        let copies = items.iter().map(|(k, w)| (k.clone(), copy(w))).collect();
        let first = maker(&group.group, copies).await;
        let Delivery::Failed(e) = first else {
            return first;
        };
        if depth == 0 {
            return Delivery::Failed(e);
        }
        if items.len() == 1 {
            // A single write: its error is its own.
            let e = StdArc::new(e);
            return Delivery::Keyed(Box::new(
                items.into_iter().map(move |(k, _)| (k, Err(e.clone()))),
            ));
        }
        drop(e);
        let mut left = items;
        let right = left.split_off(left.len() / 2);
        let keys = |part: &[(K, W)]| part.iter().map(|(k, _)| k.clone()).collect::<Vec<K>>();
        let (left_keys, right_keys) = (keys(&left), keys(&right));
        let (a, b) = futures_util::future::join(
            bisect(maker.clone(), group.clone(), left, depth - 1, copy),
            bisect(maker, group, right, depth - 1, copy),
        )
        .await;
        let mut entries = entries_of(a, left_keys);
        entries.extend(entries_of(b, right_keys));
        Delivery::Keyed(Box::new(entries.into_iter()))
    })
}

/// A part's outcome as per-key entries, so that parts can be joined.
fn entries_of<K, E>(d: Delivery<K, (), E>, keys: Vec<K>) -> Vec<(K, Result<(), StdArc<E>>)> {
    match d {
        Delivery::Keyed(entries) => entries.collect(),
        Delivery::Failed(e) => {
            let e = StdArc::new(e);
            keys.into_iter().map(|k| (k, Err(e.clone()))).collect()
        }
        // Write outputs are never ordered nor streamed: every key committed.
        Delivery::Ordered(_) | Delivery::Streamed(_) => Vec::new(),
    }
}

/// A group's write state.
pub(crate) struct WriteGroup<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Hashes of the keys whose write is running.
    running: HashTable<u64>,
    /// Writes held back until their key's running write ends.
    held: WriteEntries<K, W, E>,
    /// The batches not yet sent, by the hashes of their keys: a key not yet
    /// sent lives in exactly one of them, so that its later writes fold there
    /// (and batches that leave out of order never reorder a key).
    placed: HashTable<Placed<G, K, W, E>>,
    /// A writer through this group's object (`save_for`) left before its
    /// answer: the object may be gone, and another one made at its address,
    /// which must not join (or be held behind) writes that run with the
    /// first one's clone. A write through that address waits until the group
    /// is idle (see `Inner::save`).
    pub(crate) tainted: bool,
}

/// A key (by hash) of a batch not yet sent, and that batch (by its entries' id).
struct Placed<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    hash: u64,
    id: u64,
    batch: WriteBatch<G, K, W, E>,
}

impl<G, K, W, E> Default for WriteGroup<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    fn default() -> Self {
        WriteGroup {
            running: HashTable::new(),
            held: WriteEntries::with_capacity(0),
            placed: HashTable::new(),
            tainted: false,
        }
    }
}

impl<G, K, W, E> WriteGroup<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    fn is_running(&self, hash: u64) -> bool {
        self.running.find(hash, |&h| h == hash).is_some()
    }

    /// Takes out every held write (a drain).
    pub(crate) fn take_held(&mut self) -> Vec<WriteSlot<K, W, E>> {
        self.held.take_all()
    }

    fn stop_running(&mut self, hash: u64) {
        if let Ok(e) = self.running.find_entry(hash, |&h| h == hash) {
            e.remove();
        }
    }

    /// The batch not yet sent that holds `key`, if any. Locks the candidate
    /// batches (under the state lock: the lock order holds). `Eq` is user
    /// code: its panic is returned.
    pub(crate) fn placed(
        &self,
        hash: u64,
        key: &K,
    ) -> Result<Option<WriteBatch<G, K, W, E>>, UserPanic> {
        for p in self.placed.iter_hash(hash) {
            let st = lock(&p.batch.st);
            if st.entries.contains(hash, key)? {
                return Ok(Some(p.batch.clone()));
            }
        }
        Ok(None)
    }

    /// A new key (by hash) in `batch`, not yet sent.
    pub(crate) fn place(&mut self, hash: u64, id: u64, batch: &WriteBatch<G, K, W, E>) {
        self.placed.insert_unique(
            hash,
            Placed {
                hash,
                id,
                batch: batch.clone(),
            },
            |p| p.hash,
        );
    }

    /// The batch with entries `id` is sent (or gone): its keys leave the index.
    fn unplace(&mut self, id: u64, hashes: impl Iterator<Item = u64>) {
        for hash in hashes {
            if let Ok(e) = self.placed.find_entry(hash, |p| p.id == id) {
                e.remove();
            }
        }
        if self.placed.capacity() > 4 * self.placed.len() + 64 {
            self.placed.shrink_to(2 * self.placed.len(), |p| p.hash);
        }
    }

    /// The batches not yet sent that hold keys, each once: besides the open
    /// one and those queued for a lane, a full one whose driver has not taken
    /// it yet is only here.
    pub(crate) fn unsent(&self) -> Vec<WriteBatch<G, K, W, E>> {
        let mut out: Vec<WriteBatch<G, K, W, E>> = Vec::new();
        for p in &self.placed {
            if !out.iter().any(|b| Arc::ptr_eq(b, &p.batch)) {
                out.push(p.batch.clone());
            }
        }
        out
    }

    /// Forgets every key of the batches whose entries are empty now (a drain).
    pub(crate) fn unplace_emptied(&mut self) {
        self.placed
            .retain(|p| !lock(&p.batch.st).entries.is_empty());
    }
}

/// What a write batch's driver holds while it runs.
pub(crate) struct WriteFrozen<K, W, E> {
    /// The slots sent, in the order of the batch function's items (their
    /// values are moved out to the run; the batch function gets clones of the
    /// keys, these stay to match per-key outcomes).
    slots: Vec<WriteSlot<K, W, E>>,
    /// Key -> slot, by hash.
    index: HashTable<u32>,
    /// Slots that fail whatever the run does: poisoned by the merge fn, or whose
    /// key's `Clone` panicked.
    failed: Vec<(WriteSlot<K, W, E>, String)>,
    /// Keys and values folded away while the locks were held, dropped with the
    /// rest outside them.
    garbage: Vec<Garbage<K, W>>,
    /// Hashes marked running at the freeze whose slot was not sent (its key's
    /// `Clone` panicked): they stop running when the batch ends, as sent ones
    /// do, and release the writes of their key held behind them.
    unsent: Vec<u64>,
}

impl<G, K, W, E> Mode for Write<G, K, W, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    type G = G;
    type E = E;
    type Entries = WriteEntries<K, W, E>;
    type Solo = ();
    type GroupExtra = WriteGroup<G, K, W, E>;
    type Settings = WriteSettings<G, K, W, E>;
    type Shared = Pending<E>;
    type Maker = WriteMaker<G, K, W, E>;
    type Frozen = WriteFrozen<K, W, E>;
    type Output = Delivery<K, (), E>;
    const ABANDONS: bool = false;

    fn entries(capacity: usize) -> Self::Entries {
        WriteEntries::with_capacity(capacity)
    }

    fn live_keys(entries: &Self::Entries) -> usize {
        entries.len()
    }

    fn idle(extra: &Self::GroupExtra) -> bool {
        extra.running.is_empty() && extra.held.is_empty() && extra.placed.is_empty()
    }

    fn freeze(
        inner: &Inner<Self>,
        _batch: &Arc<Batch<Self>>,
        st: &mut BatchState<Self>,
        group: &mut Group<Self>,
    ) -> Freeze<Self> {
        let merge = inner.settings.merge.as_ref();
        let id = st.entries.id;
        group
            .extra
            .unplace(id, st.entries.slots.iter().map(|s| s.hash));
        let mut sent = Vec::with_capacity(st.entries.len());
        let mut failed = Vec::new();
        let mut garbage = Vec::new();
        for slot in st.entries.take_all() {
            if let Some(message) = &slot.poison {
                let message = format!("the merge fn panicked: {message}");
                failed.push((slot, message));
            } else if group.extra.is_running(slot.hash) {
                // The key's previous write is still running: this one waits
                // for it, folded after any earlier held write of the key.
                match group.extra.held.absorb(slot, merge, false, true) {
                    Ok(g) => {
                        if g.0.is_some() {
                            // Folded into an earlier held write of its key.
                            inner.rec.absorbed(1);
                        }
                        garbage.push(g);
                    }
                    Err(NotAbsorbed::Panicked(p, slot)) => {
                        failed.push((slot, format!("`Eq` of the key panicked: {}", p.0)));
                    }
                    // Unreachable: there is always room in the held slots.
                    Err(NotAbsorbed::NoRoom(slot)) => sent.push(slot),
                }
            } else {
                let hash = slot.hash;
                group.extra.running.insert_unique(hash, hash, |&h| h);
                sent.push(slot);
            }
        }
        Freeze {
            counts: (st.admitted, sent.len(), st.dedup_hits, 0),
            callers: Vec::new(),
            frozen: WriteFrozen {
                slots: sent,
                index: HashTable::new(),
                failed,
                garbage,
                unsent: Vec::new(),
            },
        }
    }

    fn make(
        inner: &StdArc<Inner<Self>>,
        _batch: &Arc<Batch<Self>>,
        maker: &Self::Maker,
        group: &StdArc<GroupKey<G>>,
        frozen: &mut Self::Frozen,
    ) -> RunOf<Self::Output> {
        let items = frozen.items();
        if items.is_empty() {
            // Every write was held back or failed: nothing to send.
            return Box::pin(std::future::ready(Delivery::Keyed(Box::new(
                std::iter::empty(),
            ))));
        }
        match (inner.settings.isolate, inner.config.isolate) {
            (Some(copy), depth) if depth > 0 => {
                bisect(maker.clone(), group.clone(), items, depth, copy)
            }
            _ => maker(&group.group, items),
        }
    }

    fn complete(
        inner: &Inner<Self>,
        batch: &Batch<Self>,
        frozen: Self::Frozen,
        outcome: Outcome<Self::Output>,
    ) -> Completed<Self> {
        let ran = !frozen.slots.is_empty();
        let settled: Settled<Vec<_>, E> = if !ran {
            Settled {
                values: Vec::new(),
                failure: None,
                unrequested: 0,
            }
        } else {
            deliver::settle(
                outcome,
                &frozen,
                &inner.hasher,
                &inner.name,
                inner.config.timeout,
            )
        };
        let Settled {
            values,
            failure,
            unrequested,
        } = settled;
        let failure = failure.map(|f| uncertain(f, &inner.name));
        let label = deliver::label(failure.as_ref());
        let WriteFrozen {
            slots,
            failed,
            garbage: folded,
            unsent,
            ..
        } = frozen;
        // Each sent slot's answer: the batch's failure, its key's own error, or
        // committed.
        let mut answers: Vec<Result<(), Error<E>>> = vec![Ok(()); slots.len()];
        if let Some(f) = &failure {
            answers.iter_mut().for_each(|a| *a = Err(f.clone()));
        } else {
            for (slot, result) in values {
                if let Err(e) = result {
                    answers[slot as usize] = Err(e);
                }
            }
        }
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut out = Answering::default();
        let mut failed_writers = 0;
        let mut respawn = Vec::new();
        let mut garbage = Vec::new();
        if let Some(group) = state
            .groups
            .by_addr(batch.group_hash, StdArc::as_ptr(&batch.group) as usize)
        {
            let mut released = Vec::new();
            for (slot, answer) in slots.iter().zip(answers) {
                group.extra.stop_running(slot.hash);
                let shared = failure.is_some();
                let n = out.answer(&mut state.extra, &slot.acks, answer);
                if shared {
                    failed_writers += n;
                }
                released.push(slot.hash);
            }
            for &hash in &unsent {
                group.extra.stop_running(hash);
                released.push(hash);
            }
            for hash in released {
                let held = group.extra.held.take_hash(hash);
                if !held.is_empty() {
                    place_held(
                        inner,
                        &mut state.gathering,
                        &mut state.extra,
                        group,
                        held,
                        &mut respawn,
                        &mut out,
                        &mut garbage,
                    );
                }
            }
        }
        for (slot, message) in &failed {
            let err = Error::Panicked {
                name: inner.name.clone(),
                message: message.as_str().into(),
            };
            out.answer(&mut state.extra, &slot.acks, Err(err));
        }
        state.pending -= out.writers;
        inner.rec.counts(state.in_flight, state.pending);
        lock(&batch.st).phase = Phase::Done { failure: None };
        drop(guard);
        inner.rec.publish();
        out.count(&inner.rec);
        // The failure may hold the last reference to the batch fn's error (no
        // writer kept a clone): its `Drop` is user code.
        drop_quietly((slots, failed, garbage, folded, failure));
        Completed {
            label,
            ran,
            failed: failed_writers,
            unrequested,
            wakers: out.wakers,
            respawn,
        }
    }

    fn lose(
        inner: &Inner<Self>,
        batch: &Batch<Self>,
        st: &mut BatchState<Self>,
        frozen: Option<Self::Frozen>,
        state: &mut State<Self>,
    ) -> Lost {
        let mut out = Answering::default();
        let shutdown = || Error::Shutdown {
            name: inner.name.clone(),
        };
        let uncounted_calls = match frozen {
            Some(frozen) => {
                // It was running: it may have committed.
                let group = state
                    .groups
                    .by_addr(batch.group_hash, StdArc::as_ptr(&batch.group) as usize);
                let mut held = Vec::new();
                if let Some(group) = group {
                    let hashes = frozen.slots.iter().map(|s| s.hash);
                    for hash in hashes.chain(frozen.unsent.iter().copied()) {
                        group.extra.stop_running(hash);
                        held.extend(group.extra.held.take_hash(hash));
                    }
                }
                for slot in &frozen.slots {
                    let err = Error::MaybeCommitted {
                        name: inner.name.clone(),
                        why: Unsure::Shutdown,
                    };
                    out.answer(&mut state.extra, &slot.acks, Err(err));
                }
                // Held behind it, never sent: not committed.
                for slot in held.iter().chain(frozen.failed.iter().map(|(s, _)| s)) {
                    out.answer(&mut state.extra, &slot.acks, Err(shutdown()));
                }
                // Their keys and values are user types: dropped quietly (the
                // locks are held, and the writers must still be answered).
                drop_quietly((held, frozen));
                0
            }
            None => {
                if let Some(group) = state
                    .groups
                    .by_addr(batch.group_hash, StdArc::as_ptr(&batch.group) as usize)
                {
                    let id = st.entries.id;
                    group
                        .extra
                        .unplace(id, st.entries.slots.iter().map(|s| s.hash));
                }
                for slot in &st.entries.slots {
                    out.answer(&mut state.extra, &slot.acks, Err(shutdown()));
                }
                st.admitted
            }
        };
        state.pending -= out.writers;
        out.count(&inner.rec);
        Lost {
            wakers: out.wakers,
            uncounted_calls,
        }
    }
}

/// Writers answered under the state lock, and their wakers.
pub(crate) struct Answering<E> {
    pub(crate) writers: usize,
    pub(crate) wakers: Vec<Waker>,
    /// The failures given, with how many writers got each: counted in the
    /// metrics here, once per writer, whether or not the writer is still
    /// there to read it (see [`Answering::count`]).
    failures: Vec<(usize, Error<E>)>,
}

impl<E> Default for Answering<E> {
    fn default() -> Self {
        Answering {
            writers: 0,
            wakers: Vec::new(),
            failures: Vec::new(),
        }
    }
}

impl<E> Answering<E> {
    /// Counts the failures given in the metrics, one per writer (no lock
    /// needed: counters). The errors are dropped quietly (user types).
    pub(crate) fn count(&mut self, rec: &crate::recorder::Recorder) {
        for (n, err) in self.failures.drain(..) {
            for _ in 0..n {
                match &err {
                    Error::Shutdown { .. } => rec.shutdown_error(),
                    other => rec.failed(other),
                }
            }
            drop_quietly(err);
        }
    }

    /// Resolves `acks` with `result` (those not resolved yet) and takes them out
    /// of the pending index. Returns the writers answered.
    pub(crate) fn answer(
        &mut self,
        pending: &mut Pending<E>,
        acks: &[StdArc<Ack<E>>],
        result: Result<(), Error<E>>,
    ) -> usize {
        let mut n = 0;
        for ack in acks {
            if let Some((writers, wakers)) = ack.resolve(result.clone()) {
                pending.remove(ack);
                n += writers;
                self.wakers.extend(wakers);
            }
        }
        match result {
            Err(e) if n > 0 => self.failures.push((n, e)),
            // It may hold the last reference to a batch fn's error (every ack
            // answered already): its `Drop` is user code, and locks are held.
            other => drop_quietly(other),
        }
        self.writers += n;
        n
    }
}

/// Held slots whose key's write ended join the batch not yet sent that has
/// their key, or the group's open batch (folded before its own writes to the
/// key: they are older), or a new batch; whichever it is leaves at once (they
/// have waited a window and their key's previous write already). A full open batch takes only keys it has already; it then
/// leaves, and a new batch takes the rest.
#[allow(clippy::too_many_arguments)]
fn place_held<G, K, W, E>(
    inner: &Inner<Write<G, K, W, E>>,
    gathering: &mut usize,
    pending: &mut Pending<E>,
    group: &mut Group<Write<G, K, W, E>>,
    held: Vec<WriteSlot<K, W, E>>,
    respawn: &mut Vec<WriteBatch<G, K, W, E>>,
    out: &mut Answering<E>,
    garbage: &mut Vec<Garbage<K, W>>,
) where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    let merge = inner.settings.merge.as_ref();
    let max = inner.config.max_batch;
    for slot in held {
        // A batch not yet sent that has the key takes it (its writes are
        // newer); else the open batch, or a new one.
        let placed = match group.extra.placed(slot.hash, &slot.key) {
            Ok(placed) => placed,
            Err(p) => {
                let err = Error::Panicked {
                    name: inner.name.clone(),
                    message: format!("`Eq` of the key panicked: {}", p.0).into(),
                };
                out.answer(pending, &slot.acks, Err(err));
                garbage.push((Some(slot.key), slot.value));
                continue;
            }
        };
        let mut slot = slot;
        loop {
            let target = match (&placed, &group.open) {
                (Some(b), _) | (None, Some(b)) => b.clone(),
                (None, None) => {
                    let batch = inner.open_batch(gathering, group, group.hash, true);
                    lock(&batch.st).kicked = true;
                    respawn.push(batch.clone());
                    batch
                }
            };
            let mut st = lock(&target.st);
            let room = placed.is_some() || st.entries.len() < max;
            let (hash, id) = (slot.hash, st.entries.id);
            let before = st.entries.len();
            match st.entries.absorb(slot, merge, true, room) {
                Ok(g) => {
                    if st.entries.len() > before {
                        group.extra.place(hash, id, &target);
                    }
                    if g.0.is_some() {
                        // Folded into the key's entry there.
                        inner.rec.absorbed(1);
                    }
                    // These writes have waited a window and their key's
                    // previous write already: the batch leaves now.
                    if !st.kicked {
                        st.kicked = true;
                        out.wakers.extend(st.driver_waker());
                    }
                    // Filled to `max_batch`: it takes no more writes (the next
                    // admission would go past the bound).
                    if st.entries.len() >= max && !st.full {
                        st.full = true;
                        drop(st);
                        if group.close(&target) {
                            *gathering -= 1;
                        }
                    }
                    garbage.push(g);
                    break;
                }
                Err(NotAbsorbed::Panicked(p, failed)) => {
                    drop(st);
                    let err = Error::Panicked {
                        name: inner.name.clone(),
                        message: format!("`Eq` of the key panicked: {}", p.0).into(),
                    };
                    out.answer(pending, &failed.acks, Err(err));
                    garbage.push((Some(failed.key), failed.value));
                    break;
                }
                Err(NotAbsorbed::NoRoom(back)) => {
                    // The open batch is full: it leaves as it is.
                    st.full = true;
                    out.wakers.extend(st.driver_waker());
                    drop(st);
                    group.open = None;
                    *gathering -= 1;
                    slot = back;
                }
            }
        }
    }
}

/// A write batch's failure, as its writers get it: a timeout may have
/// committed.
fn uncertain<E>(failure: Error<E>, name: &StdArc<str>) -> Error<E> {
    match failure {
        Error::Timeout { after, .. } => Error::MaybeCommitted {
            name: name.clone(),
            why: Unsure::Timeout { after },
        },
        other => other,
    }
}

impl<K: Clone, W, E> WriteFrozen<K, W, E> {
    /// The batch function's items: each sent key (a clone) with its net
    /// value. A key whose `Clone` panics is not sent, and its writers fail.
    fn items(&mut self) -> Vec<(K, W)> {
        let mut items = Vec::with_capacity(self.slots.len());
        let mut kept = Vec::with_capacity(self.slots.len());
        for mut slot in std::mem::take(&mut self.slots) {
            match catching(|| slot.key.clone()) {
                Ok(copy) => match slot.value.take() {
                    Some(value) => {
                        items.push((copy, value));
                        kept.push(slot);
                    }
                    None => drop_quietly(copy),
                },
                Err(message) => {
                    // Marked running at the freeze, but not sent.
                    self.unsent.push(slot.hash);
                    self.failed
                        .push((slot, format!("`Clone` of the key panicked: {message}")));
                }
            }
        }
        let mut index = HashTable::with_capacity(kept.len());
        for (i, slot) in kept.iter().enumerate() {
            index.insert_unique(slot.hash, i as u32, |&j: &u32| kept[j as usize].hash);
        }
        self.slots = kept;
        self.index = index;
        items
    }
}

impl<K: Hash + Eq, W, E> Lookup<K> for WriteFrozen<K, W, E> {
    fn slot_of(&self, key: &K, hasher: &DefaultHashBuilder) -> Result<Option<u32>, u32> {
        let Ok(hash) = hash_of(hasher, key) else {
            return Ok(None);
        };
        for &i in self.index.iter_hash(hash) {
            match catch_unwind(AssertUnwindSafe(|| self.slots[i as usize].key == *key)) {
                Ok(true) => return Ok(Some(i)),
                Ok(false) => {}
                Err(_) => return Err(i),
            }
        }
        Ok(None)
    }
    fn dispatched(&self) -> usize {
        self.slots.len()
    }
    fn slot_at(&self, pos: usize) -> u32 {
        pos as u32
    }
    fn slots(&self) -> usize {
        self.slots.len()
    }
}
