//! PostgreSQL burst: 10,000 concurrent `get_user(id)` calls against a 100,000-row
//! `users` table through a sqlx pool of 10 connections — the naive per-key query
//! against `#[coalesce]` with a fixed window, with adaptive dispatch and with
//! self-tuning dispatch (`auto`, under the same ceilings as adaptive).
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) must point at
//! 127.0.0.1. Queries are counted on the server: `pg_stat_user_tables.idx_scan` of
//! `users` (one per executed lookup) and `pg_stat_database.xact_commit`.
//!
//! Each round runs every mode once, in an order that rotates from round to
//! round. After the per-round table, Auto is set against each fixed setting
//! round by round: the difference of the two modes' wall and p99 in the same
//! round, and in how many rounds Auto's was at most the other's.
//!
//! Usage: `cargo run --release -p coalesce-benches --bin pg_burst [-- ROUNDS [MODE]]`
//! where MODE (`naive`, `window`, `adaptive` or `auto`) runs that mode only, for a
//! profiler.

use std::collections::HashMap;

use std::time::{Duration, Instant};

use coalesce::coalesce;
use coalesce_benches::Run;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

const ROWS: i64 = 100_000;
const BURST: usize = 10_000;
const POOL: u32 = 10;

/// The pool of the mode being measured; replaced for each mode so that closing it
/// makes its backends flush their statistics.
static CURRENT: std::sync::Mutex<Option<PgPool>> = std::sync::Mutex::new(None);

fn pool() -> PgPool {
    CURRENT.lock().unwrap().clone().expect("pool set")
}

#[derive(Clone, Debug)]
struct User {
    id: i64,
    #[allow(dead_code)]
    name: String,
}

fn user(row: &sqlx::postgres::PgRow) -> User {
    User {
        id: row.get(0),
        name: row.get(1),
    }
}

const BY_ID: &str = "SELECT id, name FROM public.users WHERE id = $1";
const BY_IDS: &str = "SELECT id, name FROM public.users WHERE id = ANY($1)";

/// One query per call.
async fn get_user_naive(id: i64) -> Result<Option<User>, sqlx::Error> {
    let row = sqlx::query(BY_ID).bind(id).fetch_optional(&pool()).await?;
    Ok(row.as_ref().map(user))
}

async fn get_users(ids: &[i64]) -> Result<HashMap<i64, User>, sqlx::Error> {
    let rows = sqlx::query(BY_IDS).bind(ids).fetch_all(&pool()).await?;
    Ok(rows.iter().map(user).map(|u| (u.id, u)).collect())
}

/// Coalesced, fixed 500 µs window.
#[coalesce(window = "500us", max_batch = 1000, name = "pg.window")]
async fn get_user_window(ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
    get_users(&ids).await
}

/// Coalesced, adaptive dispatch (500 µs window bound), as many lanes as the pool
/// has connections.
#[coalesce(
    window = "500us",
    max_batch = 1000,
    max_in_flight = 10,
    dispatch = "adaptive",
    name = "pg.adaptive"
)]
async fn get_user_adaptive(ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
    get_users(&ids).await
}

/// Coalesced, self-tuning dispatch (issue 12): the controller sets lanes and
/// window itself, under the adaptive setting's bounds as ceilings (500 µs, as
/// many lanes as the pool has connections).
#[coalesce(
    window = "500us",
    max_batch = 1000,
    max_in_flight = 10,
    dispatch = "auto",
    name = "pg.auto"
)]
async fn get_user_auto(ids: Vec<i64>) -> Result<HashMap<i64, User>, sqlx::Error> {
    get_users(&ids).await
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Naive,
    Window,
    Adaptive,
    Auto,
}

async fn get_user(mode: Mode, id: i64) -> Option<User> {
    match mode {
        Mode::Naive => get_user_naive(id).await.expect("query"),
        Mode::Window => get_user_window(id).await.expect("query"),
        Mode::Adaptive => get_user_adaptive(id).await.expect("query"),
        Mode::Auto => get_user_auto(id).await.expect("query"),
    }
}

