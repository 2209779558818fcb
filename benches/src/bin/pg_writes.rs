//! PostgreSQL writes: bursts of single-row upserts into `scores(id, score)`
//! through `coalesce::WriteCore`, against one `INSERT … ON CONFLICT` per call
//! (naive) and against `batch-aint-one` 0.16, side by side in one run.
//!
//! Scenarios, each a burst of concurrent calls through a sqlx pool of 10
//! connections (window 20 ms and batches of at most 1,000 rows for both
//! batchers):
//!
//! - **hot keys, sum**: 100,000 `save(id, 1)` over 1,000 ids (each id 100
//!   times, shuffled), a sum merge and the unnest upsert
//!   `… DO UPDATE SET score = scores.score + EXCLUDED.score`;
//! - **hot keys, last write wins**: 100,000 `save(id, seq)` over 1,000 ids and
//!   `… DO UPDATE SET score = EXCLUDED.score`;
//! - **distinct keys**: 100,000 distinct ids, nothing to fold.
//!
//! The naive contender runs one single-row upsert per call, all calls at once,
//! their concurrency bounded by the pool. `batch-aint-one` batches but does
//! not fold: its processor sums the duplicates of an id inside its batch before
//! the same unnest upsert (see [`BaoUpsert`]).
//!
//! Measured for each: wall time, acknowledged writes per second, statements
//! counted *on the server* (the delta of `pg_stat_database.xact_commit`, each
//! statement being its own transaction), each statement's execution time, ack
//! latency p50/p99, and whether the final table equals a sequential model of
//! the calls computed in memory. One task issues a burst (`join_all`, which
//! polls the calls in call order, so the engine accepts them in that order);
//! a call's ack latency runs from its first poll to the wake-up that delivers
//! its answer, and the latency its caller saw (until that task polled it
//! again) is shown beside it (see [`timed`]).
//!
//! Counting on the server, as `pg_burst` does (a separate admin connection
//! reads the counter; the measured pool is closed before the second read), but
//! exactly: every connection of the measured pool and the admin connection
//! ask for their statistics to be flushed (`pg_stat_force_next_flush()`,
//! PostgreSQL 15+) before the counter is read, so no transaction is counted
//! late, and the known overhead (the first counter read and one flush request
//! per pooled connection) is subtracted. Each pooled connection runs its
//! contender's statement before the count starts (a statement's first Parse
//! is a transaction of its own, and a warm service has its statements
//! prepared). Autovacuum is off for `scores`, whose workers' transactions
//! would be counted too. The statements the client sent are counted as well;
//! a difference means something else used the database during the run.
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) must point
//! at 127.0.0.1 or localhost. The run creates a fresh schema and drops it at the
//! end.
//!
//! Usage: `cargo run --release -p coalesce-benches --bin pg_writes [-- ROUNDS]`
//! (ROUNDS defaults to 3; the table shows medians and the min..max spread).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::future::poll_fn;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use batch_aint_one::{Batcher, BatchingPolicy, Limits, OnFull, Processor};
use coalesce::metrics::MetricsSnapshot;
use coalesce::{Config, WriteCore};
use futures::future::{join_all, BoxFuture};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};

/// Rows of one batch: `(id, value)`, one per id.
type Rows = Vec<(i64, i64)>;
/// One batch's statement, running.
type Statement = BoxFuture<'static, Result<(), sqlx::Error>>;

/// Connections of the measured pool.
const POOL: u32 = 10;
/// Calls in a burst.
const CALLS: usize = 100_000;
/// Distinct ids of the hot-key scenarios.
const HOT_IDS: usize = 1_000;
/// The batchers' window.
const WINDOW: Duration = Duration::from_millis(20);
/// The batchers' largest batch (rows of one statement).
const MAX_BATCH: usize = 1_000;
/// The naive hot-key burst shrinks to this many calls when 100,000 would take
/// longer than [`NAIVE_BUDGET`].
const NAIVE_FALLBACK_CALLS: usize = 10_000;
const NAIVE_BUDGET: Duration = Duration::from_secs(60);
/// A measurement that takes longer than this fails the run.
const MEASUREMENT_LIMIT: Duration = Duration::from_secs(120);
/// The whole run should stay under this.
const RUN_BUDGET: Duration = Duration::from_secs(300);

/// Targets this bench reports against.
const HOT_TARGET_PER_S: f64 = 200_000.0;
const DISTINCT_SPEEDUP_TARGET: f64 = 20.0;
const DISTINCT_FEWER_TARGET: f64 = 100.0;
/// Lanes of the hot-key scenarios: the hot ids fit one batch (`HOT_IDS <=
/// MAX_BATCH`) and the engine keeps one write per key in flight, so the hot
/// set moves through one batch at a time.
const HOT_LANES: f64 = 1.0;

