//! The one delivery path: a batch's outcome turned into an entry per slot, for
//! shared batches and lone calls alike.
//!
//! Everything here runs in the driver (or the lone caller) outside every lock:
//! the output's iterator, `Hash` and `Eq` of the returned keys, and the `Drop`
//! of entries nobody asked for are user code, and a panic in any of them fails
//! the batch with [`Error::Panicked`] rather than leave it half delivered.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use super::DefaultHashBuilder;

use super::batch::panic_message;
use crate::error::Error;
use crate::output::Delivery;
use std::hash::Hash;

/// How the delivery path finds the slot of a returned key.
pub(crate) trait Lookup<K> {
    /// The slot of `key`, if it was asked for. Calls `Hash` and `Eq` (user
    /// code): if `Eq` panics while comparing with a slot's key, that slot is
    /// returned as `Err`, so that only its callers fail; if `Hash` panics, the
    /// key matches nothing.
    fn slot_of(&self, key: &K, hasher: &DefaultHashBuilder) -> Result<Option<u32>, u32>;
    /// How many keys were given to the batch function.
    fn dispatched(&self) -> usize;
    /// The slot of the key at position `pos` of the batch function's keys.
    fn slot_at(&self, pos: usize) -> u32;
    /// How many slots there are (dispatched or not).
    fn slots(&self) -> usize;
}

/// How a run ended.
pub(crate) enum Outcome<O> {
    /// The batch function returned `O`.
    Delivered(O),
    /// The batch function (or its future) panicked; the message.
    Panicked(String),
    /// It ran past the timeout.
    TimedOut,
}

/// Where `settle` puts each slot's entry: every slot of a batch, or the one of a
/// lone call (no allocation).
pub(crate) trait Sink<V, E>: Default {
    /// The entry of `slot` (each slot at most once).
    fn put(&mut self, slot: u32, entry: Result<V, Error<E>>);
}

impl<V, E> Sink<V, E> for Vec<(u32, Result<V, Error<E>>)> {
    fn put(&mut self, slot: u32, entry: Result<V, Error<E>>) {
        self.push((slot, entry));
    }
}

impl<V, E> Sink<V, E> for Option<Result<V, Error<E>>> {
    fn put(&mut self, _: u32, entry: Result<V, Error<E>>) {
        *self = Some(entry);
    }
}

/// Which slots got an entry: a bit mask for up to 64 slots, else a `Vec`.
enum Delivered {
    Small(u64),
    Large(Vec<bool>),
}

impl Delivered {
    fn new(slots: usize) -> Self {
        if slots <= 64 {
            Delivered::Small(0)
        } else {
            Delivered::Large(vec![false; slots])
        }
    }

    /// Marks `slot`; false if it was marked already.
    fn mark(&mut self, slot: u32) -> bool {
        match self {
            Delivered::Small(bits) => {
                let bit = 1u64 << slot;
                let new = *bits & bit == 0;
                *bits |= bit;
                new
            }
            Delivered::Large(v) => !std::mem::replace(&mut v[slot as usize], true),
        }
    }
}

/// A run's outcome, per slot.
pub(crate) struct Settled<S, E> {
    /// The entries found, by slot (each slot at most once). Slots not listed
    /// have no entry.
    pub(crate) values: S,
    /// The error every caller of the batch gets instead, if the run failed.
    pub(crate) failure: Option<Error<E>>,
    /// Entries for keys nobody asked for, and second entries for a key: ignored.
    pub(crate) unrequested: u64,
}

