//! [`Coalescer`] as an async-graphql `Loader` (the `async-graphql` feature).
//!
//! async-graphql's `DataLoader` lives in one request's context: it batches the
//! loads of that request only. Given a clone of a shared `Coalescer` as its
//! loader, each request's `DataLoader` hands its keys to the coalescer, whose
//! batches are shared by every request in flight: one batch for the loads of
//! many requests, deduplicated across them.
//!
//! This implements the trait as async-graphql builds it by default; its
//! `boxed-trait` feature changes the trait's form and is not supported.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;

use crate::coalescer::Coalescer;
use crate::error::Error;

impl<K, V, E> async_graphql::dataloader::Loader<K> for Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    type Value = V;
    type Error = Error<E>;

    fn load(&self, keys: &[K]) -> impl Future<Output = Result<HashMap<K, V>, Error<E>>> + Send {
        let this = self.clone();
        let keys = keys.to_vec();
        async move { this.load_many(keys).await }
    }
}
