//! Issue 12: measures the self-tuning policy, [`Dispatch::Auto`], against a grid
//! of hand-tuned (window, `max_in_flight`) settings and against today's default,
//! through load steps, on the idle road, and (in `pg_burst`) on PostgreSQL.
//!
//! Two simulated backends, each behind a fresh coalescer per run:
//!
//! - **flat**: one 2 ms round trip per batch (`tokio::time::sleep`, as `report
//!   load`), however many batches run at once;
//! - **contended**: `(2 ms + 2 µs × keys) × (1 + 0.25 × other batches running
//!   when it starts)`, slept on a blocking thread (not on Tokio's 1 ms timer
//!   grid): the run time grows with concurrency, as a database's does once it
//!   is busy.
//!
//! Usage (`cargo run --release -p coalesce-benches --bin tune -- …`):
//!
//! - `sweep flat` / `sweep contended`: one run of the offered-load sweep on one
//!   backend (≈5.5 min): at each of the 8 offered loads of `report load`, every
//!   setting of the grid and Auto in a shuffled order, each for a 100 ms
//!   warm-up plus 1 s measured (`TUNE_SPAN_MS` sets another; at least 250
//!   measured calls) of open-loop arrivals; then that load's best grid
//!   setting and Auto again, 3 runs each in turns (the grid's best figure is
//!   the lowest of 30 noisy ones: it reads low); prints that run's table and
//!   appends every point to `$TUNE_DIR/sweep.tsv` (default:
//!   `$TMPDIR/coalesce-tune`).
//! - `summary`: the per-run summary of every run in `sweep.tsv`, and
//!   `benches/plots/tune_sweep.svg`.
//! - `steps [RUNS]`: 2,000 → 20,000 → 2,000 → 20,000 calls/s, 3 s each, on both
//!   backends (RUNS runs, default 3, ≈25 s each), `metrics().tuned` sampled every
//!   50 ms; settling and steady-state variation per step, and
//!   `benches/plots/tune_steps.svg` (of the last run).
//! - `idle [RUNS]`: lone calls, Auto against Adaptive (RUNS runs, default 5).
//! - `trace flat|contended RATE [SECONDS] [SETTING]`: one setting (default
//!   Auto; a key such as `auto/1000/0` or `adaptive/5000/8`) at one load,
//!   `metrics().tuned` every 100 ms beside that interval's p99.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coalesce::{Coalescer, Config, Dispatch};
use coalesce_benches::{compute, runtime, sequential, Loader, Run, ROUND_TRIP, WINDOW};
use plotters::prelude::*;

/// The offered loads of `report load`, calls per second.
const RATES: [f64; 8] = [
    500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0, 32_000.0, 64_000.0,
];
/// Arrivals before the measured part of a sweep run (not recorded).
const WARM: Duration = Duration::from_millis(100);
/// The measured part of a sweep run, at least: 1 s, or `TUNE_SPAN_MS`
/// (longer spans give each point more calls, so a steadier p99).
fn span() -> Duration {
    static SPAN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPAN.get_or_init(|| {
        let ms = std::env::var("TUNE_SPAN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Duration::from_millis(ms)
    })
}
/// Measured calls per sweep run, at least (the span is longer at low loads).
const MIN_CALLS: f64 = 250.0;
/// How long a run waits for its last calls after the last arrival; calls not
/// answered by then are abandoned (the setting did not keep up) and count
/// with their age at the cutoff, a lower bound.
const DRAIN: Duration = Duration::from_millis(300);
/// The contended backend's cost per key and slowdown per other batch running.
const PER_KEY: Duration = Duration::from_micros(2);
const SLOWDOWN: f64 = 0.25;
/// Keys per batch, at most, in every setting.
const MAX_BATCH: usize = 1000;
/// A grid setting keeps up when its throughput is at least this share of the
/// offered load.
const KEEPS_UP: f64 = 0.98;
/// Issue 12's tolerance: Auto within 5% of the best hand-tuned setting.
const TOLERANCE: f64 = 0.05;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// splitmix64, for the shuffled order of settings.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Median, min and max.
fn spread(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = if xs.len() % 2 == 1 {
        xs[xs.len() / 2]
    } else {
        (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
    };
    (mid, xs[0], xs[xs.len() - 1])
}

fn f3((m, lo, hi): (f64, f64, f64), dec: usize) -> String {
    format!("{m:.dec$} ({lo:.dec$}–{hi:.dec$})")
}

// ---------------------------------------------------------------------------
// Backends and settings
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    Flat,
    Contended,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Flat => "flat",
            Backend::Contended => "contended",
        }
    }

    fn parse(s: &str) -> Option<Backend> {
        match s {
            "flat" => Some(Backend::Flat),
            "contended" => Some(Backend::Contended),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Backend::Flat => "2 ms round trip per batch",
            Backend::Contended => "(2 ms + 2 µs × keys) × (1 + 0.25 × other batches running)",
        }
    }
}

/// Gives a batch's place back when it ends (or is dropped).
struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One coalescer setting: the policy, its window (a ceiling for Auto, the bound
/// on gathering while every lane is busy for Adaptive) and `max_in_flight`
/// (`None`: not set — unbounded for Window, 32 lanes for Auto).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Setting {
    dispatch: Dispatch,
    window: Duration,
    lanes: Option<usize>,
}

impl Setting {
    /// Auto with the defaults' ceilings: a 5 ms window, 32 lanes.
    const AUTO: Setting = Setting {
        dispatch: Dispatch::Auto,
        window: Duration::from_millis(5),
        lanes: None,
    };
    /// `Config::new(..)` as is: Window, 5 ms, no lane bound.
    const DEFAULT: Setting = Setting {
        dispatch: Dispatch::Window,
        window: Duration::from_millis(5),
        lanes: None,
    };

    fn is_auto(&self) -> bool {
        self.dispatch == Dispatch::Auto
    }

    fn config(&self, name: String) -> Config {
        let mut c = Config::new(name)
            .dispatch(self.dispatch)
            .window(self.window)
            .max_batch(MAX_BATCH);
        if let Some(l) = self.lanes {
            c = c.max_in_flight(l);
        }
        c
    }

    /// A stable key for the results file: `policy/window µs/lanes` (0: unset).
    fn key(&self) -> String {
        let policy = match self.dispatch {
            Dispatch::Window => "window",
            Dispatch::Adaptive => "adaptive",
            _ => "auto",
        };
        format!(
            "{policy}/{}/{}",
            self.window.as_micros(),
            self.lanes.unwrap_or(0)
        )
    }

    fn parse(key: &str) -> Option<Setting> {
        let mut it = key.split('/');
        let dispatch = match it.next()? {
            "window" => Dispatch::Window,
            "adaptive" => Dispatch::Adaptive,
            "auto" => Dispatch::Auto,
            _ => return None,
        };
        let window = Duration::from_micros(it.next()?.parse().ok()?);
        let lanes = match it.next()?.parse().ok()? {
            0 => None,
            n => Some(n),
        };
        Some(Setting {
            dispatch,
            window,
            lanes,
        })
    }

