//! `#[coalesce]` on batch fns that stream their rows: `impl Stream<Item =
//! Result<(K, V), E>>`, alone or inside `Result<_, E>`, including sqlx's
//! `fetch()` on SQLite; and `join_running = false`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::Duration;

use coalesce::coalesce;
use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

#[coalesce(window = "1ms")]
async fn squares(ids: Vec<u64>) -> impl Stream<Item = Result<(u64, u64), std::io::Error>> {
    stream::iter(ids).then(|id| async move {
        tokio::time::sleep(Duration::from_millis(id)).await;
        Ok((id, id * id))
    })
}

#[tokio::test(start_paused = true)]
async fn a_streamed_fn_answers_each_caller_at_its_row() {
    let t0 = tokio::time::Instant::now();
    let (fast, slow) = tokio::join!(
        async {
            let v = squares(1).await;
            (v.unwrap(), t0.elapsed())
        },
        async {
            let v = squares(50).await;
            (v.unwrap(), t0.elapsed())
        },
    );
    assert_eq!((fast.0, slow.0), (Some(1), Some(2500)));
    assert!(fast.1 < Duration::from_millis(10), "{:?}", fast.1);
    assert!(slow.1 >= Duration::from_millis(50), "{:?}", slow.1);
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend down")
    }
}

impl std::error::Error for Down {}

static DOWN: AtomicUsize = AtomicUsize::new(0);

#[coalesce(window = "1ms")]
async fn names(ids: Vec<u64>) -> Result<impl Stream<Item = Result<(u64, String), Down>>, Down> {
    if DOWN.load(SeqCst) > 0 {
        return Err(Down);
    }
    Ok(stream::iter(
        ids.into_iter().map(|id| Ok((id, format!("#{id}")))),
    ))
}

#[tokio::test]
async fn a_result_of_a_stream_fails_the_batch_before_its_first_row() {
    assert_eq!(names(4).await.unwrap(), Some("#4".to_owned()));
    DOWN.store(1, SeqCst);
    let err = names(5).await.unwrap_err();
    assert!(err.to_string().contains("backend down"), "{err}");
    DOWN.store(0, SeqCst);
}

static POOL: OnceLock<SqlitePool> = OnceLock::new();

async fn pool() -> &'static SqlitePool {
    if let Some(pool) = POOL.get() {
        return pool;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .expect("sqlite");
    sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("create");
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
         INSERT INTO users SELECT i, 'user ' || i FROM n",
    )
    .execute(&pool)
    .await
    .expect("fill");
    let _ = POOL.set(pool);
    POOL.get().expect("set")
}

/// sqlx's `fetch()`: rows stream out of SQLite as the query yields them.
#[coalesce(max_batch = 1000)]
async fn user_names(ids: Vec<i64>) -> impl Stream<Item = Result<(i64, String), sqlx::Error>> {
    let ids = serde_json::to_string(&ids).unwrap_or_default();
    let pool = POOL.get().expect("the pool is made before the first call");
    sqlx::query_as::<_, (i64, String)>(
        "SELECT id, name FROM users WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(ids)
    .fetch(pool)
    .map_ok(|(id, name)| (id, name))
}

#[tokio::test]
async fn sqlx_fetch_streams_rows_to_their_callers() {
    pool().await;
    let ids: Vec<i64> = (1..=2100).collect();
    let got = futures::future::join_all(ids.iter().map(|&id| user_names(id))).await;
    for (id, r) in ids.iter().zip(got) {
        let expected = (*id <= 2000).then(|| format!("user {id}"));
        assert_eq!(r.unwrap(), expected);
    }
    let m = coalesce::metrics::snapshot()
        .into_iter()
        .find(|m| m.name.ends_with("user_names"))
        .expect("listed");
    assert_eq!(m.keys, 2100);
    assert_eq!(m.batches, 3, "{m}");
    // The third batch (ids 2001-2100) has no rows: no first item.
    assert_eq!(m.first_item.count, 2, "{m}");
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[coalesce(window = "1ms", join_running = false)]
async fn fresh_reads(ids: Vec<u64>) -> HashMap<u64, usize> {
    let run = RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    ids.into_iter().map(|id| (id, run)).collect()
}

/// `join_running = false`: a call made while a batch with its key runs sees a
/// batch that starts after it.
#[tokio::test(start_paused = true)]
async fn join_running_false_fetches_again() {
    let first = tokio::spawn(fresh_reads(1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = fresh_reads(1).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(RUNS.load(SeqCst), 2);
}
