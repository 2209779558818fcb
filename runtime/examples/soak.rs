//! Soak run, once with each dispatch mode (fixed window, then adaptive with four
//! lanes): at least 1,000,000 calls from many tasks over many keys, with 1% of
//! batches failing, 0.1% panicking, 0.1% running past the timeout, and 5% of callers
//! giving up early. Checks that every completed call got its own key's value, that
//! no call is left pending, that the metrics add up, and that resident memory at the
//! end stays within a small bound of memory after warm-up.
//!
//! `cargo run --release -p coalesce-runtime --example soak [-- CALLS]` (CALLS per
//! mode; bounded: each mode stops after 50 s even if CALLS were not all made, and
//! says so).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coalesce_runtime::{Coalescer, Config, Dispatch, Error};

const TASKS: u64 = 512;
const KEYS: u64 = 200_000;
const TIME_LIMIT: Duration = Duration::from_secs(50);

#[derive(Debug)]
struct Injected;

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected batch error")
    }
}

/// xorshift64*: a deterministic, dependency-free source of randomness.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    batch_errors: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    wrong: AtomicU64,
    other: AtomicU64,
    done: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_200_000);
    // Injected panics are expected; keep their messages off the output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|s| s.starts_with("injected"));
        if !injected {
            default_hook(info);
        }
    }));

    let window = run(Dispatch::Window, calls).await;
    let adaptive = run(Dispatch::Adaptive, calls).await;
    if window && adaptive {
        println!("soak: PASS");
    } else {
        std::process::exit(1);
    }
}

/// One soak run; returns whether every check held.
async fn run(dispatch: Dispatch, calls: u64) -> bool {
    let batch_seq = Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15));
    let seq = batch_seq.clone();
    let mut config = Config::new(format!("soak.{dispatch:?}").to_lowercase())
        .window(Duration::from_millis(1))
        .max_batch(256)
        .timeout(Duration::from_millis(20))
        .max_pending(100_000)
        .dispatch(dispatch);
    if dispatch == Dispatch::Adaptive {
        // Few enough lanes that calls also gather and queue, not only go alone.
        config = config.max_in_flight(4);
    }
    let coalescer = Arc::new(Coalescer::new(config, move |keys: Vec<u64>| {
        let mut r = seq.fetch_add(0x9E37_79B9, Relaxed) | 1;
        let roll = next(&mut r) % 1000;
        async move {
            tokio::task::yield_now().await;
            match roll {
                0 => panic!("injected panic"),
                1 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(HashMap::new())
                }
                2..=11 => Err(Injected),
                _ => Ok(keys
                    .into_iter()
                    .map(|k| (k, k * 2 + 1))
                    .collect::<HashMap<_, _>>()),
            }
        }
    }));

    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let warm_rss = Arc::new(AtomicU64::new(0));
    let per_task = calls.div_ceil(TASKS);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (c, counts, warm_rss) = (coalescer.clone(), counts.clone(), warm_rss.clone());
        handles.push(tokio::spawn(async move {
            let mut r = 0xD1B5_4A32_D192_ED03 ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for _ in 0..per_task {
                if started.elapsed() > TIME_LIMIT {
                    break;
                }
                let key = next(&mut r) % KEYS;
                let cancel = next(&mut r) % 100 < 5;
                let result = if cancel {
                    // Give up after a few scheduling points: before dispatch, or
                    // while the batch runs.
                    let patience = next(&mut r) % 4;
                    tokio::select! {
                        r = c.load(key) => Some(r),
                        () = async {
                            for _ in 0..=patience {
                                tokio::task::yield_now().await;
                            }
                        } => None,
                    }
                } else {
                    Some(c.load(key).await)
                };
                let counter = match result {
                    None => &counts.cancelled,
                    Some(Ok(Some(v))) if v == key * 2 + 1 => &counts.ok,
                    Some(Ok(_)) => &counts.wrong,
                    Some(Err(Error::Batch { .. })) => &counts.batch_errors,
                    Some(Err(Error::Panicked { .. })) => &counts.panics,
                    Some(Err(Error::Timeout { .. })) => &counts.timeouts,
                    Some(Err(_)) => &counts.other,
                };
                counter.fetch_add(1, Relaxed);
                if counts.done.fetch_add(1, Relaxed) + 1 == calls / 10 {
                    warm_rss.store(rss_kib(), Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("a soak task panicked");
    }
    // Let timed-out batch futures finish being dropped, then read the gauges.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let elapsed = started.elapsed();
    let end_rss = rss_kib();
    let m = coalescer.metrics();
    let get = |a: &AtomicU64| a.load(Relaxed);
    let done = get(&counts.done);
    println!(
        "soak ({dispatch:?}): {done} calls in {elapsed:.2?} ({:.0} calls/s), {TASKS} tasks, {KEYS} keys",
        done as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  ok {}  batch errors {}  panics {}  timeouts {}  cancelled by caller {}  wrong values {}  other errors {}",
        get(&counts.ok),
        get(&counts.batch_errors),
        get(&counts.panics),
        get(&counts.timeouts),
        get(&counts.cancelled),
        get(&counts.wrong),
        get(&counts.other)
    );
    println!(
        "  rss after warm-up {} KiB, at end {} KiB",
        get(&warm_rss),
        end_rss
    );
    println!("{m}");

    let mut failures = Vec::new();
    if done < calls && elapsed <= TIME_LIMIT {
        failures.push(format!("only {done} of {calls} calls were made"));
    }
    if get(&counts.wrong) > 0 || get(&counts.other) > 0 {
        failures.push("a call got a wrong value or an unexpected error".to_owned());
    }
    if m.pending != 0 || m.in_flight != 0 {
        failures.push(format!(
            "left pending {} in flight {}",
            m.pending, m.in_flight
        ));
    }
    let failed = m.failed_calls();
    let ok_metric = m.calls - failed - m.cancelled_calls;
    if m.calls != done || ok_metric != get(&counts.ok) {
        failures.push(format!(
            "metrics do not add up: calls {} (made {done}), ok {ok_metric} (seen {}), failed {failed}, cancelled {}",
            m.calls,
            get(&counts.ok),
            m.cancelled_calls
        ));
    }
    if get(&counts.batch_errors) == 0
        || get(&counts.panics) == 0
        || get(&counts.timeouts) == 0
        || get(&counts.cancelled) == 0
    {
        failures.push("a fault kind was never injected".to_owned());
    }
    let warm = get(&warm_rss);
    if warm > 0 && end_rss > warm + 64 * 1024 {
        failures.push(format!("memory grew from {warm} KiB to {end_rss} KiB"));
    }
    for f in &failures {
        eprintln!("soak ({dispatch:?}): FAIL: {f}");
    }
    failures.is_empty()
}
