//! Shared by `examples/pg_repo.rs` and `tests/integration_pg.rs`: a user
//! repository over PostgreSQL with coalesced lookups, and the scratch-schema and
//! server-statistics helpers around it.

use coalesce::coalesce;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
}

/// A repository over `users` in the schema its pool's `search_path` names.
///
/// Cheap to clone (the pool and the counter are shared), as handlers clone it
/// per request. Its coalesced methods say `instance = self.schema`: clones of
/// one repository share batches, and repositories over two schemas never do.
#[derive(Clone)]
pub struct UserRepo {
    pub pool: PgPool,
    /// The schema the pool's connections see.
    pub schema: Arc<str>,
    /// Queries this repo (and its clones) sent (client side).
    pub queries: Arc<AtomicU64>,
}

impl UserRepo {
    pub fn new(pool: PgPool, schema: &str) -> Self {
        UserRepo {
            pool,
            schema: Arc::from(schema),
            queries: Arc::default(),
        }
    }

    /// One query for every id of the batch.
    /// `repo.users(id).await -> Result<Option<User>, coalesce::Error<sqlx::Error>>`
    #[coalesce(window = "2ms", max_batch = 500, name = "pg_repo.users", instance = self.schema)]
    pub async fn users(&self, ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
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
    /// `repo.users_ordered(id).await -> Result<Option<User>, coalesce::Error<sqlx::Error>>`
    #[coalesce(window = "2ms", max_batch = 500, name = "pg_repo.users_ordered", instance = self.schema)]
    pub async fn users_ordered(&self, ids: Vec<i64>) -> Result<Vec<Option<User>>, sqlx::Error> {
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

/// A small pool for setup and statistics; fails within 3 s if the server is down.
pub async fn connect_admin(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
}

/// Creates `schema` holding `users(id, name)` with ids `1..=rows`, named `<label>-<id>`.
pub async fn create_users(
    admin: &PgPool,
    schema: &str,
    label: &str,
    rows: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.users (id bigint PRIMARY KEY, name text NOT NULL)"
    ))
    .execute(admin)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.users SELECT g, $1 || '-' || g FROM generate_series(1, $2::bigint) g"
    ))
    .bind(label)
    .bind(rows)
    .execute(admin)
    .await?;
    Ok(())
}

/// A pool whose connections see only `schema`.
pub async fn schema_pool(url: &str, schema: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
}

/// Scans of `schema.users` the server has counted (sequential + index).
pub async fn table_scans(admin: &PgPool, schema: &str) -> Result<i64, sqlx::Error> {
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

/// Makes every backend of `pool` flush its statistics now (PostgreSQL 15+;
/// otherwise a deferred flush can take up to 10 s), then closes the pool.
pub async fn flush_stats_and_close(pool: &PgPool) -> Result<(), sqlx::Error> {
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
    Ok(())
}
