//! `#[coalesce]` on a Redis read-through cache: concurrent single-key gets become
//! one `MGET` per window; misses fall through to one database load, and the cache
//! is filled with `SET` afterwards.
//!
//! Needs Redis (`REDIS_URL`, default redis://127.0.0.1:6379). Skips when it is
//! unreachable unless `COALESCE_REQUIRE_SERVICES=1`.

mod support;

#[path = "../examples/common/read_through.rs"]
mod read_through;

use coalesce::coalesce;
use futures::future::join_all;
use read_through::CacheError;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The slow source of truth behind the cache; counts its loads.
struct Db {
    rows: HashMap<u64, String>,
    loads: AtomicU64,
    keys_loaded: AtomicU64,
}

impl Db {
    fn with_rows(n: u64) -> Self {
        Db {
            rows: (1..=n).map(|id| (id, format!("row-{id}"))).collect(),
            loads: AtomicU64::new(0),
            keys_loaded: AtomicU64::new(0),
        }
    }

    async fn load(&self, ids: &[u64]) -> HashMap<u64, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.keys_loaded
            .fetch_add(ids.len() as u64, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        ids.iter()
            .filter_map(|id| self.rows.get(id).map(|row| (*id, row.clone())))
            .collect()
    }
}

#[derive(Clone)]
struct Cache {
    redis: MultiplexedConnection,
    db: std::sync::Arc<Db>,
    /// Namespace of this cache's keys: what makes two caches two instances.
    prefix: std::sync::Arc<str>,
    /// `MGET`s sent (client side), by this cache and its clones.
    mgets: std::sync::Arc<AtomicU64>,
}

impl Cache {
    fn key(&self, id: u64) -> String {
        read_through::key(&self.prefix, id)
    }

    /// One `MGET` for the batch; one database load for its misses; one pipeline of
    /// `SET`s to fill the cache.
    #[coalesce(window = "25ms", max_batch = 500, instance = self.prefix)]
    async fn get(&self, ids: Vec<u64>) -> Result<HashMap<u64, String>, CacheError> {
        let mut conn = self.redis.clone();
        self.mgets.fetch_add(1, Ordering::SeqCst);
        let (mut found, misses) = read_through::mget(&mut conn, &self.prefix, ids).await?;
        if !misses.is_empty() {
            let loaded = self.db.load(&misses).await;
            read_through::fill(&mut conn, &self.prefix, &loaded, 300).await?;
            found.extend(loaded);
        }
        Ok(found)
    }
}

async fn cache(rows: u64) -> Option<Cache> {
    let url = support::redis_url();
    let redis = match read_through::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => return support::unavailable("Redis", &url, e),
    };
    Some(Cache {
        redis,
        db: std::sync::Arc::new(Db::with_rows(rows)),
        prefix: support::unique("coalesce_cache").into(),
        mgets: Default::default(),
    })
}

/// `cmdstat_mget` calls, server-wide (other clients of the server count too).
async fn server_mgets(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_mget:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

async fn cleanup(cache: &Cache) {
    let _ = read_through::remove_keys(&mut cache.redis.clone(), &cache.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_gets_become_one_mget_per_window() {
    let Some(cache) = cache(300).await else {
        return;
    };
    let mut admin = cache.redis.clone();
    let server_before = server_mgets(&mut admin).await;

    // Cold: 600 calls for 300 ids (each twice), none cached.
    let ids: Vec<u64> = (1..=300).chain(1..=300).collect();
    let cold = join_all(ids.iter().map(|&id| cache.get(id))).await;
    for (&id, result) in ids.iter().zip(&cold) {
        assert_eq!(
            result.as_ref().unwrap().as_deref(),
            Some(&*format!("row-{id}"))
        );
    }
    assert_eq!(cache.mgets.load(Ordering::SeqCst), 1, "one MGET");
    assert_eq!(
        cache.db.loads.load(Ordering::SeqCst),
        1,
        "one database load"
    );
    assert_eq!(cache.db.keys_loaded.load(Ordering::SeqCst), 300);

    // Warm: the same 600 calls are served by one MGET, the database untouched.
    let warm = join_all(ids.iter().map(|&id| cache.get(id))).await;
    assert_eq!(warm.len(), cold.len());
    for (a, b) in warm.iter().zip(&cold) {
        assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap());
    }
    let mgets = cache.mgets.load(Ordering::SeqCst);
    assert_eq!(mgets, 2, "one more MGET");
    assert_eq!(cache.db.loads.load(Ordering::SeqCst), 1, "no database load");

    let server = server_mgets(&mut admin).await - server_before;
    println!(
        "redis: 1200 calls in, {mgets} MGETs out (server counted {server}), {} database load",
        cache.db.loads.load(Ordering::SeqCst)
    );
    // Other clients of a shared server may add their own.
    assert!(
        server >= mgets,
        "server counted {server} MGETs, client sent {mgets}"
    );
    cleanup(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_misses_reach_the_database_and_absent_rows_are_none() {
    let Some(cache) = cache(100).await else {
        return;
    };
    // Ids 1..=50 are cached already; 51..=100 are in the database; 101..=120 nowhere.
    let mut conn = cache.redis.clone();
    for id in 1..=50 {
        let () = redis::cmd("SET")
            .arg(cache.key(id))
            .arg(format!("cached-{id}"))
            .arg("EX")
            .arg(300)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let results = join_all((1..=120).map(|id| cache.get(id))).await;
    for (id, result) in (1..=120).zip(results) {
        let expected = match id {
            1..=50 => Some(format!("cached-{id}")),
            51..=100 => Some(format!("row-{id}")),
            _ => None,
        };
        assert_eq!(result.unwrap(), expected, "id {id}");
    }
    assert_eq!(cache.mgets.load(Ordering::SeqCst), 1);
    assert_eq!(cache.db.loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.db.keys_loaded.load(Ordering::SeqCst), 70);
    cleanup(&cache).await;
}
