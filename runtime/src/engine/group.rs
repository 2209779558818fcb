//! Groups: the partitions of a coalescer's calls, each with its open batch, its
//! lanes and its queue.
//!
//! # Implementation details
//!
//! Calls share a batch only within one group. A group is keyed by
//! [`GroupKey`]: an [`Identity`] (which instance a method's calls go through)
//! and the user's group value (`group = …`, extra parameters). Everything here
//! is guarded by the coalescer's state lock.
//!
//! Lanes: a group runs at most `lanes` batches at once (`max_in_flight`). A
//! lane is held by every `Leaving` or `Running` batch and by every lone call
//! ([`SoloCell`]); `lanes_used` counts them. A due batch that finds no free
//! lane waits in `queue`; a lane given back goes to the oldest queued batch
//! before anyone else (see `policy::release`).
//!
//! Identity of instances: [`Identity::Object`] is a type and an address. An
//! address names one object only while that object is alive, so a batch is
//! findable under it only while it has a caller, and every caller borrows the
//! object for as long as it is registered: whoever finds the batch borrows the
//! same live object (two live objects of one type cannot share an address,
//! except zero-sized ones, which hold nothing to tell them apart). When the
//! last caller leaves, the batch leaves the group (it is abandoned).

use std::any::TypeId;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc as StdArc;

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::batch::{panic_message, Batch, UserPanic};
use super::mode::Mode;
use super::policy::Road;
use super::sync::Arc;
use super::tune::Tune;
use crate::config::{Config, Dispatch};
use std::time::Duration;

/// Which instance a call goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// No instance (a free function), or instances told apart by the group value
    /// alone (`instance = …`).
    Shared,
    /// One live object: its type and address.
    Object { ty: TypeId, addr: usize },
}

/// What partitions calls into batches.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey<G> {
    pub(crate) identity: Identity,
    pub(crate) group: G,
}

/// Idle groups are kept (not removed and re-inserted batch after batch) while the
/// coalescer has at most this many groups.
pub(crate) const IDLE_KEPT: usize = 16;

/// One group's dispatch state.
pub(crate) struct Group<M: Mode> {
    pub(crate) key: StdArc<GroupKey<M::G>>,
    pub(crate) hash: u64,
    /// The batch new calls join.
    pub(crate) open: Option<Arc<Batch<M>>>,
    /// Due batches waiting for a lane, oldest first.
    pub(crate) queue: VecDeque<Arc<Batch<M>>>,
    /// Lanes in use: `Leaving` and `Running` batches and lone calls.
    pub(crate) lanes_used: usize,
    /// The lone calls holding a lane, so that a batch that waits for a lane
    /// can have them driven by a task of their own (see `solo`).
    pub(crate) solos: Vec<StdArc<M::Solo>>,
    /// The cell of the group's last lone call, reused by the next one once
    /// nothing else holds it (the idle road allocates no cell per call).
    pub(crate) spare: Option<StdArc<M::Solo>>,
    /// Distinct keys of the group's last batch: a new batch reserves as much.
    pub(crate) hint: usize,
    /// The mode's own state of the group.
    pub(crate) extra: M::GroupExtra,
    /// Calls of this group waiting now, when `max_pending_per_group` is set
    /// (each call holds a `GroupSlot` that gives its place back).
    pub(crate) pending: StdArc<std::sync::atomic::AtomicUsize>,
    /// The group's controller ([`Dispatch::Auto`] only).
    pub(crate) tune: Option<Box<Tune>>,
}

impl<M: Mode> Group<M> {
    pub(crate) fn new(key: StdArc<GroupKey<M::G>>, hash: u64) -> Self {
        Group {
            key,
            hash,
            open: None,
            queue: VecDeque::new(),
            lanes_used: 0,
            solos: Vec::new(),
            spare: None,
            hint: 1,
            extra: M::GroupExtra::default(),
            pending: StdArc::default(),
            tune: None,
        }
    }

    /// Closes the group's open batch if it is `batch` (full or leaving): true
    /// if it was, for the caller to count one fewer gathering batch. The batch
    /// may still take calls for its keys until it is over (see [`Mode::keep`]).
    pub(crate) fn close(&mut self, batch: &Arc<Batch<M>>) -> bool {
        M::keep(&mut self.extra, batch);
        self.unopen(batch)
    }

    fn unopen(&mut self, batch: &Arc<Batch<M>>) -> bool {
        let open = self.open.as_ref().is_some_and(|b| Arc::ptr_eq(b, batch));
        if open {
            self.open = None;
        }
        open
    }

    /// Takes `batch`, which will not run, out of the group: closed and out of
    /// the queue. True if it was the open batch (see [`Group::close`]).
    pub(crate) fn withdraw(&mut self, batch: &Arc<Batch<M>>) -> bool {
        self.queue.retain(|b| !Arc::ptr_eq(b, batch));
        M::forget(&mut self.extra, batch);
        self.unopen(batch)
    }

    /// `batch` is over: it takes no more calls.
    pub(crate) fn forget(&mut self, batch: &Batch<M>) {
        M::forget(&mut self.extra, batch);
    }