    fn label(&self) -> String {
        let lanes = match self.lanes {
            Some(l) => format!("×{l}"),
            None => "×∞".into(),
        };
        match self.dispatch {
            Dispatch::Window if *self == Setting::DEFAULT => "window 5ms ×∞ (default)".into(),
            Dispatch::Window => format!("window {:?} {lanes}", self.window),
            Dispatch::Adaptive => format!("adaptive ≤{:?} {lanes}", self.window),
            _ => format!("auto ≤{:?} ≤32", self.window),
        }
    }
}

/// The hand-tuned grid: Window with each window and lane bound (the default,
/// 5 ms unbounded, among them), and Adaptive (window 0 while a lane is free)
/// with each lane bound and two bounds on gathering while every lane is busy.
/// Adaptive's "unbounded" is 32 lanes (unset, it would run one lane).
fn grid() -> Vec<Setting> {
    let mut g = Vec::new();
    for w in [250u64, 1000, 2000, 5000] {
        for l in [Some(1), Some(2), Some(4), Some(8), None] {
            g.push(Setting {
                dispatch: Dispatch::Window,
                window: Duration::from_micros(w),
                lanes: l,
            });
        }
    }
    for w in [250u64, 5000] {
        for l in [1, 2, 4, 8, 32] {
            g.push(Setting {
                dispatch: Dispatch::Adaptive,
                window: Duration::from_micros(w),
                lanes: Some(l),
            });
        }
    }
    g
}

/// A fresh coalescer of `setting` in front of `backend`.
fn coalescer(backend: Backend, setting: Setting, name: &str) -> Coalescer<u64, u64> {
    let running = Arc::new(AtomicUsize::new(0));
    Coalescer::new(
        setting.config(format!("tune.{name}.{}", setting.key())),
        move |keys: Vec<u64>| {
            let running = running.clone();
            async move {
                match backend {
                    Backend::Flat => tokio::time::sleep(ROUND_TRIP).await,
                    Backend::Contended => {
                        let others = running.fetch_add(1, Relaxed);
                        let _leave = Leave(running);
                        let alone = ROUND_TRIP + PER_KEY * keys.len() as u32;
                        sleep_exact(alone.mul_f64(1.0 + SLOWDOWN * others as f64)).await;
                    }
                }
                keys.into_iter().map(compute).collect::<Vec<u64>>()
            }
        },
    )
}

/// Sleeps `d` on a blocking thread. Tokio's timer rounds every sleep up to
/// its next 1 ms tick, which would turn the contended backend's cost per key
/// and its slowdown into 1 ms steps (and make a window that ends before the
/// next tick free); `std::thread::sleep` has no such grid (Linux's default
/// timer slack adds about 50 µs).
async fn sleep_exact(d: Duration) {
    // A blocking-pool thread that cannot be spawned only ends the sleep early.
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
}

// ---------------------------------------------------------------------------
// Open-loop arrivals
// ---------------------------------------------------------------------------

/// `rate` calls per second for `len`.
#[derive(Clone, Copy, Debug)]
struct Phase {
    rate: f64,
    len: Duration,
}

/// Calls due by offset `t` of a run of `phases`.
fn due(phases: &[Phase], t: Duration) -> usize {
    let mut at = Duration::ZERO;
    let mut n = 0.0;
    for p in phases {
        let inside = t.saturating_sub(at).min(p.len);
        n += p.rate * inside.as_secs_f64();
        at += p.len;
    }
    n.ceil() as usize
}

/// One call of a run.
#[derive(Clone, Copy, Debug)]
struct Call {
    /// Offset from the run's start at which the call started (its first poll;
    /// when it never finished, its spawn).
    at: Duration,
    /// Its latency; `None`: not answered by the cutoff.
    took: Option<Duration>,
}

struct Outcome {
    calls: Vec<Call>,
    /// Offset at which unanswered calls were abandoned.
    cutoff: Duration,
}

impl Outcome {
    /// Latency of a call, unanswered ones at their age at the cutoff.
    fn latency(&self, c: &Call) -> Duration {
        c.took.unwrap_or(self.cutoff.saturating_sub(c.at))
    }
}

/// Open-loop arrivals of `phases` from `start` (calls spawned in groups once a
/// millisecond, each loading a fresh key), then at most [`DRAIN`] for the
/// answers. Latency runs from a call's first poll to its answer, as in
/// `report load`.
async fn drive(c: &Coalescer<u64, u64>, phases: &[Phase], start: Instant) -> Outcome {
    let len: Duration = phases.iter().map(|p| p.len).sum();
    let total = due(phases, len);
    let mut tasks = Vec::with_capacity(total);
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    while sent < total {
        interval.tick().await;
        let now = start.elapsed();
        let due = due(phases, now).min(total);
        while sent < due {
            let c = c.clone();
            let key = sent as u64;
            let h = tokio::spawn(async move {
                let t = Instant::now();
                let got = c.load(key).await;
                assert!(matches!(got, Ok(Some(v)) if v == compute(key)), "{got:?}");
                (t - start, t.elapsed())
            });
            tasks.push((now, h));
            sent += 1;
        }
    }
    let deadline = tokio::time::Instant::now() + DRAIN;
    let mut calls = Vec::with_capacity(total);
    for (spawned, mut h) in tasks {
        match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(r) => {
                let (at, took) = r.expect("task panicked");
                calls.push(Call {
                    at,
                    took: Some(took),
                });
            }
            Err(_) => {
                h.abort();
                calls.push(Call {
                    at: spawned,
                    took: None,
                });
            }
        }
    }
    Outcome {
        calls,
        cutoff: start.elapsed(),
    }
}

/// What one sweep run of one setting measured.
#[derive(Clone, Debug)]
struct Point {
    setting: Setting,
    /// Answers per second while calls arrived (after the warm-up).
    achieved: f64,
    p50: Duration,
    p99: Duration,
    unfinished: usize,
    batches: u64,
    /// Auto: lanes and window at the end of the run.
    tuned: Option<(usize, Duration)>,
}

/// The calls that started in `[from, to)`, their latencies sorted.
fn latencies(out: &Outcome, from: Duration, to: Duration) -> Run {
    let l = out
        .calls
        .iter()
        .filter(|c| c.at >= from && c.at < to)
        .map(|c| out.latency(c))
        .collect();
    Run::new(to - from, l)
}

/// Answers per second within `[from, to)`, whenever their calls started.
fn answered(out: &Outcome, from: Duration, to: Duration) -> f64 {
    let n = out
        .calls
        .iter()
        .filter_map(|c| c.took.map(|t| c.at + t))
        .filter(|done| *done >= from && *done < to)
        .count();
    n as f64 / (to - from).as_secs_f64()
}

// ---------------------------------------------------------------------------
// sweep
// ---------------------------------------------------------------------------

