//! A coalescer that owns its batch function.

use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::{Core, Maker, Run};
use crate::error::Error;
use crate::metrics::MetricsSnapshot;
use crate::output::BatchOutput;

/// A batch function and the coalescer in front of it: what `#[coalesce]` generates,
/// written by hand.
///
/// ```
/// # use coalesce_runtime as coalesce;
/// use coalesce::{Coalescer, Config};
/// use std::collections::HashMap;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let users = Coalescer::new(
///     Config::new("users.load").window(Duration::from_millis(2)).max_batch(500),
///     |ids: Vec<u64>| async move {
///         // one query for all ids
///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, format!("user {id}"))).collect::<HashMap<_, _>>())
///     },
/// );
/// let (a, b) = tokio::join!(users.load(1), users.load(2));
/// assert_eq!(a.unwrap().as_deref(), Some("user 1"));
/// assert_eq!(b.unwrap().as_deref(), Some("user 2"));
/// assert_eq!(users.metrics().batches, 1);
/// # }
/// ```
pub struct Coalescer<K, V, E = Infallible>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    core: Core<(), K, V, E>,
    batch: Maker<(), K, V, E>,
    /// The batch fn streams its entries ([`BatchOutput::STREAMED`]).
    streamed: bool,
}

/// A clone is another handle on the same coalescer: calls through either share
/// batches, settings and metrics.
impl<K, V, E> Clone for Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn clone(&self) -> Self {
        Coalescer {
            core: self.core.clone(),
            batch: self.batch.clone(),
            streamed: self.streamed,
        }
    }
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A coalescer with `config` in front of `batch`.
    ///
    /// `batch` receives the distinct keys of one batch and returns any
    /// [`BatchOutput`]: a map by key, a `Vec` with one value per key in order, or a
    /// `Result` of either.
    pub fn new<F, Fut>(config: Config, batch: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        Coalescer {
            core: Core::new(config),
            batch: Arc::new(move |_: &(), keys| {
                let fut = batch(keys);
                Box::pin(async move { fut.await.into_delivery() }) as Run<K, V, E>
            }),
            streamed: <Fut::Output as BatchOutput<K>>::STREAMED,
        }
    }

    /// Loads one key: resolves to its entry (`None` if the batch returned none) or
    /// to an [`Error`].
    ///
    /// Concurrent loads share a batch; see [`Core::load`] for the details.
    pub fn load(&self, key: K) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + '_ {
        self.core.load_stored((), key, &self.batch, self.streamed)
    }

    /// Loads many keys at once: each distinct key joins the shared batches as
    /// [`Coalescer::load`] does (deduplicated against concurrent callers, split at
    /// `max_batch`, counted in the metrics). Resolves to the entries found, by
    /// key, or to the first error of any key.
    pub fn load_many(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> impl Future<Output = Result<std::collections::HashMap<K, V>, Error<E>>> + Send + '_ {
        let keys = crate::engine::many::distinct(keys);
        async move { crate::engine::many::load(self.core.config().name(), keys, |k| self.load(k)).await }
    }

    /// Fewer than `max_pending` calls wait now: a call would be admitted.
    #[cfg(feature = "tower")]
    pub(crate) fn has_room(&self) -> bool {
        self.core.has_room()
    }

    /// `max_pending` is zero: the error every call gets.
    #[cfg(feature = "tower")]
    pub(crate) fn never_admits(&self) -> Option<Error<E>> {
        self.core.never_admits()
    }

    /// Wakes `waker` when a call is answered or leaves.
    #[cfg(feature = "tower")]
    pub(crate) fn wake_on_change(&self, waker: &std::task::Waker) {
        self.core.wake_on_change(waker);
    }

    /// Sends every batch gathering now without waiting out its window (for a
    /// caller that knows no more keys are coming). Returns how many it sent.
    pub fn dispatch_now(&self) -> usize {
        self.core.dispatch_now()
    }

    /// The configuration this coalescer runs with.
    pub fn config(&self) -> &Config {
        self.core.config()
    }

    /// This coalescer's metrics, read now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.core.metrics()
    }
}
