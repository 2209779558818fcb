//! `Dispatch::Auto` through the engine, deterministic under Tokio's paused
//! clock: a scripted backend (a fixed cost per batch, a cost per key, and
//! optionally a slowdown per batch running beside it) under step loads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use coalesce_runtime::metrics::Tuned;
use coalesce_runtime::{Coalescer, Config, Dispatch};

/// A backend of `2 ms + 2 µs × keys`, times `1 + slowdown × (others running)`.
fn backend(slowdown: f64, max_in_flight: usize) -> Arc<Coalescer<u64, u64>> {
    scripted(
        Config::new("tune.backend")
            .dispatch(Dispatch::Auto)
            .window(Duration::from_millis(5))
            .max_in_flight(max_in_flight),
        slowdown,
    )
}

/// The scripted backend under `config`.
fn scripted(config: Config, slowdown: f64) -> Arc<Coalescer<u64, u64>> {
    let running = Arc::new(AtomicUsize::new(0));
    Arc::new(Coalescer::new(config, move |keys: Vec<u64>| {
        let running = running.clone();
        async move {
            let others = running.fetch_add(1, SeqCst);
            let base = 0.002 + 0.000_002 * keys.len() as f64;
            let run = base * (1.0 + slowdown * others as f64);
            tokio::time::sleep(Duration::from_secs_f64(run)).await;
            running.fetch_sub(1, SeqCst);
            keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
        }
    }))
}

/// Offers `calls` calls at `rate` calls/s (one task each), and waits for all.
async fn offer(c: &Arc<Coalescer<u64, u64>>, rate: f64, calls: u64) {
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::with_capacity(calls as usize);
    let mut next = tokio::time::Instant::now();
    for i in 0..calls {
        next += gap;
        tokio::time::sleep_until(next).await;
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.load(i).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().map(|_| ()), Some(()));
    }
}

fn tuned(c: &Coalescer<u64, u64>) -> Tuned {
    c.metrics().tuned.expect("the controller has decided")
}

/// Idle: lone calls go at once, one by one, with no window (as adaptive).
#[tokio::test(start_paused = true)]
async fn a_lone_call_goes_at_once() {
    let c = backend(0.0, 8);
    for i in 0..20u64 {
        let t0 = tokio::time::Instant::now();
        assert_eq!(c.load(i).await.unwrap(), Some(i));
        // Its own run (2 ms, 3 on the paused clock's 1 ms ticks), and no
        // window (5 ms) before it.
        assert!(
            t0.elapsed() <= Duration::from_millis(3),
            "{:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.metrics().batches, 20);
}

/// Under 20,000 calls/s on a backend that scales, with lanes to spare: lanes
/// grow and no window is added (more lanes lower latency where they can be
/// had).
#[tokio::test(start_paused = true)]
async fn lanes_grow_before_any_window() {
    let c = backend(0.0, 8);
    offer(&c, 20_000.0, 8_000).await;
    let t = tuned(&c);
    assert!(t.lanes >= 2, "{t:?}");
    assert_eq!(t.window, Duration::ZERO, "{t:?}");
    // 2 ms, rounded up to the paused clock's 1 ms ticks.
    assert_eq!(t.fixed_cost, Duration::from_millis(3), "{t:?}");
}

/// At its lane ceiling (one lane) under 20,000 calls/s, batches queue and 60
/// calls arrive per 3 ms fixed cost: the window lingers. Far below, it goes
/// back to zero.
#[tokio::test(start_paused = true)]
async fn the_window_lingers_only_at_the_lane_ceiling_under_load() {
    let c = backend(0.0, 1);
    offer(&c, 20_000.0, 8_000).await;
    let high = tuned(&c);
    assert_eq!(high.lanes, 1, "{high:?}");
    assert!(high.window > Duration::ZERO, "{high:?}");
    assert!(high.window <= Duration::from_millis(5), "{high:?}");
    // 300 calls/s: under one call per fixed cost.
    offer(&c, 300.0, 300).await;
    let low = tuned(&c);
    assert_eq!(low.window, Duration::ZERO, "{low:?}");
}

/// A 10x step up and down (2,000 <-> 20,000 calls/s): within 200 batches of
/// the step the lanes and window are where 1,000 more batches leave them.
#[tokio::test(start_paused = true)]
async fn a_10x_step_settles_within_200_batches() {
    let c = backend(0.2, 16);
    offer(&c, 2_000.0, 2_000).await;
    for rate in [20_000.0, 2_000.0] {
        let start = c.metrics().batches;
        let mut at_200 = None;
        // Offer in slices until 200 batches have run since the step.
        while at_200.is_none() {
            offer(&c, rate, (rate / 100.0) as u64).await;
            if c.metrics().batches - start >= 200 {
                at_200 = Some(tuned(&c));
            }
        }
        let at_200 = at_200.unwrap();
        let later_start = c.metrics().batches;
        while c.metrics().batches - later_start < 1000 {
            offer(&c, rate, (rate / 100.0) as u64).await;
        }
        let later = tuned(&c);
        assert!(
            at_200.lanes.abs_diff(later.lanes) <= 1,
            "{rate}: {at_200:?} vs {later:?}"
        );
        let (a, b) = (at_200.window.as_secs_f64(), later.window.as_secs_f64());
        assert!(
            (a - b).abs() <= 0.1 * a.max(b).max(1e-9),
            "{rate}: {at_200:?} vs {later:?}"
        );
    }
}

/// A backend whose batches run twice as long per batch beside them: lanes
/// stay where a batch runs at most twice as long as alone (two lanes),
/// whatever the load.
#[tokio::test(start_paused = true)]
async fn lanes_stay_low_on_a_backend_that_saturates() {
    let c = backend(1.0, 16);
    offer(&c, 20_000.0, 8_000).await;
    let t = tuned(&c);
    assert!(t.lanes <= 3, "{t:?}");
    assert!(t.slowdown_per_lane > 0.6, "{t:?}");
}

/// A constant load: the lanes and the window settle and stay (no oscillation).
#[tokio::test(start_paused = true)]
async fn a_constant_load_settles() {
    let c = backend(0.2, 16);
    offer(&c, 10_000.0, 4_000).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        offer(&c, 10_000.0, 500).await;
        seen.push(tuned(&c));
    }
    let lanes: Vec<usize> = seen.iter().map(|t| t.lanes).collect();
    let (lo, hi) = (lanes.iter().min().unwrap(), lanes.iter().max().unwrap());
    assert!(hi - lo <= 1, "{lanes:?}");
    let windows: Vec<f64> = seen.iter().map(|t| t.window.as_secs_f64()).collect();
    let (wlo, whi) = windows
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), w| (a.min(*w), b.max(*w)));
    assert!(whi - wlo <= 0.1 * whi.max(1e-9), "{windows:?}");
}

