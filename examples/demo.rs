//! # coalesce demo: 10,000 concurrent lookups, a handful of queries
//!
//! What it shows: the same burst of concurrent single-key `get_user(id)` calls,
//! run three ways against a real SQLite database (embedded, through sqlx; no
//! service to install):
//!
//! - **naive**: every call runs its own `SELECT ... WHERE id = ?`;
//! - **`#[coalesce]` window**: calls wait up to one window for company, then one
//!   `SELECT ... WHERE id IN (...)` serves up to `max_batch` of them;
//! - **`#[coalesce]` adaptive** (`dispatch = "adaptive"`): a call that finds nothing
//!   in flight goes at once; calls that arrive while a batch runs gather for the next.
//!
//! Each coalesced function is written once, as a batch function over `Vec<i64>`;
//! `#[coalesce]` turns it into the single-key function the callers use. Queries are
//! counted where they are executed, every answer is checked against the key that
//! asked for it, and the coalescers' own metrics are printed at the end.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --burst 2000 --window 500us --max-batch 200
//! cargo run --release --example demo -- --help
//! ```
//!
//! The database is a file in the system temp directory, removed at the end. The
//! process exits non-zero if any call got an error or someone else's row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;
use coalesce::coalesce;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite};

/// Fire the same burst of concurrent `get_user(id)` calls at SQLite three times:
/// one query per call, then through `#[coalesce]` (window and adaptive dispatch).
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Naive,
    Window,
    Adaptive,
}

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::Window => "#[coalesce] window",
            Mode::Adaptive => "#[coalesce] adaptive",
        }
    }

    /// One `get_user(id)` call: whether the right user came back, or the error.
    async fn get_user(self, id: i64) -> Result<bool, String> {
        let user = match self {
            Mode::Naive => get_user_naive(id).await.map_err(|e| e.to_string())?,
            Mode::Window => get_user_window(id).await.map_err(|e| e.to_string())?,
            Mode::Adaptive => get_user_adaptive(id).await.map_err(|e| e.to_string())?,
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
    let mut rows: Vec<(&str, Vec<String>)> = vec![
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
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
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

/// The demo; `Ok(false)` if any call got an error or a wrong row.
async fn run(args: &Args, db: &Path) -> Result<bool, sqlx::Error> {
    // Run-time configuration of both coalescers, before their first call.
    let (window, max_batch) = (args.window, args.max_batch as usize);
    for name in ["demo.users.window", "demo.users.adaptive"] {
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
    for mode in [Mode::Naive, Mode::Window, Mode::Adaptive] {
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
    Ok(ok)
}
