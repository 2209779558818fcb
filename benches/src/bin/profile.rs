//! Runs one contender's workload in a loop, for a profiler to sample (`perf record`).
//!
//! Usage: `cargo run --profile profiling -p coalesce-benches --bin profile -- CONTENDER WORKLOAD [MAX_BATCH] [SECONDS]`
//! where CONTENDER is a label of the tables (`direct`, `coalesce-adaptive`, ...) and
//! WORKLOAD is `burst` (10,000 concurrent calls, pure CPU), `roundtrip` (the same with
//! a 2 ms round trip per batch), `idle` (one caller, sequential calls) or `load`
//! (open-loop arrivals at `COALESCE_RATE` calls/s, default 16,000, 2 ms round trip).
//! `COALESCE_WINDOW_US` overrides `coalesce`'s window.
//! Prints the ns per call of the loop, and for `load` the p50 and p99, so that a
//! profile can be matched to a table row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coalesce_benches::{
    burst, offered_load, runtime, sequential, Kind, Loader, Run, Work, BURST, WINDOW,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: profile CONTENDER burst|roundtrip|idle|load [MAX_BATCH] [SECONDS]";
    let Some(kind) = args
        .first()
        .and_then(|l| Kind::ALL.into_iter().find(|k| k.label() == l))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let workload = args.get(1).map(String::as_str).unwrap_or("burst");
    let max_batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let rate: f64 = std::env::var("COALESCE_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16_000.0);
    let work = if matches!(workload, "roundtrip" | "load") {
        Work::RoundTrip
    } else {
        Work::Cpu
    };
    let rt = runtime();
    rt.block_on(async {
        let window = std::env::var("COALESCE_WINDOW_US")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(WINDOW, Duration::from_micros);
        let loader = Arc::new(Loader::new(kind, work, max_batch, window));
        let until = Instant::now() + Duration::from_secs(seconds);
        let (mut calls, mut wall, mut round) = (0usize, Duration::ZERO, 0u64);
        let mut latencies = Vec::new();
        while Instant::now() < until {
            let base = round * BURST as u64;
            let run = match workload {
                "idle" => sequential(&loader, 1000, base).await,
                "burst" | "roundtrip" => {
                    let run = burst(&loader, BURST, base, true).await;
                    latencies.extend_from_slice(&run.latencies);
                    run
                }
                "load" => {
                    let run =
                        offered_load(&loader, rate, Duration::from_millis(500), base * 64).await;
                    latencies.extend_from_slice(&run.latencies);
                    run
                }
                _ => {
                    eprintln!("{usage}");
                    std::process::exit(2);
                }
            };
            calls += run.calls;
            wall += run.wall;
            round += 1;
        }
        println!(
            "{} {workload} max_batch {max_batch}: {calls} calls, {:.0} ns per call",
            kind.label(),
            wall.as_nanos() as f64 / calls.max(1) as f64
        );
        if !latencies.is_empty() {
            let run = Run::new(wall, latencies);
            println!(
                "  p50 {:?}, p99 {:?} (load: {rate} calls/s)",
                run.quantile(0.5),
                run.quantile(0.99)
            );
        }
        if let Loader::Coalesce(c) = &*loader {
            let m = c.metrics();
            println!(
                "  {} batches, {:.1} keys per batch; wait p50 {:?} p99 {:?}; run p50 {:?} p99 {:?}",
                m.batches,
                m.keys as f64 / m.batches.max(1) as f64,
                m.wait.p50,
                m.wait.p99,
                m.run.p50,
                m.run.p99
            );
        }
    });
}
