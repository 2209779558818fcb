//! `context = pool`: a parameter that the batch fn needs but that must not split
//! batches — a connection pool, an HTTP client. It may be a reference; the batch
//! runs with a clone of the value passed by the call that opened it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use coalesce::coalesce;
use sqlx::SqlitePool;

static QUERIES: AtomicUsize = AtomicUsize::new(0);

/// A repository fn as a service author writes it: the pool by reference.
#[coalesce(window = "5ms", context = pool)]
async fn user_name(ids: Vec<i64>, pool: &SqlitePool) -> Result<HashMap<i64, String>, sqlx::Error> {
    QUERIES.fetch_add(1, Ordering::SeqCst);
    let mut names = HashMap::new();
    for id in ids {
        let row: Option<(String,)> = sqlx::query_as("SELECT name FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        if let Some((name,)) = row {
            names.insert(id, name);
        }
    }
    Ok(names)
}

async fn pool() -> SqlitePool {
    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    for id in 1..=50 {
        sqlx::query("INSERT INTO users (id, name) VALUES (?, ?)")
            .bind(id)
            .bind(format!("user{id}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool
}

#[tokio::test]
async fn a_borrowed_pool_is_context_and_does_not_split_batches() {
    let pool = pool().await;
    // Every caller holds its own clone of the pool, as axum handlers do.
    let clones: Vec<SqlitePool> = (0..20).map(|_| pool.clone()).collect();
    let before = QUERIES.load(Ordering::SeqCst);
    let names = futures::future::join_all(
        clones
            .iter()
            .enumerate()
            .map(|(i, pool)| user_name(i as i64 + 1, pool)),
    )
    .await;
    assert_eq!(
        QUERIES.load(Ordering::SeqCst) - before,
        1,
        "one batch for 20 callers"
    );
    for (i, name) in names.into_iter().enumerate() {
        assert_eq!(name.unwrap(), Some(format!("user{}", i + 1)));
    }
    assert_eq!(user_name(99, &pool).await.unwrap(), None);
    let many = user_name_many(vec![1, 2, 3], &pool).await.unwrap();
    assert_eq!(many.len(), 3);
}

#[derive(Clone)]
struct Client {
    calls: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Repo;

impl Repo {
    /// A method with an owned context and a grouping parameter beside it.
    #[coalesce(window = "5ms", context = (client, trace))]
    async fn fetch(
        &self,
        ids: Vec<u32>,
        client: Client,
        region: String,
        trace: &str,
    ) -> HashMap<u32, String> {
        client.calls.fetch_add(1, Ordering::SeqCst);
        let _ = trace;
        ids.into_iter()
            .map(|id| (id, format!("{region}/{id}")))
            .collect()
    }
}

#[tokio::test]
async fn an_owned_context_is_shared_while_other_parameters_still_group() {
    let calls = Arc::new(AtomicUsize::new(0));
    let client = Client {
        calls: calls.clone(),
    };
    let repo = Repo;
    let (a, b, c) = tokio::join!(
        repo.fetch(1, client.clone(), "eu".into(), "req-1"),
        repo.fetch(2, client.clone(), "eu".into(), "req-2"),
        repo.fetch(3, client.clone(), "us".into(), "req-3"),
    );
    assert_eq!(a.unwrap().as_deref(), Some("eu/1"));
    assert_eq!(b.unwrap().as_deref(), Some("eu/2"));
    assert_eq!(c.unwrap().as_deref(), Some("us/3"));
    // Two regions, two batches: the clients and traces did not split them.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