fn tune_dir() -> std::path::PathBuf {
    std::env::var_os("TUNE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("coalesce-tune"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The measured span at `rate`.
fn measured(rate: f64) -> Duration {
    span().max(Duration::from_secs_f64(MIN_CALLS / rate))
}

/// The best hand-tuned point: the lowest p99 among grid settings that keep up
/// (≥ [`KEEPS_UP`] of the offered load), else the highest throughput.
fn best(points: &[Point], rate: f64) -> &Point {
    let grid = points.iter().filter(|p| !p.setting.is_auto());
    let up = grid
        .clone()
        .filter(|p| p.achieved >= KEEPS_UP * rate)
        .min_by_key(|p| p.p99);
    up.or_else(|| grid.max_by(|a, b| a.achieved.total_cmp(&b.achieved)))
        .expect("a grid point")
}

/// Runs of the best grid setting and of Auto, each, after the grid at a load
/// (see [`sweep`]).
const CONFIRM: usize = 3;
/// The last field of a `sweep.tsv` line measured again after the grid.
const CONFIRMED: &str = "again";

/// One run of `setting` at `rate` on a fresh coalescer: the warm-up, then the
/// measured span.
async fn measure(backend: Backend, setting: Setting, rate: f64) -> Point {
    let span = measured(rate);
    let c = coalescer(backend, setting, backend.label());
    let out = drive(
        &c,
        &[Phase {
            rate,
            len: WARM + span,
        }],
        Instant::now(),
    )
    .await;
    let lat = latencies(&out, WARM, WARM + span);
    let m = c.metrics();
    let p = Point {
        setting,
        achieved: answered(&out, WARM, WARM + span),
        p50: lat.quantile(0.5),
        p99: lat.quantile(0.99),
        unfinished: out.calls.iter().filter(|c| c.took.is_none()).count(),
        batches: m.batches,
        tuned: setting
            .is_auto()
            .then(|| m.tuned.map_or((1, Duration::ZERO), |t| (t.lanes, t.window))),
    };
    drop(c);
    // Batches of an abandoned run finish on their own backend.
    tokio::time::sleep(Duration::from_millis(10)).await;
    p
}

/// Appends one point to `sweep.tsv`; `tag` is [`CONFIRMED`] for a point
/// measured again after the grid, else empty.
fn record(file: &mut std::fs::File, run: u64, backend: Backend, rate: f64, p: &Point, tag: &str) {
    writeln!(
        file,
        "{run}\t{}\t{rate}\t{}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}\t{}\t{}{}",
        backend.label(),
        p.setting.key(),
        p.achieved,
        us(p.p50),
        us(p.p99),
        p.unfinished,
        p.batches,
        p.tuned.map_or(-1, |t| t.0 as i64),
        p.tuned.map_or(-1, |t| t.1.as_micros() as i64),
        if tag.is_empty() {
            String::new()
        } else {
            format!("\t{tag}")
        },
    )
    .expect("write");
}

async fn sweep(backend: Backend) {
    let run = now_secs();
    let dir = tune_dir();
    std::fs::create_dir_all(&dir).expect("TUNE_DIR");
    let path = dir.join("sweep.tsv");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("sweep.tsv");
    let mut settings = grid();
    settings.push(Setting::AUTO);
    let mut rng = run ^ (backend as u64) << 32;
    let started = Instant::now();
    println!(
        "### Offered load, {} backend ({}): run {run}\n",
        backend.label(),
        backend.describe()
    );
    println!(
        "{} settings per load in a shuffled order, each on a fresh coalescer: {WARM:?} warm-up, then {:?} (at least {MIN_CALLS} calls) measured; max_batch {MAX_BATCH}. Best = lowest p99 among grid settings answering ≥ {:.0}% of the offered load.\n",
        settings.len(),
        span(),
        KEEPS_UP * 100.0
    );
    println!("| offered (calls/s) | best hand-tuned (this run) | its achieved | its p99 (ms) | default achieved | default p99 (ms) | auto achieved | auto p99 (ms) | auto lanes, window at the end | auto p99 / best | measured again: auto / best (medians of {CONFIRM}) | auto p99 / default |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for rate in RATES {
        let mut order: Vec<usize> = (0..settings.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (splitmix(&mut rng) % (i as u64 + 1)) as usize);
        }
        let mut points: Vec<Option<Point>> = vec![None; settings.len()];
        for i in order {
            let p = measure(backend, settings[i], rate).await;
            record(&mut file, run, backend, rate, &p, "");
            points[i] = Some(p);
        }
        let points: Vec<Point> = points.into_iter().map(|p| p.expect("run")).collect();
        let b = best(&points, rate);
        let d = points
            .iter()
            .find(|p| p.setting == Setting::DEFAULT)
            .expect("default");
        let a = points.iter().find(|p| p.setting.is_auto()).expect("auto");
        // The grid's best p99 is the lowest of 30 noisy figures, so it reads
        // low (the winner's curse): the best setting and Auto are measured
        // again, in turns, for a comparison that selection did not bias.
        let mut again = (Vec::new(), Vec::new());
        for round in 0..CONFIRM {
            for turn in 0..2 {
                let auto = (round + turn) % 2 == 1;
                let s = if auto { Setting::AUTO } else { b.setting };
                let p = measure(backend, s, rate).await;
                record(&mut file, run, backend, rate, &p, CONFIRMED);
                if auto { &mut again.1 } else { &mut again.0 }.push(ms(p.p99));
            }
        }
        let confirmed = spread(again.1).0 / spread(again.0).0;
        let (lanes, window) = a.tuned.unwrap_or_default();
        println!(
            "| {rate:.0} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {lanes}, {:.0} µs | {:.2} | {confirmed:.2} | {:.2} |",
            b.setting.label(),
            b.achieved,
            ms(b.p99),
            d.achieved,
            ms(d.p99),
            a.achieved,
            ms(a.p99),
            us(window),
            a.p99.as_secs_f64() / b.p99.as_secs_f64(),
            a.p99.as_secs_f64() / d.p99.as_secs_f64(),
        );
    }
    println!(
        "\n(run {run} took {:.0} s; every point appended to {})\n",
        started.elapsed().as_secs_f64(),
        path.display()
    );
}

/// One line of `sweep.tsv`.
#[derive(Clone, Debug)]
struct Record {
    run: u64,
    backend: Backend,
    rate: f64,
    point: Point,
    /// Measured again after the grid (see [`CONFIRM`]).
    again: bool,
}

fn parse_record(line: &str) -> Option<Record> {
    let f: Vec<&str> = line.split('\t').collect();
    let again = match f.get(11) {
        None => false,
        Some(&tag) if tag == CONFIRMED => true,
        Some(_) => return None,
    };
    if f.len() > 12 || f.len() < 11 {
        return None;
    }
    let lanes: i64 = f[9].parse().ok()?;
    let window: i64 = f[10].parse().ok()?;
    Some(Record {
        run: f[0].parse().ok()?,
        backend: Backend::parse(f[1])?,
        rate: f[2].parse().ok()?,
        point: Point {
            setting: Setting::parse(f[3])?,
            achieved: f[4].parse().ok()?,
            p50: Duration::from_secs_f64(f[5].parse::<f64>().ok()? / 1e6),
            p99: Duration::from_secs_f64(f[6].parse::<f64>().ok()? / 1e6),
            unfinished: f[7].parse().ok()?,
            batches: f[8].parse().ok()?,
            tuned: (lanes >= 0)
                .then(|| (lanes as usize, Duration::from_micros(window.max(0) as u64))),
        },
        again,
    })
}

/// The ratios of one run at one load.
#[derive(Clone, Debug)]
struct Versus {
    best: Point,
    auto: Point,
    default: Point,
    /// Auto's p99 and throughput over the best setting's, each the median of
    /// the runs measured again after the grid (older runs have none).
    again: Option<(f64, f64)>,
}

/// Auto over the best setting, p99 and throughput, from the points measured
/// again after the grid (medians of each).
fn again_ratio(points: &[Point]) -> Option<(f64, f64)> {
    let (auto, best): (Vec<&Point>, Vec<&Point>) = points.iter().partition(|p| p.setting.is_auto());
    if auto.is_empty() || best.is_empty() {
        return None;
    }
    let med =
        |ps: &[&Point], f: &dyn Fn(&Point) -> f64| spread(ps.iter().map(|p| f(p)).collect()).0;
    Some((
        med(&auto, &|p| ms(p.p99)) / med(&best, &|p| ms(p.p99)),
        med(&auto, &|p| p.achieved) / med(&best, &|p| p.achieved),
    ))
}

/// Medians of several runs, per backend, for the plot.
type Medians = Vec<(f64, f64, f64, f64, f64)>;

fn summary() {
    let path = tune_dir().join("sweep.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `tune sweep flat|contended` first)",
            path.display()
        )
    });
    // (backend, rate bits) -> run -> points
    let mut by: BTreeMap<(Backend, u64), BTreeMap<u64, Vec<Point>>> = BTreeMap::new();
    // The same, for the points measured again after the grid.
    let mut again: BTreeMap<(Backend, u64), BTreeMap<u64, Vec<Point>>> = BTreeMap::new();
    for r in text.lines().filter_map(parse_record) {
        if r.again { &mut again } else { &mut by }
            .entry((r.backend, r.rate.to_bits()))
            .or_default()
            .entry(r.run)
            .or_default()
            .push(r.point);
    }
    let expected = grid().len() + 1;
    let mut plot_data: BTreeMap<Backend, Medians> = BTreeMap::new();
    for backend in [Backend::Flat, Backend::Contended] {
        let runs: std::collections::BTreeSet<u64> = by
            .iter()
            .filter(|((b, _), _)| *b == backend)
            .flat_map(|(_, r)| {
                r.iter()
                    .filter(|(_, p)| p.len() == expected)
                    .map(|(id, _)| *id)
            })
            .collect();
        if runs.is_empty() {
            continue;
        }
        println!(
            "### Offered load, {} backend ({}): median (min–max) of {} runs\n",
            backend.label(),
            backend.describe(),
            runs.len()
        );
        println!("Per run, Auto against that run's best hand-tuned setting (lowest p99 among the {} grid settings answering ≥ {:.0}% of the offered load) and against the default; \"met\" counts the runs where Auto's p99 ≤ 1.05 × best and its throughput ≥ 0.95 × best's. The best of {grid_len} noisy figures reads low (the winner's curse), so after the grid each run measures its best setting and Auto again, {CONFIRM} times each in turns: \"measured again\" compares their medians, by the same rule. \"Steadiest best\": the grid setting with the lowest median p99 over the runs among those keeping up in every run.\n", expected - 1, KEEPS_UP * 100.0, grid_len = expected - 1);
        println!("| offered (calls/s) | auto achieved / offered | auto p99 (ms) | best p99 (ms) | auto p99 / best | auto thr / best | met (runs) | measured again: auto p99 / best, met (runs) | default p99 (ms) | auto p99 / default | auto ≤ default (runs) | best settings seen | steadiest best: p99 (ms), auto / it | auto lanes, window at the end | calls per batch: auto, best |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|---|");
        for rate in RATES {
            let Some(per_run) = by.get(&(backend, rate.to_bits())) else {
                continue;
            };
            let again_of = again.get(&(backend, rate.to_bits()));
            let vs: Vec<Versus> = per_run
                .iter()
                .filter(|(id, _)| runs.contains(id))
                .map(|(id, points)| Versus {
                    again: again_of
                        .and_then(|a| a.get(id))
                        .and_then(|ps| again_ratio(ps)),
                    best: best(points, rate).clone(),
                    auto: points
                        .iter()
                        .find(|p| p.setting.is_auto())
                        .expect("auto")
                        .clone(),
                    default: points
                        .iter()
                        .find(|p| p.setting == Setting::DEFAULT)
                        .expect("default")
                        .clone(),
                })
                .collect();
            let col = |g: &dyn Fn(&Versus) -> f64| spread(vs.iter().map(g).collect());
            let p99_ratio = |v: &Versus| v.auto.p99.as_secs_f64() / v.best.p99.as_secs_f64();
            let thr_ratio = |v: &Versus| v.auto.achieved / v.best.achieved;
            let met = vs
                .iter()
                .filter(|v| p99_ratio(v) <= 1.0 + TOLERANCE && thr_ratio(v) >= 1.0 - TOLERANCE)
                .count();
            let not_worse = vs.iter().filter(|v| v.auto.p99 <= v.default.p99).count();
            let agains: Vec<(f64, f64)> = vs.iter().filter_map(|v| v.again).collect();
            let again_met = agains
                .iter()
                .filter(|(p99, thr)| *p99 <= 1.0 + TOLERANCE && *thr >= 1.0 - TOLERANCE)
                .count();
            let again_col = if agains.is_empty() {
                "–".to_string()
            } else {
                format!(
                    "{}, {again_met}/{}",
                    f3(spread(agains.iter().map(|a| a.0).collect()), 2),
                    agains.len()
                )
            };
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for v in &vs {
                *seen.entry(v.best.setting.label()).or_default() += 1;
            }
            let seen: Vec<String> = seen
                .into_iter()
                .map(|(l, n)| if n > 1 { format!("{l} ({n})") } else { l })
                .collect();
            // The steadiest best: lowest median p99 among settings keeping up
            // in every run.
            let mut per_setting: BTreeMap<String, Vec<&Point>> = BTreeMap::new();
            for (id, points) in per_run {
                if runs.contains(id) {
                    for p in points.iter().filter(|p| !p.setting.is_auto()) {
                        per_setting.entry(p.setting.key()).or_default().push(p);
                    }
                }
            }
            let steady = per_setting
                .values()
                .filter(|ps| ps.iter().all(|p| p.achieved >= KEEPS_UP * rate))
                .map(|ps| {
                    let p99 = spread(ps.iter().map(|p| ms(p.p99)).collect()).0;
                    (p99, ps[0].setting)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let auto_p99 = col(&|v| ms(v.auto.p99));
            let steady = match steady {
                Some((p99, s)) => format!("{}: {p99:.2}, {:.2}", s.label(), auto_p99.0 / p99),
                None => "none keeps up in every run".into(),
            };
            let lanes = spread(
                vs.iter()
                    .map(|v| v.auto.tuned.unwrap_or_default().0 as f64)
                    .collect(),
            );
            let window = spread(
                vs.iter()
                    .map(|v| us(v.auto.tuned.unwrap_or_default().1))
                    .collect(),
            );
            let best_p99 = col(&|v| ms(v.best.p99));
            let calls = rate * (WARM + measured(rate)).as_secs_f64();
            let per_batch = |p: &Point| calls / p.batches.max(1) as f64;
            let auto_pb = col(&|v| per_batch(&v.auto));
            let best_pb = col(&|v| per_batch(&v.best));
            let default_p99 = col(&|v| ms(v.default.p99));
            println!(
                "| {rate:.0} | {} | {} | {} | {} | {} | {met}/{} | {again_col} | {} | {} | {not_worse}/{} | {} | {steady} | {} lanes ({}–{}), {:.0} µs ({:.0}–{:.0}) | {:.1}, {:.1} |",
                f3(col(&|v| v.auto.achieved / rate), 3),
                f3(auto_p99, 2),
                f3(best_p99, 2),
                f3(col(&p99_ratio), 2),
                f3(col(&thr_ratio), 3),
                vs.len(),
                f3(default_p99, 2),
                f3(col(&|v| v.auto.p99.as_secs_f64() / v.default.p99.as_secs_f64()), 2),
                vs.len(),
                seen.join("; "),
                lanes.0,
                lanes.1,
                lanes.2,
                window.0,
                window.1,
                window.2,
                auto_pb.0,
                best_pb.0,
            );
            plot_data.entry(backend).or_default().push((
                rate,
                auto_p99.0,
                best_p99.0,
                default_p99.0,
                col(&p99_ratio).0,
            ));
        }
        println!();
    }
    if plot_data.is_empty() {
        return;
    }
    match plot_sweep(&plot_data) {
        Ok(()) => println!("Plot: [benches/plots/tune_sweep.svg](benches/plots/tune_sweep.svg)\n"),
        Err(e) => eprintln!("plot failed: {e}"),
    }
}

fn plot_sweep(data: &BTreeMap<Backend, Medians>) -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/plots/tune_sweep.svg");
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/plots"))?;
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let rows = root.split_evenly((2, data.len()));
    let green = RGBColor(0, 150, 0);
    for (col, (backend, pts)) in data.iter().enumerate() {
        let top = &rows[col];
        let bottom = &rows[data.len() + col];
        let ymax = pts.iter().flat_map(|p| [p.1, p.2, p.3]).fold(1.0, f64::max) * 1.5;
        let mut c = ChartBuilder::on(top)
            .caption(
                format!(
                    "p99 vs offered load, {} backend (median of runs)",
                    backend.label()
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((400.0..80_000.0).log_scale(), 0.0..ymax)?;
        c.configure_mesh()
            .x_desc("offered load (calls/s)")
            .y_desc("p99 (ms)")
            .draw()?;
        type Get = fn(&(f64, f64, f64, f64, f64)) -> f64;
        let series: [(&str, RGBColor, Get); 3] = [
            ("auto", green, |p| p.1),
            ("best hand-tuned (per run)", BLUE, |p| p.2),
            ("default: window 5ms, unbounded", RED, |p| p.3),
        ];
        for (label, color, get) in series {
            c.draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, get(p))),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            c.draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, get(p)), 3, color.filled())),
            )?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        let rmax = pts.iter().map(|p| p.4).fold(1.2, f64::max) * 1.1;
        let mut c = ChartBuilder::on(bottom)
            .caption(
                format!("auto p99 / best p99, {} backend", backend.label()),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((400.0..80_000.0).log_scale(), 0.5..rmax)?;
        c.configure_mesh()
            .x_desc("offered load (calls/s)")
            .y_desc("ratio")
            .draw()?;
        c.draw_series(LineSeries::new(
            [(400.0, 1.0 + TOLERANCE), (80_000.0, 1.0 + TOLERANCE)],
            BLACK.stroke_width(1),
        ))?
        .label("target: 1.05")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        c.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.4)),
            green.stroke_width(2),
        ))?
        .label("auto / best (median of per-run ratios)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], green.stroke_width(2)));
        c.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.4), 3, green.filled())),
        )?;
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// steps
// ---------------------------------------------------------------------------

