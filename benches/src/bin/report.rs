//! Runs the in-process workloads once more outside criterion and prints the
//! throughput and percentile tables of `BENCHMARKS.md` as markdown, then draws
//! `benches/plots/load.svg`: p99 latency and throughput against offered load for the
//! naive call, `coalesce` fixed window and `coalesce` adaptive (2 ms round trip).
//!
//! Usage: `cargo run --release -p coalesce-benches --bin report [-- SECTION...]`
//! where SECTION is any of `overhead`, `roundtrip`, `idle`, `load`, `window`
//! (default: all).

use std::sync::Arc;
use std::time::Duration;

use coalesce_benches::{
    burst, offered_load, runtime, sequential, Kind, Loader, Run, Work, BURST, ROUND_TRIP, WINDOW,
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
