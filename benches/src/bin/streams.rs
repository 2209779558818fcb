//! Streamed batches (issue 11): what a caller gains when its batch fn returns
//! `Streamed(stream)` instead of a map, measured two ways.
//!
//! - `latency`: 10,000 concurrent callers (one per id, issued at once from one
//!   task) through one batch of 10,000 rows read with sqlx from SQLite (in memory)
//!   and from PostgreSQL (127.0.0.1): the map shape (`fetch_all` into a `HashMap`)
//!   against the streamed shape (`fetch()` mapped to `(id, row)`), interleaved
//!   round by round after a warm-up. Each caller's latency runs from its own
//!   call (its future's first poll) to its answer — the target's measure — and,
//!   in the other columns, from the burst's start (the first call; the one
//!   task takes 2–3 ms to issue all 10,000). Beside them, the bare `fetch()` with no coalescer
//!   (each row's arrival from the query's start): the floor of the streamed shape.
//!   A third table runs both shapes with no database (rows cloned from memory):
//!   the engine's own cost per delivered row.
//!   Beside the CPU time of each burst, how long this process's threads (and
//!   PostgreSQL's) were runnable but waiting for a CPU (`schedstat`): on two
//!   cores, the streamed shape's reader, its callers and the database's
//!   thread run at once.
//! - `memory`: 1,000,000 (and 250,000) concurrent callers in one batch of a
//!   synthetic batch fn (64-byte `String` values, no database), each variant in its
//!   own child process of this binary so that peaks do not mix: `baseline` (the
//!   batch returns no entry), `map` (a `HashMap` of every value) and `stream`
//!   (`Streamed` of an iterator that makes each value when it is read). Peak RSS is
//!   `VmHWM` from `/proc/self/status`.
//!
//! Usage: `cargo run --release -p coalesce-benches --bin streams [-- MODE [ROUNDS
//! [BACKEND]]]` where MODE is `latency` (ROUNDS measured rounds, default 21, after a
//! warm-up; BACKEND `sqlite`, `postgres` or `none` runs that one only, for a
//! profiler), `memory`, or nothing for both. `STREAMS_CURRENT_THREAD=1` runs on a
//! current-thread runtime instead of the 2-worker one; `STREAMS_SHAPE=map`,
//! `streamed` or `bare` runs only that shape's bursts (no table), for a profiler;
//! `STREAMS_DETAIL=1` adds, per round, how long the streamed callers' answers
//! trailed their rows and how many were answered on the thread that read them.
//! `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) must point at 127.0.0.1; PostgreSQL is
//! skipped with a note if it does not answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use coalesce::{Coalescer, Config, Streamed};
use coalesce_benches::CpuProbe;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, FuturesUnordered, StreamExt, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{FromRow, Row as _};

/// Rows in the table, and callers (one per id) in each burst.
const ROWS: usize = 10_000;
/// Bytes of each row's `payload`.
const PAYLOAD: usize = 100;
/// Callers in the memory burst.
const MEMORY_KEYS: usize = 1_000_000;
/// Bytes of each synthetic value in the memory burst.
const VALUE: usize = 64;

/// Both shapes run the same query. It walks the ids and looks each one up, so
/// SQLite yields a row as soon as it finds one; `WHERE id IN (SELECT value FROM
/// json_each(?))` first builds a sorted set of the 10,000 ids (first row after
/// about 1.8 ms instead of 0.5 ms, and no faster in total).
const SQLITE_BY_IDS: &str = "SELECT t.id, t.name, t.payload FROM json_each(?) AS j \
                             JOIN coalesce_bench_stream AS t ON t.id = j.value";
const PG_BY_IDS: &str = "SELECT id, name, payload FROM coalesce_bench_stream WHERE id = ANY($1)";

/// One row, as each caller receives it.
#[derive(Clone, Debug)]
struct Row {
    id: i64,
    name: String,
    payload: String,
}

impl FromRow<'_, SqliteRow> for Row {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Row {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            payload: row.try_get(2)?,
        })
    }
}

impl FromRow<'_, PgRow> for Row {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Row {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            payload: row.try_get(2)?,
        })
    }
}

