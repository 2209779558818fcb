//! One batch: its phase and what decides when it leaves, shared by every mode;
//! what it carries is the mode's (see `read` and `crate::write`).
//!
//! # Implementation details
//!
//! A batch is shared by its callers (each holds an `Arc<Batch>` and a ticket) and
//! its driver (the task that times, starts and completes it). Everything mutable
//! sits behind [`Batch::st`]. Lock order: the coalescer's state lock
//! (`Inner::state`) first, then a batch lock; a batch lock is never held while
//! the state lock is taken, nor while user code runs, except `Eq` of a key while
//! a call is admitted (caught, and run before anything is changed).
//!
//! ## Phases
//!
//! ```text
//!             due, a lane free                  driver starts it
//!  Gathering ─────────────────────▶ Leaving ───────────────────▶ Running ──▶ Done
//!      │  due, lanes busy               ▲                           │
//!      └──────────────────▶ Queued ─────┘ a lane handed over        │
//!                                                                    │
//!  every caller left, before Done ──────────────────────────────▶ Abandoned
//!  the driver was dropped (its runtime shut down), before Done ──▶ Lost
//! ```
//!
//! - **Gathering**: open to new keys while `Group::open` points here; holds no lane.
//! - **Queued**: due, waiting in `Group::queue` for a lane; still open until full.
//! - **Leaving**: holds a lane; its driver starts it at its next poll. Still
//!   open until then: a due batch keeps gathering keys until it actually leaves.
//! - **Running**: holds a lane; closed; its driver owns the running future and
//!   what the run needs (the mode's frozen contents).
//! - **Done**: each slot holds its entry (or the batch's shared failure); the
//!   lane is released. Callers take their entries; nothing else changes.
//! - **Abandoned**: every caller left first: never run, or stopped while running.
//! - **Lost**: its driver was dropped first; callers enqueue their keys again.
//!
//! ## Invariants
//!
//! - A batch holds a lane iff it is `Leaving` or `Running`, and its driver gives
//!   the lane back on every way out (done, abandoned, lost).
//! - `Group::open` is a `Gathering`, `Queued` or `Leaving` batch that is not full.
//! - `Group::queue` holds exactly the group's `Queued` batches, oldest first.
//! - A caller is *pending* (counted in `State::pending`) from its admission until
//!   the batch is `Done` or `Lost`, or it leaves: each transition out of pending
//!   subtracts exactly the callers it answers.
//! - Keys never change once a batch is `Running`; slots change only by callers
//!   leaving (waiters) and by the driver's delivery.

use std::hash::{BuildHasher, Hash};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc as StdArc;
use std::task::Waker;
use std::time::Instant;

use super::DefaultHashBuilder;

use super::group::GroupKey;
use super::mode::Mode;
use super::sync::Mutex;
use crate::error::Error;

/// One batch of one group.
pub(crate) struct Batch<M: Mode> {
    /// The group this batch serves (the same `Arc` as the group's own key).
    pub(crate) group: StdArc<GroupKey<M::G>>,
    /// The hash of `group`, to find it without running user code.
    pub(crate) group_hash: u64,
    pub(crate) st: Mutex<BatchState<M>>,
}

/// A batch's phase; see the module docs for the transitions.
pub(crate) enum Phase<E> {
    Gathering,
    Queued,
    Leaving,
    Running,
    Done {
        /// The failure every caller of the batch gets; `None` when each slot
        /// holds its own entry.
        failure: Option<Error<E>>,
    },
    Abandoned,
    Lost,
}

impl<E> Phase<E> {
    /// Before `Running`: the batch may still take keys and has not started.
    pub(crate) fn is_before_run(&self) -> bool {
        matches!(self, Phase::Gathering | Phase::Queued | Phase::Leaving)
    }

    /// The batch holds a lane in this phase.
    pub(crate) fn holds_lane(&self) -> bool {
        matches!(self, Phase::Leaving | Phase::Running)
    }

    /// No caller waits on the batch any more in this phase.
    pub(crate) fn is_over(&self) -> bool {
        matches!(self, Phase::Done { .. } | Phase::Abandoned | Phase::Lost)
    }
}

/// Everything mutable about a batch.
pub(crate) struct BatchState<M: Mode> {
    pub(crate) phase: Phase<M::E>,
    /// What the batch carries: keys and their callers (reads), keys, values and
    /// their writers (writes).
    pub(crate) entries: M::Entries,
    /// The driver's waker: woken by a kick, a lane hand-over, and the last
    /// caller leaving.
    pub(crate) driver: Option<Waker>,
    /// It holds `max_batch` distinct keys (and is no longer open).
    pub(crate) full: bool,
    /// Asked to leave now (a lane freed on an adaptive road).
    pub(crate) kicked: bool,
    /// Opened on an adaptive road: it leaves when a lane frees (its window is
    /// a bound), whatever policy its group runs by then.
    pub(crate) awaits_lane: bool,
    /// It leaves once the calls made in the same instant have joined.
    pub(crate) settle: bool,
    /// Re-entrant: a caller's own batch of this coalescer (or of one that waits
    /// for it) is running; it takes a lane past `max_in_flight` rather than wait
    /// for itself (see `reentry`).
    pub(crate) exempt: bool,
    /// Coalescers whose running batches wait for this one (see `reentry`).
    pub(crate) ancestry: Vec<u64>,
    /// Calls admitted, including those that left and duplicates.
    pub(crate) admitted: u64,
    /// Calls that joined a key already in the batch.
    pub(crate) dedup_hits: u64,
    /// When the first call arrived (real clock), for the `wait` metric.
    pub(crate) opened: Instant,
    /// How long it gathers at most: the configured window, or the group's
    /// tuned one ([`Dispatch::Auto`](crate::Dispatch::Auto)).
    pub(crate) window: std::time::Duration,
}

impl<M: Mode> Drop for BatchState<M> {
    /// The last holder of a batch may be any of its callers, a group's list
    /// or a driver: the keys, values and errors it still holds (an entry a
    /// cancelled caller never took, a shared failure) are user types, and a
    /// panic in their `Drop` must not reach whoever that is.
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Abandoned);
        let entries = std::mem::replace(&mut self.entries, M::entries(0));
        super::deliver::drop_quietly((phase, entries));
    }
}

impl<M: Mode> BatchState<M> {
    pub(crate) fn new(capacity: usize, settle: bool, window: std::time::Duration) -> Self {
        BatchState {
            phase: Phase::Gathering,
            entries: M::entries(capacity),
            driver: None,
            full: false,
            kicked: false,
            awaits_lane: false,
            settle,
            exempt: false,
            ancestry: Vec::new(),
            admitted: 0,
            dedup_hits: 0,
            opened: Instant::now(),
            window,
        }
    }

    /// Takes the driver's waker, to wake it once the locks are released.
    pub(crate) fn driver_waker(&self) -> Option<Waker> {
        self.driver.clone()
    }
}

/// A panic caught in user code (`Eq`, `Clone`), with its message.
pub(crate) struct UserPanic(pub(crate) String);

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Hashes `value` with `hasher`, catching a panic in its `Hash`.
pub(crate) fn hash_of<T: Hash + ?Sized>(
    hasher: &DefaultHashBuilder,
    value: &T,
) -> Result<u64, UserPanic> {
    catch_unwind(AssertUnwindSafe(|| hasher.hash_one(value)))
        .map_err(|p| UserPanic(panic_message(&*p)))
}
