//! Runs the in-process workloads once more outside criterion and prints the
//! throughput and percentile tables of `BENCHMARKS.md` as markdown, then draws
//! `benches/plots/load.svg`: p99 latency and throughput against offered load for the
//! naive call, `coalesce` fixed window and `coalesce` adaptive (2 ms round trip).
//!
//! Usage: `cargo run --release -p coalesce-benches --bin report [-- SECTION...]`
//! where SECTION is any of `overhead`, `roundtrip`, `idle`, `load`, `window`,
//! `many`, `joins` (default: all).

use std::sync::Arc;
use std::time::Duration;

use coalesce::{Coalescer, Config, Dispatch};
use coalesce_benches::{
    burst, compute, offered_load, runtime, sequential, Kind, Loader, Run, Work, BURST, ROUND_TRIP,
    WINDOW,
};
use plotters::prelude::*;

const REPEATS: usize = 7;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median-of-`REPEATS` burst (by wall time), after one warm-up burst.
async fn median_burst(loader: &Arc<Loader>, record: bool) -> Run {
    burst(loader, BURST, 0, false).await;
    let mut runs = Vec::new();
    for i in 0..REPEATS {
        runs.push(burst(loader, BURST, (i as u64 + 1) * BURST as u64, record).await);
    }
    runs.sort_by_key(|r| r.wall);
    runs.swap_remove(REPEATS / 2)
}

/// Bursts per contender in the overhead table: contenders take turns, one burst
/// each per round, so that drift in the machine's speed hits all of them alike.
const ROUNDS: usize = 21;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn overhead() {
    println!(
        "### Engine overhead: burst of {BURST} tasks, pure-CPU batch fn (median of {ROUNDS} interleaved rounds)\n"
    );
    println!("ns per key (wall time / {BURST}); in brackets, overhead over the direct call.\n");
    let sizes = [1usize, 10, 100, 1000];
    let mut table = vec![vec![0f64; sizes.len()]; Kind::ALL.len()];
    for (i, &size) in sizes.iter().enumerate() {
        let loaders: Vec<Arc<Loader>> = Kind::ALL
            .iter()
            .map(|&kind| Arc::new(Loader::new(kind, Work::Cpu, size, WINDOW)))
            .collect();
        let mut samples = vec![Vec::with_capacity(ROUNDS); loaders.len()];
        for loader in &loaders {
            burst(loader, BURST, 0, false).await;
        }
        for round in 0..ROUNDS {
            for (k, loader) in loaders.iter().enumerate() {
                let base = (round as u64 + 1) * BURST as u64;
                samples[k].push(burst(loader, BURST, base, false).await.ns_per_call());
            }
        }
        for (k, xs) in samples.into_iter().enumerate() {
            table[k][i] = median(xs);
        }
    }
    print!("| contender | settings |");
    for s in sizes {
        print!(" max_batch {s} |");
    }
    println!();
    println!("|---|---|{}", "---:|".repeat(sizes.len()));
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        print!("| {} | {} |", kind.label(), kind.settings(WINDOW));
        for (i, ns) in table[k].iter().enumerate() {
            if kind == Kind::Direct {
                print!(" {ns:.0} |");
            } else {
                print!(" {ns:.0} ({:+.0}) |", ns - table[0][i]);
            }
        }
        println!();
    }
    let last = sizes.len() - 1;
    let over = |kind: Kind| {
        let k = Kind::ALL.iter().position(|&x| x == kind).unwrap_or(0);
        table[k][last] - table[0][last]
    };
    let best_peer = [
        Kind::Dataloader,
        Kind::AsyncGraphql,
        Kind::BatchedFn,
        Kind::BatchAintOne,
        Kind::BatchAintOneBalanced,
    ]
    .into_iter()
    .min_by(|a, b| over(*a).total_cmp(&over(*b)))
    .unwrap_or(Kind::BatchAintOne);
    println!(
        "\nAt max_batch {}: best peer {} {:+.0} ns/key; coalesce window {:+.0}, adaptive {:+.0}; bare reference {:+.0}.\n",
        sizes[last],
        best_peer.label(),
        over(best_peer),
        over(Kind::CoalesceWindow),
        over(Kind::CoalesceAdaptive),
        over(Kind::Bare),
    );
}