const UPSERT_SUM: &str = "INSERT INTO scores(id, score) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
     ON CONFLICT (id) DO UPDATE SET score = scores.score + EXCLUDED.score";
const UPSERT_LAST: &str = "INSERT INTO scores(id, score) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
     ON CONFLICT (id) DO UPDATE SET score = EXCLUDED.score";
const SINGLE_SUM: &str = "INSERT INTO scores(id, score) VALUES ($1, $2) \
     ON CONFLICT (id) DO UPDATE SET score = scores.score + EXCLUDED.score";

/// Reads the database's commit and rollback counters, and asks for this
/// connection's own statistics (this read's commit included) to be flushed as
/// soon as it is idle: the next read counts exactly one more commit from here.
const COUNTERS: &str = "SELECT xact_commit, xact_rollback FROM pg_stat_database \
     WHERE datname = current_database() AND (SELECT true FROM pg_stat_force_next_flush())";
/// Makes this connection flush its pending statistics (its own commit
/// included) before it answers.
///
/// The statement reads a catalog on purpose: a transaction that touched no
/// relation leaves nothing pending but its commit, and PostgreSQL 15 then skips
/// the flush altogether (the commit would be counted later, or never).
const FLUSH_STATS: &str = "SELECT true FROM pg_stat_database \
     WHERE datname = current_database() AND (SELECT true FROM pg_stat_force_next_flush())";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    HotSum,
    HotLast,
    Distinct,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::HotSum => "hot keys, sum",
            Scenario::HotLast => "hot keys, last write wins",
            Scenario::Distinct => "distinct keys",
        }
    }

    /// Writes to one id add up (else the last one wins).
    fn sums(self) -> bool {
        self != Scenario::HotLast
    }

    /// The upsert of one batch (unnest of two arrays).
    fn batch_sql(self) -> &'static str {
        if self.sums() {
            UPSERT_SUM
        } else {
            UPSERT_LAST
        }
    }

    /// The calls of a burst, `(id, value)` in call order: the same for every
    /// contender of a round.
    fn calls(self, seed: u64) -> Vec<(i64, i64)> {
        let n = CALLS as i64;
        match self {
            Scenario::Distinct => (1..=n).map(|id| (id, id % 997 + 1)).collect(),
            Scenario::HotSum | Scenario::HotLast => {
                // Every hot id CALLS / HOT_IDS times, in a shuffled order.
                let mut ids: Vec<i64> = (0..n).map(|i| i % HOT_IDS as i64 + 1).collect();
                shuffle(&mut ids, seed);
                ids.into_iter()
                    .enumerate()
                    .map(|(seq, id)| {
                        let value = if self.sums() { 1 } else { seq as i64 + 1 };
                        (id, value)
                    })
                    .collect()
            }
        }
    }

    /// The table a sequential execution of `calls` leaves.
    fn model(self, calls: &[(i64, i64)]) -> Vec<(i64, i64)> {
        let mut table = BTreeMap::new();
        for &(id, value) in calls {
            if self.sums() {
                *table.entry(id).or_insert(0) += value;
            } else {
                table.insert(id, value);
            }
        }
        table.into_iter().collect()
    }

    /// How `table` differs from `model`, if it does: for last write wins,
    /// whose values are call numbers, which call's value each differing id
    /// kept.
    fn compare(self, table: &[(i64, i64)], model: &[(i64, i64)]) -> Option<String> {
        if table == model {
            return None;
        }
        let model_of: BTreeMap<i64, i64> = model.iter().copied().collect();
        let table_of: BTreeMap<i64, i64> = table.iter().copied().collect();
        let mut differing: Vec<(i64, Option<i64>, Option<i64>)> = model_of
            .keys()
            .chain(table_of.keys())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|id| (id, table_of.get(&id).copied(), model_of.get(&id).copied()))
            .filter(|(_, t, m)| t != m)
            .collect();
        let n = differing.len();
        differing.truncate(3);
        let examples: Vec<String> = differing
            .iter()
            .map(|(id, t, m)| match (self, t, m) {
                (Scenario::HotLast, Some(t), Some(m)) => format!(
                    "id {id} kept call #{t}'s value, not the last call's (#{m}){}",
                    if t < m { ", an older write" } else { "" }
                ),
                _ => format!("id {id}: table {t:?}, model {m:?}"),
            })
            .collect();
        Some(format!("{n} ids differ: {}", examples.join("; ")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Coalesce,
    Naive,
    BatchAintOne,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Coalesce => "coalesce WriteCore",
            Contender::Naive => "naive (1 statement per call)",
            Contender::BatchAintOne => "batch-aint-one 0.16",
        }
    }
}