    pub(crate) fn road(&self, lanes: usize) -> Road {
        Road {
            lanes_used: self.lanes_used,
            lanes: self.tune.as_ref().map_or(lanes, |t| t.lanes),
            queued: self.queue.len(),
        }
    }

    /// The policy the group runs now, and the window a batch opened now
    /// gathers for: the configured ones, or for [`Dispatch::Auto`] what its
    /// controller set (adaptive while its window is zero, the bus while it
    /// lingers).
    pub(crate) fn policy(&self, dispatch: Dispatch, window: Duration) -> (Dispatch, Duration) {
        if dispatch != Dispatch::Auto {
            return (dispatch, window);
        }
        let linger = self.tune.as_ref().map_or(Duration::ZERO, |t| t.lingers());
        // Lingering applies while traffic flows: on an idle group a call goes
        // at once.
        if !linger.is_zero() && self.lanes_used > 0 {
            (Dispatch::Window, linger)
        } else {
            (Dispatch::Adaptive, window)
        }
    }

    /// Makes the group's controller if the coalescer tunes itself.
    pub(crate) fn tuned(&mut self, config: &Config) {
        if config.dispatch == Dispatch::Auto && self.tune.is_none() {
            self.tune = Some(Box::new(Tune::new(config.max_in_flight, config.window)));
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.open.is_none() && self.queue.is_empty() && self.lanes_used == 0 && M::idle(&self.extra)
    }
}

/// The groups of one coalescer.
pub(crate) struct Groups<M: Mode> {
    table: HashTable<Group<M>>,
}

impl<M: Mode> Groups<M> {
    pub(crate) fn new() -> Self {
        Groups {
            table: HashTable::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Group<M>> {
        self.table.iter_mut()
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// The group whose key is this very `Arc` (a batch's or a lone call's own
    /// group, which exists for as long as they hold a lane or are open). Runs
    /// no user code.
    pub(crate) fn by_key(
        &mut self,
        hash: u64,
        key: &StdArc<GroupKey<M::G>>,
    ) -> Option<&mut Group<M>> {
        self.by_addr(hash, StdArc::as_ptr(key) as usize)
    }

    /// The group whose key's `Arc` is at `addr` (see [`Groups::by_key`]): for a
    /// caller that holds a lane of the group, and so keeps it, but no `Arc` of
    /// its key.
    pub(crate) fn by_addr(&mut self, hash: u64, addr: usize) -> Option<&mut Group<M>> {
        self.table
            .find_mut(hash, |g| StdArc::as_ptr(&g.key) as usize == addr)
    }

    /// Removes the group whose key is at `addr` if it is idle and the coalescer
    /// has more than a handful of groups; shrinks the table when it is mostly
    /// empty. The removed group is returned, to be dropped outside the lock (its
    /// key is user data).
    pub(crate) fn retire_addr(&mut self, hash: u64, addr: usize) -> Option<Group<M>> {
        if self.table.len() <= IDLE_KEPT {
            return None;
        }
        let entry = self
            .table
            .find_entry(hash, |g| StdArc::as_ptr(&g.key) as usize == addr)
            .ok()?;
        if !entry.get().idle() {
            return None;
        }
        let (group, _) = entry.remove();
        if self.table.capacity() > 4 * self.table.len() + 64 {
            self.table.shrink_to(2 * self.table.len(), |g| g.hash);
        }
        Some(group)
    }

    /// The group whose key is this very `Arc`, made again if it was retired.
    pub(crate) fn by_key_or_insert(
        &mut self,
        hash: u64,
        key: &StdArc<GroupKey<M::G>>,
    ) -> &mut Group<M> {
        match self
            .table
            .entry(hash, |g| StdArc::ptr_eq(&g.key, key), |g| g.hash)
        {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(Group::new(key.clone(), hash)).into_mut(),
        }
    }
}

impl<M: Mode> Groups<M> {
    /// The group equal to `key`, made if there is none. Returns `key` back when
    /// an equal group existed (to be dropped outside the lock: it is user data).
    /// `Eq` of the group is user code: a panic in it changes nothing and is
    /// returned.
    #[allow(clippy::type_complexity)]
    pub(crate) fn find_or_insert(
        &mut self,
        hash: u64,
        key: GroupKey<M::G>,
    ) -> Result<(&mut Group<M>, Option<GroupKey<M::G>>), UserPanic> {
        let table = &mut self.table;
        let probe = &key;
        let entry = catch_unwind(AssertUnwindSafe(move || {
            // Moved in (not reborrowed), so the entry may outlive the closure.
            let table = table;
            table.entry(hash, move |g| *g.key == *probe, |g| g.hash)
        }))
        .map_err(|p| UserPanic(panic_message(&*p)))?;
        Ok(match entry {
            Entry::Occupied(o) => (o.into_mut(), Some(key)),
            Entry::Vacant(v) => (
                v.insert(Group::new(StdArc::new(key), hash)).into_mut(),
                None,
            ),
        })
    }
}
