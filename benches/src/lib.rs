//! Shared workloads for the benchmarks (see `benches/` and `src/bin/report.rs`).
//!
//! Every contender — `coalesce`, the peer crates and the direct per-key call — is
//! wrapped in one [`Loader`] with the same `load(key) -> value` shape, so the same
//! workload code drives all of them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coalesce::{Coalescer, Config, Dispatch};
use tokio::sync::Semaphore;

pub mod bare;
pub mod batched;

/// The number of concurrent calls in one burst.
pub const BURST: usize = 10_000;

/// The simulated round trip of one backend request.
pub const ROUND_TRIP: Duration = Duration::from_millis(2);

/// The window `coalesce` runs with in every workload (both dispatch modes): under a
/// millisecond, so it is timed by the precise timer, not rounded up to Tokio's tick.
pub const WINDOW: Duration = Duration::from_micros(500);

/// Permits of the direct path's connection pool in the round-trip workload.
pub const DIRECT_PERMITS: usize = 10;

/// The pure-CPU work done for one key: a few multiply-xorshift rounds.
#[inline]
pub fn compute(key: u64) -> u64 {
    let mut x = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What the batch function does besides computing each key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Pure CPU: compute each key's value and return.
    Cpu,
    /// Await one [`ROUND_TRIP`] sleep per batch (per key on the direct path).
    RoundTrip,
}

/// Which contender a [`Loader`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No batching: each call computes (or awaits its own round trip) itself.
    Direct,
    /// The floor of a hand-rolled coalescer (see [`bare`]): a reference, not a peer.
    Bare,
    /// `coalesce` with [`Dispatch::Window`].
    CoalesceWindow,
    /// `coalesce` with [`Dispatch::Adaptive`].
    CoalesceAdaptive,
    /// `dataloader` 0.18, `non_cached::Loader`.
    Dataloader,
    /// `async-graphql` 7, `dataloader::DataLoader` without cache.
    AsyncGraphql,
    /// `batched-fn` 0.2.5 (a dedicated OS thread runs the synchronous handler).
    BatchedFn,
    /// `batch-aint-one`, `BatchingPolicy::Immediate`.
    BatchAintOne,
    /// `batch-aint-one`, `BatchingPolicy::Balanced { min_size_hint: 10 }`.
    BatchAintOneBalanced,
}

impl Kind {
    /// Every contender, direct call first.
    pub const ALL: [Kind; 9] = [
        Kind::Direct,
        Kind::Bare,
        Kind::CoalesceWindow,
        Kind::CoalesceAdaptive,
        Kind::Dataloader,
        Kind::AsyncGraphql,
        Kind::BatchedFn,
        Kind::BatchAintOne,
        Kind::BatchAintOneBalanced,
    ];

    /// A short label for tables and benchmark ids.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Bare => "bare-mutex-vec",
            Kind::CoalesceWindow => "coalesce-window",
            Kind::CoalesceAdaptive => "coalesce-adaptive",
            Kind::Dataloader => "dataloader",
            Kind::AsyncGraphql => "async-graphql",
            Kind::BatchedFn => "batched-fn",
            Kind::BatchAintOne => "batch-aint-one",
            Kind::BatchAintOneBalanced => "batch-aint-one-balanced",
        }
    }

    /// The settings each contender runs with, as documented in `BENCHMARKS.md`.
    pub fn settings(self, window: Duration) -> String {
        match self {
            Kind::Direct => "no batching".into(),
            Kind::Bare => format!(
                "reference floor: Mutex<Vec<(key, oneshot)>>, a spawned flush per batch, window {window:?}"
            ),
            Kind::CoalesceWindow => format!("Dispatch::Window, window {window:?}"),
            Kind::CoalesceAdaptive => format!(
                "Dispatch::Adaptive, window {window:?}; round trip: max_in_flight {DIRECT_PERMITS}"
            ),
            Kind::Dataloader => "non_cached::Loader, with_yield_count(1)".into(),
            Kind::AsyncGraphql => "DataLoader::new(.., tokio::spawn), delay(0), no cache".into(),
            Kind::BatchedFn => "max_delay: 1 (ms; 0 disables batching)".into(),
            Kind::BatchAintOne => {
                "BatchingPolicy::Immediate, max_key_concurrency 10, one key".into()
            }
            Kind::BatchAintOneBalanced => {
                "BatchingPolicy::Balanced { min_size_hint: 10 }, one key".into()
            }
        }
    }
}