/// One row of the table: a scenario, a contender and its burst size.
#[derive(Clone, Copy, Debug)]
struct Case {
    scenario: Scenario,
    contender: Contender,
    calls: usize,
}

/// The upsert of a batch of rows, counting and timing the statements it sends.
#[derive(Clone)]
struct Upsert {
    pool: PgPool,
    sql: &'static str,
    sent: Arc<AtomicU64>,
    /// Each statement's execution time (pool wait excluded).
    times: Arc<Mutex<Vec<Duration>>>,
}

impl Upsert {
    /// Runs the statement for `rows` (ids distinct) on `conn`, the rows sorted
    /// by id so that concurrent statements lock the rows they share in the
    /// same order.
    async fn run(&self, conn: &mut PgConnection, mut rows: Rows) -> Result<(), sqlx::Error> {
        rows.sort_unstable_by_key(|&(id, _)| id);
        let (ids, scores): (Vec<i64>, Vec<i64>) = rows.into_iter().unzip();
        self.sent.fetch_add(1, Relaxed);
        let start = Instant::now();
        sqlx::query(self.sql)
            .bind(ids)
            .bind(scores)
            .execute(conn)
            .await?;
        self.times.lock().unwrap().push(start.elapsed());
        Ok(())
    }

    /// The batch function of a `WriteCore`: one statement per batch.
    fn batch_fn(&self) -> impl Fn(&(), Rows) -> Statement + Clone + Send + Sync + 'static {
        let up = self.clone();
        move |_, rows| {
            let up = up.clone();
            Box::pin(async move {
                let mut conn = up.pool.acquire().await?;
                up.run(&mut conn, rows).await
            })
        }
    }
}

/// `batch-aint-one`'s processor: one unnest upsert per batch, on a connection
/// acquired from the pool before the batch is taken.
///
/// `batch-aint-one` does not fold: a batch may hold several writes to one id,
/// and an upsert that meets an id twice fails as a whole ("ON CONFLICT DO
/// UPDATE command cannot affect row a second time"). For correctness this
/// processor sums each id's writes inside its batch before the upsert (both
/// scenarios it runs add up), and answers every input of the batch.
#[derive(Clone)]
struct BaoUpsert(Upsert);

impl Processor for BaoUpsert {
    type Key = ();
    type Input = (i64, i64);
    type Output = ();
    type Error = Arc<sqlx::Error>;
    type Resources = PoolConnection<Postgres>;

    async fn acquire_resources(&self, _key: ()) -> Result<Self::Resources, Self::Error> {
        self.0.pool.acquire().await.map_err(Arc::new)
    }

    async fn process(
        &self,
        _key: (),
        inputs: impl Iterator<Item = (i64, i64)> + Send,
        mut conn: Self::Resources,
    ) -> Result<Vec<()>, Self::Error> {
        let mut inputs_seen = 0;
        let mut net: HashMap<i64, i64> = HashMap::new();
        for (id, value) in inputs {
            inputs_seen += 1;
            *net.entry(id).or_insert(0) += value;
        }
        self.0
            .run(&mut conn, net.into_iter().collect())
            .await
            .map_err(Arc::new)?;
        Ok(vec![(); inputs_seen])
    }
}

/// One measured burst.
struct Measured {
    /// The calls' side: times and answers.
    run: Driven,
    /// Statements the server counted (committed transactions).
    statements: i64,
    /// Transactions the server rolled back.
    rollbacks: i64,
    /// Statements the client sent.
    sent: u64,
    /// Each statement's execution time (pool wait excluded), sorted.
    statement_times: Vec<Duration>,
    /// How the final table differs from the model, if it does.
    mismatch: Option<String>,
    /// The write coalescer's own metrics (coalesce only).
    engine: Option<MetricsSnapshot>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.run.acked as f64 / self.run.wall.as_secs_f64()
    }

    /// The windows the burst's wall time spans (at least one).
    fn windows(&self) -> f64 {
        (self.run.wall.as_secs_f64() / WINDOW.as_secs_f64())
            .ceil()
            .max(1.0)
    }

    /// Statements per window of the burst's wall time.
    fn per_window(&self) -> f64 {
        self.statements as f64 / self.windows()
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// What one call reports: `Ok(Some(t))` with its own statement's time
/// (naive), `Ok(None)`, or its error.
type CallResult = Result<Option<Duration>, String>;

/// The calls' side of a burst.
struct Driven {
    wall: Duration,
    /// Calls answered `Ok`.
    acked: usize,
    /// The first error a call got, if any.
    error: Option<String>,
    /// Each call's ack latency, sorted: from its first poll (when the engine
    /// accepts it) to the wake-up that delivered its answer.
    latencies: Vec<Duration>,
    /// Each call's latency as its caller saw it, sorted: until the harness
    /// task got round to polling it again (see [`timed`]).
    seen: Vec<Duration>,
    /// From the start to the first poll of the last call: how long one task
    /// took to issue the burst.
    issued: Duration,
    /// Naive only: each statement's own execution time (pool wait excluded), sorted.
    statement_times: Vec<Duration>,
}

/// Records the last time a call's waker was woken, then passes the wake-up on.
#[derive(Default)]
struct WakeStamp {
    waker: Mutex<Option<Waker>>,
    woken: Mutex<Option<Instant>>,
}

impl Wake for WakeStamp {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        *self.woken.lock().unwrap() = Some(Instant::now());
        if let Some(waker) = &*self.waker.lock().unwrap() {
            waker.wake_by_ref();
        }
    }
}