async fn roundtrip() {
    println!("### Simulated round trip: burst of {BURST}, 2 ms per batch (direct: 2 ms per key, 10 permits), max_batch 1000\n");
    println!("Batching contenders take turns for {ROUNDS} rounds (median wall; p50/p99 over every call of every round); the direct path, 3 s a burst, runs {REPEATS} bursts (median).\n");
    // What one simulated round trip lasts here: Tokio's timer rounds the 2 ms sleep
    // up to its next 1 ms tick.
    let mut one = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = std::time::Instant::now();
        tokio::time::sleep(ROUND_TRIP).await;
        one.push(t.elapsed());
    }
    let one = Run::new(Duration::ZERO, one);
    println!(
        "One round trip alone (`tokio::time::sleep({ROUND_TRIP:?})`, 200 in a row): p50 {:.2} ms, p99 {:.2} ms.\n",
        ms(one.quantile(0.5)),
        ms(one.quantile(0.99))
    );
    println!("| contender | wall (ms) | throughput (keys/s) | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|---:|");
    let loaders: Vec<Arc<Loader>> = Kind::ALL
        .iter()
        .map(|&kind| Arc::new(Loader::new(kind, Work::RoundTrip, 1000, WINDOW)))
        .collect();
    let mut walls = vec![Vec::with_capacity(ROUNDS); loaders.len()];
    let mut latencies = vec![Vec::new(); loaders.len()];
    for (k, loader) in loaders.iter().enumerate().skip(1) {
        burst(loader, BURST, 0, false).await;
        latencies[k].reserve(ROUNDS * BURST);
    }
    for round in 0..ROUNDS {
        for (k, loader) in loaders.iter().enumerate().skip(1) {
            let base = (round as u64 + 1) * BURST as u64;
            let r = burst(loader, BURST, base, true).await;
            walls[k].push(r.wall);
            latencies[k].extend_from_slice(&r.latencies);
        }
    }
    let runs = loaders.iter().enumerate().map(|(k, loader)| {
        let loader = loader.clone();
        let walls = std::mem::take(&mut walls[k]);
        let lat = std::mem::take(&mut latencies[k]);
        async move {
            if k == 0 {
                median_burst(&loader, true).await
            } else {
                let mut walls = walls;
                walls.sort_unstable();
                Run {
                    calls: BURST,
                    ..Run::new(walls[walls.len() / 2], lat)
                }
            }
        }
    });
    for (kind, run) in Kind::ALL.into_iter().zip(runs) {
        let r = run.await;
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.2} |",
            kind.label(),
            ms(r.wall),
            r.throughput(),
            ms(r.quantile(0.5)),
            ms(r.quantile(0.99))
        );
    }
    println!();
}

async fn idle() {
    println!(
        "### Idle road: one caller, 1,000 sequential calls, pure-CPU batch fn, max_batch 1000\n"
    );
    println!("| contender | settings | mean (µs) | p50 (µs) | p99 (µs) |");
    println!("|---|---|---:|---:|---:|");
    for kind in Kind::ALL {
        let loader = Arc::new(Loader::new(kind, Work::Cpu, 1000, WINDOW));
        sequential(&loader, 100, 0).await;
        let r = sequential(&loader, 1000, 1000).await;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            kind.label(),
            kind.settings(WINDOW),
            r.ns_per_call() / 1e3,
            us(r.quantile(0.5)),
            us(r.quantile(0.99))
        );
    }
    println!();
}