async fn counters(url: &str) -> (i64, i64) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    let row = sqlx::query(
        "SELECT (SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relid = 'public.users'::regclass),
                (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .expect("stats");
    let out = (row.get::<i64, _>(0), row.get::<i64, _>(1));
    pool.close().await;
    out
}

async fn setup(url: &str) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS public.users (id bigint PRIMARY KEY, name text NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("create");
    let n: i64 = sqlx::query("SELECT count(*) FROM public.users")
        .fetch_one(&pool)
        .await
        .expect("count")
        .get(0);
    if n != ROWS {
        sqlx::query("TRUNCATE public.users")
            .execute(&pool)
            .await
            .expect("truncate");
        sqlx::query(
            "INSERT INTO public.users SELECT g, 'user ' || g FROM generate_series(1, $1) g",
        )
        .bind(ROWS)
        .execute(&pool)
        .await
        .expect("insert");
        sqlx::query("ANALYZE public.users")
            .execute(&pool)
            .await
            .expect("analyze");
    }
    pool.close().await;
}

/// CPU time consumed so far, in nanoseconds, by this process (all its threads) and
/// by every `postgres` process running now (listed again at each reading: the
/// pool's backends may start during a burst).
fn cpu_ns() -> (u64, u64) {
    coalesce_benches::CpuProbe::new(true).read()
}

struct Measured {
    run: Run,
    /// CPU time of the client and of the server during the burst.
    cpu: (Duration, Duration),
    scans: i64,
    xacts: i64,
    batches: u64,
}

async fn measure(url: &str, mode: Mode, round: u64) -> Measured {
    let p = PgPoolOptions::new()
        .max_connections(POOL)
        .min_connections(POOL)
        .connect(url)
        .await
        .expect("connect");
    // Open every connection, and prepare both statements on each, before the clock
    // starts: a service's pool is warm, and a fresh backend's first query pays for
    // parsing, planning and filling its caches.
    let warm: Vec<_> = (0..POOL).map(|_| p.acquire()).collect();
    for c in futures::future::join_all(warm).await {
        let mut c = c.expect("acquire");
        sqlx::query(BY_ID)
            .bind(1i64)
            .fetch_optional(&mut *c)
            .await
            .expect("warm-up");
        sqlx::query(BY_IDS)
            .bind([1i64, 2].as_slice())
            .fetch_all(&mut *c)
            .await
            .expect("warm-up");
    }
    *CURRENT.lock().unwrap() = Some(p.clone());
    let (s0, x0) = counters(url).await;
    let b0 = batches(mode);
    let cpu0 = cpu_ns();
    let start = Instant::now();
    let base = (round * 7919) % (ROWS as u64 - BURST as u64);
    let tasks: Vec<_> = (0..BURST)
        .map(|i| {
            let id = (base + i as u64 + 1) as i64;
            tokio::spawn(async move {
                let t = Instant::now();
                let u = get_user(mode, id).await.expect("row exists");
                assert_eq!(u.id, id);
                t.elapsed()
            })
        })
        .collect();
    let spawned = start.elapsed();
    let mut latencies = Vec::with_capacity(BURST);
    for t in tasks {
        latencies.push(t.await.expect("task"));
    }
    let wall = start.elapsed();
    let cpu1 = cpu_ns();
    let cpu = (
        Duration::from_nanos(cpu1.0.saturating_sub(cpu0.0)),
        Duration::from_nanos(cpu1.1.saturating_sub(cpu0.1)),
    );
    if std::env::var_os("PG_BURST_DEBUG").is_some() {
        eprintln!("{mode:?}: spawned in {spawned:?}, done in {wall:?}, cpu {cpu:?}");
    }
    latencies.sort_unstable();
    // Closing the pool ends its backends, which flushes their statistics.
    CURRENT.lock().unwrap().take();
    p.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s1, x1) = counters(url).await;
    Measured {
        run: Run {
            wall,
            calls: BURST,
            latencies,
        },
        cpu,
        // Less the warm-up: per connection, one single-id and one two-id lookup,
        // each its own transaction.
        scans: s1 - s0 - 3 * i64::from(POOL),
        xacts: x1 - x0 - 2 * i64::from(POOL),
        batches: batches(mode) - b0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    assert!(
        url.contains("@127.0.0.1:") || url.contains("@127.0.0.1/"),
        "only 127.0.0.1 is allowed: {url}"
    );
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    setup(&url).await;
    let only = std::env::args().nth(2);
    let modes: Vec<Mode> = [Mode::Naive, Mode::Window, Mode::Adaptive, Mode::Auto]
        .into_iter()
        .filter(|m| {
            only.as_deref()
                .is_none_or(|o| format!("{m:?}").eq_ignore_ascii_case(o))
        })
        .collect();
    let mut results: HashMap<&str, Vec<Measured>> = HashMap::new();
    // Warm-up round (plans, caches), not reported.
    for &mode in &modes {
        measure(&url, mode, 0).await;
    }
    for round in 1..=rounds {
        // The modes take turns in a rotating order, so that no mode always
        // follows the same one (a server's state after a mode, drift in the
        // machine's speed).
        for turn in 0..modes.len() {
            let mode = modes[(round as usize + turn) % modes.len()];
            let m = measure(&url, mode, round).await;
            let tuned = (mode == Mode::Auto)
                .then(|| coalesce::metrics::get("pg.auto").and_then(|m| m.tuned))
                .flatten()
                .map(|t| format!(", tuned: {} lanes, window {:?}", t.lanes, t.window))
                .unwrap_or_default();
            eprintln!(
                "round {round} {mode:?}: {:.1} ms, p99 {:.2} ms, {} batches, {} index scans, {} transactions{tuned}",
                m.run.wall.as_secs_f64() * 1e3,
                m.run.quantile(0.99).as_secs_f64() * 1e3,
                m.batches,
                m.scans,
                m.xacts
            );
            results.entry(label(mode)).or_default().push(m);
        }
    }
    for name in ["pg.window", "pg.adaptive", "pg.auto"] {
        if let Some(m) = coalesce::metrics::get(name) {
            eprintln!("{m}");
        }
    }
    println!("PostgreSQL burst: {BURST} concurrent get_user(id), {ROWS}-row table, pool of {POOL}; median of {rounds} rounds\n");
    println!("| mode | wall (ms) | throughput (calls/s) | p50 (ms) | p99 (ms) | queries sent (client) | transactions (server) | index scans (server) | CPU client + server (ms) | speed-up | fewer transactions |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let Some(naive) = results.get("naive").map(|r| median(r)) else {
        return;
    };
    for &mode in &modes {
        let m = median(&results[label(mode)]);
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {:.1} + {:.1} | {:.1}x | {:.0}x |",
            label(mode),
            m.run.wall.as_secs_f64() * 1e3,
            m.run.throughput(),
            m.run.quantile(0.5).as_secs_f64() * 1e3,
            m.run.quantile(0.99).as_secs_f64() * 1e3,
            if mode == Mode::Naive {
                BURST as u64
            } else {
                m.batches
            },
            m.xacts,
            m.scans,
            m.cpu.0.as_secs_f64() * 1e3,
            m.cpu.1.as_secs_f64() * 1e3,
            m.run.throughput() / naive.run.throughput(),
            naive.xacts as f64 / m.xacts.max(1) as f64,
        );
    }
    println!("\nPer round, median (min–max) of {rounds}:\n");
    println!("| mode | wall (ms) | p50 (ms) | p99 (ms) | queries sent (client) |");
    println!("|---|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for mode in modes {
        let rs = &results[label(mode)];
        let col = |g: &dyn Fn(&Measured) -> f64, dec: usize| {
            let mut xs: Vec<f64> = rs.iter().map(g).collect();
            xs.sort_by(f64::total_cmp);
            format!(
                "{:.dec$} ({:.dec$}–{:.dec$})",
                xs[xs.len() / 2],
                xs[0],
                xs[xs.len() - 1]
            )
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            label(mode),
            col(&|m| ms(m.run.wall), 1),
            col(&|m| ms(m.run.quantile(0.5)), 2),
            col(&|m| ms(m.run.quantile(0.99)), 2),
            if mode == Mode::Naive {
                BURST.to_string()
            } else {
                col(&|m| m.batches as f64, 0)
            },
        );
    }
    paired(&results, rounds);
    if let Some(t) = coalesce::metrics::get("pg.auto").and_then(|m| m.tuned) {
        println!(
            "\nauto at the end: {} lanes, window {:?}; fitted fixed cost {:?}, per key {:?}, slowdown per lane {:.3}\n",
            t.lanes, t.window, t.fixed_cost, t.per_key_cost, t.slowdown_per_lane
        );
    }
}