/// The sampling period of `metrics().tuned`, and the plot's interval.
const SAMPLE: Duration = Duration::from_millis(50);
/// The load steps.
const STEPS: [Phase; 4] = [
    Phase {
        rate: 2_000.0,
        len: Duration::from_secs(3),
    },
    Phase {
        rate: 20_000.0,
        len: Duration::from_secs(3),
    },
    Phase {
        rate: 2_000.0,
        len: Duration::from_secs(3),
    },
    Phase {
        rate: 20_000.0,
        len: Duration::from_secs(3),
    },
];
/// Issue 12's settling bounds and band.
const SETTLE_TIME: Duration = Duration::from_secs(1);
const SETTLE_BATCHES: u64 = 200;
const BAND: f64 = 0.10;

/// One sample of the controller.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    lanes: usize,
    window: Duration,
    batches: u64,
}

/// How one phase of a steps run went.
#[derive(Clone, Debug)]
struct Settle {
    /// Lanes and window over the phase's second half (median).
    lanes: f64,
    window: f64,
    /// From the step to the first sample after which lanes and window stay
    /// within ±10% of those: time and batches; `None`: never within the phase.
    settled: Option<(Duration, u64)>,
    /// Second half: lanes min..max, window min..max (µs); changes of lanes
    /// and moves of the window by more than ±10% between consecutive samples.
    lanes_range: (usize, usize),
    window_range: (f64, f64),
    lane_changes: usize,
    window_moves: usize,
    /// Second half: p99 of the calls started, answers per second.
    p99: Duration,
    achieved: f64,
}

