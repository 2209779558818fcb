//! Dispatch policies as pure decisions: each function looks at a snapshot of a
//! group (its [`Road`]) or of a gathering batch and returns what to do; the
//! caller applies the decision under its locks. Nothing here locks, allocates or
//! reads a clock, so every rule is unit-tested alone (below).
//!
//! Two policies (see [`Dispatch`]):
//! - **window** (the bus): a batch gathers until its window has elapsed or it
//!   holds `max_batch` keys, then takes a lane (or queues for one).
//! - **adaptive** ("when the road is empty, let everyone drive"): a call that
//!   finds its group idle and a lane free runs alone at once; one that finds a
//!   lane free while other batches run opens a batch that leaves as soon as the
//!   calls made in the same instant have joined; calls arriving while every
//!   lane is busy gather, and their batch leaves when a lane frees (or at the
//!   window, or full).

use crate::config::Dispatch;

/// What a dispatch decision sees of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Road {
    /// Lanes (batches and lone calls) running now.
    pub(crate) lanes_used: usize,
    /// Lanes the group may use: `max_in_flight`, or for adaptive dispatch one
    /// when it is unset.
    pub(crate) lanes: usize,
    /// Due batches waiting for a lane.
    pub(crate) queued: usize,
}

impl Road {
    /// Whether a batch that is due now may take a lane at once.
    pub(crate) fn lane_free(&self) -> bool {
        self.lanes_used < self.lanes && self.queued == 0
    }
}

/// What a call does when its group has no batch open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Take a lane and run the batch of this one key in the caller's own future.
    Alone,
    /// Open a batch. `settle`: it leaves as soon as a yield brings no new caller
    /// (the calls made in the same instant), instead of waiting out its window.
    Open { settle: bool },
}

/// The arrival rule for a call that finds no open batch in its group.
pub(crate) fn arrival(dispatch: Dispatch, road: Road, zero_window: bool) -> Arrival {
    match dispatch {
        Dispatch::Window => Arrival::Open {
            settle: zero_window,
        },
        // `Auto` is given here as the policy its controller runs now.
        Dispatch::Adaptive | Dispatch::Auto if road.lane_free() && road.lanes_used == 0 => {
            Arrival::Alone
        }
        Dispatch::Adaptive | Dispatch::Auto => Arrival::Open {
            settle: zero_window || road.lane_free(),
        },
    }
}

/// Settling rounds a batch may spend waiting for same-instant calls: a bound,
/// so that a steady trickle of arrivals cannot hold a batch back forever.
pub(crate) const MAX_SETTLE_ROUNDS: u32 = 16;

/// What a gathering batch knows when its driver looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gathering {
    /// It holds `max_batch` distinct keys.
    pub(crate) full: bool,
    /// Asked to leave now: a lane freed on an adaptive road, or a flush.
    pub(crate) kicked: bool,
    /// It settles (see [`Arrival::Open`]).
    pub(crate) settle: bool,
    /// Calls admitted so far.
    pub(crate) admitted: u64,
    /// Calls admitted at the last settling yield, and how many yields so far.
    pub(crate) seen: Option<(u64, u32)>,
    /// Its window has elapsed.
    pub(crate) window_over: bool,
}

/// What a driver does with its gathering batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gather {
    /// Dispatch it: take a lane, or queue for one.
    Due,
    /// Yield once, so that the calls made in the same instant join.
    Yield,
    /// Wait for the window to end or for a kick.
    Wait,
}

/// The gathering rule.
pub(crate) fn gather(g: Gathering) -> Gather {
    if g.full || g.window_over {
        return Gather::Due;
    }
    if g.kicked || g.settle {
        // Settle: yield while the last yield brought new callers.
        return match g.seen {
            None => Gather::Yield,
            Some((seen, rounds)) if g.admitted > seen && rounds < MAX_SETTLE_ROUNDS => {
                Gather::Yield
            }
            Some(_) => Gather::Due,
        };
    }
    Gather::Wait
}

/// What happens to a lane its batch gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Hand it to the oldest queued batch (the lane stays in use).
    HandOver,
    /// Free it, and tell the open batch to leave now (adaptive: a lane is free).
    FreeAndKick,
    /// Free it.
    Free,
}

/// The release rule. `open` is whether the group has a batch gathering.
///
/// A group can run more batches than its lanes: a re-entrant batch takes a
/// lane past the limit, and [`Dispatch::Auto`]'s controller lowers its lanes
/// under batches already running. Then a lane given back is given up — not
/// handed to a queued batch, nor offered to the open one — until the batches
/// in flight are within the limit again; else a queue that never empties
/// would keep the group over its limit for as long as the load lasts.
pub(crate) fn release(dispatch: Dispatch, road: Road, open: bool) -> Release {
    if road.lanes_used > road.lanes {
        Release::Free
    } else if road.queued > 0 {
        Release::HandOver
    } else if matches!(dispatch, Dispatch::Adaptive | Dispatch::Auto) && open {
        Release::FreeAndKick
    } else {
        Release::Free
    }
}

