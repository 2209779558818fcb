//! [`Coalescer`] as a `tower::Service` (the `tower` feature).
//!
//! `poll_ready` is ready while fewer than `max_pending` calls wait, and pending
//! (woken when a call is answered or leaves) once that many do, so that tower's
//! `load_shed` turns a full coalescer into its `Overloaded` error at once, and
//! `buffer`, `concurrency_limit` or a plain `ready().await` wait for room; `call`
//! loads one key. Timeouts, retries and rate limits compose around it. The
//! count is the engine's own, read under its lock; with `max_pending(0)`,
//! which admits no call, `poll_ready` fails at once with `Overloaded`.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::coalescer::Coalescer;
use crate::error::Error;

impl<K, V, E> tower_service::Service<K> for Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    type Response = Option<V>;
    type Error = Error<E>;
    type Future = Pin<Box<dyn Future<Output = Result<Option<V>, Error<E>>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A bound of zero never has room: fail now, as a call would.
        if let Some(e) = self.never_admits() {
            return Poll::Ready(Err(e));
        }
        if self.has_room() {
            return Poll::Ready(Ok(()));
        }
        self.wake_on_change(cx.waker());
        // Checked again: a call answered between the check and the waker's
        // registration woke nobody.
        match self.has_room() {
            true => Poll::Ready(Ok(())),
            false => Poll::Pending,
        }
    }

    fn call(&mut self, key: K) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.load(key).await })
    }
}