/// Auto against each fixed setting round by round (the modes of one round
/// ran back to back): the difference of each round's wall and p99, and in how
/// many rounds Auto's was at most the other's.
fn paired(results: &HashMap<&str, Vec<Measured>>, rounds: u64) {
    let Some(auto) = results.get(label(Mode::Auto)) else {
        return;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let fixed = [Mode::Window, Mode::Adaptive];
    let mut lines = Vec::new();
    for other in fixed {
        let Some(rs) = results.get(label(other)) else {
            continue;
        };
        for (what, f) in [
            (
                "wall",
                (&|m: &Measured| ms(m.run.wall)) as &dyn Fn(&Measured) -> f64,
            ),
            ("p99", &|m: &Measured| ms(m.run.quantile(0.99))),
        ] {
            let mut d: Vec<f64> = auto.iter().zip(rs).map(|(a, o)| f(a) - f(o)).collect();
            let at_most = d.iter().filter(|&&x| x <= 0.0).count();
            d.sort_by(f64::total_cmp);
            lines.push(format!(
                "| auto − {} | {what} | {:+.2} ({:+.2} to {:+.2}) | {at_most} of {} |",
                label(other),
                d[d.len() / 2],
                d[0],
                d[d.len() - 1],
                d.len()
            ));
        }
    }
    if lines.is_empty() {
        return;
    }
    println!("\nAuto against each fixed setting, round by round ({rounds} rounds; the modes of a round ran back to back):\n");
    println!("| pair | figure | difference, ms: median (min to max) | rounds where auto's is at most the other's |");
    println!("|---|---|---:|---:|");
    for l in lines {
        println!("{l}");
    }
}

/// Queries the client sent: batches run by the coalescer, or one per call.
fn batches(mode: Mode) -> u64 {
    let name = match mode {
        Mode::Naive => return 0,
        Mode::Window => "pg.window",
        Mode::Adaptive => "pg.adaptive",
        Mode::Auto => "pg.auto",
    };
    coalesce::metrics::get(name).map_or(0, |m| m.batches)
}

fn label(mode: Mode) -> &'static str {
    match mode {
        Mode::Naive => "naive",
        Mode::Window => "#[coalesce] window 500us",
        Mode::Adaptive => "#[coalesce] adaptive",
        Mode::Auto => "#[coalesce] auto",
    }
}

/// The round with the median wall time.
fn median(ms: &[Measured]) -> Measured {
    let mut idx: Vec<usize> = (0..ms.len()).collect();
    idx.sort_by_key(|&i| ms[i].run.wall);
    let m = &ms[idx[idx.len() / 2]];
    Measured {
        run: m.run.clone(),
        cpu: m.cpu,
        scans: m.scans,
        xacts: m.xacts,
        batches: m.batches,
    }
}
