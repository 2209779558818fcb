//! The error a coalesced call returns.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a coalesced call did not return its entry.
///
/// `E` is the batch function's own error type (`Infallible` for batch functions that
/// cannot fail). It need not be `Clone`: every caller of a failed batch receives the
/// same error behind an [`Arc`].
#[non_exhaustive]
pub enum Error<E = Infallible> {
    /// The batch function returned an error. Every caller of that batch receives it.
    Batch {
        /// The coalescer's name.
        name: Arc<str>,
        /// The batch function's error, shared by all callers of the batch.
        source: Arc<E>,
    },
    /// The batch function reported an error for this caller's key only (a batch
    /// function that returns one `Result` per key).
    Key {
        /// The coalescer's name.
        name: Arc<str>,
        /// The error the batch function returned for this key.
        source: Arc<E>,
    },
    /// The batch function, or user code the engine ran for this call (a key's
    /// or a value's `Clone`, `Hash` or `Eq`, the merge fn), panicked. The
    /// coalescer keeps working for later batches.
    Panicked {
        /// The coalescer's name.
        name: Arc<str>,
        /// What panicked, and the panic's message when it was a string: `the
        /// batch function panicked: …`, or the user code the engine ran for
        /// the call (`` `Clone` of this call's key panicked: … ``, the merge
        /// fn, `Hash` or `Eq` of a key).
        message: Arc<str>,
    },
    /// The batch ran longer than the configured `timeout` and was abandoned.
    Timeout {
        /// The coalescer's name.
        name: Arc<str>,
        /// The configured timeout.
        after: Duration,
    },
    /// A streamed batch sent no item for its `idle_timeout`: the stream was
    /// dropped, and the keys it had not delivered fail with this (those it
    /// delivered keep their values).
    IdleTimeout {
        /// The coalescer's name.
        name: Arc<str>,
        /// The configured idle timeout.
        after: Duration,
    },
    /// The call was refused because `max_pending` calls were already waiting.
    Overloaded {
        /// The coalescer's name.
        name: Arc<str>,
        /// The configured bound.
        max_pending: usize,
    },
    /// The call was refused because `max_pending_per_group` calls of its group
    /// (tenant, instance, extra arguments) were already waiting; other groups
    /// are still served.
    GroupOverloaded {
        /// The coalescer's name.
        name: Arc<str>,
        /// The configured bound per group.
        max_pending_per_group: usize,
    },
    /// The batch function returned a result of the wrong shape: an ordered `Vec`
    /// whose length differs from the number of keys it was given. No caller of that
    /// batch gets a value, so none can get another key's.
    Shape {
        /// The coalescer's name.
        name: Arc<str>,
        /// How many keys the batch function was given.
        keys: usize,
        /// How many values it returned.
        values: usize,
    },
    /// The batch function returned no entry for this key where one was required (an
    /// ordered-`Vec` batch function used through a map-shaped call).
    Missing {
        /// The coalescer's name.
        name: Arc<str>,
    },
    /// The runtime that was running this call's batch shut down before the batch
    /// finished, and so did the runtimes of the batches the call was moved to.
    /// A call whose batch is lost this way is enqueued again (a read is safe to
    /// repeat); this error means that happened several times in a row, i.e. the
    /// process is shutting its runtimes down.
    Shutdown {
        /// The coalescer's name.
        name: Arc<str>,
    },
    /// A write's batch ended in a way that does not tell whether it committed
    /// (see [`Unsure`]). The write is not retried: a merged increment applied
    /// twice is a wrong answer. Read the key back before writing it again.
    MaybeCommitted {
        /// The coalescer's name.
        name: Arc<str>,
        /// What left the outcome unknown.
        why: Unsure,
    },
    /// A write that had not been sent when a [`drain`](crate::WriteCore::drain)
    /// reached its deadline: it was not committed, and will not be.
    Drained {
        /// The coalescer's name.
        name: Arc<str>,
    },
}

/// Why a write's outcome is unknown ([`Error::MaybeCommitted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsure {
    /// The batch ran longer than its timeout and was dropped mid-way.
    Timeout {
        /// The configured timeout.
        after: Duration,
    },
    /// The runtime running the batch shut down while it ran.
    Shutdown,
    /// A [`drain`](crate::WriteCore::drain) reached its deadline while the batch
    /// ran; the batch may still commit.
    Drained,
}

impl fmt::Display for Unsure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsure::Timeout { after } => {
                write!(f, "its batch ran longer than its timeout of {after:?}")
            }
            Unsure::Shutdown => write!(f, "the runtime running its batch shut down"),
            Unsure::Drained => write!(f, "a drain reached its deadline while its batch ran"),
        }
    }
}