fn settle(samples: &[Sample], out: &Outcome, from: Duration, to: Duration) -> Settle {
    let half = from + (to - from) / 2;
    let phase: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let late: Vec<&Sample> = phase.iter().copied().filter(|s| s.at >= half).collect();
    let lanes = spread(late.iter().map(|s| s.lanes as f64).collect()).0;
    let window = spread(late.iter().map(|s| us(s.window)).collect()).0;
    let inside = |s: &Sample| {
        (s.lanes as f64 - lanes).abs() <= BAND * lanes + 1e-9
            && (us(s.window) - window).abs() <= BAND * window + 1e-9
    };
    // The first sample from which every later one of the phase is inside.
    let mut first = None;
    for (i, s) in phase.iter().enumerate().rev() {
        if inside(s) {
            first = Some(i);
        } else {
            break;
        }
    }
    let batches0 = samples
        .iter()
        .rev()
        .find(|s| s.at < from)
        .map_or(0, |s| s.batches);
    let settled = first.map(|i| {
        let s = phase[i];
        if i == 0 {
            (Duration::ZERO, 0)
        } else {
            (s.at - from, s.batches - batches0)
        }
    });
    let lane_changes = late.windows(2).filter(|w| w[0].lanes != w[1].lanes).count();
    let window_moves = late
        .windows(2)
        .filter(|w| {
            let (a, b) = (us(w[0].window), us(w[1].window));
            (a - b).abs() > BAND * a.max(b)
        })
        .count();
    let lat = latencies(out, half, to);
    Settle {
        lanes,
        window,
        settled,
        lanes_range: (
            late.iter().map(|s| s.lanes).min().unwrap_or(0),
            late.iter().map(|s| s.lanes).max().unwrap_or(0),
        ),
        window_range: (
            late.iter().map(|s| us(s.window)).fold(f64::MAX, f64::min),
            late.iter().map(|s| us(s.window)).fold(0.0, f64::max),
        ),
        lane_changes,
        window_moves,
        p99: lat.quantile(0.99),
        achieved: answered(out, half, to),
    }
}

