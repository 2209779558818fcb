//! Shared by `examples/redis_cache.rs` and `tests/integration_redis.rs`: the Redis
//! side of a read-through cache (one `MGET` per batch, one pipeline of `SET`s to
//! fill it), its error type, connecting, and removing a cache's keys.

use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::time::Duration;

/// Why a batch of gets failed; every caller of the batch receives it.
#[derive(Debug)]
pub enum CacheError {
    Redis(redis::RedisError),
    Db(sqlx::Error),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Redis(e) => write!(f, "cache: {e}"),
            CacheError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl std::error::Error for CacheError {}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        CacheError::Redis(e)
    }
}

impl From<sqlx::Error> for CacheError {
    fn from(e: sqlx::Error) -> Self {
        CacheError::Db(e)
    }
}

/// The Redis key of `id` in the cache namespaced by `prefix`.
pub fn key(prefix: &str, id: impl Display) -> String {
    format!("{prefix}:{id}")
}

/// A multiplexed connection to `url`, or why there is none within 3 s.
pub async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".to_string()),
    }
}

/// One `MGET` for all of `ids`: the cached values, and the ids that missed.
pub async fn mget<K: Copy + Display + Eq + Hash>(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    ids: Vec<K>,
) -> redis::RedisResult<(HashMap<K, String>, Vec<K>)> {
    let keys: Vec<String> = ids.iter().map(|&id| key(prefix, id)).collect();
    let cached: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    let mut found = HashMap::with_capacity(ids.len());
    let mut misses = Vec::new();
    for (id, value) in ids.into_iter().zip(cached) {
        match value {
            Some(value) => {
                found.insert(id, value);
            }
            None => misses.push(id),
        }
    }
    Ok((found, misses))
}

/// One pipeline of `SET key value EX ttl_secs`, if there is anything to set.
pub async fn fill<'a, K: Display + 'a>(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    rows: impl IntoIterator<Item = (&'a K, &'a String)>,
    ttl_secs: u64,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut empty = true;
    for (id, value) in rows {
        pipe.cmd("SET")
            .arg(key(prefix, id))
            .arg(value)
            .arg("EX")
            .arg(ttl_secs)
            .ignore();
        empty = false;
    }
    if empty {
        return Ok(());
    }
    pipe.query_async(conn).await
}

/// Deletes every key of the cache namespaced by `prefix`.
pub async fn remove_keys(conn: &mut MultiplexedConnection, prefix: &str) -> redis::RedisResult<()> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(conn)
        .await?;
    if !keys.is_empty() {
        let () = redis::cmd("DEL").arg(&keys).query_async(conn).await?;
    }
    Ok(())
}
