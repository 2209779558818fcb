//! # coalesce demo: 10,000 concurrent lookups, a handful of queries; 100,000 writes, tens of upserts
//!
//! What it shows, first for reads: the same burst of concurrent single-key
//! `get_user(id)` calls, run three ways against a real SQLite database (embedded,
//! through sqlx; no service to install):
//!
//! - **naive**: every call runs its own `SELECT ... WHERE id = ?`;
//! - **`#[coalesce]` window**: calls wait up to one window for company, then one
//!   `SELECT ... WHERE id IN (...)` serves up to `max_batch` of them;
//! - **`#[coalesce]` adaptive** (`dispatch = "adaptive"`): a call that finds nothing
//!   in flight goes at once; calls that arrive while a batch runs gather for the next.
//! - **`#[coalesce]` streamed**: the window's batches, but the batch fn returns its
//!   rows as sqlx's `fetch()` streams them (`impl Stream<Item = Result<(i64, User),
//!   sqlx::Error>>`): each caller resolves the moment its own row arrives, and no
//!   batch holds all its rows at once.
//!
//! Each coalesced function is written once, as a batch function over `Vec<i64>`;
//! `#[coalesce]` turns it into the single-key function the callers use. Queries are
//! counted where they are executed, every answer is checked against the key that
//! asked for it, and the coalescers' own metrics are printed at the end.
//!
//! Then for writes, into a `visits` table of 1,000 hot users, two bursts of
//! 100,000 concurrent calls (call `i` writes user `i % 1000`), each run naive (one
//! `INSERT ... ON CONFLICT DO UPDATE` per call) and through `#[coalesce]` (one
//! upsert per batch):
//!
//! - **A**, `record_visit(user_id, 1)`: writes to one user within a window fold into
//!   one row by `merge = add`, so the batch adds their sum;
//! - **B**, `set_last_seen(user_id, i)`: no `merge`, the last write wins.
//!
//! Each writer resolves only after the statement carrying its write committed. The
//! write batch fns take `Vec<(user_id, value)>`; `#[coalesce]` turns them into
//! `record_visit(user_id, n)` and `set_last_seen(user_id, ts)`. Afterwards the table
//! is compared with the same calls applied one by one in call order. The naive
//! bursts are smaller by default (SQLite commits one statement at a time);
//! per-call figures are comparable, and the output says what ran.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release -p coalesce-demo
//! cargo run --release -p coalesce-demo -- --burst 2000 --window 500us --max-batch 200
//! cargo run --release -p coalesce-demo -- --writes 20000 --naive-writes 20000 --hot-users 100
//! cargo run --release -p coalesce-demo -- --help
//! ```
//!
//! The database is a file in the system temp directory, removed at the end. The
//! process exits non-zero if any call got an error or someone else's row, if any
//! write failed, or if the `visits` table differs from the sequential model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;
use coalesce::coalesce;
use futures::future::join_all;
use futures::{Stream, TryStreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite};

/// Fire the same burst of concurrent `get_user(id)` calls at SQLite three times:
/// one query per call, then through `#[coalesce]` (window and adaptive dispatch).
/// Then two bursts of writes, one statement per call and through `#[coalesce]`.
#[derive(Parser, Debug)]
#[command(name = "demo", version, about, long_about = None)]
struct Args {
    /// Rows to seed into the `users` table.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    rows: u64,

    /// Concurrent `get_user(id)` calls per run (one spawned task each).
    #[arg(long, default_value_t = 10_000)]
    burst: usize,

    /// How long a key waits for company before its batch leaves (ns, us, ms, s),
    /// applied to both coalesced runs.
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    window: Duration,

    /// Most distinct keys in one batch (one `IN (...)` query), applied to both
    /// coalesced runs. SQLite allows up to 32766 bound parameters.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=32766))]
    max_batch: u64,

    /// Connections in the sqlx pool.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pool: u32,

    /// Concurrent calls per coalesced write burst (`record_visit`, then
    /// `set_last_seen`); call `i` writes user `i % hot-users`.
    #[arg(long, default_value_t = 100_000)]
    writes: usize,

