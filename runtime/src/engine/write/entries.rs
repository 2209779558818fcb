//! A write batch's contents: one net value per key, the acknowledgements its
//! writers wait on, and the per-coalescer index of acknowledgements not yet
//! given.
//!
//! # Implementation details
//!
//! A key's writes inside one batch fold into one slot: the value is replaced
//! (last write wins) or folded by the merge fn, and the writer waits on the
//! slot's [`Ack`]. A slot may carry several acks: when writes held back behind
//! a running write of their key join the next batch's slot for that key, both
//! slots' writers are answered by that batch's commit.
//!
//! Every method that runs user code (`Eq` of a key, the merge fn, `Drop` of a
//! replaced value) catches its panic and leaves the entries consistent: a
//! panicking `Eq` changes nothing; a panicking merge poisons the slot (its value
//! is gone, its writers fail); replaced values are returned, to be dropped
//! outside the locks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Waker};

use hashbrown::HashTable;

use super::super::batch::{panic_message, UserPanic};
use super::super::sync::{lock, Mutex};
use crate::error::Error;

/// How writes to one key fold: `merge(&mut earlier, later)`.
pub(crate) type Merge<W> = StdArc<dyn Fn(&mut W, W) + Send + Sync + 'static>;

/// What the writers of one key in one batch wait on.
pub(crate) struct Ack<E> {
    /// The hash of the key (the coalescer's hasher), for the pending index.
    pub(crate) hash: u64,
    st: Mutex<AckState<E>>,
    /// The group's count of waiting calls (`max_pending_per_group`): each
    /// writer holds a place in it until the answer.
    group_pending: Option<StdArc<std::sync::atomic::AtomicUsize>>,
}

struct AckState<E> {
    result: Option<Result<(), Error<E>>>,
    wakers: Vec<Waker>,
    /// Writers attached (each counted in `State::pending` until the answer).
    writers: usize,
}

impl<E> Ack<E> {
    /// A new acknowledgement, with its first writer (holding a place in
    /// `group_pending`, if set).
    pub(crate) fn new(
        hash: u64,
        group_pending: Option<StdArc<std::sync::atomic::AtomicUsize>>,
    ) -> Self {
        Ack {
            hash,
            group_pending,
            st: Mutex::new(AckState {
                result: None,
                wakers: Vec::new(),
                writers: 1,
            }),
        }
    }

    /// One more writer waits on this acknowledgement.
    pub(crate) fn add_writer(&self) {
        lock(&self.st).writers += 1;
    }

    /// Answers every writer, once: returns how many writers were answered and
    /// their wakers, or `None` if it was answered already.
    pub(crate) fn resolve(&self, result: Result<(), Error<E>>) -> Option<(usize, Vec<Waker>)> {
        let mut st = lock(&self.st);
        if st.result.is_some() {
            return None;
        }
        st.result = Some(result);
        let wakers = std::mem::take(&mut st.wakers);
        if let Some(c) = &self.group_pending {
            c.fetch_sub(st.writers, std::sync::atomic::Ordering::Relaxed);
        }
        Some((st.writers, wakers))
    }

    /// Whether the writers have their answer.
    pub(crate) fn is_resolved(&self) -> bool {
        lock(&self.st).result.is_some()
    }

    /// A writer's poll: the answer, or the writer's waker registered (at
    /// `pos`, kept by the writer, so that a writer polled again replaces its
    /// own waker instead of adding one).
    pub(crate) fn poll(
        &self,
        cx: &mut Context<'_>,
        pos: &mut Option<usize>,
    ) -> Poll<Result<(), Error<E>>> {
        let mut st = lock(&self.st);
        if let Some(result) = &st.result {
            return Poll::Ready(result.clone());
        }
        match *pos {
            Some(i) if i < st.wakers.len() => {
                if !st.wakers[i].will_wake(cx.waker()) {
                    st.wakers[i] = cx.waker().clone();
                }
            }
            _ => {
                st.wakers.push(cx.waker().clone());
                *pos = Some(st.wakers.len() - 1);
            }
        }
        Poll::Pending
    }
}

/// One key's net write in a batch.
pub(crate) struct WriteSlot<K, W, E> {
    pub(crate) key: K,
    pub(crate) hash: u64,
    /// The net value; `None` once a merge panicked (the slot is poisoned).
    pub(crate) value: Option<W>,
    /// Why the slot is poisoned (the merge fn's panic).
    pub(crate) poison: Option<String>,
    /// What the key's writers wait on (usually one).
    pub(crate) acks: Vec<StdArc<Ack<E>>>,
}

/// A key and a value to drop once the locks are released (user `Drop`).
pub(crate) type Garbage<K, W> = (Option<K>, Option<W>);

