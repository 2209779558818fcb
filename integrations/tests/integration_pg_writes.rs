//! `WriteCore` on PostgreSQL: a burst of single-row writes becomes a few
//! `INSERT … SELECT * FROM unnest($1, $2) ON CONFLICT …` statements, counted by
//! the server, and a statement that fails fails every writer of its batch
//! without poisoning its keys.
//!
//! Needs PostgreSQL (`DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test).
//! Skips when it is unreachable unless `COALESCE_REQUIRE_SERVICES=1`.
//!
//! Statements are counted by the server as committed transactions
//! (`pg_stat_database.xact_commit`, database-wide), so the two tests take turns.
//! Every connection flushes its statistics before a count is read
//! (`pg_stat_force_next_flush()`, PostgreSQL 15+), and the reads' own
//! transactions are subtracted; a pooled connection's first use of the upsert
//! adds one (its Parse is a transaction too). No test here asserts how long
//! anything takes.

mod support;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coalesce::{Config, Error, WriteCore};
use futures::future::{join_all, BoxFuture};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;

/// The tests count transactions database-wide: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rows of one batch: `(id, value)`, one per id.
type Rows = Vec<(i64, i64)>;
/// One batch's statement, running.
type Statement = BoxFuture<'static, Result<(), sqlx::Error>>;

const POOL: u32 = 10;

const UPSERT_SUM: &str = "INSERT INTO scores(id, score) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
     ON CONFLICT (id) DO UPDATE SET score = scores.score + EXCLUDED.score";

/// Reads the database's committed transactions; this read's own commit is
/// flushed right after it (so the next read counts it).
const COMMITS: &str = "SELECT xact_commit FROM pg_stat_database \
     WHERE datname = current_database() AND (SELECT true FROM pg_stat_force_next_flush())";

/// Flushes this connection's statistics, its own commit included. It reads a
/// catalog because PostgreSQL skips the flush of a transaction that touched no
/// relation.
const FLUSH_STATS: &str = "SELECT true FROM pg_stat_database \
     WHERE datname = current_database() AND (SELECT true FROM pg_stat_force_next_flush())";

/// A fresh schema holding `scores(id, score < 1,000,000)`, an admin
/// connection, and a pool of [`POOL`] connections that see only that schema.
struct Scratch {
    schema: String,
    admin: PgConnection,
    pool: PgPool,
}

impl Scratch {
    async fn new() -> Option<Scratch> {
        let url = support::database_url();
        let base = match PgConnectOptions::from_str(&url) {
            Ok(options) => options,
            Err(e) => return support::unavailable("PostgreSQL", &url, e),
        };
        let connecting = PgConnection::connect_with(&base);
        let mut admin = match tokio::time::timeout(Duration::from_secs(3), connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return support::unavailable("PostgreSQL", &url, e),
            Err(_) => return support::unavailable("PostgreSQL", &url, "no answer within 3 s"),
        };
        let schema = support::unique("coalesce_pg_writes");
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            // Autovacuum off: its workers' transactions would be counted too.
            format!(
                "CREATE TABLE {schema}.scores (id bigint PRIMARY KEY, \
                 score bigint NOT NULL CHECK (score < 1000000)) \
                 WITH (autovacuum_enabled = false)"
            ),
            format!("SET search_path TO {schema}"),
            // Prepares the count (a statement's first Parse is a transaction
            // of its own), then flushes: the setup is counted now, not in a
            // test's count.
            COMMITS.to_owned(),
            FLUSH_STATS.to_owned(),
        ] {
            sqlx::query(&sql).execute(&mut admin).await.unwrap();
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .min_connections(POOL)
            .test_before_acquire(false)
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .unwrap();
        Some(Scratch {
            schema,
            admin,
            pool,
        })
    }

    /// Committed transactions counted so far (see [`COMMITS`]).
    async fn commits(&mut self) -> i64 {
        sqlx::query_scalar(COMMITS)
            .fetch_one(&mut self.admin)
            .await
            .unwrap()
    }

    /// Makes every pooled connection flush its statistics; returns how many
    /// transactions that took (one per connection).
    async fn flush_pool(&self) -> i64 {
        let held = join_all((0..self.pool.size()).map(|_| self.pool.acquire())).await;
        let mut flushes = 0;
        for conn in held {
            let mut conn = conn.unwrap();
            sqlx::query(FLUSH_STATS).execute(&mut *conn).await.unwrap();
            flushes += 1;
        }
        flushes
    }

    async fn table(&mut self) -> Vec<(i64, i64)> {
        sqlx::query_as("SELECT id, score FROM scores ORDER BY id")
            .fetch_all(&mut self.admin)
            .await
            .unwrap()
    }

    /// Drops the schema. Every connection flushes its statistics first, so
    /// that none are flushed late, into the next test's count.
    async fn cleanup(mut self) {
        self.flush_pool().await;
        self.pool.close().await;
        for sql in [
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            FLUSH_STATS.to_owned(),
        ] {
            let _ = sqlx::query(&sql).execute(&mut self.admin).await;
        }
        let _ = self.admin.close().await;
    }
}