    /// Concurrent calls per naive write burst (one statement each; SQLite commits
    /// them one at a time, a few thousand per second: keep it smaller than `--writes`).
    #[arg(long, default_value_t = 10_000)]
    naive_writes: usize,

    /// Users the writes go to.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    hot_users: u64,

    /// Window of both write coalescers (max_batch 1000 each).
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    write_window: Duration,
}

/// One row of `users`.
#[derive(Clone, Debug)]
struct User {
    id: i64,
    name: String,
    email: String,
}

/// The pool every query runs on (the coalesced fns are free functions).
static POOL: OnceLock<SqlitePool> = OnceLock::new();

/// SQL statements executed, counted where they are executed.
static QUERIES: AtomicU64 = AtomicU64::new(0);

fn pool() -> &'static SqlitePool {
    POOL.get().expect("the pool is set up before any query")
}

/// The naive way: one query per call.
async fn get_user_naive(id: i64) -> Result<Option<User>, sqlx::Error> {
    QUERIES.fetch_add(1, Ordering::Relaxed);
    let row: Option<(i64, String, String)> =
        sqlx::query_as("SELECT id, name, email FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(pool())
            .await?;
    Ok(row.map(|(id, name, email)| User { id, name, email }))
}

/// One query for a whole batch of ids: `SELECT ... WHERE id IN (?, ?, ...)`.
async fn load_users(ids: &[i64]) -> Result<HashMap<i64, User>, sqlx::Error> {
    let mut query = QueryBuilder::<Sqlite>::new("SELECT id, name, email FROM users WHERE id IN (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
    QUERIES.fetch_add(1, Ordering::Relaxed);
    let rows: Vec<(i64, String, String)> = query.build_query_as().fetch_all(pool()).await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, email)| (id, User { id, name, email }))
        .collect())
}

/// Written as a batch fn; callers see `get_user_window(id).await`
/// -> `Result<Option<User>, coalesce::Error<sqlx::Error>>`.
#[coalesce(window = "2ms", max_batch = 1000, name = "demo.users.window")]
async fn get_user_window(ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
    load_users(&ids).await
}

/// The same, with adaptive dispatch: no window when nothing is in flight.
#[coalesce(
    window = "2ms",
    max_batch = 1000,
    dispatch = "adaptive",
    name = "demo.users.adaptive"
)]
async fn get_user_adaptive(ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
    load_users(&ids).await
}

/// The same window, with the rows streamed to their callers as the query yields
/// them (sqlx's `fetch()`): callers see `get_user_streamed(id).await`, as above.
#[coalesce(window = "2ms", max_batch = 1000, name = "demo.users.streamed")]
async fn get_user_streamed(ids: Vec<i64>) -> impl Stream<Item = Result<(i64, User), sqlx::Error>> {
    QUERIES.fetch_add(1, Ordering::Relaxed);
    // One bound parameter (a JSON array) keeps the SQL text static, so the
    // stream borrows nothing but the `'static` pool.
    let ids = format!(
        "[{}]",
        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    );
    sqlx::query_as::<_, (i64, String, String)>(
        "SELECT id, name, email FROM users WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(ids)
    .fetch(pool())
    .map_ok(|(id, name, email)| (id, User { id, name, email }))
}

/// The column of `visits` a write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    /// Added to: `visits = visits + excluded.visits`.
    Visits,
    /// Replaced: `last_seen = excluded.last_seen`.
    LastSeen,
}

/// Rows per upsert statement: 2 bound parameters per row, and SQLite allows 32766.
const UPSERT_ROWS: usize = 32766 / 2;