/// What [`WriteEntries::write`] did.
pub(crate) struct Wrote<K, W, E> {
    /// The acknowledgement the writer waits on.
    pub(crate) ack: StdArc<Ack<E>>,
    /// A new slot (and a new acknowledgement) was made.
    pub(crate) new: bool,
    /// What to drop once the locks are released: the writer's key when the key
    /// was there already, a replaced value.
    pub(crate) garbage: Garbage<K, W>,
}

/// Net values by key.
pub(crate) struct WriteEntries<K, W, E> {
    /// Unique in the process: names the batch in its group's index of keys
    /// not yet sent (`mode::WriteGroup::placed`).
    pub(crate) id: u64,
    pub(crate) slots: Vec<WriteSlot<K, W, E>>,
    /// Key -> slot, by the key's hash.
    index: HashTable<u32>,
}

/// What [`WriteEntries::fold_existing`] did.
pub(crate) enum Folded<K, W, E> {
    /// The key was here: the write joined its slot.
    Done(Wrote<K, W, E>),
    /// The key is not here: the write is handed back.
    Absent(K, W),
    /// `Eq` of a key panicked: nothing changed; the write is handed back.
    Panicked(UserPanic, K, W),
}

static NEXT_ENTRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<K, W, E> WriteEntries<K, W, E> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        WriteEntries {
            id: NEXT_ENTRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            slots: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(capacity),
        }
    }

    /// Distinct keys.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes every slot out.
    pub(crate) fn take_all(&mut self) -> Vec<WriteSlot<K, W, E>> {
        self.index.clear();
        std::mem::take(&mut self.slots)
    }

    /// Takes out the slots whose key hashes to `hash`.
    pub(crate) fn take_hash(&mut self, hash: u64) -> Vec<WriteSlot<K, W, E>> {
        let mut found: Vec<u32> = self.index.iter_hash(hash).copied().collect();
        if found.is_empty() {
            return Vec::new();
        }
        // Highest first, so that `swap_remove` never moves a slot still to take.
        found.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::with_capacity(found.len());
        for i in found {
            if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
                e.remove();
            }
            let last = (self.slots.len() - 1) as u32;
            out.push(self.slots.swap_remove(i as usize));
            if i != last {
                let moved = self.slots[i as usize].hash;
                if let Some(j) = self.index.find_mut(moved, |&j| j == last) {
                    *j = i;
                }
            }
        }
        out
    }

    fn push(&mut self, slot: WriteSlot<K, W, E>) {
        let i = self.slots.len() as u32;
        let hash = slot.hash;
        self.slots.push(slot);
        let slots = &self.slots;
        self.index
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
    }
}

impl<K: Eq, W, E> WriteEntries<K, W, E> {
    /// The slot of `key`, if any. `Eq` is user code: its panic is returned.
    fn find(&self, hash: u64, key: &K) -> Result<Option<u32>, UserPanic> {
        let slots = &self.slots;
        catch_unwind(AssertUnwindSafe(|| {
            self.index
                .find(hash, |&i| slots[i as usize].key == *key)
                .copied()
        }))
        .map_err(|p| UserPanic(panic_message(&*p)))
    }

    /// One write of `value` to `key`, if the key has a slot here.
    pub(crate) fn fold_existing(
        &mut self,
        hash: u64,
        key: K,
        value: W,
        merge: Option<&Merge<W>>,
    ) -> Folded<K, W, E> {
        match self.find(hash, &key) {
            Err(p) => Folded::Panicked(p, key, value),
            Ok(None) => Folded::Absent(key, value),
            Ok(Some(i)) => {
                let slot = &mut self.slots[i as usize];
                let replaced = fold(slot, value, merge);
                let ack = slot.acks[0].clone();
                ack.add_writer();
                Folded::Done(Wrote {
                    ack,
                    new: false,
                    garbage: (Some(key), replaced),
                })
            }
        }
    }

    /// Whether `key` has a slot here (`Eq` is user code: its panic is
    /// returned).
    pub(crate) fn contains(&self, hash: u64, key: &K) -> Result<bool, UserPanic> {
        Ok(self.find(hash, key)?.is_some())
    }