async fn load() {
    const RATES: [f64; 8] = [
        500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0, 32_000.0, 64_000.0,
    ];
    let span = Duration::from_millis(500);
    let kinds = [
        Kind::Direct,
        Kind::CoalesceWindow,
        Kind::CoalesceAdaptive,
        Kind::BatchAintOne,
        Kind::BatchAintOneBalanced,
    ];
    println!("### Offered load: open-loop arrivals for {span:?}, 2 ms round trip (direct: per key, 10 permits; coalesce: per batch, max_batch 1000)\n");
    println!("| offered (calls/s) | contender | achieved (calls/s) | p50 (ms) | p99 (ms) |");
    println!("|---:|---|---:|---:|---:|");
    let mut series: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); kinds.len()];
    for rate in RATES {
        for (i, &kind) in kinds.iter().enumerate() {
            let loader = Arc::new(Loader::new(kind, Work::RoundTrip, 1000, WINDOW));
            let r = offered_load(&loader, rate, span, 0).await;
            println!(
                "| {rate:.0} | {} | {:.0} | {:.2} | {:.2} |",
                kind.label(),
                r.throughput(),
                ms(r.quantile(0.5)),
                ms(r.quantile(0.99))
            );
            series[i].push((rate, ms(r.quantile(0.99)), r.throughput()));
        }
    }
    println!();
    let window_label = format!("coalesce window {WINDOW:?}");
    let labels = [
        "naive (per key, 10 permits)",
        window_label.as_str(),
        "coalesce adaptive",
        "batch-aint-one immediate",
        "batch-aint-one balanced",
    ];
    if let Err(e) = plot(&labels, &series) {
        eprintln!("plot failed: {e}");
    } else {
        println!("Plot: [benches/plots/load.svg](benches/plots/load.svg)\n");
    }
}

/// Which coordinate of a (offered load, p99 ms, throughput) point a panel plots.
type Pick = fn(&(f64, f64, f64)) -> f64;

fn plot(
    labels: &[&str],
    series: &[Vec<(f64, f64, f64)>],
) -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/plots/load.svg");
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/plots"))?;
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let colors = [
        RED,
        BLUE,
        RGBColor(0, 150, 0),
        RGBColor(200, 120, 0),
        RGBColor(120, 0, 160),
    ];
    let xs = series[0].iter().map(|p| p.0);
    let (xmin, xmax) = (
        xs.clone().fold(f64::MAX, f64::min) * 0.9,
        xs.fold(0.0, f64::max) * 1.1,
    );
    let ymax = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let tmax = series.iter().flatten().map(|p| p.2).fold(1.0, f64::max) * 1.5;
    let panels: [(_, &str, &str, f64, f64, Pick); 2] = [
        (
            &left,
            "p99 latency vs offered load",
            "p99 latency (ms)",
            0.5,
            ymax,
            |p| p.1,
        ),
        (
            &right,
            "throughput vs offered load",
            "achieved throughput (calls/s)",
            xmin * 0.5,
            tmax,
            |p| p.2,
        ),
    ];
    for (area, caption, y_desc, ylo, yhi, y) in panels {
        let mut c = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale(), (ylo..yhi).log_scale())?;
        c.configure_mesh()
            .x_desc("offered load (calls/s)")
            .y_desc(y_desc)
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = colors[i];
            c.draw_series(LineSeries::new(
                s.iter().map(|p| (p.0, y(p))),
                color.stroke_width(2),
            ))?
            .label(labels[i])
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            c.draw_series(
                s.iter()
                    .map(|p| Circle::new((p.0, y(p)), 3, color.filled())),
            )?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let rt = runtime();
    rt.block_on(async {
        if want("overhead") {
            overhead().await;
        }
        if want("roundtrip") {
            roundtrip().await;
        }
        if want("idle") {
            idle().await;
        }
        if want("load") {
            load().await;
        }
        if want("window") {
            window().await;
        }
        if want("many") {
            many().await;
        }
        if want("joins") {
            joins().await;
        }
    });
}