/// `INSERT INTO visits ... VALUES (?, ?, 0), ... ON CONFLICT (user_id) DO UPDATE ...`
/// for `(user_id, value)` rows.
fn upsert_query(column: Column, rows: &[(i64, i64)]) -> QueryBuilder<'static, Sqlite> {
    let mut upsert =
        QueryBuilder::<Sqlite>::new("INSERT INTO visits (user_id, visits, last_seen) ");
    upsert.push_values(rows, |mut row, &(user_id, value)| {
        row.push_bind(user_id);
        match column {
            Column::Visits => row.push_bind(value).push("0"),
            Column::LastSeen => row.push("0").push_bind(value),
        };
    });
    upsert.push(match column {
        Column::Visits => " ON CONFLICT (user_id) DO UPDATE SET visits = visits + excluded.visits",
        Column::LastSeen => " ON CONFLICT (user_id) DO UPDATE SET last_seen = excluded.last_seen",
    });
    upsert
}

/// Upserts `rows` in one statement, or (past SQLite's parameter limit) in one
/// statement per chunk inside a transaction.
async fn upsert(column: Column, rows: &[(i64, i64)]) -> Result<(), sqlx::Error> {
    if rows.len() <= UPSERT_ROWS {
        QUERIES.fetch_add(1, Ordering::Relaxed);
        upsert_query(column, rows).build().execute(pool()).await?;
        return Ok(());
    }
    let mut tx = pool().begin().await?;
    for chunk in rows.chunks(UPSERT_ROWS) {
        QUERIES.fetch_add(1, Ordering::Relaxed);
        upsert_query(column, chunk)
            .build()
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// The naive way: one upsert per visit.
async fn record_visit_naive(user_id: i64, n: i64) -> Result<(), sqlx::Error> {
    upsert(Column::Visits, &[(user_id, n)]).await
}

/// The naive way: one upsert per `last_seen`.
async fn set_last_seen_naive(user_id: i64, ts: i64) -> Result<(), sqlx::Error> {
    upsert(Column::LastSeen, &[(user_id, ts)]).await
}

/// `merge` of `record_visit`: visits to one user within a window add up.
fn add(total: &mut i64, n: i64) {
    *total += n;
}

/// Written as a batch fn over `(user_id, visits)`, one row per user (writes to a
/// user fold by `add`); callers see `record_visit(user_id, 1).await`
/// -> `Result<(), coalesce::Error<sqlx::Error>>`, `Ok` once the upsert committed.
#[coalesce(
    window = "20ms",
    max_batch = 1000,
    max_in_flight = 1,
    merge = add,
    name = "demo.visits"
)]
async fn record_visit(items: Vec<(i64, i64)>) -> Result<(), sqlx::Error> {
    upsert(Column::Visits, &items).await
}

/// No `merge`: of the writes to a user within a window, the last one wins.
/// Callers see `set_last_seen(user_id, ts).await`.
#[coalesce(
    window = "20ms",
    max_batch = 1000,
    max_in_flight = 1,
    name = "demo.last_seen"
)]
async fn set_last_seen(items: Vec<(i64, i64)>) -> Result<(), sqlx::Error> {
    upsert(Column::LastSeen, &items).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Naive,
    Window,
    Adaptive,
    Streamed,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::Window => "#[coalesce] window",
            Mode::Adaptive => "#[coalesce] adaptive",
            Mode::Streamed => "#[coalesce] streamed",
        }
    }

    /// One `get_user(id)` call: whether the right user came back, or the error.
    async fn get_user(self, id: i64) -> Result<bool, String> {
        let user = match self {
            Mode::Naive => get_user_naive(id).await.map_err(|e| e.to_string())?,
            Mode::Window => get_user_window(id).await.map_err(|e| e.to_string())?,
            Mode::Adaptive => get_user_adaptive(id).await.map_err(|e| e.to_string())?,
            Mode::Streamed => get_user_streamed(id).await.map_err(|e| e.to_string())?,
        };
        Ok(user.is_some_and(|u| {
            u.id == id && u.name == format!("user {id}") && u.email == email_of(id)
        }))
    }
}

/// What one run of the burst measured.
struct Run {
    mode: Mode,
    calls: usize,
    queries: u64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    wrong: usize,
    errors: usize,
    first_error: Option<String>,
}

