//! `#[coalesce]` on a PostgreSQL repository: a burst of single-id loads becomes a
//! few `WHERE id = ANY($1)` queries, counted on the client and by the server.
//!
//! Needs PostgreSQL (`DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test).
//! Skips when it is unreachable unless `COALESCE_REQUIRE_SERVICES=1`.

mod support;

use coalesce::{coalesce, Error};
use futures::future::join_all;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
struct User {
    id: i64,
    name: String,
}

/// A repository over `users` in whatever schema its pool's `search_path` names.
struct UserRepo {
    pool: PgPool,
    /// Queries this repo sent (client side).
    queries: AtomicU64,
}

impl UserRepo {
    fn new(pool: PgPool) -> Self {
        UserRepo {
            pool,
            queries: AtomicU64::new(0),
        }
    }

    /// One query for every id of the batch.
    #[coalesce(window = "2ms", max_batch = 500)]
    async fn users(&self, ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM users WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| (id, User { id, name }))
            .collect())
    }

    /// The ordered shape: one `Option<User>` per id, in the order of `ids`.
    #[coalesce(window = "2ms", max_batch = 500)]
    async fn users_ordered(&self, ids: Vec<i64>) -> Result<Vec<Option<User>>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
            "SELECT k.id, u.name FROM unnest($1::bigint[]) WITH ORDINALITY AS k(id, ord) \
             LEFT JOIN users u ON u.id = k.id ORDER BY k.ord",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| name.map(|name| User { id, name }))
            .collect())
    }
}

/// A fresh schema holding `users(id, name)` with ids `1..=rows`, named
/// `<label>-<id>`, and a pool whose connections see only that schema.
async fn schema_with_users(label: &str, rows: i64) -> Option<(String, PgPool)> {
    let url = support::database_url();
    let admin = match PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(e) => return support::unavailable("PostgreSQL", &url, e),
    };
    let schema = support::unique("coalesce_pg");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.users (id bigint PRIMARY KEY, name text NOT NULL)"
    ))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {schema}.users SELECT g, $1 || '-' || g FROM generate_series(1, $2::bigint) g"
    ))
    .bind(label)
    .bind(rows)
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    Some((schema, pool))
}

async fn drop_schema(schema: &str) {
    if let Ok(pool) = PgPool::connect(&support::database_url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

/// Scans of `schema.users` the server has counted (sequential + index), once the
/// statistics of the repo's (closed) connections have been flushed.
async fn server_scans(admin: &PgPool, schema: &str) -> i64 {
    let mut conn = admin.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'users'",
    )
    .bind(schema)
    .fetch_optional(&mut *conn)
    .await
    .unwrap()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_loads_makes_two_queries() {
    let Some((schema, pool)) = schema_with_users("u", 1000).await else {
        return;
    };
    let admin = PgPool::connect(&support::database_url()).await.unwrap();
    let before = server_scans(&admin, &schema).await;
    let repo = UserRepo::new(pool.clone());

    let results = join_all((1..=1000).map(|id| repo.users(id))).await;
    for (id, result) in (1..=1000).zip(results) {
        let user = result.unwrap().expect("every id has a row");
        assert_eq!(
            user,
            User {
                id,
                name: format!("u-{id}")
            }
        );
    }
    let queries = repo.queries.load(Ordering::SeqCst);
    // 1,000 distinct ids and max_batch = 500: two full batches, each dispatched at once.
    assert!(
        (2..=4).contains(&queries),
        "1000 calls made {queries} queries"
    );

    // Make every backend of the pool flush its statistics now (PostgreSQL 15+;
    // otherwise a deferred flush can take up to 10 s), then end them.
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        held.push(pool.acquire().await.unwrap());
    }
    for conn in &mut held {
        let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut **conn)
            .await;
    }
    drop(held);
    pool.close().await;
    let expected = before + queries as i64;
    let scans = support::eventually(Duration::from_secs(30), || async {
        let scans = server_scans(&admin, &schema).await;
        (scans >= expected).then_some(scans)
    })
    .await
    .unwrap_or_else(|| panic!("server never counted {queries} scans of {schema}.users"));
    assert_eq!(scans - before, queries as i64, "server-side scan count");
    println!(
        "pg: 1000 calls in, {queries} queries out (server counted {})",
        scans - before
    );
    admin.close().await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordered_shape_returns_each_callers_row_or_none() {
    let Some((schema, pool)) = schema_with_users("o", 100).await else {
        return;
    };
    let repo = UserRepo::new(pool.clone());
    // 150 calls, 50 of them for ids with no row, and some repeated ids.
    let ids: Vec<i64> = (51..=200).chain([60, 61, 199]).collect();
    let results = join_all(ids.iter().map(|&id| repo.users_ordered(id))).await;
    for (&id, result) in ids.iter().zip(results) {
        let user = result.unwrap();
        if id <= 100 {
            assert_eq!(
                user,
                Some(User {
                    id,
                    name: format!("o-{id}")
                })
            );
        } else {
            assert_eq!(user, None, "id {id} has no row");
        }
    }
    assert_eq!(repo.queries.load(Ordering::SeqCst), 1);
    pool.close().await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_reaches_every_caller_of_the_batch() {
    let Some((schema, pool)) = schema_with_users("e", 10).await else {
        return;
    };
    let repo = UserRepo::new(pool.clone());
    // Warm up: the table is there.
    assert!(repo.users(1).await.unwrap().is_some());
    sqlx::query(&format!("DROP TABLE {schema}.users"))
        .execute(&pool)
        .await
        .unwrap();

    let before = repo.queries.load(Ordering::SeqCst);
    let results = join_all((1..=200).map(|id| repo.users(id))).await;
    assert_eq!(repo.queries.load(Ordering::SeqCst) - before, 1, "one batch");
    let mut first: Option<Arc<sqlx::Error>> = None;
    for result in results {
        match result {
            Err(Error::Batch { source, .. }) => {
                match &*source {
                    sqlx::Error::Database(db) => {
                        // undefined_table
                        assert_eq!(db.code().as_deref(), Some("42P01"), "{db}");
                    }
                    other => panic!("expected a database error, got {other:?}"),
                }
                // The very same error, shared: they were one batch.
                match &first {
                    None => first = Some(source),
                    Some(first) => assert!(Arc::ptr_eq(first, &source)),
                }
            }
            other => panic!("expected Error::Batch, got {other:?}"),
        }
    }
    pool.close().await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_repos_on_two_schemas_never_mix_results() {
    let Some((schema_a, pool_a)) = schema_with_users("alpha", 300).await else {
        return;
    };
    let Some((schema_b, pool_b)) = schema_with_users("beta", 300).await else {
        return;
    };
    let (a, b) = (UserRepo::new(pool_a.clone()), UserRepo::new(pool_b.clone()));
    // Interleaved calls for the same ids through both repos, at once.
    let calls = (1..=300).flat_map(|id| [(true, id), (false, id)]);
    let results = join_all(calls.map(|(is_a, id)| {
        let repo = if is_a { &a } else { &b };
        async move { (is_a, id, repo.users(id).await) }
    }))
    .await;
    for (is_a, id, result) in results {
        let label = if is_a { "alpha" } else { "beta" };
        assert_eq!(result.unwrap().unwrap().name, format!("{label}-{id}"));
    }
    // Each repo batched its own calls only.
    assert_eq!(a.queries.load(Ordering::SeqCst), 1);
    assert_eq!(b.queries.load(Ordering::SeqCst), 1);
    pool_a.close().await;
    pool_b.close().await;
    drop_schema(&schema_a).await;
    drop_schema(&schema_b).await;
}