/// One steps run on one backend: the samples, the outcome.
async fn steps_run(backend: Backend) -> (Vec<Sample>, Outcome) {
    let c = coalescer(backend, Setting::AUTO, "steps");
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let c = c.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Relaxed) {
                tick.tick().await;
                let m = c.metrics();
                let (lanes, window) = m.tuned.map_or((1, Duration::ZERO), |t| (t.lanes, t.window));
                samples.push(Sample {
                    at: start.elapsed(),
                    lanes,
                    window,
                    batches: m.batches,
                });
            }
            samples
        })
    };
    let out = drive(&c, &STEPS, start).await;
    stop.store(true, Relaxed);
    let samples = sampler.await.expect("sampler");
    (samples, out)
}

async fn steps(runs: usize) {
    let names = ["2k (from cold)", "2k → 20k", "20k → 2k", "2k → 20k"];
    println!(
        "### Load steps: {} calls/s, {:?} each, Auto (ceilings: window 5ms, 32 lanes), `metrics().tuned` sampled every {SAMPLE:?}; {runs} runs\n",
        STEPS.iter().map(|p| format!("{:.0}", p.rate)).collect::<Vec<_>>().join(" → "),
        STEPS[0].len,
    );
    println!("Settled: from the step to the first sample after which lanes and window stay within ±{:.0}% of their median over the phase's second half (—: not within the phase). Second half: range of lanes and window, lane changes and window moves by more than ±{:.0}% between consecutive samples, p99 of the calls started, answers per second.\n", BAND * 100.0, BAND * 100.0);
    // [backend][phase] -> per run
    let mut all: BTreeMap<(Backend, usize), Vec<Settle>> = BTreeMap::new();
    let mut last: BTreeMap<Backend, (Vec<Sample>, Outcome)> = BTreeMap::new();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Backend::Flat, Backend::Contended]
        } else {
            [Backend::Contended, Backend::Flat]
        };
        for backend in order {
            let (samples, out) = steps_run(backend).await;
            println!(
                "Run {} — {} backend ({}):\n",
                run + 1,
                backend.label(),
                backend.describe()
            );
            println!("| phase | settled after (ms, batches) | lanes (median, range) | window µs (median, range) | lane changes, window moves > 10% | p99 (ms) | answered (calls/s) |");
            println!("|---|---:|---|---|---:|---:|---:|");
            let mut from = Duration::ZERO;
            for (k, p) in STEPS.iter().enumerate() {
                let s = settle(&samples, &out, from, from + p.len);
                println!(
                    "| {} | {} | {:.0} ({}–{}) | {:.0} ({:.0}–{:.0}) | {}, {} | {:.2} | {:.0} |",
                    names[k],
                    s.settled
                        .map_or("—".into(), |(t, b)| format!("{:.0}, {b}", ms(t))),
                    s.lanes,
                    s.lanes_range.0,
                    s.lanes_range.1,
                    s.window,
                    s.window_range.0,
                    s.window_range.1,
                    s.lane_changes,
                    s.window_moves,
                    ms(s.p99),
                    s.achieved,
                );
                all.entry((backend, k)).or_default().push(s);
                from += p.len;
            }
            println!();
            last.insert(backend, (samples, out));
        }
    }
    println!("#### Load steps: median (min–max) of {runs} runs\n");
    println!("| backend | phase | settled within 1 s or 200 batches (runs) | settled after (ms) | settled after (batches) | lanes | window (µs) | second-half variation: lanes, window (max − min over median) | lane changes | window moves > 10% | p99 (ms) | answered (calls/s) |");
    println!("|---|---|---:|---|---|---|---|---|---|---|---|---|");
    for ((backend, k), ss) in &all {
        let ok = ss
            .iter()
            .filter(|s| {
                s.settled
                    .is_some_and(|(t, b)| t <= SETTLE_TIME || b <= SETTLE_BATCHES)
            })
            .count();
        let settled: Vec<&(Duration, u64)> = ss.iter().filter_map(|s| s.settled.as_ref()).collect();
        let var = |lo: f64, hi: f64, mid: f64| {
            if mid > 0.0 {
                100.0 * (hi - lo) / mid
            } else if hi > 0.0 {
                f64::INFINITY
            } else {
                0.0
            }
        };
        let lv = spread(
            ss.iter()
                .map(|s| var(s.lanes_range.0 as f64, s.lanes_range.1 as f64, s.lanes))
                .collect(),
        );
        let wv = spread(
            ss.iter()
                .map(|s| var(s.window_range.0, s.window_range.1, s.window))
                .collect(),
        );
        println!(
            "| {} | {} | {ok}/{} | {} | {} | {} | {} | {:.0}% ({:.0}–{:.0}), {:.0}% ({:.0}–{:.0}) | {} | {} | {} | {} |",
            backend.label(),
            names[*k],
            ss.len(),
            if settled.len() == ss.len() {
                f3(spread(settled.iter().map(|s| ms(s.0)).collect()), 0)
            } else {
                format!("{} of {} runs never settled", ss.len() - settled.len(), ss.len())
            },
            if settled.len() == ss.len() {
                f3(spread(settled.iter().map(|s| s.1 as f64).collect()), 0)
            } else {
                "—".into()
            },
            f3(spread(ss.iter().map(|s| s.lanes).collect()), 0),
            f3(spread(ss.iter().map(|s| s.window).collect()), 0),
            lv.0,
            lv.1,
            lv.2,
            wv.0,
            wv.1,
            wv.2,
            f3(spread(ss.iter().map(|s| s.lane_changes as f64).collect()), 0),
            f3(spread(ss.iter().map(|s| s.window_moves as f64).collect()), 0),
            f3(spread(ss.iter().map(|s| ms(s.p99)).collect()), 2),
            f3(spread(ss.iter().map(|s| s.achieved).collect()), 0),
        );
    }
    println!();
    match plot_steps(&last) {
        Ok(()) => println!(
            "Plot (run {runs}): [benches/plots/tune_steps.svg](benches/plots/tune_steps.svg)\n"
        ),
        Err(e) => eprintln!("plot failed: {e}"),
    }
}

