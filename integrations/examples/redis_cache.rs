//! A Redis read-through cache whose single-key gets coalesce into one `MGET` per
//! window; misses fall through to one SQLite query, and fill the cache with `SET`.
//!
//! ```text
//! cargo run --example redis_cache
//! ```
//!
//! Connects to `REDIS_URL` (default redis://127.0.0.1:6379), uses an in-memory
//! SQLite database as the source of truth, runs a cold and a warm burst of 1,000
//! concurrent gets, and prints calls in vs MGETs and SQL queries out.

#[path = "common/read_through.rs"]
mod read_through;

use coalesce::coalesce;
use read_through::CacheError;
use redis::aio::MultiplexedConnection;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Cheap to clone: the connection, the pool and the counters are shared, and
/// clones share batches (`instance = self.prefix`).
#[derive(Clone)]
pub struct ProductCache {
    redis: MultiplexedConnection,
    db: SqlitePool,
    prefix: Arc<str>,
    mgets: Arc<AtomicU64>,
    sql_queries: Arc<AtomicU64>,
}

impl ProductCache {
    /// `cache.product(id).await -> Result<Option<String>, coalesce::Error<CacheError>>`
    #[coalesce(window = "2ms", max_batch = 500, name = "redis_cache.product", instance = self.prefix)]
    pub async fn product(&self, ids: Vec<i64>) -> Result<HashMap<i64, String>, CacheError> {
        let mut conn = self.redis.clone();
        self.mgets.fetch_add(1, Ordering::Relaxed);
        let (mut found, misses) = read_through::mget(&mut conn, &self.prefix, ids).await?;
        if misses.is_empty() {
            return Ok(found);
        }
        // One query for every miss of the batch.
        self.sql_queries.fetch_add(1, Ordering::Relaxed);
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, name FROM products WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(serde_json::to_string(&misses).expect("ids serialize"))
        .fetch_all(&self.db)
        .await?;
        let fill = rows.iter().map(|(id, name)| (id, name));
        read_through::fill(&mut conn, &self.prefix, fill, 60).await?;
        found.extend(rows);
        Ok(found)
    }
}

async fn burst(cache: &Arc<ProductCache>, calls: i64) -> Result<usize, Box<dyn std::error::Error>> {
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let cache = cache.clone();
            // 1,000 calls over 400 ids; ids above 360 have no row, and absent rows
            // are not cached, so every round asks SQL for those once more.
            tokio::spawn(async move { cache.product(1 + i % 400).await })
        })
        .collect();
    let mut hits = 0;
    for task in tasks {
        hits += usize::from(task.await??.is_some());
    }
    Ok(hits)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let redis = read_through::connect(&url)
        .await
        .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;

    // One connection: every connection to `sqlite::memory:` is its own database.
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await?;
    sqlx::query("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&db)
        .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 360) \
         INSERT INTO products SELECT i, 'product-' || i FROM n",
    )
    .execute(&db)
    .await?;

    let cache = Arc::new(ProductCache {
        redis,
        db,
        prefix: format!("coalesce_example_{}", std::process::id()).into(),
        mgets: Arc::default(),
        sql_queries: Arc::default(),
    });
    for round in ["cold", "warm"] {
        let (mgets, queries) = (
            cache.mgets.load(Ordering::Relaxed),
            cache.sql_queries.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        let hits = burst(&cache, 1000).await?;
        println!(
            "redis_cache ({round}): 1000 calls in ({hits} found), {} MGETs and {} SQL queries out, in {:?}",
            cache.mgets.load(Ordering::Relaxed) - mgets,
            cache.sql_queries.load(Ordering::Relaxed) - queries,
            started.elapsed()
        );
    }
    if let Some(m) = coalesce::metrics::get("redis_cache.product") {
        println!("{m}");
    }

    // Remove this run's keys.
    read_through::remove_keys(&mut cache.redis.clone(), &cache.prefix).await?;
    Ok(())
}
