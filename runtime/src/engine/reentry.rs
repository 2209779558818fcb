//! Which batches the current thread is inside, so that a batch function that
//! calls a coalesced function (itself, or another that calls back) never waits
//! for a lane held by the very batch that waits for it.
//!
//! While a driver polls a batch, the thread's stack holds the ids of that
//! batch's coalescer and of every coalescer whose running batch (transitively)
//! waits for it: its *ancestry*. A call admitted from inside a poll records the
//! current stack in the batch it joins, so the ancestry follows the work across
//! tasks. A call whose coalescer is on the stack is re-entrant: its batch is
//! exempt from `max_in_flight` (see `Batch::exempt`). The lane it takes past
//! the limit is given up when it ends, not handed to a queued batch (see
//! `policy::release`), so the group is back within its limit.
//!
//! Every call reads the stack and every poll of a run pushes on it, so the stack
//! lives in thread-locals without destructors (the cheapest to reach): a depth
//! and up to `INLINE` ids; deeper ids go to a `Vec` reached only then.

use std::cell::{Cell, RefCell};

/// Ids kept without allocation.
const INLINE: usize = 16;

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static IDS: [Cell<u64>; INLINE] = const { [const { Cell::new(0) }; INLINE] };
    static DEEPER: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The ids on the stack, bottom first.
fn stack(depth: usize) -> Vec<u64> {
    let mut out: Vec<u64> =
        IDS.with(|ids| ids[..depth.min(INLINE)].iter().map(Cell::get).collect());
    if depth > INLINE {
        DEEPER.with(|d| out.extend_from_slice(&d.borrow()[..depth - INLINE]));
    }
    out
}

/// Whether the current thread is polling a batch of coalescer `core` or of one
/// of its ancestry, and the ancestry a batch joined from here inherits (empty,
/// without allocating, outside any batch).
pub(crate) fn here(core: u64) -> (bool, Vec<u64>) {
    let depth = DEPTH.with(Cell::get);
    if depth == 0 {
        return (false, Vec::new());
    }
    let ancestry = stack(depth);
    (ancestry.contains(&core), ancestry)
}

fn push(id: u64) {
    let depth = DEPTH.with(Cell::get);
    if depth < INLINE {
        IDS.with(|ids| ids[depth].set(id));
    } else {
        DEEPER.with(|d| {
            let mut d = d.borrow_mut();
            d.truncate(depth - INLINE);
            d.push(id);
        });
    }
    DEPTH.with(|d| d.set(depth + 1));
}

/// Marks the current thread as inside a batch of `core` with `ancestry` until
/// the returned guard is dropped (also on unwind).
pub(crate) fn enter(core: u64, ancestry: &[u64]) -> Frame {
    let depth = DEPTH.with(Cell::get);
    for &id in ancestry {
        push(id);
    }
    push(core);
    Frame { depth }
}

/// Leaves a batch's poll: restores the stack.
pub(crate) struct Frame {
    depth: usize,
}

impl Drop for Frame {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(self.depth));
    }
}

/// Merges `more` into `ancestry`, keeping each id once.
pub(crate) fn merge(ancestry: &mut Vec<u64>, more: &[u64]) {
    for id in more {
        if !ancestry.contains(id) {
            ancestry.push(*id);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn frames_nest_and_unwind_past_the_inline_ids() {
        assert_eq!(here(1), (false, vec![]));
        let outer = enter(1, &[]);
        assert_eq!(here(1), (true, vec![1]));
        let deep: Vec<u64> = (100..120).collect();
        {
            let _inner = enter(2, &deep);
            let (inside, ancestry) = here(119);
            assert!(inside);
            assert_eq!(ancestry.len(), 1 + deep.len() + 1);
            assert_eq!(ancestry[0], 1);
            assert_eq!(*ancestry.last().unwrap(), 2);
            assert!(!here(3).0);
        }
        assert_eq!(here(2), (false, vec![1]));
        drop(outer);
        assert_eq!(here(1), (false, vec![]));
    }
}