impl<E> Error<E> {
    /// The name of the coalescer the failed call went through.
    pub fn name(&self) -> &str {
        match self {
            Error::Batch { name, .. }
            | Error::Key { name, .. }
            | Error::Panicked { name, .. }
            | Error::Timeout { name, .. }
            | Error::IdleTimeout { name, .. }
            | Error::Overloaded { name, .. }
            | Error::GroupOverloaded { name, .. }
            | Error::Shape { name, .. }
            | Error::Missing { name }
            | Error::Shutdown { name }
            | Error::MaybeCommitted { name, .. }
            | Error::Drained { name } => name,
        }
    }

    /// The batch function's own error, if this is one ([`Error::Batch`] or [`Error::Key`]).
    pub fn batch_error(&self) -> Option<&E> {
        match self {
            Error::Batch { source, .. } | Error::Key { source, .. } => Some(source),
            _ => None,
        }
    }

    /// A [`Error::Panicked`] for a panic caught in user code: `what` panicked.
    pub(crate) fn panicked(
        name: &Arc<str>,
        what: &str,
        payload: &(dyn std::any::Any + Send),
    ) -> Self {
        Error::Panicked {
            name: name.clone(),
            message: format!(
                "{what} panicked: {}",
                crate::engine::batch::panic_message(payload)
            )
            .into(),
        }
    }

    /// True for errors worth retrying later as they are: a timeout or an overload.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::IdleTimeout { .. }
                | Error::Overloaded { .. }
                | Error::GroupOverloaded { .. }
        )
    }
}

impl<E> Clone for Error<E> {
    fn clone(&self) -> Self {
        match self {
            Error::Batch { name, source } => Error::Batch {
                name: name.clone(),
                source: source.clone(),
            },
            Error::Key { name, source } => Error::Key {
                name: name.clone(),
                source: source.clone(),
            },
            Error::Panicked { name, message } => Error::Panicked {
                name: name.clone(),
                message: message.clone(),
            },
            Error::Timeout { name, after } => Error::Timeout {
                name: name.clone(),
                after: *after,
            },
            Error::IdleTimeout { name, after } => Error::IdleTimeout {
                name: name.clone(),
                after: *after,
            },
            Error::Overloaded { name, max_pending } => Error::Overloaded {
                name: name.clone(),
                max_pending: *max_pending,
            },
            Error::GroupOverloaded {
                name,
                max_pending_per_group,
            } => Error::GroupOverloaded {
                name: name.clone(),
                max_pending_per_group: *max_pending_per_group,
            },
            Error::Shape { name, keys, values } => Error::Shape {
                name: name.clone(),
                keys: *keys,
                values: *values,
            },
            Error::Missing { name } => Error::Missing { name: name.clone() },
            Error::Shutdown { name } => Error::Shutdown { name: name.clone() },
            Error::MaybeCommitted { name, why } => Error::MaybeCommitted {
                name: name.clone(),
                why: *why,
            },
            Error::Drained { name } => Error::Drained { name: name.clone() },
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Batch { name, source } => f
                .debug_struct("Batch")
                .field("name", name)
                .field("source", source)
                .finish(),
            Error::Key { name, source } => f
                .debug_struct("Key")
                .field("name", name)
                .field("source", source)
                .finish(),
            Error::Panicked { name, message } => f
                .debug_struct("Panicked")
                .field("name", name)
                .field("message", message)
                .finish(),
            Error::Timeout { name, after } => f
                .debug_struct("Timeout")
                .field("name", name)
                .field("after", after)
                .finish(),
            Error::IdleTimeout { name, after } => f
                .debug_struct("IdleTimeout")
                .field("name", name)
                .field("after", after)
                .finish(),
            Error::Overloaded { name, max_pending } => f
                .debug_struct("Overloaded")
                .field("name", name)
                .field("max_pending", max_pending)
                .finish(),
            Error::GroupOverloaded {
                name,
                max_pending_per_group,
            } => f
                .debug_struct("GroupOverloaded")
                .field("name", name)
                .field("max_pending_per_group", max_pending_per_group)
                .finish(),
            Error::Shape { name, keys, values } => f
                .debug_struct("Shape")
                .field("name", name)
                .field("keys", keys)
                .field("values", values)
                .finish(),
            Error::Missing { name } => f.debug_struct("Missing").field("name", name).finish(),
            Error::Shutdown { name } => f.debug_struct("Shutdown").field("name", name).finish(),
            Error::MaybeCommitted { name, why } => f
                .debug_struct("MaybeCommitted")
                .field("name", name)
                .field("why", why)
                .finish(),
            Error::Drained { name } => f.debug_struct("Drained").field("name", name).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Batch { name, source } => {
                write!(f, "batch function `{name}` failed: {source}")
            }
            Error::Key { name, source } => {
                write!(f, "batch function `{name}` failed for this key: {source}")
            }
            Error::Panicked { name, message } => write!(
                f,
                "coalescer `{name}`: {message} (the coalescer keeps serving later calls)"
            ),
            Error::Timeout { name, after } => write!(
                f,
                "batch function `{name}` ran longer than its timeout of {after:?}; retry, or raise `timeout`"
            ),
            Error::IdleTimeout { name, after } => write!(
                f,
                "batch function `{name}`'s stream sent nothing for {after:?} (its idle timeout) before this key's item; retry, or raise `idle_timeout`"
            ),
            Error::Overloaded { name, max_pending } => write!(
                f,
                "coalescer `{name}` is overloaded: its bound of {max_pending} waiting calls (max_pending) is reached; retry later, or raise `max_pending`"
            ),
            Error::GroupOverloaded {
                name,
                max_pending_per_group,
            } => write!(
                f,
                "coalescer `{name}`: this call's group (tenant, instance or extra arguments) already has {max_pending_per_group} calls waiting (max_pending_per_group); retry later, or raise the bound; other groups are still served"
            ),
            Error::Shape { name, keys, values } => write!(
                f,
                "batch function `{name}` returned {values} values for {keys} keys; an ordered batch function must return exactly one value per key, in key order"
            ),
            Error::Missing { name } => write!(
                f,
                "batch function `{name}` returned no entry for this key; return one for every key, or use a map-shaped batch function"
            ),
            Error::Shutdown { name } => write!(
                f,
                "coalescer `{name}`: the runtime running this call's batch shut down before the batch finished (and again after the call was moved); keep a runtime running until its calls complete"
            ),
            Error::MaybeCommitted { name, why } => write!(
                f,
                "write coalescer `{name}`: this write may or may not have committed: {why}; it is not retried (a folded write applied twice is wrong): read the key back before writing again"
            ),
            Error::Drained { name } => write!(
                f,
                "write coalescer `{name}` was drained before this write was sent: it was not committed; write it again once the coalescer serves again"
            ),
        }
    }
}

