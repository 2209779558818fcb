//! `#[coalesce]` on a PostgreSQL repository: a burst of single-id loads becomes a
//! few `WHERE id = ANY($1)` queries, counted on the client and by the server.
//!
//! Needs PostgreSQL (`DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test).
//! Skips when it is unreachable unless `COALESCE_REQUIRE_SERVICES=1`.

mod support;

#[path = "../examples/common/pg.rs"]
mod pg;

use coalesce::Error;
use futures::future::join_all;
use pg::{User, UserRepo};
use sqlx::postgres::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A fresh schema holding `users(id, name)` with ids `1..=rows`, named
/// `<label>-<id>`, and a pool whose connections see only that schema.
async fn schema_with_users(label: &str, rows: i64) -> Option<(String, PgPool)> {
    let url = support::database_url();
    let admin = match pg::connect_admin(&url).await {
        Ok(pool) => pool,
        Err(e) => return support::unavailable("PostgreSQL", &url, e),
    };
    let schema = support::unique("coalesce_pg");
    pg::create_users(&admin, &schema, label, rows)
        .await
        .unwrap();
    admin.close().await;
    let pool = pg::schema_pool(&url, &schema).await.unwrap();
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
    pg::table_scans(admin, schema).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_loads_makes_two_queries() {
    support::generous_windows(&["pg_repo.users", "pg_repo.users_ordered"]);
    let Some((schema, pool)) = schema_with_users("u", 1000).await else {
        return;
    };
    let admin = PgPool::connect(&support::database_url()).await.unwrap();
    let before = server_scans(&admin, &schema).await;
    let repo = UserRepo::new(pool.clone(), &schema);

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

    // Make every backend of the pool flush its statistics now, then end them.
    pg::flush_stats_and_close(&pool).await.unwrap();
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
    support::generous_windows(&["pg_repo.users", "pg_repo.users_ordered"]);
    let Some((schema, pool)) = schema_with_users("o", 100).await else {
        return;
    };
    let repo = UserRepo::new(pool.clone(), &schema);
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
    support::generous_windows(&["pg_repo.users", "pg_repo.users_ordered"]);
    let Some((schema, pool)) = schema_with_users("e", 10).await else {
        return;
    };
    let repo = UserRepo::new(pool.clone(), &schema);
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
    support::generous_windows(&["pg_repo.users", "pg_repo.users_ordered"]);
    let Some((schema_a, pool_a)) = schema_with_users("alpha", 300).await else {
        return;
    };
    let Some((schema_b, pool_b)) = schema_with_users("beta", 300).await else {
        return;
    };
    let (a, b) = (
        UserRepo::new(pool_a.clone(), &schema_a),
        UserRepo::new(pool_b.clone(), &schema_b),
    );
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