type Loader = Coalescer<i64, Row, sqlx::Error>;
type FetchAll =
    Arc<dyn Fn(Vec<i64>) -> BoxFuture<'static, Result<Vec<Row>, sqlx::Error>> + Send + Sync>;
type Fetch = Arc<dyn Fn(Vec<i64>) -> BoxStream<'static, Result<Row, sqlx::Error>> + Send + Sync>;

/// One database: the same query through `fetch_all` and through `fetch`.
struct Backend {
    name: &'static str,
    fetch_all: FetchAll,
    fetch: Fetch,
}

/// Instants inside the batch fns, in nanoseconds since [`epoch`] plus one (zero:
/// not yet): when the batch fn was called, its first and last row came, and (map
/// shape) `fetch_all` returned.
static CALLED: AtomicU64 = AtomicU64::new(0);
static FIRST_ROW: AtomicU64 = AtomicU64::new(0);
static LAST_ROW: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn stamp() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

/// A stamp as a time after `start` (`None` if not set).
fn since(stamp: u64, start: Instant) -> Option<Duration> {
    (stamp > 0)
        .then(|| (epoch() + Duration::from_nanos(stamp - 1)).saturating_duration_since(start))
}

/// Per id (streamed shape): when its row came, and on which thread (a number per
/// thread, from one).
fn row_seen() -> &'static [(AtomicU64, AtomicU64)] {
    static SEEN: OnceLock<Vec<(AtomicU64, AtomicU64)>> = OnceLock::new();
    SEEN.get_or_init(|| {
        (0..=ROWS)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect()
    })
}

/// This thread's number (from one).
fn thread_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static NUMBER: u64 = NEXT.fetch_add(1, Relaxed));
    NUMBER.with(|n| *n)
}

fn reset_stamps() {
    for s in [&CALLED, &FIRST_ROW, &LAST_ROW] {
        s.store(0, Relaxed);
    }
    if detail() {
        for (at, thread) in row_seen() {
            at.store(0, Relaxed);
            thread.store(0, Relaxed);
        }
    }
}

/// `STREAMS_DETAIL=1`: each row's arrival and thread are recorded, and the
/// tables are followed by each round's callers' lag behind their rows.
fn detail() -> bool {
    static DETAIL: OnceLock<bool> = OnceLock::new();
    *DETAIL.get_or_init(|| std::env::var_os("STREAMS_DETAIL").is_some())
}

fn mark_row(id: i64) {
    let now = stamp();
    let _ = FIRST_ROW.compare_exchange(0, now, Relaxed, Relaxed);
    LAST_ROW.store(now, Relaxed);
    if !detail() {
        return;
    }
    if let Some((at, thread)) = usize::try_from(id).ok().and_then(|i| row_seen().get(i)) {
        at.store(now, Relaxed);
        thread.store(thread_number(), Relaxed);
    }
}

fn config(name: &'static str, keys: usize) -> Config {
    // The batch leaves when it holds every key (`max_batch`), not when a window
    // ends: issuing 10,000 (or 1,000,000) calls from one task takes longer than a
    // short window, which would split the burst. Each burst is checked to be one
    // batch.
    Config::new(name)
        .max_batch(keys)
        .window(Duration::from_secs(30))
}

/// The map shape: `fetch_all`, then a `HashMap` by id.
fn map_shape(backend: &Backend) -> Loader {
    let fetch_all = backend.fetch_all.clone();
    let name = match backend.name {
        "SQLite" => "streams.sqlite.map",
        "PostgreSQL" => "streams.pg.map",
        _ => "streams.nodb.map",
    };
    Coalescer::new(config(name, ROWS), move |ids: Vec<i64>| {
        CALLED.store(stamp(), Relaxed);
        let rows = fetch_all(ids);
        async move {
            let rows = rows.await?;
            LAST_ROW.store(stamp(), Relaxed);
            Ok::<_, sqlx::Error>(
                rows.into_iter()
                    .map(|r| (r.id, r))
                    .collect::<HashMap<_, _>>(),
            )
        }
    })
}

