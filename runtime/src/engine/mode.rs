//! What a batch carries: the one trait the shared machinery (batches, groups,
//! lanes, dispatch policies, drivers) is generic over.
//!
//! - **Reads** ([`super::read::Read`]): keys, each caller waiting in a slot for
//!   its key's entry; a batch nobody waits for any more is stopped.
//! - **Writes** (`crate::write`): a value per key, folded by a merge rule;
//!   writers wait for their key's acknowledgement, which may move to a later
//!   batch while the key's previous write is still running; a batch is never
//!   stopped once a write is accepted.
//!
//! A mode supplies its batch contents and the four steps that differ: taking a
//! batch's contents for its run ([`Mode::freeze`]), starting the run
//! ([`Mode::make`]), handing out its outcome ([`Mode::complete`]) and failing its
//! callers when its driver is lost ([`Mode::lose`]). Everything else (gathering,
//! windows, lanes, queues, re-entrancy, timeouts, panics) is shared.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::Waker;

use super::batch::{Batch, BatchState};
use super::deliver::Outcome;
use super::group::{Group, GroupKey};
use super::sync::Arc;
use super::{Inner, State};
use crate::recorder::CallerSpan;

/// A running batch function, type-erased.
pub(crate) type RunOf<O> = Pin<Box<dyn Future<Output = O> + Send + 'static>>;

/// What a batch carries, and how its run starts and ends.
pub(crate) trait Mode: Sized + Send + Sync + 'static {
    /// Partitions calls into batches (the group the batch function receives).
    type G: Hash + Eq + Send + Sync + 'static;
    /// The batch function's error.
    type E: Send + Sync + 'static;
    /// A batch's per-key contents, behind its lock.
    type Entries: Send + 'static;
    /// A call that runs alone (reads on an empty adaptive road).
    type Solo: Send + Sync + 'static;
    /// Per-group state of the mode (writes: the keys whose write is running).
    type GroupExtra: Default + Send + 'static;
    /// Per-coalescer settings of the mode (writes: the merge rule).
    type Settings: Send + Sync + 'static;
    /// Per-coalescer state of the mode, behind the state lock (writes: the
    /// acknowledgements not yet given, by key hash).
    type Shared: Default + Send + 'static;
    /// The batch function, as a driver holds it.
    type Maker: Clone + Send + Sync + 'static;
    /// What the driver holds while the batch runs.
    type Frozen: Send + 'static;
    /// What the batch function's run yields.
    type Output: Send + 'static;
    /// Whether every caller leaving stops the batch (reads), or it goes on
    /// (writes: an accepted write is not withdrawn).
    const ABANDONS: bool;

    /// Empty contents for a new batch.
    fn entries(capacity: usize) -> Self::Entries;
    /// Distinct keys in the batch (it is full at `max_batch`).
    fn live_keys(entries: &Self::Entries) -> usize;

    /// Leaving -> Running, under the state and the batch's locks: takes what
    /// the run needs out of the batch (writes: holds back keys whose previous
    /// write still runs).
    fn freeze(
        inner: &Inner<Self>,
        batch: &Arc<Batch<Self>>,
        st: &mut BatchState<Self>,
        group: &mut Group<Self>,
    ) -> Freeze<Self>;

    /// Starts the run, outside every lock (user code: a panic is caught by the
    /// driver and fails the batch).
    fn make(
        inner: &StdArc<Inner<Self>>,
        batch: &Arc<Batch<Self>>,
        maker: &Self::Maker,
        group: &StdArc<GroupKey<Self::G>>,
        frozen: &mut Self::Frozen,
    ) -> RunOf<Self::Output>;

    /// The run ended: settles the outcome (outside the locks) and hands it to
    /// the callers (taking the locks it needs; not the lane's: the driver gives
    /// the lane back after this).
    fn complete(
        inner: &Inner<Self>,
        batch: &Batch<Self>,
        frozen: Self::Frozen,
        outcome: Outcome<Self::Output>,
    ) -> Completed<Self>;

    /// Whether the mode's state of a group holds nothing (the group may be
    /// forgotten once it is otherwise idle too).
    fn idle(_extra: &Self::GroupExtra) -> bool {
        true
    }

    /// `batch` left the group's `open` slot (full, or leaving) but may still
    /// take calls for its keys (reads: see `read::InFlight`).
    fn keep(_extra: &mut Self::GroupExtra, _batch: &Arc<Batch<Self>>) {}

    /// `batch` takes no more calls (done, abandoned, lost).
    fn forget(_extra: &mut Self::GroupExtra, _batch: &Batch<Self>) {}

    /// The driver was dropped before the batch was over (its runtime shut
    /// down): under both locks, ends the batch's callers' wait. `frozen` is
    /// what the driver held if the batch was running.
    fn lose(
        inner: &Inner<Self>,
        batch: &Batch<Self>,
        st: &mut BatchState<Self>,
        frozen: Option<Self::Frozen>,
        state: &mut State<Self>,
    ) -> Lost;

    /// A batch queues for a lane: lone calls holding the group's lanes must go
    /// on without their callers (reads). Called with no lock held.
    fn promote(
        _inner: &StdArc<Inner<Self>>,
        _solos: Vec<StdArc<Self::Solo>>,
        _batch: &Arc<Batch<Self>>,
    ) {
    }
}

/// What [`Mode::freeze`] hands the driver.
pub(crate) struct Freeze<M: Mode> {
    pub(crate) frozen: M::Frozen,
    /// Calls admitted, keys dispatched, duplicate calls, keys abandoned.
    pub(crate) counts: (u64, usize, u64, u64),
    /// The callers' spans, for the batch span's links.
    pub(crate) callers: Vec<CallerSpan>,
}

/// What [`Mode::complete`] leaves the driver to do.
pub(crate) struct Completed<M: Mode> {
    /// The outcome's label in telemetry.
    pub(crate) label: &'static str,
    /// The batch function ran (a write batch whose keys all waited for their
    /// previous write sends nothing, and is not recorded as a batch).
    pub(crate) ran: bool,
    /// Callers failed by the batch's shared failure.
    pub(crate) failed: usize,
    /// Entries nobody asked for.
    pub(crate) unrequested: u64,
    /// Callers to wake.
    pub(crate) wakers: Vec<Waker>,
    /// Batches made for contents that waited for this one (writes held back
    /// while their key's previous write ran): the driver starts their drivers.
    pub(crate) respawn: Vec<Arc<Batch<M>>>,
}

/// What [`Mode::lose`] leaves the driver to do.
pub(crate) struct Lost {
    /// Callers to wake.
    pub(crate) wakers: Vec<Waker>,
    /// Calls no dispatch counted (the batch never started).
    pub(crate) uncounted_calls: u64,
}
