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

use coalesce::coalesce;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
}

pub struct UserRepo {
    pool: PgPool,
    queries: AtomicU64,
}

impl UserRepo {
    pub fn new(pool: PgPool) -> Self {
        UserRepo {
            pool,
            queries: AtomicU64::new(0),
        }
    }

    /// `repo.users(id).await -> Result<Option<User>, coalesce::Error<sqlx::Error>>`
    #[coalesce(window = "2ms", max_batch = 500, name = "pg_repo.users")]
    pub async fn users(&self, ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
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

    /// The ordered shape: one `Option<User>` per id, in order.
    /// `repo.users_ordered(id).await -> Result<Option<User>, coalesce::Error<sqlx::Error>>`
    #[coalesce(window = "2ms", max_batch = 500, name = "pg_repo.users_ordered")]
    pub async fn users_ordered(&self, ids: Vec<i64>) -> Result<Vec<Option<User>>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
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

async fn table_scans(admin: &PgPool, schema: &str) -> Result<i64, sqlx::Error> {
    let mut conn = admin.acquire().await?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    let scans: Option<i64> = sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'users'",
    )
    .bind(schema)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(scans.unwrap_or(0))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {url}: {e}"))?;
    let schema = format!("coalesce_example_{}", std::process::id());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.users (id bigint PRIMARY KEY, name text NOT NULL)"
    ))
    .execute(&admin)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.users SELECT g, 'user-' || g FROM generate_series(1, 10000) g"
    ))
    .execute(&admin)
    .await?;

    let options = PgConnectOptions::from_str(&url)?.options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    let repo = Arc::new(UserRepo::new(pool.clone()));
    let scans_before = table_scans(&admin, &schema).await?;

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
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        held.push(pool.acquire().await?);
    }
    for conn in &mut held {
        let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut **conn)
            .await;
    }
    drop(held);
    pool.close().await;
    let mut server = 0;
    for _ in 0..50 {
        server = table_scans(&admin, &schema).await? - scans_before;
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
    let options = PgConnectOptions::from_str(&url)?.options([("search_path", schema.as_str())]);
    let repo = UserRepo::new(PgPoolOptions::new().connect_with(options).await?);
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