/// Runs `call`, returning when it was first polled, its ack latency, the
/// latency its caller saw, and its output.
///
/// One task polls the whole burst: while it issues 100,000 calls, an answer
/// that arrives early waits for the task to come back to its call. The ack
/// latency therefore ends at the wake-up that delivered the answer (the
/// engine resolving the writer, the socket turning readable for a naive
/// statement, `batch-aint-one`'s channel), not at the next poll.
async fn timed<F: Future>(call: F) -> (Instant, Duration, Duration, F::Output) {
    let start = Instant::now();
    let stamp = Arc::new(WakeStamp::default());
    let waker = Waker::from(stamp.clone());
    let mut call = std::pin::pin!(call);
    let output = poll_fn(|cx| {
        {
            let mut outer = stamp.waker.lock().unwrap();
            if !outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *outer = Some(cx.waker().clone());
            }
        }
        call.as_mut().poll(&mut Context::from_waker(&waker))
    })
    .await;
    let seen = start.elapsed();
    let answered = stamp
        .woken
        .lock()
        .unwrap()
        .map_or(seen, |at| at.saturating_duration_since(start));
    (start, answered, seen, output)
}

/// Runs `calls` concurrently in one task (`join_all` polls them in call
/// order, so the engine accepts them in that order) and times each.
async fn drive<F: Future<Output = CallResult>>(calls: Vec<F>) -> Driven {
    let calls: Vec<_> = calls.into_iter().map(timed).collect();
    let start = Instant::now();
    let results = join_all(calls).await;
    let wall = start.elapsed();
    let mut driven = Driven {
        wall,
        acked: 0,
        error: None,
        latencies: Vec::with_capacity(results.len()),
        seen: Vec::with_capacity(results.len()),
        issued: Duration::ZERO,
        statement_times: Vec::new(),
    };
    for (first_poll, latency, seen, result) in results {
        driven.issued = driven.issued.max(first_poll - start);
        driven.latencies.push(latency);
        driven.seen.push(seen);
        match result {
            Ok(statement) => {
                driven.acked += 1;
                driven.statement_times.extend(statement);
            }
            Err(e) => {
                driven.error.get_or_insert(e);
            }
        }
    }
    driven.latencies.sort_unstable();
    driven.seen.sort_unstable();
    driven.statement_times.sort_unstable();
    driven
}

fn text(e: impl Display) -> String {
    e.to_string()
}

/// The server and the fresh schema the run writes in.
struct Env {
    options: PgConnectOptions,
    admin: PgConnection,
}