/// `dataloader`'s batch function.
#[derive(Clone)]
pub struct DlBatch(Work);

impl dataloader::BatchFn<u64, u64> for DlBatch {
    async fn load(&mut self, keys: &[u64]) -> HashMap<u64, u64> {
        if self.0 == Work::RoundTrip {
            tokio::time::sleep(ROUND_TRIP).await;
        }
        keys.iter().map(|&k| (k, compute(k))).collect()
    }
}

/// `async-graphql`'s batch function.
pub struct AgBatch(Work);

impl async_graphql::dataloader::Loader<u64> for AgBatch {
    type Value = u64;
    type Error = Arc<str>;

    async fn load(&self, keys: &[u64]) -> Result<HashMap<u64, u64>, Arc<str>> {
        if self.0 == Work::RoundTrip {
            tokio::time::sleep(ROUND_TRIP).await;
        }
        Ok(keys.iter().map(|&k| (k, compute(k))).collect())
    }
}

/// `batch-aint-one`'s processor.
#[derive(Clone, Debug)]
pub struct BaoBatch(Work);

impl batch_aint_one::Processor for BaoBatch {
    type Key = ();
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Resources = ();

    async fn acquire_resources(&self, _key: ()) -> Result<(), String> {
        Ok(())
    }

    async fn process(
        &self,
        _key: (),
        inputs: impl Iterator<Item = u64> + Send,
        _resources: (),
    ) -> Result<Vec<u64>, String> {
        let out = inputs.map(compute).collect();
        if self.0 == Work::RoundTrip {
            tokio::time::sleep(ROUND_TRIP).await;
        }
        Ok(out)
    }
}

/// One contender, ready to load keys. Build it inside the Tokio runtime that drives it.
pub enum Loader {
    /// See [`Kind::Direct`]; round-trip work waits behind the semaphore.
    Direct(Work, Semaphore),
    /// See [`Kind::CoalesceWindow`] and [`Kind::CoalesceAdaptive`].
    Coalesce(Box<Coalescer<u64, u64>>),
    /// See [`Kind::Dataloader`].
    Dataloader(dataloader::non_cached::Loader<u64, u64, DlBatch>),
    /// See [`Kind::AsyncGraphql`].
    AsyncGraphql(async_graphql::dataloader::DataLoader<AgBatch>),
    /// See [`Kind::BatchedFn`].
    BatchedFn(batched::Handle),
    /// See [`Kind::Bare`].
    Bare(Arc<bare::Bare>),
    /// See [`Kind::BatchAintOne`].
    BatchAintOne(batch_aint_one::Batcher<BaoBatch>),
}

impl Loader {
    /// The coalescer's own metrics, for the `coalesce` contenders.
    pub fn metrics(&self) -> Option<coalesce::metrics::MetricsSnapshot> {
        match self {
            Loader::Coalesce(c) => Some(c.metrics()),
            _ => None,
        }
    }