/// The streamed shape: `fetch()`, each row as `(id, row)`.
fn streamed_shape(backend: &Backend) -> Loader {
    let fetch = backend.fetch.clone();
    let name = match backend.name {
        "SQLite" => "streams.sqlite.streamed",
        "PostgreSQL" => "streams.pg.streamed",
        _ => "streams.nodb.streamed",
    };
    Coalescer::new(config(name, ROWS), move |ids: Vec<i64>| {
        CALLED.store(stamp(), Relaxed);
        let rows = fetch(ids);
        async move {
            Streamed(rows.map_ok(|r| {
                mark_row(r.id);
                (r.id, r)
            }))
        }
    })
}

/// One burst, seen from its callers and from inside its batch fn.
#[derive(Clone, Debug, Default)]
struct Burst {
    /// Per caller, from the burst's start to its answer, sorted.
    latencies: Vec<Duration>,
    /// Per caller, from its own call (the first poll of its future: one task
    /// issues the 10,000 calls one after another, 2–3 ms in all) to its
    /// answer, sorted. Bare `fetch()`: as `latencies`.
    own: Vec<Duration>,
    /// From the burst's start: the batch fn called, its first row, its last row
    /// (map shape: `fetch_all` returned).
    called: Duration,
    first_row: Option<Duration>,
    last_row: Duration,
    /// CPU time during the burst: this process (all its threads, SQLite's worker
    /// included) and every `postgres` process.
    cpu: (Duration, Duration),
    /// Time runnable but waiting for a CPU during the burst (another thread
    /// held it), as `cpu`: on two cores, the reader, the callers and the
    /// database's threads take turns.
    waited: (Duration, Duration),
    /// Streamed shape: per caller, from its row's arrival to its answer, sorted;
    /// and how many callers were answered on the thread that read their row.
    lags: Vec<Duration>,
    same_thread: usize,
}