/// `load_many` against the single-key path, per key: 10,000 distinct keys from
/// one task, through `Coalescer::load_many`, through `join_all` of 10,000
/// `Coalescer::load` calls (bare, and collected into a map as `load_many`
/// returns), and the batch fn called directly on chunks of 1,000 (the floor). Median of 21 interleaved rounds.
async fn many() {
    use std::collections::HashMap;
    use std::time::Instant;
    const KEYS: u64 = 10_000;
    const ROUNDS: usize = 21;
    println!("### load_many: 10,000 distinct keys from one task, pure-CPU batch fn, max_batch 1000 (median of {ROUNDS} interleaved rounds)\n");
    fn batch(keys: Vec<u64>) -> HashMap<u64, u64> {
        keys.into_iter()
            .map(|k| (k, coalesce_benches::compute(k)))
            .collect()
    }
    let c = coalesce::Coalescer::new(
        coalesce::Config::new("report.many").window(WINDOW),
        |keys: Vec<u64>| async move { batch(keys) },
    );
    let (mut many, mut singles, mut mapped, mut direct) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS as u64 {
        let keys: Vec<u64> = (round * KEYS..(round + 1) * KEYS).collect();
        let t = Instant::now();
        let got = c.load_many(keys.clone()).await.expect("load_many");
        let a = t.elapsed();
        assert_eq!(got.len(), KEYS as usize);
        let t = Instant::now();
        let got = futures::future::join_all(keys.iter().map(|k| c.load(*k))).await;
        let b = t.elapsed();
        assert!(got.iter().all(|r| matches!(r, Ok(Some(_)))));
        let t = Instant::now();
        let got = futures::future::join_all(keys.iter().map(|k| c.load(*k))).await;
        let map: HashMap<u64, u64> = keys
            .iter()
            .zip(got)
            .filter_map(|(k, r)| r.ok().flatten().map(|v| (*k, v)))
            .collect();
        let m = t.elapsed();
        assert_eq!(map.len(), KEYS as usize);
        let t = Instant::now();
        let mut n = 0;
        for chunk in keys.chunks(1000) {
            n += std::hint::black_box(batch(chunk.to_vec())).len();
        }
        let d = t.elapsed();
        assert_eq!(n, KEYS as usize);
        if round > 0 {
            many.push(a.as_nanos() as f64 / KEYS as f64);
            singles.push(b.as_nanos() as f64 / KEYS as f64);
            mapped.push(m.as_nanos() as f64 / KEYS as f64);
            direct.push(d.as_nanos() as f64 / KEYS as f64);
        }
    }
    let range = |mut xs: Vec<f64>| {
        xs.sort_by(|a, b| a.total_cmp(b));
        (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
    };
    println!("| path | ns per key, median | min | max |");
    println!("|---|---:|---:|---:|");
    for (label, xs) in [
        ("Coalescer::load_many(keys)", many),
        ("join_all of Coalescer::load(key)", singles),
        (
            "join_all of Coalescer::load(key), collected into a HashMap",
            mapped,
        ),
        (
            "the batch fn, called directly on chunks of 1,000 (floor)",
            direct,
        ),
    ] {
        let (m, lo, hi) = range(xs);
        println!("| {label} | {m:.0} | {lo:.0} | {hi:.0} |");
    }
    println!();
}

/// Window precision: one caller, sequential calls, fixed-window mode. Windows under
/// 1 ms are timed by the precise timer thread; 1 ms and more by Tokio's timer.
async fn window() {
    println!("### Window precision: one caller, 200 sequential calls, Dispatch::Window, pure-CPU batch fn\n");
    println!("The window as the batch saw it (the mean of its `wait` metric, first call to");
    println!("dispatch: exact, where the metric's percentiles are 12.5% buckets), and the");
    println!("whole call (window, the driver's and the caller's wake-ups, the run).\n");
    println!("| window | window mean (µs) | call p50 (µs) | call p99 (µs) |");
    println!("|---:|---:|---:|---:|");
    for micros in [100u64, 250, 500, 1000, 2000, 5000] {
        let w = Duration::from_micros(micros);
        let loader = Arc::new(Loader::new(Kind::CoalesceWindow, Work::Cpu, 1000, w));
        sequential(&loader, 20, 0).await;
        let r = sequential(&loader, 200, 1000).await;
        let wait = loader.metrics().map(|m| m.wait).unwrap_or_default();
        println!(
            "| {w:?} | {:.0} | {:.0} | {:.0} |",
            us(wait.mean),
            us(r.quantile(0.5)),
            us(r.quantile(0.99)),
        );
    }
    println!();
}

// ---------------------------------------------------------------------------
// In-flight joins (issue 11)
// ---------------------------------------------------------------------------

/// Bursts in one run of the `joins` workload.
const J_BURSTS: usize = 60;
/// Calls in one burst, each from a task of its own.
const J_CALLS: usize = 300;
/// A burst leaves every this often: less than one batch's window + run, so each
/// burst arrives while the previous burst's batches run.
const J_EVERY: Duration = Duration::from_millis(2);
/// The hot key set: keys `0..J_HOT`.
const J_HOT: u64 = 32;
/// Percent of calls that go to a hot key; the rest are cold keys, each called once.
const J_HOT_PERCENT: u64 = 10;
/// The simulated backend's time per key, on top of one [`ROUND_TRIP`] per batch.
const J_PER_KEY: Duration = Duration::from_micros(2);
/// The window of both dispatch modes.
const J_WINDOW: Duration = Duration::from_millis(1);
/// `max_in_flight` of the adaptive coalescer.
const J_LANES: usize = 4;
/// Rounds per setting; both settings of a dispatch mode run in each round, in
/// alternating order.
const J_ROUNDS: usize = 21;
/// The longest one run may take before the mode gives up.
const J_LIMIT: Duration = Duration::from_secs(30);
/// The seed of the call sequence; round `r` uses `J_SEED + r` for both settings.
const J_SEED: u64 = 0x11_2026;

/// splitmix64: the call sequence's generator (no `rand` dependency).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The calls of one round, burst by burst: `J_HOT_PERCENT`% to a hot key drawn
/// from `0..J_HOT`, the rest to cold keys never called again.
fn join_schedule(round: u64) -> Vec<Vec<u64>> {
    let mut rng = J_SEED.wrapping_add(round);
    let mut cold = 1 << 32;
    (0..J_BURSTS)
        .map(|_| {
            (0..J_CALLS)
                .map(|_| {
                    if splitmix(&mut rng) % 100 < J_HOT_PERCENT {
                        splitmix(&mut rng) % J_HOT
                    } else {
                        cold += 1;
                        cold
                    }
                })
                .collect()
        })
        .collect()
}

/// What one run of the `joins` workload measured.
#[derive(Clone, Debug)]
struct JoinRun {
    calls: u64,
    hot_calls: u64,
    /// Hot-key calls that, when they started, found a batch fn run holding their
    /// key (seen by the workload, not the engine).
    overlapping: u64,
    /// Keys the batch fn was given (its own count).
    fetched: u64,
    keys: u64,
    dedup_hits: u64,
    joined: u64,
    batches: u64,
    p50: Duration,
    p99: Duration,
    hot_p50: Duration,
    hot_p99: Duration,
}

/// One run: `J_BURSTS` bursts of `J_CALLS` spawned calls, one burst every
/// `J_EVERY`, against a fresh coalescer whose batch fn sleeps one round trip plus
/// `J_PER_KEY` per key. Latency runs from a task's first poll to its answer.
async fn join_run(dispatch: Dispatch, join: bool, schedule: &[Vec<u64>]) -> JoinRun {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Mutex;
    use std::time::Instant;

    let fetched = Arc::new(AtomicU64::new(0));
    // Hot keys in a batch fn run right now, with how many runs hold each.
    let running: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut config = Config::new(format!(
        "report.joins.{dispatch:?}.{}",
        if join { "on" } else { "off" }
    ))
    .dispatch(dispatch)
    .window(J_WINDOW)
    .max_batch(1000)
    .join_running(join);
    if dispatch == Dispatch::Adaptive {
        config = config.max_in_flight(J_LANES);
    }
    let (f, r) = (fetched.clone(), running.clone());
    let c = Coalescer::new(config, move |keys: Vec<u64>| {
        f.fetch_add(keys.len() as u64, Relaxed);
        let hot: Vec<u64> = keys.iter().copied().filter(|k| *k < J_HOT).collect();
        {
            let mut r = r.lock().expect("running");
            for k in &hot {
                *r.entry(*k).or_insert(0) += 1;
            }
        }
        let r = r.clone();
        async move {
            tokio::time::sleep(ROUND_TRIP + J_PER_KEY * keys.len() as u32).await;
            let mut run = r.lock().expect("running");
            for k in &hot {
                if let Some(n) = run.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        run.remove(k);
                    }
                }
            }
            drop(run);
            keys.into_iter().map(compute).collect::<Vec<u64>>()
        }
    });
    let work = async {
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(J_BURSTS * J_CALLS);
        for (b, burst) in schedule.iter().enumerate() {
            tokio::time::sleep_until(start + J_EVERY * b as u32).await;
            for &key in burst {
                let c = c.clone();
                let running = running.clone();
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let overlapped =
                        key < J_HOT && running.lock().expect("running").contains_key(&key);
                    let got = c.load(key).await;
                    (key, overlapped, t.elapsed(), got)
                }));
            }
        }
        let mut all = Vec::with_capacity(tasks.len());
        let mut hot = Vec::new();
        let mut overlapping = 0;
        for t in tasks {
            let (key, overlapped, took, got) = t.await.expect("task panicked");
            assert!(
                matches!(got, Ok(Some(v)) if v == compute(key)),
                "key {key}: {got:?}"
            );
            all.push(took);
            if key < J_HOT {
                hot.push(took);
                overlapping += u64::from(overlapped);
            }
        }
        (
            Run::new(Duration::ZERO, all),
            Run::new(Duration::ZERO, hot),
            overlapping,
        )
    };
    let (all, hot, overlapping) = tokio::time::timeout(J_LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("a joins run took more than {J_LIMIT:?}"));
    let m = c.metrics();
    JoinRun {
        calls: m.calls,
        hot_calls: hot.calls as u64,
        overlapping,
        fetched: fetched.load(Relaxed),
        keys: m.keys,
        dedup_hits: m.dedup_hits,
        joined: m.joined_running,
        batches: m.batches,
        p50: all.quantile(0.5),
        p99: all.quantile(0.99),
        hot_p50: hot.quantile(0.5),
        hot_p99: hot.quantile(0.99),
    }
}