    /// A loader of `kind` doing `work`, batches of at most `max_batch` keys, and (for
    /// `coalesce`) the given window.
    pub fn new(kind: Kind, work: Work, max_batch: usize, window: Duration) -> Self {
        match kind {
            Kind::Direct => Loader::Direct(work, Semaphore::new(DIRECT_PERMITS)),
            Kind::Bare => Loader::Bare(bare::Bare::new(work, max_batch, window)),
            Kind::CoalesceWindow | Kind::CoalesceAdaptive => {
                let dispatch = if kind == Kind::CoalesceWindow {
                    Dispatch::Window
                } else {
                    Dispatch::Adaptive
                };
                let mut config = Config::new(format!("bench.{}.{max_batch}", kind.label()))
                    .window(window)
                    .max_batch(max_batch)
                    .dispatch(dispatch);
                if kind == Kind::CoalesceAdaptive && work == Work::RoundTrip {
                    // As many lanes as the direct path has connections.
                    config = config.max_in_flight(DIRECT_PERMITS);
                }
                Loader::Coalesce(Box::new(Coalescer::new(
                    config,
                    move |keys: Vec<u64>| async move {
                        if work == Work::RoundTrip {
                            tokio::time::sleep(ROUND_TRIP).await;
                        }
                        keys.into_iter().map(compute).collect::<Vec<u64>>()
                    },
                )))
            }
            Kind::Dataloader => Loader::Dataloader(
                dataloader::non_cached::Loader::new(DlBatch(work))
                    .with_max_batch_size(max_batch)
                    .with_yield_count(1),
            ),
            Kind::AsyncGraphql => Loader::AsyncGraphql(
                async_graphql::dataloader::DataLoader::new(AgBatch(work), tokio::spawn)
                    .delay(Duration::ZERO)
                    .max_batch_size(max_batch),
            ),
            Kind::BatchedFn => Loader::BatchedFn(batched::handle(work, max_batch)),
            Kind::BatchAintOne | Kind::BatchAintOneBalanced => Loader::BatchAintOne(
                batch_aint_one::Batcher::builder()
                    .name("bench")
                    .processor(BaoBatch(work))
                    .limits(
                        batch_aint_one::Limits::builder()
                            .max_batch_size(max_batch)
                            .max_key_queued_items(4 * BURST)
                            .build(),
                    )
                    .batching_policy(if kind == Kind::BatchAintOne {
                        batch_aint_one::BatchingPolicy::Immediate
                    } else {
                        batch_aint_one::BatchingPolicy::Balanced { min_size_hint: 10 }
                    })
                    .build(),
            ),
        }
    }

    /// Loads one key.
    pub async fn load(&self, key: u64) -> u64 {
        match self {
            Loader::Direct(Work::Cpu, _) => compute(key),
            Loader::Direct(Work::RoundTrip, permits) => {
                let _permit = permits.acquire().await.expect("never closed");
                tokio::time::sleep(ROUND_TRIP).await;
                compute(key)
            }
            Loader::Coalesce(c) => c.load(key).await.expect("infallible").expect("present"),
            Loader::Dataloader(l) => l.load(key).await,
            Loader::AsyncGraphql(l) => l.load_one(key).await.expect("infallible").expect("present"),
            Loader::BatchedFn(h) => h.call(key).await,
            Loader::Bare(b) => b.load(key).await,
            Loader::BatchAintOne(b) => b.add((), key).await.expect("processed"),
        }
    }
}

/// Per-call latencies and the wall time of one run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Calls completed.
    pub calls: usize,
    /// Each call's latency, sorted.
    pub latencies: Vec<Duration>,
}

impl Run {
    /// A run of `latencies` (one per completed call) over `wall`.
    pub fn new(wall: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Run {
            wall,
            calls: latencies.len(),
            latencies,
        }
    }

    /// Nanoseconds of wall time per completed call.
    pub fn ns_per_call(&self) -> f64 {
        self.wall.as_nanos() as f64 / self.calls.max(1) as f64
    }

    /// Completed calls per second of wall time.
    pub fn throughput(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

/// Runs `fut` on the current multi-thread runtime as a task and returns its output.
async fn spawn<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut).await.expect("task panicked")
}

/// A burst: `n` tasks spawned at once, task `i` loading key `base + i`; waits for all.
/// Returns the wall time and, when `record` is set, each call's latency.
pub async fn burst(loader: &Arc<Loader>, n: usize, base: u64, record: bool) -> Run {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let loader = loader.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let key = base + i as u64;
            let v = loader.load(key).await;
            debug_assert_eq!(v, compute(key));
            std::hint::black_box(v);
            t.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(if record { n } else { 0 });
    for t in tasks {
        let d = t.await.expect("task panicked");
        if record {
            latencies.push(d);
        }
    }
    let wall = start.elapsed();
    // Latencies may not be recorded (warm-up), but every call completed.
    Run {
        calls: n,
        ..Run::new(wall, latencies)
    }
}