/// Matches an outcome to the slots of `lookup`.
pub(crate) fn settle<K, V, E, S: Sink<V, E>>(
    outcome: Outcome<Delivery<K, V, E>>,
    lookup: &impl Lookup<K>,
    hasher: &DefaultHashBuilder,
    name: &Arc<str>,
    timeout: Option<Duration>,
) -> Settled<S, E>
where
    K: Hash + Eq,
{
    let mut settled = Settled {
        values: S::default(),
        failure: None,
        unrequested: 0,
    };
    match outcome {
        Outcome::Delivered(Delivery::Keyed(entries)) => {
            let mut delivered = Delivered::new(lookup.slots());
            let values = &mut settled.values;
            let unrequested = &mut settled.unrequested;
            let read = catch_unwind(AssertUnwindSafe(|| {
                for (k, r) in entries {
                    // `Hash` and `Eq` of a returned key are user code: a panic in
                    // them fails that key's callers only (or, if no slot can be
                    // told, ignores the entry as unrequested).
                    let slot = lookup.slot_of(&k, hasher);
                    match slot {
                        Ok(Some(i)) if delivered.mark(i) => {
                            let entry = r.map_err(|source| Error::Key {
                                name: name.clone(),
                                source,
                            });
                            values.put(i, entry);
                        }
                        Err(i) if delivered.mark(i) => {
                            values.put(
                                i,
                                Err(Error::Panicked {
                                    name: name.clone(),
                                    message: "`Eq` of this call's key panicked while the batch's \
                                              output was matched to its callers"
                                        .into(),
                                }),
                            );
                            drop_quietly((k, r));
                        }
                        _ => {
                            *unrequested += 1;
                            drop_quietly((k, r));
                        }
                    }
                }
            }));
            if let Err(p) = read {
                // Entries already read are dropped with `settled`; none is given
                // out, so nobody gets half a batch.
                settled.failure = Some(Error::panicked(
                    name,
                    "reading the batch function's output (its iterator, or `Hash`/`Eq` of a key)",
                    &*p,
                ));
            }
        }
        Outcome::Delivered(Delivery::Ordered(values)) => {
            if values.len() != lookup.dispatched() {
                settled.failure = Some(Error::Shape {
                    name: name.clone(),
                    keys: lookup.dispatched(),
                    values: values.len(),
                });
            } else {
                for (pos, v) in values.into_iter().enumerate() {
                    settled.values.put(lookup.slot_at(pos), Ok(v));
                }
            }
        }
        Outcome::Delivered(Delivery::Failed(e)) => {
            settled.failure = Some(Error::Batch {
                name: name.clone(),
                source: Arc::new(e),
            });
        }
        Outcome::Delivered(Delivery::Streamed(stream)) => {
            // A batch's driver reads a stream as it runs (`stream::Feed`), and
            // so does a lone call's run (`solo::poll_lone`): not reached.
            drop_quietly(stream);
            settled.failure = Some(Error::Panicked {
                name: name.clone(),
                message: "internal: a stream of entries was not read".into(),
            });
        }
        Outcome::Panicked(message) => {
            settled.failure = Some(Error::Panicked {
                name: name.clone(),
                message: format!("the batch function panicked: {message}").into(),
            });
        }
        Outcome::TimedOut => {
            settled.failure = Some(Error::Timeout {
                name: name.clone(),
                after: timeout.unwrap_or_default(),
            });
        }
    }
    if settled.failure.is_some() {
        drop_quietly(std::mem::take(&mut settled.values));
    }
    settled
}

/// The label of a batch's outcome in telemetry.
pub(crate) fn label<E>(failure: Option<&Error<E>>) -> &'static str {
    match failure {
        None => "ok",
        Some(Error::Batch { .. }) => "batch",
        Some(Error::Panicked { .. }) => "panic",
        Some(Error::Timeout { .. } | Error::IdleTimeout { .. }) => "timeout",
        Some(Error::Shape { .. }) => "shape",
        Some(_) => "error",
    }
}

/// Runs `f`, turning a panic into its message.
pub(crate) fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// Drops `value` outside every lock, ignoring a panic in its `Drop`: used by
/// drivers for user values (futures, batch functions, keys) they discard.
pub(crate) fn drop_quietly<T>(value: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}