    /// One write of `value` to `key`: folded into the key's slot, or a new
    /// slot. A panic in `Eq` changes nothing and is returned; a panic in the
    /// merge fn poisons the slot (the writer still joins it, and fails with
    /// the slot's other writers).
    pub(crate) fn write(
        &mut self,
        hash: u64,
        key: K,
        value: W,
        merge: Option<&Merge<W>>,
        group_pending: Option<StdArc<std::sync::atomic::AtomicUsize>>,
    ) -> Result<Wrote<K, W, E>, UserPanic> {
        match self.find(hash, &key)? {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                let replaced = fold(slot, value, merge);
                let ack = slot.acks[0].clone();
                ack.add_writer();
                Ok(Wrote {
                    ack,
                    new: false,
                    garbage: (Some(key), replaced),
                })
            }
            None => {
                let ack = StdArc::new(Ack::new(hash, group_pending));
                self.push(WriteSlot {
                    key,
                    hash,
                    value: Some(value),
                    poison: None,
                    acks: vec![ack.clone()],
                });
                Ok(Wrote {
                    ack,
                    new: true,
                    garbage: (None, None),
                })
            }
        }
    }

    /// Takes in a whole slot: its writers join the key's slot here (the values
    /// fold, the earlier one first) or, if `room`, it becomes a slot of its
    /// own. `older`: the incoming slot's writes came before the ones here.
    /// Returns what to drop once the locks are released.
    pub(crate) fn absorb(
        &mut self,
        mut incoming: WriteSlot<K, W, E>,
        merge: Option<&Merge<W>>,
        older: bool,
        room: bool,
    ) -> Result<Garbage<K, W>, NotAbsorbed<K, W, E>> {
        let found = match self.find(incoming.hash, &incoming.key) {
            Ok(found) => found,
            Err(p) => return Err(NotAbsorbed::Panicked(p, incoming)),
        };
        let Some(i) = found else {
            if !room {
                return Err(NotAbsorbed::NoRoom(incoming));
            }
            self.push(incoming);
            return Ok((None, None));
        };
        let slot = &mut self.slots[i as usize];
        slot.acks.append(&mut incoming.acks);
        if slot.poison.is_none() {
            slot.poison = incoming.poison.take();
        }
        let garbage = match (incoming.value.take(), older) {
            // The incoming slot was poisoned: so is the union.
            (None, _) => slot.value.take(),
            (Some(v), false) => fold(slot, v, merge),
            (Some(mut earlier), true) => match slot.value.take() {
                None => Some(earlier),
                Some(later) => match merge {
                    None => {
                        slot.value = Some(later);
                        Some(earlier)
                    }
                    Some(m) => {
                        match catch_unwind(AssertUnwindSafe(|| {
                            m(&mut earlier, later);
                            earlier
                        })) {
                            Ok(v) => slot.value = Some(v),
                            Err(p) => slot.poison = Some(panic_message(&*p)),
                        }
                        None
                    }
                },
            },
        };
        Ok((Some(incoming.key), garbage))
    }
}

/// Why [`WriteEntries::absorb`] handed a slot back.
pub(crate) enum NotAbsorbed<K, W, E> {
    /// `Eq` of a key panicked.
    Panicked(UserPanic, WriteSlot<K, W, E>),
    /// The key is not here and there is no room for it.
    NoRoom(WriteSlot<K, W, E>),
}

/// Folds a later `value` into `slot`; returns a replaced value to drop.
fn fold<K, W, E>(slot: &mut WriteSlot<K, W, E>, value: W, merge: Option<&Merge<W>>) -> Option<W> {
    match (&mut slot.value, merge) {
        // Poisoned: the value is gone; this write fails with the others.
        (None, _) => Some(value),
        (Some(v), None) => Some(std::mem::replace(v, value)),
        (Some(v), Some(m)) => {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| m(v, value))) {
                // Half-folded: nothing of it can be trusted.
                slot.poison = Some(panic_message(&*p));
                return slot.value.take();
            }
            None
        }
    }
}

/// The acknowledgements not yet given, by key hash: what a flush waits for, and
/// what a read declared to follow these writes waits for.
pub(crate) struct Pending<E> {
    table: HashTable<StdArc<Ack<E>>>,
}

impl<E> Default for Pending<E> {
    fn default() -> Self {
        Pending {
            table: HashTable::new(),
        }
    }
}

impl<E> Pending<E> {
    pub(crate) fn insert(&mut self, ack: StdArc<Ack<E>>) {
        self.table.insert_unique(ack.hash, ack, |a| a.hash);
    }

    pub(crate) fn remove(&mut self, ack: &StdArc<Ack<E>>) {
        if let Ok(e) = self.table.find_entry(ack.hash, |a| StdArc::ptr_eq(a, ack)) {
            e.remove();
        }
        if self.table.capacity() > 4 * self.table.len() + 64 {
            self.table.shrink_to(2 * self.table.len(), |a| a.hash);
        }
    }

    /// Every acknowledgement not yet given.
    pub(crate) fn all(&self) -> Vec<StdArc<Ack<E>>> {
        self.table.iter().cloned().collect()
    }

    /// The acknowledgements not yet given for keys hashing to `hash`.
    pub(crate) fn of_hash(&self, hash: u64) -> Vec<StdArc<Ack<E>>> {
        self.table.iter_hash(hash).cloned().collect()
    }
}