/// Runs `burst` on a worker and adds the CPU time it took (read outside its clock).
async fn on_worker(
    probe: &CpuProbe,
    burst: impl std::future::Future<Output = Burst> + Send + 'static,
) -> Burst {
    let (before, waited_before) = (probe.read(), probe.waited());
    let mut b = tokio::spawn(burst).await.expect("burst");
    let (after, waited_after) = (probe.read(), probe.waited());
    let since = |a: (u64, u64), b: (u64, u64)| {
        (
            Duration::from_nanos(a.0.saturating_sub(b.0)),
            Duration::from_nanos(a.1.saturating_sub(b.1)),
        )
    };
    b.cpu = since(after, before);
    b.waited = since(waited_after, waited_before);
    b
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 10,000 callers, one per id, issued at once from one task.
async fn burst(loader: Loader, ids: Arc<Vec<i64>>) -> Burst {
    let before = loader.metrics();
    reset_stamps();
    let start = Instant::now();
    let mut calls: FuturesUnordered<_> = ids
        .iter()
        .map(|&id| {
            let loader = &loader;
            async move {
                // The call is made at the future's first poll.
                let called = Instant::now();
                let row = loader.load(id).await;
                (id, row, called, Instant::now(), thread_number())
            }
        })
        .collect();
    let mut latencies = Vec::with_capacity(ids.len());
    let mut own = Vec::with_capacity(ids.len());
    let (mut lags, mut same_thread) = (Vec::new(), 0);
    while let Some((id, row, called, at, thread)) = calls.next().await {
        let row = row.expect("query").expect("every id has a row");
        assert!(row.id == id && !row.name.is_empty() && row.payload.len() == PAYLOAD);
        latencies.push(at - start);
        own.push(at - called);
        let seen = detail().then(|| usize::try_from(id).ok().and_then(|i| row_seen().get(i)));
        if let Some((row_at, row_thread)) = seen.flatten() {
            if let Some(lag) = since(row_at.load(Relaxed), start) {
                lags.push((at - start).saturating_sub(lag));
                same_thread += usize::from(row_thread.load(Relaxed) == thread);
            }
        }
    }
    lags.sort_unstable();
    drop(calls);
    let after = loader.metrics();
    assert_eq!(after.batches - before.batches, 1, "one batch per burst");
    assert_eq!(after.keys - before.keys, ids.len() as u64);
    latencies.sort_unstable();
    own.sort_unstable();
    Burst {
        latencies,
        own,
        called: since(CALLED.load(Relaxed), start).expect("called"),
        first_row: since(FIRST_ROW.load(Relaxed), start),
        last_row: since(LAST_ROW.load(Relaxed), start).expect("rows"),
        cpu: Default::default(),
        waited: Default::default(),
        lags,
        same_thread,
    }
}

/// The floor: `fetch()` with no coalescer; each row's arrival from the query's start.
async fn bare(fetch: Fetch, ids: Arc<Vec<i64>>) -> Burst {
    let start = Instant::now();
    let mut rows = fetch(ids.to_vec());
    let mut latencies = Vec::with_capacity(ids.len());
    while let Some(row) = rows.next().await {
        let row = row.expect("query");
        assert!(row.payload.len() == PAYLOAD);
        latencies.push(start.elapsed());
    }
    assert_eq!(latencies.len(), ids.len());
    latencies.sort_unstable();
    Burst {
        own: latencies.clone(),
        called: Duration::ZERO,
        first_row: Some(latencies[0]),
        last_row: latencies[latencies.len() - 1],
        latencies,
        cpu: Default::default(),
        waited: Default::default(),
        lags: Vec::new(),
        same_thread: 0,
    }
}

/// The figure of each round as "median (min–max)".
fn spread(xs: impl IntoIterator<Item = f64>, digits: usize) -> String {
    let mut xs: Vec<f64> = xs.into_iter().collect();
    xs.sort_by(f64::total_cmp);
    let (lo, mid, hi) = (xs[0], xs[xs.len() / 2], xs[xs.len() - 1]);
    format!("{mid:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

async fn latency_of(backend: Backend, rounds: usize) {
    let map = map_shape(&backend);
    let streamed = streamed_shape(&backend);
    let ids: Arc<Vec<i64>> = Arc::new((1..=ROWS as i64).collect());
    let probe = CpuProbe::new(backend.name == "PostgreSQL");
    let run = |which: usize| {
        let ids = ids.clone();
        match which {
            0 => on_worker(&probe, burst(map.clone(), ids)).boxed(),
            1 => on_worker(&probe, burst(streamed.clone(), ids)).boxed(),
            _ => on_worker(&probe, bare(backend.fetch.clone(), ids)).boxed(),
        }
    };
    // Warm-up: the statement prepared and the pages read on every connection.
    for _ in 0..3 {
        for which in 0..3 {
            run(which).await;
        }
    }
    // `STREAMS_SHAPE=map|streamed|bare`: that shape alone, for a profiler.
    let only = std::env::var("STREAMS_SHAPE")
        .ok()
        .map(|s| match s.as_str() {
            "map" => 0,
            "streamed" => 1,
            "bare" => 2,
            other => panic!("STREAMS_SHAPE={other}: map, streamed or bare"),
        });
    if let Some(which) = only {
        for _ in 0..rounds {
            run(which).await;
        }
        println!(
            "{}: {rounds} bursts of one shape (STREAMS_SHAPE)\n",
            backend.name
        );
        return;
    }
    let mut runs: [Vec<Burst>; 3] = Default::default();
    for round in 0..rounds {
        // Contenders take turns, in a rotating order, so that drift in the
        // machine's speed hits all of them alike.
        for turn in 0..3 {
            let which = (round + turn) % 3;
            runs[which].push(run(which).await);
        }
    }
    let name = backend.name;
    println!(
        "#### {name}: {ROWS} concurrent callers, one batch of {ROWS} rows; median of {rounds} interleaved rounds (min–max)\n"
    );
    println!("Times in ms from the burst's start (bare `fetch()`: from the query's start), except the first column: each caller from its own call (the first poll of its future; one task issues the 10,000 calls one after another).\n");
    println!("| shape | caller p50 from its own call | caller p10 | caller p50 | caller p90 | last caller | batch fn called | first row | last row (map: `fetch_all` returned) | CPU: this process + postgres (ms) | cores busy |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let labels = [
        "map: `fetch_all` into a `HashMap`",
        "streamed: `fetch()` as `(id, row)`",
        "bare `fetch()`, no coalescer (row arrival)",
    ];
    for (label, bursts) in labels.iter().zip(&runs) {
        let col = |f: &dyn Fn(&Burst) -> Duration| spread(bursts.iter().map(|b| ms(f(b))), 2);
        let first = if bursts.iter().all(|b| b.first_row.is_some()) {
            col(&|b| b.first_row.expect("checked"))
        } else {
            "–".to_owned()
        };
        let median = |f: &dyn Fn(&Burst) -> f64| {
            let mut xs: Vec<f64> = bursts.iter().map(f).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {first} | {} | {:.1} + {:.1} | {:.2} |",
            col(&|b| pct(&b.own, 50)),
            col(&|b| pct(&b.latencies, 10)),
            col(&|b| pct(&b.latencies, 50)),
            col(&|b| pct(&b.latencies, 90)),
            col(&|b| pct(&b.latencies, 100)),
            col(&|b| b.called),
            col(&|b| b.last_row),
            median(&|b| ms(b.cpu.0)),
            median(&|b| ms(b.cpu.1)),
            median(&|b| (b.cpu.0 + b.cpu.1).as_secs_f64() / pct(&b.latencies, 100).as_secs_f64()),
        );
    }
    // The target's measure: each caller's latency from its own call.
    let ratios: Vec<f64> = runs[1]
        .iter()
        .zip(&runs[0])
        .map(|(s, m)| ms(pct(&s.own, 50)) / ms(pct(&m.own, 50)))
        .collect();
    // The same with every caller counted from the burst's start (the first
    // call): callers issued late are charged the time to issue those before.
    let from_start: Vec<f64> = runs[1]
        .iter()
        .zip(&runs[0])
        .map(|(s, m)| ms(pct(&s.latencies, 50)) / ms(pct(&m.latencies, 50)))
        .collect();
    // The same ratio with each caller's wait counted from the batch fn's call:
    // without the time one task takes to issue the 10,000 calls.
    let from_call: Vec<f64> = runs[1]
        .iter()
        .zip(&runs[0])
        .map(|(s, m)| {
            ms(pct(&s.latencies, 50).saturating_sub(s.called))
                / ms(pct(&m.latencies, 50).saturating_sub(m.called))
        })
        .collect();
    let fetch_all_per_row: Vec<f64> = runs[0]
        .iter()
        .map(|m| (m.last_row - m.called).as_secs_f64() * 1e9 / ROWS as f64)
        .collect();
    let floor: Vec<f64> = runs[1]
        .iter()
        .zip(&runs[2])
        .map(|(s, b)| ms(s.called + pct(&b.latencies, 50)))
        .collect();
    let per_row = |bursts: &[Burst]| -> Vec<f64> {
        bursts
            .iter()
            .map(|s| {
                let first = s.first_row.expect("streamed rows");
                (s.last_row - first).as_secs_f64() * 1e9 / (ROWS - 1) as f64
            })
            .collect()
    };
    let tail: Vec<f64> = runs[1]
        .iter()
        .map(|s| ms(pct(&s.latencies, 100).saturating_sub(s.last_row)))
        .collect();
    let map_tail: Vec<f64> = runs[0]
        .iter()
        .map(|m| ms(pct(&m.latencies, 0).saturating_sub(m.last_row)))
        .collect();
    println!();
    println!(
        "- streamed p50 / map p50, each caller from its own call, per round: {} (target ≤ 0.55); rounds: {}",
        spread(ratios.iter().copied(), 3),
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "- the same, every caller counted from the burst's start (the first call): {}",
        spread(from_start.iter().copied(), 3)
    );
    println!(
        "- streamed shape: {} ns between rows (first to last row / {}); last caller {} ms after the last row",
        spread(per_row(&runs[1]), 0),
        ROWS - 1,
        spread(tail, 2)
    );
    if detail() {
        println!(
            "- streamed shape: each caller answered {} ms after its row came (p90 {} ms); {} of {ROWS} answered on the thread that read their row",
            spread(runs[1].iter().map(|s| ms(pct(&s.lags, 50))), 3),
            spread(runs[1].iter().map(|s| ms(pct(&s.lags, 90))), 3),
            spread(runs[1].iter().map(|s| s.same_thread as f64), 0),
        );
        // Per round: the ratio, the streamed callers' lag behind their rows,
        // and how many were answered on the thread that read their row.
        for (i, (s, r)) in runs[1].iter().zip(&ratios).enumerate() {
            let first = s.first_row.unwrap_or_default();
            println!(
                "  - round {i}: ratio {r:.3}, lag p50 {:.3} p90 {:.3} ms, same thread {}, {:.0} ns between rows, first row {:.2} ms, waited for a CPU {:.1} + {:.1} ms",
                ms(pct(&s.lags, 50)),
                ms(pct(&s.lags, 90)),
                s.same_thread,
                (s.last_row - first).as_secs_f64() * 1e9 / (ROWS - 1) as f64,
                ms(first.saturating_sub(s.called)),
                ms(s.waited.0),
                ms(s.waited.1),
            );
        }
    }
    let waited = |bursts: &[Burst]| {
        format!(
            "{} + {}",
            spread(bursts.iter().map(|b| ms(b.waited.0)), 1),
            spread(bursts.iter().map(|b| ms(b.waited.1)), 1)
        )
    };
    println!(
        "- runnable but waiting for a CPU during a burst, this process + postgres (ms): map {}, streamed {}, bare {}",
        waited(&runs[0]),
        waited(&runs[1]),
        waited(&runs[2])
    );
    println!(
        "- bare `fetch()`: {} ns between rows",
        spread(per_row(&runs[2]), 0)
    );
    println!(
        "- map shape: `fetch_all` took {} ns per row (its run / {ROWS}, time to first row included); first caller answered {} ms after it returned",
        spread(fetch_all_per_row, 0),
        spread(map_tail, 2)
    );
    println!(
        "- streamed p50 / map p50 counted from the batch fn's call (issuing the calls left out): {}",
        spread(from_call, 3)
    );
    println!(
        "- floor of the streamed p50: its batch fn's call + the bare `fetch()`'s median row arrival = {} ms\n",
        spread(floor, 2)
    );
}

async fn sqlite() -> Backend {
    let options = SqliteConnectOptions::from_str("sqlite::memory:").expect("options");
    // One connection that lives as long as the run: the in-memory database is
    // the connection's.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
        .expect("sqlite");
    sqlx::query(
        "CREATE TABLE coalesce_bench_stream \
         (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("create");
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
         INSERT INTO coalesce_bench_stream SELECT i, 'user ' || i, hex(randomblob(?)) FROM n",
    )
    .bind(ROWS as i64)
    .bind((PAYLOAD / 2) as i64)
    .execute(&pool)
    .await
    .expect("fill");
    let pool: &'static SqlitePool = Box::leak(Box::new(pool));
    let json = |ids: &[i64]| {
        let mut s = String::with_capacity(ids.len() * 7 + 2);
        s.push('[');
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&id.to_string());
        }
        s.push(']');
        s
    };
    Backend {
        name: "SQLite",
        fetch_all: Arc::new(move |ids| {
            Box::pin(
                sqlx::query_as::<_, Row>(SQLITE_BY_IDS)
                    .bind(json(&ids))
                    .fetch_all(pool),
            )
        }),
        fetch: Arc::new(move |ids| {
            sqlx::query_as::<_, Row>(SQLITE_BY_IDS)
                .bind(json(&ids))
                .fetch(pool)
        }),
    }
}

/// No database: rows cloned from memory, to isolate the engine's delivery cost
/// from the database's.
fn in_memory() -> Backend {
    let rows: Arc<Vec<Row>> = Arc::new(
        (1..=ROWS as i64)
            .map(|id| Row {
                id,
                name: format!("user {id}"),
                payload: "x".repeat(PAYLOAD),
            })
            .collect(),
    );
    let all = rows.clone();
    Backend {
        name: "No database (rows cloned from memory)",
        fetch_all: Arc::new(move |ids| {
            let rows = all.clone();
            Box::pin(async move {
                Ok(ids
                    .iter()
                    .map(|&id| rows[id as usize - 1].clone())
                    .collect())
            })
        }),
        fetch: Arc::new(move |ids| {
            let rows = rows.clone();
            futures::stream::iter(ids)
                .map(move |id| Ok(rows[id as usize - 1].clone()))
                .boxed()
        }),
    }
}

async fn postgres() -> Result<Backend, String> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let options = PgConnectOptions::from_str(&url).map_err(|e| e.to_string())?;
    if options.get_host() != "127.0.0.1" {
        return Err(format!(
            "DATABASE_URL's host is {}, not 127.0.0.1",
            options.get_host()
        ));
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .map_err(|e| e.to_string())?;
    let setup = async {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS coalesce_bench_stream \
             (id bigint PRIMARY KEY, name text NOT NULL, payload text NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let n: i64 = sqlx::query("SELECT count(*) FROM coalesce_bench_stream")
            .fetch_one(&pool)
            .await?
            .get(0);
        if n != ROWS as i64 {
            sqlx::query("TRUNCATE coalesce_bench_stream")
                .execute(&pool)
                .await?;
            sqlx::query(
                "INSERT INTO coalesce_bench_stream \
                 SELECT g, 'user ' || g, left(repeat(md5(g::text), 4), $2) \
                 FROM generate_series(1, $1) g",
            )
            .bind(ROWS as i64)
            .bind(PAYLOAD as i32)
            .execute(&pool)
            .await?;
            sqlx::query("ANALYZE coalesce_bench_stream")
                .execute(&pool)
                .await?;
        }
        // The statement prepared on both connections before the clock starts.
        let conns = futures::future::join_all([pool.acquire(), pool.acquire()]).await;
        for c in conns {
            let mut c = c?;
            sqlx::query_as::<_, Row>(PG_BY_IDS)
                .bind(vec![1i64, 2])
                .fetch_all(&mut *c)
                .await?;
        }
        Ok::<_, sqlx::Error>(())
    };
    setup.await.map_err(|e| e.to_string())?;
    let pool: &'static PgPool = Box::leak(Box::new(pool));
    Ok(Backend {
        name: "PostgreSQL",
        fetch_all: Arc::new(move |ids| {
            Box::pin(
                sqlx::query_as::<_, Row>(PG_BY_IDS)
                    .bind(ids)
                    .fetch_all(pool),
            )
        }),
        fetch: Arc::new(move |ids| sqlx::query_as::<_, Row>(PG_BY_IDS).bind(ids).fetch(pool)),
    })
}

async fn latency(rounds: usize, only: Option<&str>) {
    println!("## Streamed results: caller latency, map shape against streamed shape\n");
    let wanted = |b: &str| only.is_none_or(|o| o == b);
    if wanted("sqlite") {
        latency_of(sqlite().await, rounds).await;
    }
    if wanted("postgres") {
        match postgres().await {
            Ok(backend) => latency_of(backend, rounds).await,
            Err(e) => println!("PostgreSQL skipped: {e}\n"),
        }
    }
    if wanted("none") {
        latency_of(in_memory(), rounds).await;
    }
}

/// Peak resident set size of this process so far, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A synthetic value: a `String` of [`VALUE`] bytes, counted while alive.
#[derive(Debug)]
struct Value(String);

/// Values alive now, and the most alive at once.
static ALIVE: AtomicU64 = AtomicU64::new(0);
static MOST_ALIVE: AtomicU64 = AtomicU64::new(0);

impl Value {
    fn new(k: u64) -> Value {
        let now = ALIVE.fetch_add(1, Relaxed) + 1;
        MOST_ALIVE.fetch_max(now, Relaxed);
        Value(format!("{k:0width$}", width = VALUE))
    }
}

impl Clone for Value {
    fn clone(&self) -> Value {
        let now = ALIVE.fetch_add(1, Relaxed) + 1;
        MOST_ALIVE.fetch_max(now, Relaxed);
        Value(self.0.clone())
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Relaxed);
    }
}

const VARIANTS: [&str; 3] = ["baseline", "map", "stream"];

/// Burst sizes of the memory mode: the 1,000,000, and a quarter of it to
/// show how each variant's excess grows with the batch.
const MEMORY_SIZES: [usize; 2] = [MEMORY_KEYS / 4, MEMORY_KEYS];

/// The child process: one burst of `n` callers in one batch, then one line
/// `RESULT <VmHWM before, KiB> <VmHWM after, KiB> <answers with a value> <ms>
/// <values alive at most>`.
async fn memory_child(variant: &str, n: usize) {
    let name = "streams.memory";
    let c: Coalescer<u64, Value, Infallible> = match variant {
        "baseline" => Coalescer::new(config(name, n), |keys: Vec<u64>| async move {
            drop(keys);
            HashMap::<u64, Value>::new()
        }),
        "map" => Coalescer::new(config(name, n), |keys: Vec<u64>| async move {
            keys.into_iter()
                .map(|k| (k, Value::new(k)))
                .collect::<HashMap<_, _>>()
        }),
        "stream" => Coalescer::new(config(name, n), |keys: Vec<u64>| async move {
            Streamed(futures::stream::iter(
                keys.into_iter()
                    .map(|k| Ok::<_, Infallible>((k, Value::new(k)))),
            ))
        }),
        other => panic!("unknown variant {other}"),
    };
    let before = vm_hwm_kib();
    let start = Instant::now();
    let mut calls: FuturesUnordered<_> = (0..n as u64).map(|k| c.load(k)).collect();
    let mut with_value = 0u64;
    // Each answer is dropped as it comes: no caller keeps its value.
    while let Some(answer) = calls.next().await {
        if let Some(v) = answer.expect("infallible") {
            assert_eq!(v.0.len(), VALUE);
            with_value += 1;
        }
    }
    let elapsed = start.elapsed();
    drop(calls);
    let m = c.metrics();
    assert_eq!((m.batches, m.keys), (1, n as u64), "one batch");
    println!(
        "RESULT {before} {} {with_value} {:.0} {}",
        vm_hwm_kib(),
        ms(elapsed),
        MOST_ALIVE.load(Relaxed)
    );
}

struct Peak {
    before_kib: u64,
    peak_kib: u64,
    with_value: u64,
    ms: f64,
    most_alive: u64,
}

fn run_child(variant: &str, n: usize) -> Peak {
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(["memory-child", variant, &n.to_string()])
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{variant}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("RESULT line");
    let f: Vec<&str> = line.split_whitespace().collect();
    Peak {
        before_kib: f[1].parse().expect("kib"),
        peak_kib: f[2].parse().expect("kib"),
        with_value: f[3].parse().expect("count"),
        ms: f[4].parse().expect("ms"),
        most_alive: f[5].parse().expect("count"),
    }
}

fn memory() {
    println!(
        "#### Peak RSS: concurrent callers in one batch, {VALUE}-byte `String` values, one child process per variant\n"
    );
    println!("MiB = 2^20 bytes. \"values alive at most\": synthetic values made and not yet dropped, at most at once.\n");
    println!("| callers | batch fn returns | answers with a value | values alive at most | burst (ms) | VmHWM before the burst (MiB) | peak RSS, VmHWM (MiB) | over baseline (MiB) | over baseline (bytes per key) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let labels = [
        "baseline: no entry (`HashMap::new()`)",
        "map: `HashMap` of every value",
        "stream: `Streamed(stream::iter(..))`, values made as read",
    ];
    for n in MEMORY_SIZES {
        let peaks: Vec<Peak> = VARIANTS.iter().map(|v| run_child(v, n)).collect();
        let base = peaks[0].peak_kib as f64 * 1024.0;
        for (label, p) in labels.iter().zip(&peaks) {
            let over = p.peak_kib as f64 * 1024.0 - base;
            println!(
                "| {n} | {label} | {} | {} | {:.0} | {:.1} | {:.1} | {:+.1} | {:+.1} |",
                p.with_value,
                p.most_alive,
                p.ms,
                p.before_kib as f64 / 1024.0,
                p.peak_kib as f64 / 1024.0,
                over / 1048576.0,
                over / n as f64,
            );
        }
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = || {
        if std::env::var_os("STREAMS_CURRENT_THREAD").is_some() {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    };
    match args.first().map(String::as_str) {
        Some("memory-child") => {
            let variant = args.get(1).cloned().expect("variant");
            let n = args
                .get(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(MEMORY_KEYS);
            // The burst runs on a worker, as a service's requests do.
            runtime().block_on(async move {
                tokio::spawn(async move { memory_child(&variant, n).await })
                    .await
                    .expect("child")
            });
        }
        Some("memory") => memory(),
        Some("latency") | None => {
            let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(21);
            runtime().block_on(latency(rounds, args.get(2).map(String::as_str)));
            if args.is_empty() {
                memory();
            }
        }
        Some(other) => {
            eprintln!("unknown mode {other}: latency [ROUNDS [sqlite|postgres|none]] | memory");
            std::process::exit(2);
        }
    }
}