/// Median, min and max.
fn spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

/// In-flight joins on and off, interleaved, in both dispatch modes.
///
/// Every call is either a key fetched or a dedup hit (`calls = keys +
/// dedup_hits`, checked in every run), and paired runs make the same calls, so
/// the drop in keys fetched is `dedup_hits(on) - dedup_hits(off)`:
/// `joined_running` minus the joined calls that, with joins off, would have
/// found their key already gathering in their own burst's batch (deduplicated
/// anyway). Cold keys are never called twice, so every dedup hit is a hot-key
/// call and `keys - cold calls` is the hot keys fetched.
async fn joins() {
    println!(
        "### In-flight joins: {J_BURSTS} bursts of {J_CALLS} calls ({} in all), one every {J_EVERY:?}; {J_HOT_PERCENT}% of calls to {J_HOT} hot keys, the rest to distinct cold keys; batch fn sleeps {ROUND_TRIP:?} + {J_PER_KEY:?} per key; window {J_WINDOW:?}, max_batch 1000 (median (min–max) of {J_ROUNDS} interleaved rounds)\n",
        J_BURSTS * J_CALLS
    );
    let modes = [
        (Dispatch::Window, "Window".to_string()),
        (
            Dispatch::Adaptive,
            format!("Adaptive, max_in_flight {J_LANES}"),
        ),
    ];
    // runs[mode][setting: 0 on, 1 off][round]
    let mut runs: Vec<[Vec<JoinRun>; 2]> = modes.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    // Warm-up, unrecorded.
    let warm = join_schedule(u64::MAX);
    for (d, _) in &modes {
        for join in [true, false] {
            join_run(*d, join, &warm[..10]).await;
        }
    }
    for round in 0..J_ROUNDS {
        let schedule = join_schedule(round as u64);
        for (i, (d, _)) in modes.iter().enumerate() {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for join in order {
                let r = join_run(*d, join, &schedule).await;
                // The batch fn's own count is the metric; a call is a key
                // fetched or a dedup hit.
                assert_eq!(r.fetched, r.keys, "{d:?} join {join}: {r:?}");
                assert_eq!(r.calls, r.keys + r.dedup_hits, "{d:?} join {join}: {r:?}");
                assert_eq!(r.calls, (J_BURSTS * J_CALLS) as u64);
                runs[i][usize::from(!join)].push(r);
            }
        }
    }
    let f = |(m, lo, hi): (f64, f64, f64), dec: usize| format!("{m:.dec$} ({lo:.dec$}–{hi:.dec$})");
    let hot_fetched = |r: &JoinRun| (r.keys - (r.calls - r.hot_calls)) as f64;
    println!("| dispatch | join_running | hot-key calls | hot calls finding a batch fn run of their key (workload's check) | joined_running | joined / hot calls | dedup_hits | batches | keys fetched | drop vs off | hot keys fetched | hot drop vs off | p50 (ms) | p99 (ms) | hot-key calls p50 / p99 (ms) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for (i, (_, label)) in modes.iter().enumerate() {
        let (on, off) = (&runs[i][0], &runs[i][1]);
        for (s, rs) in [on, off].into_iter().enumerate() {
            let col = |g: &dyn Fn(&JoinRun) -> f64| spread(rs.iter().map(g).collect());
            let paired = |g: &dyn Fn(&JoinRun, &JoinRun) -> f64| {
                spread(rs.iter().zip(off).map(|(a, b)| g(a, b)).collect())
            };
            let (drop, hot_drop) = if s == 0 {
                let d = paired(&|a, b| b.keys as f64 - a.keys as f64);
                let pct = paired(&|a, b| 100.0 * (b.keys as f64 - a.keys as f64) / b.keys as f64);
                let hot =
                    paired(&|a, b| 100.0 * (hot_fetched(b) - hot_fetched(a)) / hot_fetched(b));
                (
                    format!("{} = {:.1}%", f(d, 0), pct.0),
                    format!("{:.1}% ({:.1}–{:.1})", hot.0, hot.1, hot.2),
                )
            } else {
                ("—".into(), "—".into())
            };
            println!(
                "| {label} | {} | {} | {} | {} | {:.1}% | {} | {} | {} | {drop} | {} | {hot_drop} | {} | {} | {:.2} / {:.2} |",
                if s == 0 { "on" } else { "off" },
                f(col(&|r| r.hot_calls as f64), 0),
                f(col(&|r| r.overlapping as f64), 0),
                f(col(&|r| r.joined as f64), 0),
                col(&|r| 100.0 * r.joined as f64 / r.hot_calls as f64).0,
                f(col(&|r| r.dedup_hits as f64), 0),
                f(col(&|r| r.batches as f64), 0),
                f(col(&|r| r.keys as f64), 0),
                f(col(&|r| hot_fetched(r)), 0),
                f(col(&|r| ms(r.p50)), 2),
                f(col(&|r| ms(r.p99)), 2),
                col(&|r| ms(r.hot_p50)).0,
                col(&|r| ms(r.hot_p99)).0,
            );
        }
        let pair = |g: &dyn Fn(&JoinRun, &JoinRun) -> f64| {
            spread(on.iter().zip(off).map(|(a, b)| g(a, b)).collect())
        };
        let drop = pair(&|a, b| b.keys as f64 - a.keys as f64);
        let joined = spread(on.iter().map(|r| r.joined as f64).collect());
        let share = spread(
            on.iter()
                .map(|r| 100.0 * r.joined as f64 / r.hot_calls as f64)
                .collect(),
        );
        let hot_drop = pair(&|a, b| 100.0 * (hot_fetched(b) - hot_fetched(a)) / hot_fetched(b));
        let anyway = pair(&|a, b| a.joined as f64 - (b.keys as f64 - a.keys as f64));
        let check = spread(
            on.iter()
                .map(|r| r.overlapping as f64 - r.joined as f64)
                .collect(),
        );
        let dp50 = pair(&|a, b| ms(a.p50) - ms(b.p50));
        let dp99 = pair(&|a, b| ms(a.p99) - ms(b.p99));
        let p99_on = spread(on.iter().map(|r| ms(r.p99)).collect()).0;
        let p99_off = spread(off.iter().map(|r| ms(r.p99)).collect()).0;
        let higher = on.iter().zip(off).filter(|(a, b)| a.p99 > b.p99).count();
        summary.push(format!(
            "- {label}: {:.1}% ({:.1}–{:.1}) of hot-key calls joined a running batch ({} calls); hot keys fetched dropped {:.1}% ({:.1}–{:.1}), all keys fetched {} ({:.1}%); joined − drop (deduplicated anyway) {}; workload's check − joined_running {}; p50 on − off {:+.2} ms ({:+.2}..{:+.2}); p99 {:.2} ms on, {:.2} off (medians); paired p99 on − off {:+.2} ms ({:+.2}..{:+.2}), higher with joins on in {higher} of {} rounds.",
            share.0, share.1, share.2, f(joined, 0),
            hot_drop.0, hot_drop.1, hot_drop.2,
            f(drop, 0), pair(&|a, b| 100.0 * (b.keys as f64 - a.keys as f64) / b.keys as f64).0,
            f(anyway, 0), f(check, 0),
            dp50.0, dp50.1, dp50.2, p99_on, p99_off, dp99.0, dp99.1, dp99.2, on.len(),
        ));
    }
    println!();
    for s in summary {
        println!("{s}");
    }
    println!();
}