/// How to see a batch error type as a [`std::error::Error`], if it is one
/// (registered per type: see [`register_error_source`]).
pub type SourceOf<E> = fn(&E) -> Option<&(dyn std::error::Error + 'static)>;

/// Batch error types whose `source()` chain is known, by type.
static SOURCES: std::sync::RwLock<
    Vec<(std::any::TypeId, &'static (dyn std::any::Any + Send + Sync))>,
> = std::sync::RwLock::new(Vec::new());

/// Registers how to see batch errors of type `E` as a `std::error::Error`, so that
/// [`Error::source`](std::error::Error::source) can go on with their own causes.
/// `#[coalesce]` does this for its error types (a `std::error::Error`, or a type
/// that derefs to `dyn Error + Send + Sync` such as `anyhow::Error` and
/// `Box<dyn Error + Send + Sync>`); call it for the engine API, e.g.
/// `register_error_source::<sqlx::Error>(|e| Some(e))`. Registering a type again
/// changes nothing.
pub fn register_error_source<E: 'static>(source_of: SourceOf<E>) {
    let id = std::any::TypeId::of::<E>();
    let mut all = SOURCES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !all.iter().any(|(t, _)| *t == id) {
        all.push((id, Box::leak(Box::new(source_of))));
    }
}

/// `e` as a `std::error::Error`, if its type was registered.
fn as_error<E: 'static>(e: &E) -> Option<&(dyn std::error::Error + 'static)> {
    let id = std::any::TypeId::of::<E>();
    let all = SOURCES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let source_of = all
        .iter()
        .find(|(t, _)| *t == id)
        .and_then(|(_, f)| f.downcast_ref::<SourceOf<E>>())
        .copied();
    drop(all);
    source_of.and_then(|f| f(e))
}

/// `coalesce::Error<E>` is a `std::error::Error` whatever the batch error `E`
/// is (`sqlx::Error`, `anyhow::Error`, `Box<dyn Error + Send + Sync>`, `String`),
/// so that `?` carries it into `anyhow::Error` or `Box<dyn Error + Send + Sync>`.
///
/// `Display` of [`Error::Batch`] and [`Error::Key`] already includes the batch
/// error's own message, so `source()` goes on with *that error's* source (for
/// types registered with [`register_error_source`], which `#[coalesce]` does): a
/// chain printed cause by cause (anyhow's `{:#}`, `tracing`'s error fields) names
/// each cause once. The batch error itself is [`Error::batch_error`].
impl<E: fmt::Debug + fmt::Display + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Batch { source, .. } | Error::Key { source, .. } => {
                as_error::<E>(source).and_then(|e| e.source())
            }
            _ => None,
        }
    }
}
