//! A PostgreSQL repository whose single-id lookups coalesce into one
//! `WHERE id = ANY($1)` query per window.
//!
//! ```text
//! cargo run --example pg_repo
//! ```
//!
//! Connects to `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test),
//! creates a scratch schema, fires 1,000 concurrent lookups, prints calls in vs
//! queries out (as counted by the client and by the server), and drops the schema.

#[path = "common/pg.rs"]
mod pg;

use pg::UserRepo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let admin = pg::connect_admin(&url)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {url}: {e}"))?;
    let schema = format!("coalesce_example_{}", std::process::id());
    pg::create_users(&admin, &schema, "user", 10_000).await?;

    let pool = pg::schema_pool(&url, &schema).await?;
    let repo = Arc::new(UserRepo::new(pool.clone(), &schema));
    let scans_before = pg::table_scans(&admin, &schema).await?;

    // 1,000 concurrent requests, each looking up one user, as a web handler would.
    let calls = 1000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.users(1 + (i * 7) % 10_000).await })
        })
        .collect();
    let mut found = 0;
    for task in tasks {
        found += usize::from(task.await??.is_some());
    }
    let elapsed = started.elapsed();
    let queries = repo.queries.load(Ordering::Relaxed);

    // Have every backend flush its statistics (PostgreSQL 15+), then close them.
    pg::flush_stats_and_close(&pool).await?;
    let mut server = 0;
    for _ in 0..50 {
        server = pg::table_scans(&admin, &schema).await? - scans_before;
        if server >= queries as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("pg_repo: {calls} calls in, {found} users found in {elapsed:?}");
    println!(
        "pg_repo: {queries} queries out (client), server counted {server} scans of {schema}.users"
    );

    // The ordered shape, with some ids that have no row: 20 calls, one query.
    let repo = UserRepo::new(pg::schema_pool(&url, &schema).await?, &schema);
    let ordered =
        futures::future::join_all((9_991..=10_010).map(|id| repo.users_ordered(id))).await;
    let missing = ordered.iter().filter(|r| matches!(r, Ok(None))).count();
    println!(
        "pg_repo: ordered shape: 20 calls in, {} query out, {missing} ids without a row",
        repo.queries.load(Ordering::Relaxed)
    );
    repo.pool.close().await;
    if let Some(m) = coalesce::metrics::get("pg_repo.users") {
        println!("{m}");
    }

    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}
