//! The synchronisation primitives of the core, swapped for loom's under `--cfg loom`
//! so that the model checker can explore every interleaving.

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `m`, recovering the guard if a panic in user code (`Hash`, `Eq`, `Clone`)
/// poisoned it: the core's own invariants are restored before any user code runs.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