/// Offers `calls` calls at `rate` calls/s, and returns the keys per batch of
/// the batches they made.
async fn keys_per_batch(c: &Arc<Coalescer<u64, u64>>, rate: f64, calls: u64) -> f64 {
    let before = c.metrics();
    offer(c, rate, calls).await;
    let after = c.metrics();
    (after.keys - before.keys) as f64 / (after.batches - before.batches) as f64
}

/// After a burst of full batches queued for a lane (a backlog), a batch
/// opened beside running ones gathers until it is full, for at most one fixed
/// cost, instead of leaving with the calls of its instant and taking a lane
/// that a full batch needs; once no backlog has come for a while, such a
/// batch leaves at once again.
#[tokio::test(start_paused = true)]
async fn after_a_burst_batches_gather_until_full() {
    let c = scripted(
        Config::new("tune.burst")
            .dispatch(Dispatch::Auto)
            .window(Duration::from_millis(5))
            .max_batch(8)
            .max_in_flight(4),
        0.0,
    );
    // 1,000 calls/s, one per 1 ms tick: warm, then measured. A call that
    // finds a batch running leaves with the calls of its instant.
    offer(&c, 1_000.0, 2_000).await;
    let before = keys_per_batch(&c, 1_000.0, 400).await;
    assert!(before < 2.0, "{before}");
    // A burst: 400 calls at once, 50 full batches for 4 lanes.
    let tasks: Vec<_> = (0..400u64)
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move { c.load(10_000 + k).await })
        })
        .collect();
    for (k, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), Some(10_000 + k as u64));
    }
    // The same load just after: batches gather for one fixed cost (3 ms on
    // the paused clock), about three calls each.
    let after = keys_per_batch(&c, 1_000.0, 200).await;
    assert!(after >= 2.5, "{before} then {after}");
    // Long after (far more than 16 decisions of 8 batches without a
    // backlog): at once again.
    offer(&c, 1_000.0, 2_000).await;
    let later = keys_per_batch(&c, 1_000.0, 400).await;
    assert!(later < 2.0, "{before}, {after}, then {later}");
}