/// Fires `ids.len()` concurrent calls, all released at the same instant.
async fn burst(mode: Mode, ids: &[i64]) -> Run {
    let (go, gate) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let mut gate = gate.clone();
            tokio::spawn(async move {
                // Wait until every task is spawned: the burst arrives at once.
                let _ = gate.wait_for(|&open| open).await;
                let start = Instant::now();
                let result = mode.get_user(id).await;
                (start.elapsed(), result)
            })
        })
        .collect();

    let queries_before = QUERIES.load(Ordering::Relaxed);
    let start = Instant::now();
    go.send_replace(true);
    let mut latencies = Vec::with_capacity(tasks.len());
    let (mut wrong, mut errors, mut first_error) = (0, 0, None);
    for task in tasks {
        let (latency, result) = task.await.expect("a call task panicked");
        latencies.push(latency);
        match result {
            Ok(true) => {}
            Ok(false) => wrong += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let wall = start.elapsed();
    latencies.sort_unstable();
    Run {
        mode,
        calls: ids.len(),
        queries: QUERIES.load(Ordering::Relaxed) - queries_before,
        wall,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        wrong,
        errors,
        first_error,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteMode {
    Naive,
    Coalesced,
}

impl WriteMode {
    /// One write call: `Ok` once it is committed, or the error.
    async fn write(self, column: Column, user_id: i64, value: i64) -> Result<(), String> {
        match (self, column) {
            (WriteMode::Naive, Column::Visits) => record_visit_naive(user_id, value)
                .await
                .map_err(|e| e.to_string()),
            (WriteMode::Naive, Column::LastSeen) => set_last_seen_naive(user_id, value)
                .await
                .map_err(|e| e.to_string()),
            (WriteMode::Coalesced, Column::Visits) => record_visit(user_id, value)
                .await
                .map_err(|e| e.to_string()),
            (WriteMode::Coalesced, Column::LastSeen) => set_last_seen(user_id, value)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// Call `i` of a write burst: its user and the value it writes.
fn write_call(column: Column, i: usize, users: u64) -> (i64, i64) {
    let user_id = (i as u64 % users) as i64;
    match column {
        Column::Visits => (user_id, 1),
        Column::LastSeen => (user_id, i as i64),
    }
}

/// What one run of a write burst measured, and how the table compared after it.
struct WriteRun {
    mode: WriteMode,
    calls: usize,
    statements: u64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    errors: usize,
    first_error: Option<String>,
    check: Check,
}

/// Fires `calls` concurrent writes of `column`, issued in call order: the futures
/// are built in index order and `join_all` first polls them in that order, which
/// is when a coalesced write is accepted. Each call's latency runs from its first
/// poll to its result.
async fn write_burst(mode: WriteMode, column: Column, calls: usize, users: u64) -> WriteRun {
    let statements_before = QUERIES.load(Ordering::Relaxed);
    let start = Instant::now();
    let results = join_all((0..calls).map(|i| async move {
        let (user_id, value) = write_call(column, i, users);
        let start = Instant::now();
        let result = mode.write(column, user_id, value).await;
        (start.elapsed(), result)
    }))
    .await;
    let wall = start.elapsed();
    let statements = QUERIES.load(Ordering::Relaxed) - statements_before;
    let mut latencies = Vec::with_capacity(results.len());
    let (mut errors, mut first_error) = (0, None);
    for (latency, result) in results {
        latencies.push(latency);
        if let Err(e) = result {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    latencies.sort_unstable();
    WriteRun {
        mode,
        calls,
        statements,
        wall,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        errors,
        first_error,
        check: Check::default(),
    }
}

/// What `visits` must hold: the calls so far applied one by one, in call order.
/// user_id -> (visits, last_seen).
#[derive(Default)]
struct Model(BTreeMap<i64, (i64, i64)>);

impl Model {
    fn apply(&mut self, column: Column, calls: usize, users: u64) {
        for i in 0..calls {
            let (user_id, value) = write_call(column, i, users);
            let row = self.0.entry(user_id).or_insert((0, 0));
            match column {
                Column::Visits => row.0 += value,
                Column::LastSeen => row.1 = value,
            }
        }
    }
}

/// How the table compared with the model: users whose row differs.
#[derive(Default)]
struct Check {
    users: usize,
    visits_wrong: usize,
    /// `None` when `last_seen` is not checked (naive runs).
    last_seen_wrong: Option<usize>,
    /// Naive runs: users whose `last_seen` happens to match all the same.
    last_seen_matching: usize,
    /// The first user that differs: what the table and the model hold.
    first_diff: Option<String>,
}

impl Check {
    fn ok(&self) -> bool {
        self.visits_wrong == 0 && self.last_seen_wrong.unwrap_or(0) == 0
    }

    /// The check in one table cell; `*`: `last_seen` not checked.
    fn cell(&self) -> String {
        let users = fmt_count(self.users as u64);
        if !self.ok() {
            return format!(
                "NO: {} visits, {} last_seen of {users} users differ",
                self.visits_wrong,
                self.last_seen_wrong.unwrap_or(0),
            );
        }
        match self.last_seen_wrong {
            Some(_) => format!("yes, {users} users"),
            None => format!("visits yes, {users} users *"),
        }
    }
}

/// Compares `visits` with the model, row by row (a missing or extra row differs).
async fn check_visits(model: &Model, check_last_seen: bool) -> Result<Check, sqlx::Error> {
    QUERIES.fetch_add(1, Ordering::Relaxed);
    let table: BTreeMap<i64, (i64, i64)> =
        sqlx::query_as::<_, (i64, i64, i64)>("SELECT user_id, visits, last_seen FROM visits")
            .fetch_all(pool())
            .await?
            .into_iter()
            .map(|(user_id, visits, last_seen)| (user_id, (visits, last_seen)))
            .collect();
    let users: BTreeSet<i64> = table.keys().chain(model.0.keys()).copied().collect();
    let mut check = Check {
        users: model.0.len(),
        ..Check::default()
    };
    let mut last_seen_wrong = 0;
    for user_id in users {
        let (got, want) = (table.get(&user_id), model.0.get(&user_id));
        let (visits_differ, last_seen_differs) = match (got, want) {
            (Some(got), Some(want)) => (got.0 != want.0, got.1 != want.1),
            _ => (true, true),
        };
        check.visits_wrong += usize::from(visits_differ);
        if last_seen_differs {
            last_seen_wrong += 1;
        } else {
            check.last_seen_matching += 1;
        }
        if visits_differ || (check_last_seen && last_seen_differs) {
            check.first_diff.get_or_insert_with(|| {
                let show = |row: Option<&(i64, i64)>| {
                    row.map_or("no row".to_owned(), |(visits, last_seen)| {
                        format!("visits {visits}, last_seen {last_seen}")
                    })
                };
                format!("user {user_id}: table {}, model {}", show(got), show(want))
            });
        }
    }
    check.last_seen_wrong = check_last_seen.then_some(last_seen_wrong);
    Ok(check)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn email_of(id: i64) -> String {
    format!("user{id}@example.com")
}

/// Seeds `rows` users in one transaction, 10,000 rows per INSERT.
async fn seed(pool: &SqlitePool, rows: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = (1..=rows as i64).collect();
    // 3 parameters per row, below SQLite's limit of 32766 per statement.
    for chunk in ids.chunks(10_000) {
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO users (id, name, email) ");
        insert.push_values(chunk, |mut row, &id| {
            row.push_bind(id)
                .push_bind(format!("user {id}"))
                .push_bind(email_of(id));
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The burst's keys: pseudo-random ids in `1..=rows`, the same for every run.
fn burst_ids(n: usize, rows: u64) -> Vec<i64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15; // xorshift64, fixed seed
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % rows) as i64 + 1
        })
        .collect()
}

/// Parses "2ms", "500us", "1.5s", "250 ns".
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 2ms or 500us"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        other => return Err(format!("unknown unit `{other}`: use ns, us, ms or s")),
    };
    Ok(Duration::from_secs_f64(number * scale))
}

/// A duration in the unit that reads best.
fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// An integer with thousands separators.
fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(runs: &[Run]) {
    let naive_queries = runs
        .iter()
        .find(|r| r.mode == Mode::Naive)
        .map_or(0, |r| r.queries);
    let rows: Vec<(&str, Vec<String>)> = vec![
        ("", runs.iter().map(|r| r.mode.title().to_owned()).collect()),
        (
            "calls",
            runs.iter().map(|r| fmt_count(r.calls as u64)).collect(),
        ),
        (
            "queries executed",
            runs.iter().map(|r| fmt_count(r.queries)).collect(),
        ),
        (
            "queries naive / this run",
            runs.iter()
                .map(|r| format!("{:.0}x", naive_queries as f64 / r.queries.max(1) as f64))
                .collect(),
        ),
        (
            "wall time",
            runs.iter().map(|r| fmt_duration(r.wall)).collect(),
        ),
        (
            "throughput (calls/s)",
            runs.iter()
                .map(|r| fmt_count((r.calls as f64 / r.wall.as_secs_f64().max(1e-9)) as u64))
                .collect(),
        ),
        (
            "latency p50",
            runs.iter().map(|r| fmt_duration(r.p50)).collect(),
        ),
        (
            "latency p99",
            runs.iter().map(|r| fmt_duration(r.p99)).collect(),
        ),
        (
            "wrong rows / errors",
            runs.iter()
                .map(|r| format!("{} / {}", r.wrong, r.errors))
                .collect(),
        ),
    ];
    print_rows(rows);
}

/// Prints a table: the first row is the header, every row has one cell per column.
fn print_rows(mut rows: Vec<(&str, Vec<String>)>) {
    let columns = rows.first().map_or(0, |(_, cells)| cells.len());
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|(_, c)| c[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = "-".repeat(label_width + widths.iter().map(|w| w + 3).sum::<usize>());
    rows.insert(1, ("", Vec::new()));
    for (label, cells) in &rows {
        if cells.is_empty() {
            println!("{rule}");
            continue;
        }
        let mut line = format!("{label:<label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let pad = width - cell.chars().count();
            line.push_str(&format!("   {}{cell}", " ".repeat(pad)));
        }
        println!("{line}");
    }
}

fn print_write_table(title: &str, column: Column, runs: &[&WriteRun], scale_to: usize) {
    let mut rows: Vec<(&str, Vec<String>)> = vec![
        (
            title,
            runs.iter()
                .map(|r| match (r.mode, column) {
                    (WriteMode::Naive, _) => "naive".to_owned(),
                    (WriteMode::Coalesced, Column::Visits) => "#[coalesce] merge = add".to_owned(),
                    (WriteMode::Coalesced, Column::LastSeen) => {
                        "#[coalesce] last write wins".to_owned()
                    }
                })
                .collect(),
        ),
        (
            "calls",
            runs.iter().map(|r| fmt_count(r.calls as u64)).collect(),
        ),
        (
            "statements executed",
            runs.iter().map(|r| fmt_count(r.statements)).collect(),
        ),
        (
            "calls per statement",
            runs.iter()
                .map(|r| fmt_count((r.calls as f64 / r.statements.max(1) as f64).round() as u64))
                .collect(),
        ),
        (
            "wall time",
            runs.iter().map(|r| fmt_duration(r.wall)).collect(),
        ),
    ];
    let scaled = format!("wall time, scaled to {} calls", fmt_count(scale_to as u64));
    if runs.iter().any(|r| r.calls != scale_to && r.calls > 0) {
        rows.push((
            &scaled,
            runs.iter()
                .map(|r| {
                    if r.calls == scale_to {
                        fmt_duration(r.wall)
                    } else {
                        let wall = r.wall.mul_f64(scale_to as f64 / r.calls.max(1) as f64);
                        format!("~{} (scaled)", fmt_duration(wall))
                    }
                })
                .collect(),
        ));
    }
    rows.extend([
        (
            "throughput (acked calls/s)",
            runs.iter()
                .map(|r| fmt_count((r.calls as f64 / r.wall.as_secs_f64().max(1e-9)) as u64))
                .collect(),
        ),
        (
            "ack latency p50",
            runs.iter().map(|r| fmt_duration(r.p50)).collect(),
        ),
        (
            "ack latency p99",
            runs.iter().map(|r| fmt_duration(r.p99)).collect(),
        ),
        (
            "errors",
            runs.iter().map(|r| r.errors.to_string()).collect(),
        ),
        (
            "table = sequential model",
            runs.iter().map(|r| r.check.cell()).collect(),
        ),
    ]);
    print_rows(rows);
}

/// The write section: two bursts, each naive then coalesced; `Ok(false)` if any
/// write failed or the table differs from the model.
async fn run_writes(args: &Args) -> Result<bool, sqlx::Error> {
    // Run-time configuration of both write coalescers, before their first call.
    let window = args.write_window;
    for name in ["demo.visits", "demo.last_seen"] {
        coalesce::configure(name, move |c| c.window(window));
    }
    let users = args.hot_users;
    QUERIES.fetch_add(1, Ordering::Relaxed);
    sqlx::query(
        "CREATE TABLE visits (user_id INTEGER PRIMARY KEY, visits INTEGER NOT NULL, last_seen INTEGER NOT NULL)",
    )
    .execute(pool())
    .await?;

    println!(
        "writes: table visits(user_id, visits, last_seen); call i writes user i % {}, calls issued in index order (join_all)",
        fmt_count(users)
    );
    println!("  burst A: record_visit(user_id, 1), coalesced with merge = add (sum per user)");
    println!("  burst B: set_last_seen(user_id, i), coalesced with last write wins");
    println!(
        "  naive: {} concurrent calls per burst, one INSERT ... ON CONFLICT DO UPDATE each",
        fmt_count(args.naive_writes as u64)
    );
    println!(
        "  #[coalesce]: {} concurrent calls per burst, one upsert per batch; window {:?}, max_batch 1000",
        fmt_count(args.writes as u64),
        args.write_window
    );
    println!();

    // Naive: A, then B, on the empty table.
    let mut model = Model::default();
    let mut naive_a = write_burst(WriteMode::Naive, Column::Visits, args.naive_writes, users).await;
    model.apply(Column::Visits, args.naive_writes, users);
    naive_a.check = check_visits(&model, false).await?;
    let mut naive_b =
        write_burst(WriteMode::Naive, Column::LastSeen, args.naive_writes, users).await;
    model.apply(Column::LastSeen, args.naive_writes, users);
    naive_b.check = check_visits(&model, false).await?;

    // Coalesced: the same, on the table emptied again.
    QUERIES.fetch_add(1, Ordering::Relaxed);
    sqlx::query("DELETE FROM visits").execute(pool()).await?;
    let mut model = Model::default();
    let mut coalesced_a =
        write_burst(WriteMode::Coalesced, Column::Visits, args.writes, users).await;
    model.apply(Column::Visits, args.writes, users);
    coalesced_a.check = check_visits(&model, true).await?;
    let mut coalesced_b =
        write_burst(WriteMode::Coalesced, Column::LastSeen, args.writes, users).await;
    model.apply(Column::LastSeen, args.writes, users);
    coalesced_b.check = check_visits(&model, true).await?;

    print_write_table(
        "A: record_visit(user_id, 1)",
        Column::Visits,
        &[&naive_a, &coalesced_a],
        args.writes,
    );
    println!();
    print_write_table(
        "B: set_last_seen(user_id, i)",
        Column::LastSeen,
        &[&naive_b, &coalesced_b],
        args.writes,
    );
    println!();
    println!(
        "ack latency: per call, from its first poll to its result. table = model: visits = calls per user, last_seen = the largest i with i % {} == user",
        fmt_count(users)
    );
    println!(
        "* naive: visits checked, last_seen not: the naive upserts run concurrently on {} connections and commit in no guaranteed order ({} of {} users match all the same)",
        args.pool,
        fmt_count(naive_b.check.last_seen_matching as u64),
        fmt_count(naive_b.check.users as u64)
    );
    if args.naive_writes != args.writes {
        println!(
            "  the naive bursts ran {} calls, not {}: statements, throughput and latency are as measured at that size; the scaled wall time assumes one statement at a time",
            fmt_count(args.naive_writes as u64),
            fmt_count(args.writes as u64)
        );
    }

    println!();
    println!("coalesce::metrics::get(\"demo.visits\"), get(\"demo.last_seen\")");
    for name in ["demo.visits", "demo.last_seen"] {
        if let Some(m) = coalesce::metrics::get(name) {
            println!("{m}");
            println!(
                "  = {} writes: {} row writes sent, {} absorbed by folding",
                fmt_count(m.calls),
                fmt_count(m.keys),
                fmt_count(m.dedup_hits)
            );
        }
    }

    let mut ok = true;
    for (burst, run) in [
        ("A", &naive_a),
        ("A", &coalesced_a),
        ("B", &naive_b),
        ("B", &coalesced_b),
    ] {
        if run.errors > 0 || !run.check.ok() {
            ok = false;
            eprintln!(
                "burst {burst}, {}: {} errors{}; table = model: {}{}",
                match run.mode {
                    WriteMode::Naive => "naive",
                    WriteMode::Coalesced => "#[coalesce]",
                },
                run.errors,
                run.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                run.check.cell(),
                run.check
                    .first_diff
                    .as_deref()
                    .map(|d| format!(" (first: {d})"))
                    .unwrap_or_default()
            );
        }
    }
    if ok {
        println!();
        println!(
            "every write acknowledged and the table equals the sequential model: {} writes, 0 errors",
            fmt_count(2 * (args.naive_writes + args.writes) as u64)
        );
    }
    Ok(ok)
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let db = std::env::temp_dir().join(format!("coalesce-demo-{}.db", std::process::id()));
    let outcome = run(&args, &db).await;
    if let Some(pool) = POOL.get() {
        pool.close().await;
    }
    remove_db(&db);
    match outcome {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(2);
        }
    }
}

/// The demo; `Ok(false)` if any call got an error or a wrong row, if any write
/// failed, or if the `visits` table differs from the sequential model.
async fn run(args: &Args, db: &Path) -> Result<bool, sqlx::Error> {
    // Run-time configuration of both coalescers, before their first call.
    let (window, max_batch) = (args.window, args.max_batch as usize);
    for name in [
        "demo.users.window",
        "demo.users.adaptive",
        "demo.users.streamed",
    ] {
        coalesce::configure(name, move |c| c.window(window).max_batch(max_batch));
    }

    let options = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(args.pool)
        .connect_with(options)
        .await?;
    let pool = POOL.get_or_init(|| pool);

    println!("coalesce demo: SQLite (sqlx, WAL) at {}", db.display());
    let start = Instant::now();
    seed(pool, args.rows).await?;
    println!(
        "seeded {} users in {}; pool of {} connections",
        fmt_count(args.rows),
        fmt_duration(start.elapsed()),
        args.pool
    );
    let ids = burst_ids(args.burst, args.rows);
    let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
    println!(
        "burst: {} concurrent get_user(id) calls ({} distinct ids); coalesced runs: window {:?}, max_batch {}",
        fmt_count(args.burst as u64),
        fmt_count(distinct as u64),
        args.window,
        args.max_batch
    );
    println!();

    let mut runs = Vec::new();
    for mode in [Mode::Naive, Mode::Window, Mode::Adaptive, Mode::Streamed] {
        runs.push(burst(mode, &ids).await);
    }
    print_table(&runs);

    println!();
    println!("coalesce::metrics::snapshot()");
    for snapshot in coalesce::metrics::snapshot() {
        if snapshot.name.starts_with("demo.users.") {
            println!("{snapshot}");
        }
    }

    let mut ok = true;
    for run in &runs {
        if run.wrong + run.errors > 0 {
            ok = false;
            eprintln!(
                "{}: {} wrong rows, {} errors{}",
                run.mode.title(),
                run.wrong,
                run.errors,
                run.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
        }
    }
    if ok {
        println!();
        println!(
            "every call got its own user: {} checked, 0 wrong, 0 errors",
            fmt_count(runs.iter().map(|r| r.calls as u64).sum())
        );
    }

    println!();
    let writes_ok = run_writes(args).await?;
    Ok(ok && writes_ok)
}