/// Per [`SAMPLE`] interval of a steps run: p99 of the calls started in it (ms)
/// and answers per second in it.
fn intervals(out: &Outcome, len: Duration) -> Vec<(f64, f64, f64)> {
    let n = (len.as_nanos() / SAMPLE.as_nanos()) as usize;
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut done = vec![0usize; n];
    for c in &out.calls {
        let i = (c.at.as_nanos() / SAMPLE.as_nanos()) as usize;
        if i < n {
            lat[i].push(out.latency(c));
        }
        if let Some(t) = c.took {
            let j = ((c.at + t).as_nanos() / SAMPLE.as_nanos()) as usize;
            if j < n {
                done[j] += 1;
            }
        }
    }
    lat.into_iter()
        .zip(done)
        .enumerate()
        .map(|(i, (l, d))| {
            let r = Run::new(SAMPLE, l);
            (
                (i as f64 + 0.5) * SAMPLE.as_secs_f64(),
                ms(r.quantile(0.99)),
                d as f64 / SAMPLE.as_secs_f64(),
            )
        })
        .collect()
}

fn plot_steps(
    runs: &BTreeMap<Backend, (Vec<Sample>, Outcome)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/plots/tune_steps.svg");
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/plots"))?;
    let root = SVGBackend::new(path, (1400, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let cols = runs.len();
    let areas = root.split_evenly((4, cols));
    let len: Duration = STEPS.iter().map(|p| p.len).sum();
    let xmax = len.as_secs_f64();
    let green = RGBColor(0, 150, 0);
    let orange = RGBColor(200, 120, 0);
    for (col, (backend, (samples, out))) in runs.iter().enumerate() {
        let per = intervals(out, len);
        let lanes_max = samples.iter().map(|s| s.lanes).max().unwrap_or(1) as f64 + 1.0;
        let window_max = samples.iter().map(|s| ms(s.window)).fold(0.5, f64::max) * 1.2;
        let p99_max = per.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let thr_max = per.iter().map(|p| p.2).fold(1.0, f64::max) * 1.2;
        let title = |what: &str| format!("{what} — {} backend", backend.label());
        let panel = |row: usize, what: &str, y_desc: &str, ymax: f64| {
            // One time-series panel of the grid: row `row`, this backend's column.
            let mut c = ChartBuilder::on(&areas[row * cols + col])
                .caption(title(what), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(if row == 3 { 60 } else { 50 })
                .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
            c.configure_mesh()
                .x_desc("time (s)")
                .y_desc(y_desc)
                .draw()?;
            Ok::<_, Box<dyn std::error::Error>>(c)
        };
        panel(0, "lanes (metrics().tuned)", "lanes", lanes_max)?.draw_series(LineSeries::new(
            samples.iter().map(|s| (s.at.as_secs_f64(), s.lanes as f64)),
            BLUE.stroke_width(2),
        ))?;
        panel(1, "window (metrics().tuned)", "window (ms)", window_max)?.draw_series(
            LineSeries::new(
                samples.iter().map(|s| (s.at.as_secs_f64(), ms(s.window))),
                orange.stroke_width(2),
            ),
        )?;
        panel(2, "p99 of calls started per 50 ms", "p99 (ms)", p99_max)?.draw_series(
            LineSeries::new(
                per.iter().filter(|p| p.1 > 0.0).map(|p| (p.0, p.1)),
                RED.stroke_width(2),
            ),
        )?;
        // Throughput, with the offered load.
        let mut c = panel(3, "answers per second per 50 ms", "calls/s", thr_max)?;
        let mut offered = Vec::new();
        let mut at = 0.0;
        for p in STEPS {
            offered.push((at, p.rate));
            at += p.len.as_secs_f64();
            offered.push((at, p.rate));
        }
        c.draw_series(LineSeries::new(offered, BLACK.stroke_width(1)))?
            .label("offered")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
        c.draw_series(LineSeries::new(
            per.iter().map(|p| (p.0, p.2)),
            green.stroke_width(2),
        ))?
        .label("answered")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], green.stroke_width(2)));
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

/// Rounds of sequential calls per contender in one idle run (alternating).
const IDLE_ROUNDS: usize = 7;
const IDLE_CALLS: usize = 1000;

fn cpu_loader(dispatch: Dispatch) -> Arc<Loader> {
    Arc::new(Loader::Coalesce(Box::new(Coalescer::new(
        Config::new(format!("tune.idle.{dispatch:?}"))
            .dispatch(dispatch)
            .window(WINDOW)
            .max_batch(MAX_BATCH),
        |keys: Vec<u64>| async move { keys.into_iter().map(compute).collect::<Vec<u64>>() },
    ))))
}

/// After 1 s at 20,000 calls/s on the flat backend (Auto lingers there), 200
/// sequential lone calls: their p50 and p99, and Auto's window when they ran.
async fn after_load(setting: Setting) -> (Run, Option<(usize, Duration)>) {
    let c = coalescer(Backend::Flat, setting, "after");
    drive(
        &c,
        &[Phase {
            rate: 20_000.0,
            len: Duration::from_secs(1),
        }],
        Instant::now(),
    )
    .await;
    let tuned = c.metrics().tuned.map(|t| (t.lanes, t.window));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut l = Vec::with_capacity(200);
    for k in 0..200u64 {
        let t = Instant::now();
        let got = c.load(1 << 40 | k).await;
        assert!(matches!(got, Ok(Some(_))));
        l.push(t.elapsed());
    }
    (Run::new(Duration::ZERO, l), tuned)
}

async fn idle(runs: usize) {
    println!("### Idle road: one caller, {IDLE_ROUNDS} rounds of {IDLE_CALLS} sequential calls per contender (alternating), pure-CPU batch fn, window {WINDOW:?} (Auto: ceiling), max_batch {MAX_BATCH}; {runs} runs\n");
    let contenders = [Dispatch::Adaptive, Dispatch::Auto];
    // per contender: per run (p50, mean, p99) in µs
    let mut per_run: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 2];
    let mut after: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 2];
    let mut tuned_after = Vec::new();
    println!("| run | adaptive p50 / mean / p99 (µs) | auto p50 / mean / p99 (µs) | auto − adaptive p50 (µs) | after 1 s at 20k calls/s, flat backend: adaptive ×32 / auto p50 (ms) | auto's lanes, window then |");
    println!("|---:|---|---|---:|---|---|");
    for run in 0..runs {
        let loaders: Vec<Arc<Loader>> = contenders.iter().map(|d| cpu_loader(*d)).collect();
        for l in &loaders {
            sequential(l, 100, 0).await;
        }
        let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); 2];
        let mut wall = [Duration::ZERO; 2];
        for round in 0..IDLE_ROUNDS {
            let order = if (run + round) % 2 == 0 {
                [0, 1]
            } else {
                [1, 0]
            };
            for i in order {
                let base = (round as u64 + 1) * 1_000_000;
                let r = sequential(&loaders[i], IDLE_CALLS, base).await;
                wall[i] += r.wall;
                lat[i].extend_from_slice(&r.latencies);
            }
        }
        let mut cells = Vec::new();
        for i in 0..2 {
            let r = Run::new(wall[i], std::mem::take(&mut lat[i]));
            let v = (
                us(r.quantile(0.5)),
                r.ns_per_call() / 1e3,
                us(r.quantile(0.99)),
            );
            cells.push(format!("{:.2} / {:.2} / {:.2}", v.0, v.1, v.2));
            per_run[i].push(v);
        }
        // Lone calls after load, adaptive (32 lanes, 5 ms) then auto, or the
        // other way round.
        let settings = [
            Setting {
                dispatch: Dispatch::Adaptive,
                window: Duration::from_millis(5),
                lanes: Some(32),
            },
            Setting::AUTO,
        ];
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut a = [(0.0, 0.0); 2];
        for i in order {
            let (r, t) = after_load(settings[i]).await;
            a[i] = (ms(r.quantile(0.5)), ms(r.quantile(0.99)));
            after[i].push(a[i]);
            if i == 1 {
                tuned_after.push(t);
            }
        }
        let t = tuned_after.last().copied().flatten().unwrap_or_default();
        println!(
            "| {} | {} | {} | {:+.2} | {:.2} / {:.2} | {}, {:?} |",
            run + 1,
            cells[0],
            cells[1],
            per_run[1][run].0 - per_run[0][run].0,
            a[0].0,
            a[1].0,
            t.0,
            t.1,
        );
    }
    let col = |i: usize, g: fn(&(f64, f64, f64)) -> f64| spread(per_run[i].iter().map(g).collect());
    let diff = spread(
        per_run[1]
            .iter()
            .zip(&per_run[0])
            .map(|(a, b)| a.0 - b.0)
            .collect(),
    );
    let not_more = per_run[1]
        .iter()
        .zip(&per_run[0])
        .filter(|(a, b)| a.0 <= b.0)
        .count();
    println!("\n#### Idle road: median (min–max) of {runs} runs\n");
    println!("| contender | p50 (µs) | mean (µs) | p99 (µs) | after 1 s at 20k calls/s: lone-call p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    for (i, name) in ["adaptive (×32 after load)", "auto"].iter().enumerate() {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            f3(col(i, |v| v.0), 2),
            f3(col(i, |v| v.1), 2),
            f3(col(i, |v| v.2), 2),
            f3(spread(after[i].iter().map(|a| a.0).collect()), 2),
            f3(spread(after[i].iter().map(|a| a.1).collect()), 2),
        );
    }
    println!(
        "\nauto − adaptive p50: {} µs; auto's p50 ≤ adaptive's in {not_more} of {runs} runs.\n",
        f3(diff, 2)
    );
}