impl Env {
    async fn new(url: &str, schema: &str) -> Env {
        let base = PgConnectOptions::from_str(url).expect("DATABASE_URL");
        let mut admin = PgConnection::connect_with(&base).await.expect("connect");
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE TABLE {schema}.scores (id bigint PRIMARY KEY, score bigint NOT NULL) \
                 WITH (autovacuum_enabled = false)"
            ),
            format!("SET search_path TO {schema}"),
        ] {
            sqlx::query(&sql).execute(&mut admin).await.expect("setup");
        }
        let options = base.options([("search_path", schema)]);
        Env { options, admin }
    }

    async fn counters(&mut self) -> (i64, i64) {
        sqlx::query_as(COUNTERS)
            .fetch_one(&mut self.admin)
            .await
            .expect("counters")
    }

    async fn table(&mut self) -> Vec<(i64, i64)> {
        sqlx::query_as("SELECT id, score FROM scores ORDER BY id")
            .fetch_all(&mut self.admin)
            .await
            .expect("read table")
    }

    /// A pool of [`POOL`] open connections, each of which has run `warm` (so
    /// its statements are prepared and its caches filled before the clock
    /// starts, as in a warm service) and flushed its statistics.
    async fn pool(&self, warm: &[&'static str]) -> PgPool {
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .min_connections(POOL)
            // No ping before each acquire: the naive path pays no extra round trip.
            .test_before_acquire(false)
            // The naive burst queues every call on the pool.
            .acquire_timeout(MEASUREMENT_LIMIT)
            .connect_with(self.options.clone())
            .await
            .expect("connect pool");
        let held = join_all((0..POOL).map(|_| pool.acquire())).await;
        for (i, conn) in held.into_iter().enumerate() {
            let mut conn = conn.expect("acquire");
            // Sentinel rows (negative ids), truncated before the burst.
            let id = -(i as i64) - 1;
            for &sql in warm {
                let query = if sql == SINGLE_SUM {
                    sqlx::query(sql).bind(id).bind(0i64)
                } else {
                    sqlx::query(sql).bind(vec![id]).bind(vec![0i64])
                };
                query.execute(&mut *conn).await.expect("warm-up");
            }
            sqlx::query(FLUSH_STATS)
                .execute(&mut *conn)
                .await
                .expect("flush stats");
        }
        pool
    }

    async fn measure(&mut self, case: Case, seed: u64) -> Measured {
        let Case {
            scenario,
            contender,
            calls: n,
        } = case;
        // Its processor sums: batch-aint-one runs the sum scenarios only.
        assert!(scenario.sums() || contender != Contender::BatchAintOne);
        let mut calls = scenario.calls(seed);
        calls.truncate(n);
        let model = scenario.model(&calls);
        let warm: &[&str] = match contender {
            Contender::Naive => &[SINGLE_SUM],
            _ => &[scenario.batch_sql()],
        };
        let pool = self.pool(warm).await;
        for sql in ["TRUNCATE scores", FLUSH_STATS] {
            sqlx::query(sql)
                .execute(&mut self.admin)
                .await
                .expect("reset");
        }
        let (commits0, rollbacks0) = self.counters().await;
        let sent = Arc::new(AtomicU64::new(0));
        let up = Upsert {
            pool: pool.clone(),
            sql: scenario.batch_sql(),
            sent: sent.clone(),
            times: Arc::default(),
        };
        let name = format!("pg_writes.{scenario:?}");
        let (run, engine) = tokio::time::timeout(MEASUREMENT_LIMIT, async {
            match contender {
                Contender::Coalesce => {
                    let config = Config::new(name).window(WINDOW).max_batch(MAX_BATCH);
                    let core: WriteCore<(), i64, i64, sqlx::Error> = if scenario.sums() {
                        WriteCore::with_merge(config, |sum: &mut i64, n| *sum += n)
                    } else {
                        WriteCore::new(config)
                    };
                    let batch = up.batch_fn();
                    let futures = calls
                        .iter()
                        .map(|&(id, value)| {
                            let save = core.save((), id, value, batch.clone());
                            async move { save.await.map(|()| None).map_err(text) }
                        })
                        .collect();
                    let driven = drive(futures).await;
                    (driven, Some(core.metrics()))
                }
                Contender::Naive => {
                    let futures = calls
                        .iter()
                        .map(|&(id, value)| {
                            let (pool, sent) = (&pool, &sent);
                            async move {
                                let mut conn = pool.acquire().await.map_err(text)?;
                                let start = Instant::now();
                                sent.fetch_add(1, Relaxed);
                                sqlx::query(SINGLE_SUM)
                                    .bind(id)
                                    .bind(value)
                                    .execute(&mut *conn)
                                    .await
                                    .map_err(text)?;
                                Ok(Some(start.elapsed()))
                            }
                        })
                        .collect();
                    (drive(futures).await, None)
                }
                Contender::BatchAintOne => {
                    let batcher = Batcher::builder()
                        .name("pg_writes")
                        .processor(BaoUpsert(up.clone()))
                        .limits(
                            Limits::builder()
                                .max_batch_size(MAX_BATCH)
                                // As many batches at once as the pool has connections.
                                .max_key_concurrency(POOL as usize)
                                // Room for the whole burst: nothing is rejected.
                                .max_key_queued_items(2 * CALLS)
                                .build(),
                        )
                        // The analogue of coalesce's window and max_batch: a
                        // batch leaves when full or when its oldest item has
                        // waited one window.
                        .batching_policy(BatchingPolicy::Duration(WINDOW, OnFull::Process))
                        .build();
                    let futures = calls
                        .iter()
                        .map(|&(id, value)| {
                            let add = batcher.add((), (id, value));
                            async move { add.await.map(|()| None).map_err(text) }
                        })
                        .collect();
                    let driven = drive(futures).await;
                    let worker = batcher.worker_handle();
                    worker.shut_down().await;
                    worker.wait_for_shutdown().await;
                    (driven, None)
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{case:?} took longer than {MEASUREMENT_LIMIT:?}"));

        // Every pooled connection flushes its statistics (one more commit
        // each), then the pool closes.
        let mut flushes = 0;
        let held: Vec<_> = join_all((0..pool.size()).map(|_| pool.acquire()))
            .await
            .into_iter()
            .map(|c| c.expect("acquire"))
            .collect();
        for mut conn in held {
            sqlx::query(FLUSH_STATS)
                .execute(&mut *conn)
                .await
                .expect("flush stats");
            flushes += 1;
        }
        pool.close().await;
        let (commits1, rollbacks1) = self.counters().await;
        let table = self.table().await;
        let mut statement_times = std::mem::take(&mut *up.times.lock().unwrap());
        statement_times.extend(&run.statement_times);
        statement_times.sort_unstable();
        Measured {
            run,
            statement_times,
            // Less the first counter read's own commit and the flush requests.
            statements: commits1 - commits0 - 1 - flushes,
            rollbacks: rollbacks1 - rollbacks0,
            sent: sent.load(Relaxed),
            mismatch: scenario.compare(&table, &model),
            engine,
        }
    }
}

/// Fisher–Yates with SplitMix64: the same order for a seed, on every machine.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Median, min and max.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn median(values: Vec<f64>) -> f64 {
    spread(values).0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `1234567.8` -> `"1,234,568"`.
fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "NOT MET"
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let began = Instant::now();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let host = PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL")
        .get_host()
        .to_owned();
    assert!(
        host == "127.0.0.1" || host == "localhost",
        "only 127.0.0.1 or localhost is allowed, not {host:?}"
    );
    let rounds: u64 = match std::env::args().nth(1) {
        None => 3,
        Some(a) => a
            .parse()
            .ok()
            .filter(|&r| r >= 1)
            .expect("ROUNDS: a positive integer"),
    };
    let schema = format!("coalesce_pg_writes_{}", std::process::id());
    let mut env = Env::new(&url, &schema).await;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut env.admin)
        .await
        .expect("version");

    // A probe (not reported) warms the server up, prepares the admin
    // connection's statements, and sizes the naive hot burst.
    let probe_calls = 5_000;
    let probe = env
        .measure(
            Case {
                scenario: Scenario::HotSum,
                contender: Contender::Naive,
                calls: probe_calls,
            },
            0,
        )
        .await;
    let projected = probe.run.wall.mul_f64(CALLS as f64 / probe_calls as f64);
    let naive_hot_calls = if projected > NAIVE_BUDGET {
        NAIVE_FALLBACK_CALLS
    } else {
        CALLS
    };
    eprintln!(
        "probe: {probe_calls} naive hot writes in {:.0} ms; 100,000 projected at {:.1} s",
        ms(probe.run.wall),
        projected.as_secs_f64()
    );

    let cases = [
        (Scenario::HotSum, Contender::Coalesce, CALLS),
        (Scenario::HotSum, Contender::Naive, naive_hot_calls),
        (Scenario::HotSum, Contender::BatchAintOne, CALLS),
        (Scenario::HotLast, Contender::Coalesce, CALLS),
        (Scenario::Distinct, Contender::Coalesce, CALLS),
        (Scenario::Distinct, Contender::Naive, CALLS),
        (Scenario::Distinct, Contender::BatchAintOne, CALLS),
    ]
    .map(|(scenario, contender, calls)| Case {
        scenario,
        contender,
        calls,
    });
    let mut results: Vec<Vec<Measured>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (case, out) in cases.iter().zip(&mut results) {
            let m = env.measure(*case, round).await;
            eprintln!(
                "round {round} {} / {}: {:.1} ms, {} acked, {} statements (client sent {}), \
                 {} rollbacks, issued in {:.1} ms, ack p99 {:.1} ms (caller saw {:.1} ms), table {}{}",
                case.scenario.label(),
                case.contender.label(),
                ms(m.run.wall),
                m.run.acked,
                m.statements,
                m.sent,
                m.rollbacks,
                ms(m.run.issued),
                ms(quantile(&m.run.latencies, 0.99)),
                ms(quantile(&m.run.seen, 0.99)),
                m.mismatch.as_deref().map_or("= model".to_owned(), |d| format!("!= model ({d})")),
                m.run.error
                    .as_deref()
                    .map(|e| format!(", first error: {e}"))
                    .unwrap_or_default(),
            );
            if let Some(e) = &m.engine {
                eprintln!(
                    "    engine: {} writes, {} absorbed, {} net writes, {} flushes, run p50 {:.1} ms max {:.1} ms, wait max {:.1} ms, ack p50 {:.1} ms p99 {:.1} ms",
                    e.calls,
                    e.dedup_hits,
                    e.keys,
                    e.batches,
                    ms(e.run.p50),
                    ms(e.run.max),
                    ms(e.wait.max),
                    ms(e.ack.p50),
                    ms(e.ack.p99)
                );
            }
            out.push(m);
        }
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut env.admin)
        .await
        .expect("drop schema");

    report(&cases, &results, rounds, &version, naive_hot_calls);
    let total = began.elapsed();
    println!(
        "\nTotal run: {:.1} s (budget {} s): {}",
        total.as_secs_f64(),
        RUN_BUDGET.as_secs(),
        if total <= RUN_BUDGET {
            "within"
        } else {
            "OVER BUDGET"
        }
    );
}

/// Prints the Markdown table and the targets.
fn report(
    cases: &[Case],
    results: &[Vec<Measured>],
    rounds: u64,
    version: &str,
    naive_hot_calls: usize,
) {
    let find = |s: Scenario, c: Contender| {
        cases
            .iter()
            .position(|k| k.scenario == s && k.contender == c)
            .map(|i| &results[i][..])
    };
    let med =
        |runs: &[Measured], f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    let with_spread =
        |runs: &[Measured], f: &dyn Fn(&Measured) -> f64, fmt: &dyn Fn(f64) -> String| {
            let (m, lo, hi) = spread(runs.iter().map(f).collect());
            if rounds == 1 {
                fmt(m)
            } else {
                format!("{} ({}..{})", fmt(m), fmt(lo), fmt(hi))
            }
        };

    println!(
        "## PostgreSQL writes: coalesce WriteCore vs naive vs batch-aint-one\n\n\
         PostgreSQL {version} on 127.0.0.1, sqlx pool of {POOL} connections, \
         window {} ms and max_batch {MAX_BATCH} (both batchers), {} cores; \
         median (min..max) of {rounds} round(s). Statements are counted by the server \
         (`pg_stat_database.xact_commit` delta).\n",
        WINDOW.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "| scenario | contender | calls | wall (ms) | acked writes/s | statements (server) | statements per {} ms window | statement time p50 (ms) | ack p50 (ms) | ack p99 (ms) | p99 seen by caller (ms) | table = model |",
        WINDOW.as_millis()
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (case, runs) in cases.iter().zip(results) {
        let correct = runs.iter().filter(|m| m.mismatch.is_none()).count();
        let failed: usize = runs
            .iter()
            .map(|m| m.run.latencies.len() - m.run.acked)
            .sum();
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {}{} |",
            case.scenario.label(),
            case.contender.label(),
            grouped(case.calls as f64),
            with_spread(runs, &|m| ms(m.run.wall), &|x| format!("{x:.0}")),
            with_spread(runs, &|m| m.per_second(), &grouped),
            with_spread(runs, &|m| m.statements as f64, &grouped),
            med(runs, &|m| m.per_window()),
            med(runs, &|m| ms(quantile(&m.statement_times, 0.5))),
            med(runs, &|m| ms(quantile(&m.run.latencies, 0.5))),
            med(runs, &|m| ms(quantile(&m.run.latencies, 0.99))),
            med(runs, &|m| ms(quantile(&m.run.seen, 0.99))),
            if correct == runs.len() {
                "yes".to_owned()
            } else {
                format!("NO ({correct}/{} rounds)", runs.len())
            },
            if failed > 0 {
                format!(", {failed} calls failed")
            } else {
                String::new()
            },
        );
    }

    println!();
    println!(
        "- Ack latency: from a call's first poll (the engine accepts it) to the wake-up that \
         delivers its answer. One task issues each burst (in call order, for the last-write-wins \
         model), which took {:.0} ms for 100,000 coalesce calls (median); until then it cannot \
         come back to an answered call, so the latency a caller saw (its next poll) is longer.",
        median(
            cases
                .iter()
                .zip(results)
                .filter(|(c, _)| c.contender == Contender::Coalesce)
                .flat_map(|(_, runs)| runs.iter().map(|m| ms(m.run.issued)))
                .collect()
        )
    );
    for (case, runs) in cases.iter().zip(results) {
        for (round, m) in runs.iter().enumerate() {
            if let Some(d) = &m.mismatch {
                println!(
                    "- TABLE ≠ MODEL: {} / {}, round {}: {d}.",
                    case.scenario.label(),
                    case.contender.label(),
                    round + 1
                );
            }
        }
    }
    if naive_hot_calls != CALLS {
        println!(
            "- The naive hot-key burst is {} calls: 100,000 would have taken over {} s.",
            grouped(naive_hot_calls as f64),
            NAIVE_BUDGET.as_secs()
        );
    }
    let mismatched: Vec<String> = cases
        .iter()
        .zip(results)
        .filter(|(_, runs)| runs.iter().any(|m| m.sent as i64 != m.statements))
        .map(|(c, _)| format!("{} / {}", c.scenario.label(), c.contender.label()))
        .collect();
    if mismatched.is_empty() {
        println!("- Server-counted statements equal the statements the client sent, in every run.");
    } else {
        println!(
            "- Server and client statement counts differ (other activity on the database?) for: {}.",
            mismatched.join("; ")
        );
    }
    println!(
        "- batch-aint-one: `BatchingPolicy::Duration({} ms, OnFull::Process)`, max_batch_size {MAX_BATCH}, \
         max_key_concurrency {POOL}, one batching key; it does not fold, so its processor sums \
         each id's writes within its batch before the upsert (else a batch holding one id twice fails).",
        WINDOW.as_millis()
    );
    for (case, runs) in cases.iter().zip(results) {
        if let Some(e) = runs.iter().filter_map(|m| m.engine.as_ref()).next_back() {
            println!(
                "- coalesce, {} (last round): {} writes, {} absorbed, {} net writes sent, {} flushes \
                 (a flush whose keys all wait for their previous write sends nothing); batch \
                 function run p99 {:.1} ms, max {:.1} ms; engine ack p50 {:.1} ms, p99 {:.1} ms \
                 (to the writer's next poll).",
                case.scenario.label(),
                grouped(e.calls as f64),
                grouped(e.dedup_hits as f64),
                grouped(e.keys as f64),
                e.batches,
                ms(e.run.p99),
                ms(e.run.max),
                ms(e.ack.p50),
                ms(e.ack.p99)
            );
        }
    }

    // A single statement's time: the median of the naive statements' own
    // execution times (pool wait excluded), over every naive run.
    let naive_runs: Vec<&Measured> = cases
        .iter()
        .zip(results)
        .filter(|(c, _)| c.contender == Contender::Naive)
        .flat_map(|(_, runs)| runs)
        .collect();
    let statement = Duration::from_secs_f64(median(
        naive_runs
            .iter()
            .map(|m| quantile(&m.statement_times, 0.5).as_secs_f64())
            .collect(),
    ));
    let ack_bound = WINDOW + 2 * statement;

    println!("\n### Targets (medians)\n");
    for s in [Scenario::HotSum, Scenario::HotLast] {
        let Some(c) = find(s, Contender::Coalesce) else {
            continue;
        };
        let rate = med(c, &|m| m.per_second());
        let statements = med(c, &|m| m.statements as f64);
        let windows = med(c, &|m| m.windows());
        let per_lane_window = med(c, &|m| m.per_window()) / HOT_LANES;
        println!(
            "- {}: {} acknowledged writes/s (target ≥ {}): {}; {statements:.0} statements over \
             {windows:.0} windows of {} ms and {HOT_LANES} lane(s) (the {HOT_IDS} hot ids fit one \
             batch, and a key has one write in flight): {per_lane_window:.2} per window per lane \
             (target ≤ 1): {}",
            s.label(),
            grouped(rate),
            grouped(HOT_TARGET_PER_S),
            verdict(rate >= HOT_TARGET_PER_S),
            WINDOW.as_millis(),
            verdict(per_lane_window <= 1.0),
        );
    }
    if let (Some(c), Some(n)) = (
        find(Scenario::Distinct, Contender::Coalesce),
        find(Scenario::Distinct, Contender::Naive),
    ) {
        let speedup = med(c, &|m| m.per_second()) / med(n, &|m| m.per_second());
        let fewer = med(n, &|m| m.statements as f64) / med(c, &|m| m.statements as f64).max(1.0);
        println!(
            "- distinct keys: {speedup:.1}× the naive throughput (target ≥ {DISTINCT_SPEEDUP_TARGET}×): {}; \
             {fewer:.0}× fewer statements (target ≥ {DISTINCT_FEWER_TARGET}×): {}",
            verdict(speedup >= DISTINCT_SPEEDUP_TARGET),
            verdict(fewer >= DISTINCT_FEWER_TARGET),
        );
    }
    println!(
        "- ack p99 ≤ window + 2 statement times = {} ms + 2 × {:.2} ms = {:.1} ms \
         (a statement's time: the median naive single-row statement, pool wait excluded):",
        WINDOW.as_millis(),
        ms(statement),
        ms(ack_bound)
    );
    for (case, runs) in cases.iter().zip(results) {
        if case.contender != Contender::Coalesce {
            continue;
        }
        let p99 = med(runs, &|m| ms(quantile(&m.run.latencies, 0.99)));
        // For reference: the same bound with this row's own (batch) statements.
        let own = med(runs, &|m| ms(quantile(&m.statement_times, 0.5)));
        println!(
            "  - {}: p99 {p99:.1} ms: {} (for reference, window + 2 of its own {:.1} ms \
             batch statements = {:.1} ms)",
            case.scenario.label(),
            verdict(p99 <= ms(ack_bound)),
            own,
            ms(WINDOW) + 2.0 * own,
        );
    }
    println!(
        "\nCommand: `cargo run --release -p coalesce-benches --bin pg_writes -- {rounds}` \
         (DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/test)"
    );
}