/// The idle road: one caller, `n` sequential loads. Returns per-call latencies.
pub async fn sequential(loader: &Arc<Loader>, n: usize, base: u64) -> Run {
    let loader = loader.clone();
    spawn(async move {
        let start = Instant::now();
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            std::hint::black_box(loader.load(base + i).await);
            latencies.push(t.elapsed());
        }
        let wall = start.elapsed();
        Run::new(wall, latencies)
    })
    .await
}

/// Open-loop load: calls arrive at `rate` per second for `duration` (spawned in
/// groups once per millisecond), each loading a fresh key. Returns the latencies and
/// the wall time until the last call completed.
pub async fn offered_load(loader: &Arc<Loader>, rate: f64, duration: Duration, base: u64) -> Run {
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let mut tasks = Vec::with_capacity(total);
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    while sent < total {
        interval.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate).ceil() as usize).min(total);
        while sent < due {
            let loader = loader.clone();
            let key = base + sent as u64;
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                std::hint::black_box(loader.load(key).await);
                t.elapsed()
            }));
            sent += 1;
        }
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.push(t.await.expect("task panicked"));
    }
    let wall = start.elapsed();
    Run::new(wall, latencies)
}

/// The runtime every workload runs on: Tokio multi-thread, 2 workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The first field of a `schedstat`: nanoseconds on a CPU.
fn schedstat(path: &std::path::Path) -> u64 {
    schedstat_field(path, 0)
}

/// Field `n` of a `schedstat`: 0, nanoseconds on a CPU; 1, nanoseconds
/// runnable but waiting on a run queue (another thread had the CPU).
fn schedstat_field(path: &std::path::Path, n: usize) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(n)?.parse().ok())
        .unwrap_or(0)
}

/// The `schedstat` of every thread of a process.
fn thread_stats(proc_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(proc_dir.join("task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| t.path().join("schedstat"))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads CPU time from `/proc/*/task/*/schedstat`: this process's threads,
/// and (if asked) those of the `postgres` processes that ran when it was made,
/// listed once so that a reading is cheap. Make a new one to see backends
/// started since.
pub struct CpuProbe {
    server: Vec<std::path::PathBuf>,
}

impl CpuProbe {
    /// A probe of this process, and of every `postgres` process running now
    /// if `with_postgres`.
    pub fn new(with_postgres: bool) -> CpuProbe {
        let server = if !with_postgres {
            Vec::new()
        } else {
            std::fs::read_dir("/proc")
                .map(|procs| {
                    procs
                        .flatten()
                        .filter(|p| {
                            std::fs::read_to_string(p.path().join("comm"))
                                .is_ok_and(|c| c.trim() == "postgres")
                        })
                        .flat_map(|p| thread_stats(&p.path()))
                        .collect()
                })
                .unwrap_or_default()
        };
        CpuProbe { server }
    }

    /// Nanoseconds on a CPU so far: (this process, the `postgres` processes).
    pub fn read(&self) -> (u64, u64) {
        let client = thread_stats(std::path::Path::new("/proc/self"))
            .iter()
            .map(|p| schedstat(p))
            .sum();
        (client, self.server.iter().map(|p| schedstat(p)).sum())
    }

    /// Nanoseconds runnable but waiting for a CPU so far (another thread held
    /// it): (this process, the `postgres` processes).
    pub fn waited(&self) -> (u64, u64) {
        let client = thread_stats(std::path::Path::new("/proc/self"))
            .iter()
            .map(|p| schedstat_field(p, 1))
            .sum();
        let server = self.server.iter().map(|p| schedstat_field(p, 1)).sum();
        (client, server)
    }
}
