//! A cache in front of a coalesced fn: `moka` holds values for a TTL, is
//! invalidated on writes and primed with values the application already has;
//! `#[coalesce]` turns the misses of many concurrent callers into one batch.
//!
//! `coalesce` keeps no cache of its own: a batch's results go to its callers
//! and are then gone. A maintained cache brings what a cache needs (TTL, size
//! bounds, eviction, invalidation), and moka's `try_get_with` already joins
//! concurrent misses of one key, so one key is fetched once and many keys in one
//! batch.
//!
//! Run: `cargo run --example cache`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coalesce::coalesce;
use moka::future::Cache;

/// The backend: how many batches it served, and the keys of the last one.
pub static BATCHES: AtomicUsize = AtomicUsize::new(0);

/// One query for every miss gathered in the window.
#[coalesce(window = "2ms", max_batch = 500)]
pub async fn fetch_user(ids: Vec<u64>) -> Result<HashMap<u64, String>, String> {
    BATCHES.fetch_add(1, Ordering::SeqCst);
    Ok(ids
        .into_iter()
        .filter(|id| *id != 0) // user 0 does not exist
        .map(|id| (id, format!("user-{id}")))
        .collect())
}

/// The users, cached for `ttl`; `None` (no such user) is cached too.
#[derive(Clone)]
pub struct Users {
    cache: Cache<u64, Option<String>>,
}

impl Users {
    /// A cache of at most `capacity` users, each kept for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Users {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The user, from the cache or through the coalesced fetch. Concurrent
    /// misses of one key wait for one fetch (moka), and misses of many keys
    /// share one batch (coalesce).
    pub async fn get(&self, id: u64) -> Result<Option<String>, Arc<coalesce::Error<String>>> {
        self.cache.try_get_with(id, fetch_user(id)).await
    }

    /// After a write to the user: the next read fetches it again.
    pub async fn invalidate(&self, id: u64) {
        self.cache.invalidate(&id).await;
    }

    /// Values the application already holds (a list it just loaded, a write
    /// it just made): reads of them need no fetch.
    pub async fn prime(&self, users: impl IntoIterator<Item = (u64, String)>) {
        for (id, name) in users {
            self.cache.insert(id, Some(name)).await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Arc<coalesce::Error<String>>> {
    let users = Users::new(10_000, Duration::from_secs(60));

    // 100 concurrent reads of 10 users: one batch.
    let reads = (0..100).map(|i| users.get(1 + i % 10));
    futures::future::try_join_all(reads).await?;
    println!(
        "100 reads of 10 users: {} batch",
        BATCHES.load(Ordering::SeqCst)
    );

    // Cached: no batch.
    users.get(3).await?;
    // Invalidated: fetched again.
    users.invalidate(3).await;
    users.get(3).await?;
    // Primed: no batch.
    users.prime([(42, "user-42".to_owned())]).await;
    users.get(42).await?;
    println!(
        "after a hit, an invalidation and a primed read: {} batches",
        BATCHES.load(Ordering::SeqCst)
    );
    Ok(())
}
