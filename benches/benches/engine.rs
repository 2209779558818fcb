//! The three in-process workloads of issue 4, every contender side by side:
//! `engine_overhead` (10,000-task burst, pure-CPU batch fn, max_batch 1..1000),
//! `round_trip` (batch fn awaits 2 ms per batch; direct awaits 2 ms per key behind a
//! 10-permit semaphore) and `idle_road` (one caller, 1,000 sequential calls).

use std::sync::Arc;
use std::time::Duration;

use coalesce_benches::{burst, runtime, sequential, Kind, Loader, Work, BURST, WINDOW};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion, group: &str, work: Work, sizes: &[usize], calls: usize, seq: bool) {
    let rt = runtime();
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(calls as u64));
    for &max_batch in sizes {
        for kind in Kind::ALL {
            let loader =
                rt.block_on(async { Arc::new(Loader::new(kind, work, max_batch, WINDOW)) });
            let mut base = 0u64;
            g.bench_with_input(
                BenchmarkId::new(kind.label(), max_batch),
                &loader,
                |b, l| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                base += calls as u64;
                                let run = if seq {
                                    sequential(l, calls, base).await
                                } else {
                                    burst(l, calls, base, false).await
                                };
                                total += run.wall;
                            }
                            total
                        })
                    })
                },
            );
            rt.block_on(async { drop(loader) });
        }
    }
    g.finish();
}

fn engine_overhead(c: &mut Criterion) {
    bench(
        c,
        "engine_overhead",
        Work::Cpu,
        &[1, 10, 100, 1000],
        BURST,
        false,
    );
}

fn round_trip(c: &mut Criterion) {
    bench(c, "round_trip", Work::RoundTrip, &[1000], BURST, false);
}

fn idle_road(c: &mut Criterion) {
    bench(c, "idle_road", Work::Cpu, &[1000], 1000, true);
}

criterion_group!(benches, engine_overhead, round_trip, idle_road);
criterion_main!(benches);