/// The batch function: one unnest upsert per batch (ids sorted), counting the
/// statements it sends.
fn upsert(
    pool: &PgPool,
    sent: &Arc<AtomicU64>,
) -> impl Fn(&(), Rows) -> Statement + Clone + Send + Sync + 'static {
    let (pool, sent) = (pool.clone(), sent.clone());
    move |_, mut rows| {
        let (pool, sent) = (pool.clone(), sent.clone());
        Box::pin(async move {
            rows.sort_unstable();
            let (ids, scores): (Vec<i64>, Vec<i64>) = rows.into_iter().unzip();
            sent.fetch_add(1, Ordering::SeqCst);
            sqlx::query(UPSERT_SUM)
                .bind(ids)
                .bind(scores)
                .execute(&pool)
                .await?;
            Ok(())
        })
    }
}

fn sum(total: &mut i64, n: i64) {
    *total += n;
}

/// What a sequential execution of sum writes leaves in the table.
fn model(calls: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut table = BTreeMap::new();
    for &(id, n) in calls {
        *table.entry(id).or_insert(0) += n;
    }
    table.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_sum_writes_over_50_ids_make_a_few_statements() {
    let _turn = SERIAL.lock().await;
    let Some(mut db) = Scratch::new().await else {
        return;
    };
    let calls: Vec<(i64, i64)> = (0..5_000).map(|i| (i % 50 + 1, i % 7 + 1)).collect();
    let core: WriteCore<(), i64, i64, sqlx::Error> = WriteCore::with_merge(
        Config::new("pg_writes.sum").window(Duration::from_millis(20)),
        sum,
    );
    let sent = Arc::new(AtomicU64::new(0));
    let batch = upsert(&db.pool, &sent);

    db.flush_pool().await;
    let before = db.commits().await;
    let results = join_all(
        calls
            .iter()
            .map(|&(id, n)| core.save((), id, n, batch.clone())),
    )
    .await;
    let flushes = db.flush_pool().await;
    let after = db.commits().await;

    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "call {i}: {result:?}");
    }
    assert_eq!(
        db.table().await,
        model(&calls),
        "the table against the model"
    );
    // Less the first read's own commit and the pool's flushes.
    let statements = after - before - 1 - flushes;
    let sent = sent.load(Ordering::SeqCst) as i64;
    assert!(
        statements >= sent && sent >= 1,
        "the server counted {statements} statements, the client sent {sent}"
    );
    assert!(
        statements <= calls.len() as i64 / 20,
        "{} calls made {statements} statements",
        calls.len()
    );
    let m = core.metrics();
    assert_eq!(m.calls, 5_000);
    assert_eq!(m.failed_calls(), 0);
    println!(
        "pg writes: {} calls, {} net writes, {sent} statements sent, {statements} counted by the server",
        m.calls, m.keys
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_fails_its_whole_batch_and_poisons_no_key() {
    let _turn = SERIAL.lock().await;
    let Some(mut db) = Scratch::new().await else {
        return;
    };
    let core: WriteCore<(), i64, i64, sqlx::Error> = WriteCore::with_merge(
        // A generous window: the 200 writes of the burst share one batch even
        // in a debug build on a loaded machine.
        Config::new("pg_writes.check").window(Duration::from_millis(50)),
        sum,
    );
    let sent = Arc::new(AtomicU64::new(0));
    let batch = upsert(&db.pool, &sent);

    // 200 writes over ids 1..=10; one of them takes id 7 past the CHECK.
    let poisoned: Vec<(i64, i64)> = (0..200)
        .map(|i| (i % 10 + 1, if i == 106 { 1_000_000 } else { 1 }))
        .collect();
    assert_eq!(poisoned[106].0, 7);
    let results = join_all(
        poisoned
            .iter()
            .map(|&(id, n)| core.save((), id, n, batch.clone())),
    )
    .await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        1,
        "one statement for the burst"
    );
    let mut shared: Option<Arc<sqlx::Error>> = None;
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Err(Error::Batch { source, .. }) => {
                match &*source {
                    sqlx::Error::Database(db) => {
                        // check_violation
                        assert_eq!(db.code().as_deref(), Some("23514"), "{db}");
                    }
                    other => panic!("call {i}: expected a database error, got {other:?}"),
                }
                // One statement, one error, shared by every writer of the batch.
                match &shared {
                    None => shared = Some(source),
                    Some(first) => assert!(Arc::ptr_eq(first, &source), "call {i}"),
                }
            }
            other => panic!("call {i}: expected Error::Batch, got {other:?}"),
        }
    }
    assert!(
        db.table().await.is_empty(),
        "the failed statement committed nothing"
    );

    // The same ids again, within bounds: the next batch commits.
    let healthy: Vec<(i64, i64)> = (0..100).map(|i| (i % 10 + 1, 2)).collect();
    let results = join_all(
        healthy
            .iter()
            .map(|&(id, n)| core.save((), id, n, batch.clone())),
    )
    .await;
    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "call {i}: {result:?}");
    }
    assert_eq!(db.table().await, model(&healthy));
    let m = core.metrics();
    assert_eq!((m.calls, m.batch_errors), (300, 200));
    db.cleanup().await;
}