/// Whether a due batch may take a lane now. An exempt batch (re-entrant: a
/// batch of this group's coalescer waits for it) always may: waiting would
/// wait for itself.
pub(crate) fn may_take_lane(road: Road, exempt: bool) -> bool {
    exempt || road.lane_free()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn road(lanes_used: usize, lanes: usize, queued: usize) -> Road {
        Road {
            lanes_used,
            lanes,
            queued,
        }
    }

    fn gathering() -> Gathering {
        Gathering {
            full: false,
            kicked: false,
            settle: false,
            admitted: 1,
            seen: None,
            window_over: false,
        }
    }

    #[test]
    fn window_dispatch_always_opens_a_batch() {
        for r in [road(0, usize::MAX, 0), road(3, 4, 0), road(4, 4, 2)] {
            assert_eq!(
                arrival(Dispatch::Window, r, false),
                Arrival::Open { settle: false }
            );
            assert_eq!(
                arrival(Dispatch::Window, r, true),
                Arrival::Open { settle: true }
            );
        }
    }

    #[test]
    fn adaptive_goes_alone_only_on_an_empty_road() {
        assert_eq!(
            arrival(Dispatch::Adaptive, road(0, 1, 0), false),
            Arrival::Alone
        );
        assert_eq!(
            arrival(Dispatch::Adaptive, road(0, 4, 0), false),
            Arrival::Alone
        );
        // A free lane beside running batches: settle with the same instant.
        assert_eq!(
            arrival(Dispatch::Adaptive, road(1, 4, 0), false),
            Arrival::Open { settle: true }
        );
        // Every lane busy, or a queue ahead: gather.
        assert_eq!(
            arrival(Dispatch::Adaptive, road(1, 1, 0), false),
            Arrival::Open { settle: false }
        );
        assert_eq!(
            arrival(Dispatch::Adaptive, road(0, 1, 1), false),
            Arrival::Open { settle: false }
        );
    }

    #[test]
    fn a_full_batch_or_an_elapsed_window_is_due() {
        let g = gathering();
        assert_eq!(gather(g), Gather::Wait);
        assert_eq!(gather(Gathering { full: true, ..g }), Gather::Due);
        assert_eq!(
            gather(Gathering {
                window_over: true,
                ..g
            }),
            Gather::Due
        );
        // Full beats settling.
        assert_eq!(
            gather(Gathering {
                full: true,
                settle: true,
                ..g
            }),
            Gather::Due
        );
    }

    #[test]
    fn settling_yields_while_yields_bring_callers_and_is_bounded() {
        let g = Gathering {
            settle: true,
            ..gathering()
        };
        assert_eq!(gather(g), Gather::Yield);
        assert_eq!(
            gather(Gathering {
                admitted: 5,
                seen: Some((1, 1)),
                ..g
            }),
            Gather::Yield
        );
        assert_eq!(
            gather(Gathering {
                admitted: 5,
                seen: Some((5, 2)),
                ..g
            }),
            Gather::Due
        );
        assert_eq!(
            gather(Gathering {
                admitted: 99,
                seen: Some((50, MAX_SETTLE_ROUNDS)),
                ..g
            }),
            Gather::Due
        );
        // A kick settles the same way.
        assert_eq!(
            gather(Gathering {
                kicked: true,
                ..gathering()
            }),
            Gather::Yield
        );
    }

    #[test]
    fn a_released_lane_goes_to_the_queue_first() {
        assert_eq!(
            release(Dispatch::Window, road(2, 2, 1), true),
            Release::HandOver
        );
        assert_eq!(
            release(Dispatch::Adaptive, road(1, 1, 1), true),
            Release::HandOver
        );
        assert_eq!(
            release(Dispatch::Adaptive, road(1, 1, 0), true),
            Release::FreeAndKick
        );
        assert_eq!(
            release(Dispatch::Adaptive, road(1, 1, 0), false),
            Release::Free
        );
        // A window batch waits out its window even when a lane frees.
        assert_eq!(
            release(Dispatch::Window, road(1, 1, 0), true),
            Release::Free
        );
    }

    #[test]
    fn a_lane_past_the_limit_is_given_up_not_handed_over() {
        // Three batches running where the limit is two (an exempt batch took
        // a lane past it, or the controller lowered the lanes): the lane goes,
        // the queue waits for one within the limit.
        for dispatch in [Dispatch::Window, Dispatch::Adaptive, Dispatch::Auto] {
            assert_eq!(release(dispatch, road(3, 2, 1), true), Release::Free);
            assert_eq!(release(dispatch, road(3, 2, 0), true), Release::Free);
            // Back at the limit, the queue comes first again.
            assert_eq!(release(dispatch, road(2, 2, 1), true), Release::HandOver);
        }
    }

    #[test]
    fn an_exempt_batch_takes_a_lane_past_the_limit() {
        assert!(!may_take_lane(road(1, 1, 0), false));
        assert!(!may_take_lane(road(0, 1, 1), false));
        assert!(may_take_lane(road(1, 1, 3), true));
        assert!(may_take_lane(road(0, 1, 0), false));
    }
}