// ---------------------------------------------------------------------------
// trace
// ---------------------------------------------------------------------------

/// One setting at one constant load, `metrics().tuned` printed every 100 ms
/// beside the p99 of the calls started in that interval: for a close look.
async fn trace(backend: Backend, rate: f64, len: Duration, setting: Setting) {
    const EVERY: Duration = Duration::from_millis(100);
    let c = coalescer(backend, setting, "trace");
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let c = c.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rows = Vec::new();
            let mut tick = tokio::time::interval(EVERY);
            while !stop.load(Relaxed) {
                tick.tick().await;
                rows.push((start.elapsed(), c.metrics()));
            }
            rows
        })
    };
    let out = drive(&c, &[Phase { rate, len }], start).await;
    stop.store(true, Relaxed);
    let rows = sampler.await.expect("sampler");
    println!(
        "### {} at {rate:.0} calls/s for {len:?}, {} backend\n",
        setting.label(),
        backend.label()
    );
    println!("| t (ms) | lanes | window (µs) | fixed cost (µs) | per key (µs) | slowdown per lane | arrival rate (tuned) | batches in interval | keys per batch | in flight | p99 of calls started (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut prev = (0u64, 0u64);
    for (i, (at, m)) in rows.iter().enumerate() {
        let from = at.saturating_sub(EVERY);
        let lat = latencies(&out, from, *at);
        let t = m.tuned.unwrap_or_default();
        let batches = m.batches - prev.0;
        let keys = m.keys - prev.1;
        prev = (m.batches, m.keys);
        if i == 0 {
            continue;
        }
        println!(
            "| {:.0} | {} | {:.0} | {:.0} | {:.2} | {:.3} | {:.0} | {batches} | {:.1} | {} | {:.2} |",
            ms(*at),
            t.lanes,
            us(t.window),
            us(t.fixed_cost),
            us(t.per_key_cost),
            t.slowdown_per_lane,
            t.arrival_rate,
            keys as f64 / batches.max(1) as f64,
            m.in_flight,
            ms(lat.quantile(0.99)),
        );
    }
    let all = latencies(&out, Duration::ZERO, len);
    let m = c.metrics();
    println!(
        "\nall calls: p50 {:.2} ms, p99 {:.2} ms; {} calls, {} batches ({:.1} keys per batch); run mean {:?}\n",
        ms(all.quantile(0.5)),
        ms(all.quantile(0.99)),
        m.calls,
        m.batches,
        m.batch_size.mean(),
        m.run.mean,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = |default: usize| {
        args.get(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    let rt = runtime();
    match args.first().map(String::as_str) {
        Some("sweep") => {
            let backend = args
                .get(1)
                .and_then(|b| Backend::parse(b))
                .expect("usage: tune sweep flat|contended");
            rt.block_on(sweep(backend));
        }
        Some("summary") => summary(),
        Some("trace") => {
            let usage = "usage: tune trace flat|contended RATE [SECONDS] [SETTING, e.g. auto/5000/0]";
            let backend = args.get(1).and_then(|b| Backend::parse(b)).expect(usage);
            let rate: f64 = args.get(2).and_then(|r| r.parse().ok()).expect(usage);
            let secs: f64 = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(2.0);
            let setting = args
                .get(4)
                .map_or(Some(Setting::AUTO), |k| Setting::parse(k))
                .expect(usage);
            rt.block_on(trace(backend, rate, Duration::from_secs_f64(secs), setting));
        }
        Some("steps") => rt.block_on(steps(runs(3))),
        Some("idle") => rt.block_on(idle(runs(5))),
        _ => eprintln!(
            "usage: tune sweep flat|contended | tune summary | tune steps [RUNS] | tune idle [RUNS] | tune trace flat|contended RATE [SECONDS] [SETTING]"
        ),
    }
}
