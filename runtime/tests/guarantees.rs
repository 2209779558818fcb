//! One test per guarantee of DESIGN.md ("Guarantees"): every call completes, a
//! caller gets exactly its own entry, a cancelled caller cancels nobody else,
//! malformed output never becomes a wrong answer, memory is bounded, and a static
//! coalescer is not bound to one runtime.
//!
//! Time-dependent tests run under Tokio's paused clock; a hang shows up as the
//! one-hour guard (`no_hang`) firing instead of the test blocking forever.

mod common;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use coalesce_runtime::{Coalescer, Config, Core, Error, PerKey};
use futures::future::join_all;

type Batches = Arc<Mutex<Vec<Vec<u64>>>>;

/// The value every test expects for `k`.
fn f(k: u64) -> u64 {
    k.wrapping_mul(7919) + 13
}

fn map_of(keys: &[u64]) -> HashMap<u64, u64> {
    keys.iter().map(|&k| (k, f(k))).collect()
}

/// Fails the test (rather than blocking it) if `fut` never completes. Under a paused
/// clock the guard fires as soon as nothing else can make progress.
async fn no_hang<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(24 * 3600), fut)
        .await
        .expect("a call hung")
}

/// A small deterministic generator (xorshift64*), so the tests need no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sets a flag when dropped: shows that a batch future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

fn assert_idle<E>(c: &Coalescer<u64, u64, E>)
where
    E: Send + Sync + 'static,
{
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "not idle: {m}");
}

// ---------------------------------------------------------------------------
// 1. Every call completes.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_call_completes_when_the_batch_returns_err() {
    #[derive(Debug)]
    struct Down;
    let c = Arc::new(Coalescer::new(
        Config::new("g.err").max_batch(7),
        |_keys: Vec<u64>| async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Err::<HashMap<u64, u64>, _>(Down)
        },
    ));
    // 60 calls over 20 keys: several batches, with duplicates.
    let out = no_hang(join_all((0..60u64).map(|i| c.load(i % 20)))).await;
    for r in &out {
        assert!(matches!(r, Err(Error::Batch { .. })), "{r:?}");
    }
    let m = c.metrics();
    assert_eq!((m.batch_errors, m.calls, m.failed_calls()), (60, 60, 60));
    assert!(m.batches >= 3, "{m}");
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn every_call_completes_when_the_batch_fn_panics_before_its_first_await() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("g.panic.early"),
        move |keys: Vec<u64>| {
            let i = n2.fetch_add(1, SeqCst);
            // Batch 0 panics in the batch fn itself, before it even returns a future.
            if i == 0 {
                panic!("boom in the fn");
            }
            async move {
                // Batch 1 panics on the first poll of its future, before any await.
                if i == 1 {
                    panic!("boom on first poll");
                }
                tokio::task::yield_now().await;
                map_of(&keys)
            }
        },
    ));
    for expected in ["boom in the fn", "boom on first poll"] {
        let out = no_hang(join_all((0..10u64).map(|k| c.load(k % 4)))).await;
        for r in out {
            match r {
                Err(Error::Panicked { message, .. }) => {
                    assert_eq!(
                        &*message,
                        format!("the batch function panicked: {expected}")
                    );
                }
                other => panic!("expected a panic error, got {other:?}"),
            }
        }
        assert_idle(&c);
    }
    // The coalescer keeps serving.
    let out = no_hang(join_all((0..10u64).map(|k| c.load(k)))).await;
    for (k, r) in (0..10u64).zip(out) {
        assert_eq!(r.unwrap(), Some(f(k)));
    }
    let m = c.metrics();
    assert_eq!((m.panics, m.batches, m.calls), (20, 3, 30));
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn every_call_completes_when_the_batch_panics_after_an_await() {
    let c = Arc::new(Coalescer::new(
        Config::new("g.panic.late"),
        |keys: Vec<u64>| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if keys.contains(&3) {
                panic!("late boom");
            }
            map_of(&keys)
        },
    ));
    let out = no_hang(join_all((0..12u64).map(|k| c.load(k % 5)))).await;
    for r in out {
        assert!(
            matches!(&r, Err(Error::Panicked { message, .. })
                if &**message == "the batch function panicked: late boom"),
            "{r:?}"
        );
    }
    assert_eq!(c.metrics().panics, 12);
    assert_idle(&c);
    assert_eq!(no_hang(c.load(4)).await.unwrap(), Some(f(4)));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_batch_among_concurrent_batches_fails_only_its_own_callers() {
    let batches: Batches = Default::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (b2, r2, p2) = (batches.clone(), running.clone(), peak.clone());
    let c = Arc::new(Coalescer::new(
        Config::new("g.panic.concurrent")
            .max_batch(5)
            .max_in_flight(4),
        move |keys: Vec<u64>| {
            b2.lock().unwrap().push(keys.clone());
            let (r, p) = (r2.clone(), p2.clone());
            async move {
                p.fetch_max(r.fetch_add(1, SeqCst) + 1, SeqCst);
                // Decremented even when this future panics or is dropped.
                struct Leave(Arc<AtomicUsize>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, SeqCst);
                    }
                }
                let _leave = Leave(r);
                tokio::time::sleep(Duration::from_millis(5)).await;
                if keys.contains(&13) {
                    panic!("boom in the batch of 13");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                map_of(&keys)
            }
        },
    ));
    let out = no_hang(join_all((0..40u64).map(|k| c.load(k)))).await;
    let doomed: HashSet<u64> = batches
        .lock()
        .unwrap()
        .iter()
        .find(|b| b.contains(&13))
        .expect("13 was dispatched")
        .iter()
        .copied()
        .collect();
    assert!(peak.load(SeqCst) >= 2, "batches did not overlap");
    for (k, r) in (0..40u64).zip(out) {
        if doomed.contains(&k) {
            assert!(matches!(r, Err(Error::Panicked { .. })), "{k}: {r:?}");
        } else {
            assert_eq!(r.unwrap(), Some(f(k)), "key {k}");
        }
    }
    let m = c.metrics();
    assert_eq!(m.panics, doomed.len() as u64);
    assert_eq!(running.load(SeqCst), 0);
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn a_batch_exceeding_its_timeout_fails_at_the_timeout_and_is_dropped() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d2 = dropped.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("g.timeout.slow")
            .window(Duration::from_millis(5))
            .timeout(Duration::from_millis(50)),
        move |keys: Vec<u64>| {
            let flag = DropFlag(d2.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_millis(200)).await;
                map_of(&keys)
            }
        },
    ));
    let start = tokio::time::Instant::now();
    let out = no_hang(join_all((0..6u64).map(|k| c.load(k % 3)))).await;
    for r in out {
        assert!(
            matches!(r, Err(Error::Timeout { after, .. }) if after == Duration::from_millis(50)),
            "{r:?}"
        );
    }
    // Window + timeout, not the batch's own 200 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(55));
    assert!(
        dropped.load(SeqCst),
        "the timed-out batch future was not dropped"
    );
    assert_eq!(c.metrics().timeouts, 6);
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn a_batch_fn_that_never_returns_times_out_and_frees_its_slot() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("g.timeout.never")
            .max_in_flight(1)
            .max_batch(4)
            .timeout(Duration::from_millis(20)),
        move |keys: Vec<u64>| {
            let first = n2.fetch_add(1, SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                map_of(&keys)
            }
        },
    ));
    // 8 distinct keys: two full batches; the first never returns and holds the only
    // in-flight slot until its timeout.
    let out = no_hang(join_all((0..8u64).map(|k| c.load(k)))).await;
    let timeouts = out
        .iter()
        .filter(|r| matches!(r, Err(Error::Timeout { .. })))
        .count();
    assert_eq!(timeouts, 4);
    for (k, r) in (0..8u64).zip(&out) {
        if let Ok(v) = r {
            assert_eq!(*v, Some(f(k)));
        }
    }
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 4);
    assert_idle(&c);
}

static SHUTDOWN_GATHERING: std::sync::LazyLock<Core<(), u64, u64>> =
    std::sync::LazyLock::new(|| {
        Core::new(Config::new("g.shutdown.gathering").window(Duration::from_secs(3600)))
    });

async fn plain(keys: Vec<u64>) -> HashMap<u64, u64> {
    tokio::task::yield_now().await;
    map_of(&keys)
}

fn paused_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_runtime_dropped_while_calls_gather_leaves_the_static_coalescer_usable() {
    let core = &*SHUTDOWN_GATHERING;
    let rt = paused_rt();
    let handles = rt.block_on(async {
        let hs: Vec<_> = (0..10u64)
            .map(|k| tokio::spawn(core.load((), k % 6, |_, keys| plain(keys))))
            .collect();
        // Everyone is admitted and gathering; the one-hour window is far off.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(core.metrics().pending, 10);
        hs
    });
    drop(rt);
    for h in handles {
        drop(h);
    }
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    // The batch is abandoned (its callers were dropped first) or lost (its
    // driver was): either way it never ran.
    assert_eq!(
        (
            m.cancelled_calls,
            m.abandoned_batches + m.lost_batches,
            m.batches
        ),
        (10, 1, 0),
        "{m}"
    );

    // A fresh runtime uses the same static coalescer; its paused clock runs out the
    // one-hour window at once.
    let rt = paused_rt();
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let out = no_hang(join_all(
            (0..5u64).map(|k| core.load((), k, |_, keys| plain(keys))),
        ))
        .await;
        for (k, r) in (0..5u64).zip(out) {
            assert_eq!(r.unwrap(), Some(f(k)));
        }
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
    });
    drop(rt);
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    assert_eq!((m.cancelled_calls, m.batches, m.calls), (10, 1, 15), "{m}");
}

static SHUTDOWN_RUNNING: std::sync::LazyLock<Core<(), u64, u64>> = std::sync::LazyLock::new(|| {
    Core::new(
        Config::new("g.shutdown.running")
            .window(Duration::from_millis(1))
            .max_batch(4),
    )
});

#[test]
fn a_runtime_shut_down_while_a_batch_runs_leaves_the_static_coalescer_usable() {
    let core = &*SHUTDOWN_RUNNING;
    let started = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    for k in 0..8u64 {
        let (started, tx) = (started.clone(), tx.clone());
        rt.spawn(async move {
            core.load((), k % 5, move |_, keys: Vec<u64>| {
                let (started, tx) = (started.clone(), tx.clone());
                async move {
                    started.fetch_add(1, SeqCst);
                    let _ = tx.send(());
                    // Never completes on its own.
                    std::future::pending::<()>().await;
                    map_of(&keys)
                }
            })
            .await
        });
    }
    drop(tx);
    // Wait (on this plain thread) until a batch is running.
    rx.recv_timeout(Duration::from_secs(30))
        .expect("no batch started");
    rt.shutdown_timeout(Duration::from_secs(10));
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    // Stopped by its callers leaving, or lost with its driver: whichever the
    // runtime dropped first.
    assert!(m.cancelled_batches + m.lost_batches >= 1, "{m}");
    // Each call was dropped with its runtime, or (polled while the runtime shut
    // down, its batches lost again and again) gave up with `Error::Shutdown`.
    assert_eq!(m.cancelled_calls + m.shutdown_errors, 8, "{m}");

    // And a second, fresh runtime (this time a paused current-thread one).
    let rt = paused_rt();
    rt.block_on(async {
        let out = no_hang(join_all(
            (0..8u64).map(|k| core.load((), k, |_, keys| plain(keys))),
        ))
        .await;
        for (k, r) in (0..8u64).zip(out) {
            assert_eq!(r.unwrap(), Some(f(k)));
        }
    });
    drop(rt);
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

static TWO_RUNTIMES: std::sync::LazyLock<Core<(), u64, u64>> = std::sync::LazyLock::new(|| {
    Core::new(
        Config::new("g.two_runtimes")
            .window(Duration::from_micros(200))
            .max_batch(16),
    )
});

#[test]
fn a_static_coalescer_serves_two_runtimes_at_the_same_time() {
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                for round in 0..30u64 {
                    // Overlapping keys: both threads ask for 0..60 shifted a little.
                    let keys: Vec<u64> = (0..60u64).map(|i| (i + round + t * 7) % 80).collect();
                    let out = rt.block_on(async {
                        let hs: Vec<_> = keys
                            .iter()
                            .map(|&k| {
                                tokio::spawn(async move {
                                    TWO_RUNTIMES
                                        .load((), k, |_, keys: Vec<u64>| async move {
                                            tokio::task::yield_now().await;
                                            map_of(&keys)
                                        })
                                        .await
                                })
                            })
                            .collect();
                        tokio::time::timeout(Duration::from_secs(60), join_all(hs))
                            .await
                            .expect("a call hung")
                    });
                    for (&k, r) in keys.iter().zip(out) {
                        assert_eq!(r.unwrap().unwrap(), Some(f(k)), "thread {t} key {k}");
                    }
                }
                drop(rt);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = TWO_RUNTIMES.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    assert_eq!(m.calls, 2 * 30 * 60);
    assert_eq!(m.failed_calls() + m.cancelled_calls, 0, "{m}");
}

// ---------------------------------------------------------------------------
// 2. Cancellation.
// ---------------------------------------------------------------------------

/// A coalescer recording the keys of each batch, whose batches take `run` to finish.
fn recorded(
    name: &'static str,
    config: Config,
    run: Duration,
) -> (Arc<Coalescer<u64, u64>>, Batches) {
    let batches: Batches = Default::default();
    let b2 = batches.clone();
    let c = Coalescer::new(config.clone(), move |keys: Vec<u64>| {
        b2.lock().unwrap().push(keys.clone());
        async move {
            tokio::time::sleep(run).await;
            map_of(&keys)
        }
    });
    assert_eq!(c.config().name(), name);
    (Arc::new(c), batches)
}

#[tokio::test(start_paused = true)]
async fn a_driver_dropped_before_dispatch_cancels_nobody_else() {
    let (c, batches) = recorded(
        "g.cancel.before",
        Config::new("g.cancel.before").window(Duration::from_millis(10)),
        Duration::from_millis(5),
    );
    // The first caller (the batch's driver) is polled once, then dropped.
    let mut first = Box::pin(c.load(2));
    assert!(futures::poll!(first.as_mut()).is_pending());
    let others: Vec<_> = [1u64, 2, 3]
        .into_iter()
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move { c.load(k).await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(c.metrics().pending, 4);
    drop(first);
    assert_eq!(c.metrics().pending, 3);
    for (k, h) in [1u64, 2, 3].into_iter().zip(others) {
        assert_eq!(no_hang(h).await.unwrap().unwrap(), Some(f(k)));
    }
    let mut sent = batches.lock().unwrap().clone();
    sent.iter_mut().for_each(|b| b.sort());
    assert_eq!(sent, vec![vec![1, 2, 3]]);
    let m = c.metrics();
    assert_eq!((m.cancelled_calls, m.calls, m.batches), (1, 4, 1), "{m}");
    assert_eq!(m.abandoned_keys, 0);
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn callers_dropped_during_the_batch_cancel_nobody_else() {
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (s2, d2) = (started.clone(), dropped.clone());
    let c = Arc::new(Coalescer::new(
        Config::new("g.cancel.during").window(Duration::from_millis(1)),
        move |keys: Vec<u64>| {
            s2.fetch_add(1, SeqCst);
            let flag = DropFlag(d2.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_millis(100)).await;
                map_of(&keys)
            }
        },
    ));
    let spawn = |k: u64| {
        let c = c.clone();
        tokio::spawn(async move { c.load(k).await })
    };
    // The driver (key 1), a caller sharing key 2 with a survivor, and survivors.
    let driver = spawn(1);
    tokio::task::yield_now().await;
    let leaver = spawn(2);
    let survivors: Vec<_> = [2u64, 3, 4].into_iter().map(spawn).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(started.load(SeqCst), 1, "the batch should be running");
    assert_eq!(c.metrics().pending, 5);
    driver.abort();
    leaver.abort();
    assert!(driver.await.unwrap_err().is_cancelled());
    assert!(leaver.await.unwrap_err().is_cancelled());
    assert_eq!(c.metrics().pending, 3);
    assert!(
        !dropped.load(SeqCst),
        "the batch was dropped with callers left"
    );
    for (k, h) in [2u64, 3, 4].into_iter().zip(survivors) {
        assert_eq!(no_hang(h).await.unwrap().unwrap(), Some(f(k)));
    }
    assert_eq!(started.load(SeqCst), 1, "the batch was restarted");
    let m = c.metrics();
    assert_eq!(
        (m.cancelled_calls, m.cancelled_batches, m.batches, m.calls),
        (2, 0, 1, 5),
        "{m}"
    );
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_after_its_result_is_ready_but_unread_cancels_nobody_else() {
    let (c, _) = recorded(
        "g.cancel.after",
        Config::new("g.cancel.after").window(Duration::from_millis(2)),
        Duration::from_millis(3),
    );
    let driver = {
        let c = c.clone();
        tokio::spawn(async move { c.load(1).await })
    };
    tokio::task::yield_now().await;
    // Two callers of key 5 and one of key 6, polled by hand so we choose when to read.
    let mut a = Box::pin(c.load(5));
    let mut b = Box::pin(c.load(5));
    let mut lone = Box::pin(c.load(6));
    assert!(futures::poll!(a.as_mut()).is_pending());
    assert!(futures::poll!(b.as_mut()).is_pending());
    assert!(futures::poll!(lone.as_mut()).is_pending());
    assert_eq!(no_hang(driver).await.unwrap().unwrap(), Some(f(1)));
    // The batch is done: every entry is ready, none of the three read yet.
    assert_eq!(
        c.metrics().pending,
        0,
        "answered calls are no longer pending"
    );
    drop(a);
    drop(lone);
    match futures::poll!(b.as_mut()) {
        Poll::Ready(r) => assert_eq!(r.unwrap(), Some(f(5))),
        Poll::Pending => panic!("a completed batch left its caller pending"),
    }
    let m = c.metrics();
    assert_eq!((m.cancelled_calls, m.calls, m.batches), (2, 4, 1), "{m}");
    assert_eq!(m.failed_calls(), 0);
    assert_idle(&c);
}

/// A value whose `Drop` panics (user code) for one id.
#[derive(Debug, PartialEq)]
struct Bomb(u64);

impl Clone for Bomb {
    fn clone(&self) -> Self {
        Bomb(self.0)
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 == 666 && !std::thread::panicking() {
            panic!("provoked: Drop of 666");
        }
    }
}

/// A caller that leaves after its entry is ready leaves it in the batch,
/// which whoever lets go of the batch last drops. That may be another caller:
/// a panic in the value's `Drop` must not reach it (it did), for a map or a
/// streamed batch, with the first caller dropped before or after the other
/// reads its answer.
#[tokio::test(start_paused = true)]
async fn a_value_dropped_by_another_callers_call_cannot_panic_into_it() {
    common::quiet();
    let bomb = |k: u64| Bomb(if k == 1 { 666 } else { k });
    let map = Coalescer::new(
        Config::new("g.bomb.map").window(Duration::from_millis(1)),
        move |keys: Vec<u64>| async move {
            Ok::<_, String>(
                keys.into_iter()
                    .map(|k| (k, bomb(k)))
                    .collect::<HashMap<_, _>>(),
            )
        },
    );
    let streamed = Coalescer::new(
        Config::new("g.bomb.stream").window(Duration::from_millis(1)),
        move |keys: Vec<u64>| async move {
            coalesce_runtime::Streamed(futures::stream::iter(
                keys.into_iter().map(move |k| Ok::<_, String>((k, bomb(k)))),
            ))
        },
    );
    for c in [&map, &streamed] {
        for first_leaves_first in [true, false] {
            let mut a = Box::pin(c.load(1));
            let mut b = Box::pin(c.load(2));
            assert!(futures::poll!(a.as_mut()).is_pending());
            assert!(futures::poll!(b.as_mut()).is_pending());
            tokio::time::sleep(Duration::from_millis(20)).await;
            if first_leaves_first {
                drop(a);
                let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(b)).await;
                assert_eq!(
                    r.expect("a panic reached the other caller").unwrap(),
                    Some(Bomb(2))
                );
            } else {
                let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(b.as_mut()))
                    .await;
                assert_eq!(
                    r.expect("a panic reached the caller").unwrap(),
                    Some(Bomb(2))
                );
                drop(b);
                let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(a)));
                assert!(dropped.is_ok(), "a cancelled caller's drop panicked");
            }
            let m = c.metrics();
            assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_callers_all_left_before_dispatch_is_not_sent() {
    // Ordered `Vec` output: the positions must map back past the dropped key.
    let batches: Batches = Default::default();
    let b2 = batches.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("g.cancel.key").window(Duration::from_millis(10)),
        move |keys: Vec<u64>| {
            b2.lock().unwrap().push(keys.clone());
            async move { keys.iter().map(|&k| f(k)).collect::<Vec<u64>>() }
        },
    ));
    let spawn = |k: u64| {
        let c = c.clone();
        tokio::spawn(async move { c.load(k).await })
    };
    let first = spawn(1);
    tokio::task::yield_now().await;
    // Key 7 (two callers, both leave) joins between keys that stay.
    let mut gone_a = Box::pin(c.load(7));
    let mut gone_b = Box::pin(c.load(7));
    assert!(futures::poll!(gone_a.as_mut()).is_pending());
    let rest: Vec<_> = [2u64, 3].into_iter().map(spawn).collect();
    tokio::task::yield_now().await;
    assert!(futures::poll!(gone_b.as_mut()).is_pending());
    let last = spawn(4);
    tokio::task::yield_now().await;
    drop(gone_a);
    drop(gone_b);
    assert_eq!(no_hang(first).await.unwrap().unwrap(), Some(f(1)));
    for (k, h) in [2u64, 3].into_iter().zip(rest) {
        assert_eq!(no_hang(h).await.unwrap().unwrap(), Some(f(k)));
    }
    assert_eq!(no_hang(last).await.unwrap().unwrap(), Some(f(4)));
    assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3, 4]]);
    let m = c.metrics();
    assert_eq!(
        (m.abandoned_keys, m.keys, m.cancelled_calls, m.calls),
        (1, 4, 2, 6),
        "{m}"
    );
    assert_eq!(m.batch_size.max, 4);
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn a_queued_batch_whose_callers_all_left_is_not_run() {
    let (c, batches) = recorded(
        "g.cancel.batch",
        Config::new("g.cancel.batch")
            .window(Duration::from_millis(1))
            .max_in_flight(1),
        Duration::from_millis(50),
    );
    let spawn = |k: u64| {
        let c = c.clone();
        tokio::spawn(async move { c.load(k).await })
    };
    // Batch A runs for 50 ms and holds the only slot.
    let a: Vec<_> = [1u64, 2].into_iter().map(spawn).collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Batch B becomes due and waits in the queue; all its callers leave.
    let b: Vec<_> = [10u64, 11, 11].into_iter().map(spawn).collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.metrics().pending, 5);
    for h in &b {
        h.abort();
    }
    for h in b {
        assert!(h.await.unwrap_err().is_cancelled());
    }
    for (k, h) in [1u64, 2].into_iter().zip(a) {
        assert_eq!(no_hang(h).await.unwrap().unwrap(), Some(f(k)));
    }
    // Later traffic still gets the slot.
    assert_eq!(no_hang(c.load(20)).await.unwrap(), Some(f(20)));
    let sent = batches.lock().unwrap().clone();
    assert!(
        sent.iter().all(|b| !b.contains(&10) && !b.contains(&11)),
        "{sent:?}"
    );
    let m = c.metrics();
    assert_eq!(
        (
            m.abandoned_batches,
            m.abandoned_keys,
            m.cancelled_calls,
            m.batches
        ),
        (1, 2, 3, 2),
        "{m}"
    );
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_task_is_a_cancellation() {
    let (c, batches) = recorded(
        "g.cancel.abort",
        Config::new("g.cancel.abort").window(Duration::from_millis(10)),
        Duration::from_millis(10),
    );
    let spawn = |k: u64| {
        let c = c.clone();
        tokio::spawn(async move { c.load(k).await })
    };
    let hs: Vec<_> = (0..6u64).map(spawn).collect();
    tokio::task::yield_now().await;
    // Abort the driver and key 3's only caller while gathering.
    hs[0].abort();
    hs[3].abort();
    tokio::task::yield_now().await;
    assert_eq!(c.metrics().pending, 4);
    for (k, h) in (0..6u64).zip(hs) {
        match h.await {
            Ok(r) => {
                assert!(k != 0 && k != 3);
                assert_eq!(r.unwrap(), Some(f(k)));
            }
            Err(e) => {
                assert!(e.is_cancelled() && (k == 0 || k == 3), "{k}: {e}");
            }
        }
    }
    let mut sent = batches.lock().unwrap().clone();
    sent.iter_mut().for_each(|b| b.sort());
    assert_eq!(sent, vec![vec![1, 2, 4, 5]]);
    let m = c.metrics();
    assert_eq!(
        (m.cancelled_calls, m.abandoned_keys, m.calls),
        (2, 2, 6),
        "{m}"
    );
    assert_idle(&c);
}

// ---------------------------------------------------------------------------
// 3. No mixing.
// ---------------------------------------------------------------------------

fn mixing_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 10,000 calls over 500 keys from many tasks; every caller checks its own key.
fn ten_thousand_calls(c: Arc<Coalescer<u64, u64>>, seed: u64) {
    let mut rng = Rng(seed);
    let keys: Vec<(u64, u64)> = (0..10_000)
        .map(|_| (rng.below(500), rng.below(3)))
        .collect();
    let rt = mixing_rt();
    rt.block_on(async {
        let hs: Vec<_> = keys
            .iter()
            .map(|&(k, pause)| {
                let c = c.clone();
                tokio::spawn(async move {
                    if pause > 0 {
                        tokio::time::sleep(Duration::from_micros(pause * 300)).await;
                    }
                    (k, c.load(k).await)
                })
            })
            .collect();
        let out = tokio::time::timeout(Duration::from_secs(120), join_all(hs))
            .await
            .expect("calls hung");
        for r in out {
            let (k, r) = r.unwrap();
            assert_eq!(r.unwrap(), Some(f(k)), "key {k} got another key's entry");
        }
    });
    let m = c.metrics();
    assert_eq!((m.calls, m.pending, m.in_flight), (10_000, 0, 0), "{m}");
    assert!(m.batches > 1 && m.batch_size.max <= 64, "{m}");
}

/// Batch output in a scrambled order, after a random short delay.
fn scramble(keys: &mut [u64]) -> u64 {
    let seed = keys.iter().fold(0x9E37_79B9_7F4A_7C15u64, |a, &k| {
        (a ^ k).wrapping_mul(0x100_0000_01B3)
    });
    let mut rng = Rng(seed | 1);
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.below(i as u64 + 1) as usize);
    }
    rng.below(400)
}

#[test]
fn ten_thousand_calls_through_a_map_each_get_their_own_entry() {
    let c = Arc::new(Coalescer::new(
        Config::new("g.mix.map")
            .window(Duration::from_micros(300))
            .max_batch(64),
        |mut keys: Vec<u64>| async move {
            let delay = scramble(&mut keys);
            tokio::time::sleep(Duration::from_micros(delay)).await;
            // Inserted in scrambled order: the map's order carries no meaning.
            keys.into_iter()
                .map(|k| (k, f(k)))
                .collect::<HashMap<_, _>>()
        },
    ));
    ten_thousand_calls(c, 0xDEAD_BEEF);
}

#[test]
fn ten_thousand_calls_through_an_ordered_vec_each_get_their_own_entry() {
    let c = Arc::new(Coalescer::new(
        Config::new("g.mix.vec")
            .window(Duration::from_micros(300))
            .max_batch(64),
        |keys: Vec<u64>| async move {
            let mut probe = keys.clone();
            let delay = scramble(&mut probe);
            tokio::time::sleep(Duration::from_micros(delay)).await;
            keys.iter().map(|&k| f(k)).collect::<Vec<u64>>()
        },
    ));
    ten_thousand_calls(c, 0x0BAD_CAFE);
}

#[tokio::test(start_paused = true)]
async fn entries_for_keys_nobody_asked_for_are_ignored_and_counted() {
    let c = Arc::new(Coalescer::new(
        Config::new("g.mix.extra").max_batch(10),
        |keys: Vec<u64>| async move {
            // Every real entry, three strangers, and a duplicate with a wrong value.
            let mut out: Vec<(u64, Result<u64, ()>)> =
                keys.iter().map(|&k| (k, Ok(f(k)))).collect();
            out.extend([(1000, Ok(1)), (1001, Ok(2)), (1002, Ok(3))]);
            out.push((keys[0], Ok(u64::MAX)));
            PerKey(out)
        },
    ));
    let out = no_hang(join_all((0..30u64).map(|i| c.load(i % 20)))).await;
    for (i, r) in (0..30u64).zip(out) {
        assert_eq!(r.unwrap(), Some(f(i % 20)));
    }
    let m = c.metrics();
    // Keys 0..20 fill two batches; the repeats of 0..10 join the first (full,
    // not yet started) rather than fetch their keys again.
    assert_eq!((m.batches, m.keys, m.dedup_hits), (2, 20, 10));
    assert_eq!(m.unrequested_entries, 2 * 4, "{m}");
    assert_eq!(m.failed_calls(), 0);
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn a_vec_of_the_wrong_length_fails_every_caller_with_shape() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("g.mix.shape").window(Duration::from_millis(10)),
        move |keys: Vec<u64>| {
            let i = n2.fetch_add(1, SeqCst);
            async move {
                let mut v: Vec<u64> = keys.iter().map(|&k| f(k)).collect();
                if i == 0 {
                    // One value too many.
                    v.push(0);
                } else {
                    // One value for each key *ever gathered*, including the
                    // abandoned one: still the wrong length for the keys sent.
                    v.push(f(99));
                }
                v
            }
        },
    ));
    let out = no_hang(join_all((0..9u64).map(|i| c.load(i % 4)))).await;
    for r in out {
        assert!(
            matches!(
                r,
                Err(Error::Shape {
                    keys: 4,
                    values: 5,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // Second batch: keys 1, 99, 2 gathered; 99's only caller leaves before dispatch.
    let spawn = |k: u64| {
        let c = c.clone();
        tokio::spawn(async move { c.load(k).await })
    };
    let h1 = spawn(1);
    tokio::task::yield_now().await;
    let mut gone = Box::pin(c.load(99));
    assert!(futures::poll!(gone.as_mut()).is_pending());
    let h2 = spawn(2);
    tokio::task::yield_now().await;
    drop(gone);
    for h in [h1, h2] {
        let r = no_hang(h).await.unwrap();
        assert!(
            matches!(
                r,
                Err(Error::Shape {
                    keys: 2,
                    values: 3,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let m = c.metrics();
    assert_eq!(m.shape_errors, 11, "{m}");
    assert_idle(&c);
}

// ---------------------------------------------------------------------------
// 4. Bounded memory.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_flood_of_100_000_calls_never_admits_more_than_max_pending() {
    let keys_running = Arc::new(AtomicUsize::new(0));
    let peak_keys = Arc::new(AtomicUsize::new(0));
    let (kr, pk) = (keys_running.clone(), peak_keys.clone());
    let c = Arc::new(Coalescer::new(
        Config::new("g.flood")
            .max_pending(1000)
            .max_batch(100)
            .window(Duration::from_millis(1)),
        move |keys: Vec<u64>| {
            let (kr, pk) = (kr.clone(), pk.clone());
            async move {
                let now = kr.fetch_add(keys.len(), SeqCst) + keys.len();
                pk.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                kr.fetch_sub(keys.len(), SeqCst);
                map_of(&keys)
            }
        },
    ));
    let mut peak_pending = 0u64;
    let mut handles = Vec::with_capacity(100_000);
    // 100 waves of 1,000 distinct keys, 3 ms apart: faster than batches finish.
    for wave in 0..100u64 {
        for i in 0..1000u64 {
            let c = c.clone();
            let k = wave * 1000 + i;
            handles.push(tokio::spawn(async move { (k, c.load(k).await) }));
        }
        tokio::task::yield_now().await;
        peak_pending = peak_pending.max(c.metrics().pending);
        tokio::time::sleep(Duration::from_millis(3)).await;
        peak_pending = peak_pending.max(c.metrics().pending);
    }
    let (mut ok, mut rejected) = (0u64, 0u64);
    for h in handles {
        let (k, r) = no_hang(h).await.unwrap();
        match r {
            Ok(v) => {
                assert_eq!(v, Some(f(k)));
                ok += 1;
            }
            Err(Error::Overloaded { max_pending, .. }) => {
                assert_eq!(max_pending, 1000);
                rejected += 1;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(ok + rejected, 100_000);
    assert!(rejected > 0 && ok >= 1000, "ok {ok}, rejected {rejected}");
    assert!(peak_pending <= 1000, "pending peaked at {peak_pending}");
    assert!(
        peak_keys.load(SeqCst) <= 1000,
        "{} keys in running batches at once",
        peak_keys.load(SeqCst)
    );
    let m = c.metrics();
    assert_eq!(m.overloaded, rejected, "{m}");
    assert_eq!(m.calls, ok, "{m}");
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_2_caps_running_batches_while_keys_gather_up_to_max_batch() {
    let batches: Batches = Default::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (b2, r2, p2) = (batches.clone(), running.clone(), peak.clone());
    let c = Arc::new(Coalescer::new(
        Config::new("g.inflight")
            .max_batch(10)
            .max_in_flight(2)
            .window(Duration::from_millis(1)),
        move |keys: Vec<u64>| {
            b2.lock().unwrap().push(keys.clone());
            let (r, p) = (r2.clone(), p2.clone());
            async move {
                p.fetch_max(r.fetch_add(1, SeqCst) + 1, SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
                r.fetch_sub(1, SeqCst);
                map_of(&keys)
            }
        },
    ));
    // One new key every millisecond for 300 ms: with a 1 ms window and no limit,
    // batches would hold one or two keys each.
    let mut handles = Vec::new();
    for k in 0..300u64 {
        let c2 = c.clone();
        handles.push(tokio::spawn(async move { (k, c2.load(k).await) }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(c.metrics().in_flight <= 2);
    }
    for h in handles {
        let (k, r) = no_hang(h).await.unwrap();
        assert_eq!(r.unwrap(), Some(f(k)));
    }
    let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(peak.load(SeqCst), 2, "sizes {sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 10), "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&s| s == 10).count() >= 10,
        "held-back batches did not keep gathering: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), 300);
    assert_idle(&c);
}

/// Counts, per thread, the bytes allocated and not yet freed. Under a current-thread
/// runtime every allocation of a test happens on its own thread, so tests running in
/// parallel do not disturb each other's count.
struct CountingAlloc;

thread_local! {
    static NET_BYTES: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn net_bytes() -> isize {
    NET_BYTES.with(std::cell::Cell::get)
}

fn add_bytes(n: isize) {
    let _ = NET_BYTES.try_with(|c| c.set(c.get() + n));
}

// SAFETY: forwards to the system allocator; the thread-local is const-initialised and
// has no destructor, so touching it never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        add_bytes(layout.size() as isize);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        add_bytes(-(layout.size() as isize));
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        add_bytes(new as isize - layout.size() as isize);
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[tokio::test(start_paused = true)]
async fn churn_of_cancelled_callers_does_not_grow_memory_past_max_pending() {
    let c = Arc::new(Coalescer::new(
        Config::new("g.churn")
            .max_pending(10)
            .window(Duration::from_secs(3600)),
        |keys: Vec<u64>| async move { map_of(&keys) },
    ));
    // One patient caller keeps the batch open (and gathering) for an hour.
    let mut patient = Box::pin(c.load(0));
    assert!(futures::poll!(patient.as_mut()).is_pending());
    // Warm up, so that lazily allocated runtime state is not counted.
    for k in 1..1_000u64 {
        let mut call = Box::pin(c.load(k));
        assert!(futures::poll!(call.as_mut()).is_pending());
    }
    let before = net_bytes();
    // 100,000 callers each join and leave (a client-side timeout, say): never more
    // than 2 pending at once, far below max_pending.
    for k in 1_000..101_000u64 {
        let mut call = Box::pin(c.load(k));
        assert!(futures::poll!(call.as_mut()).is_pending());
        drop(call);
        if k % 1000 == 0 {
            assert_eq!(c.metrics().pending, 1);
        }
    }
    let grown = net_bytes() - before;
    assert!(
        grown < 1 << 20,
        "memory grew by {grown} bytes while at most 2 calls were pending"
    );
    assert_eq!(no_hang(patient).await.unwrap(), Some(f(0)));
    assert_idle(&c);
}

#[test]
fn cancellations_racing_completions_on_two_threads_keep_every_count_exact() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("g.cancel.race")
            .window(Duration::from_micros(200))
            .max_batch(64)
            .max_in_flight(8),
        move |keys: Vec<u64>| {
            let i = n2.fetch_add(1, SeqCst);
            async move {
                tokio::time::sleep(Duration::from_micros(500 + (i as u64 % 7) * 700)).await;
                if i % 11 == 5 {
                    return Err("injected");
                }
                Ok(map_of(&keys))
            }
        },
    ));
    let mut rng = Rng(0x5EED);
    let plan: Vec<(u64, u64, u64)> = (0..20_000)
        .map(|_| (rng.below(300), rng.below(200), rng.below(20_000)))
        .collect();
    let rt = mixing_rt();
    let (ok, failed, cancelled) = rt.block_on(async {
        let hs: Vec<_> = plan
            .iter()
            .map(|&(k, start_ms, patience)| {
                let c = c.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(start_ms)).await;
                    let r = tokio::time::timeout(Duration::from_micros(patience), c.load(k)).await;
                    (k, r)
                })
            })
            .collect();
        let out = tokio::time::timeout(Duration::from_secs(120), join_all(hs))
            .await
            .expect("calls hung");
        let (mut ok, mut failed, mut cancelled) = (0u64, 0u64, 0u64);
        for r in out {
            match r.unwrap() {
                (k, Ok(Ok(v))) => {
                    assert_eq!(v, Some(f(k)));
                    ok += 1;
                }
                (_, Ok(Err(Error::Batch { .. }))) => failed += 1,
                (_, Ok(Err(e))) => panic!("unexpected error {e:?}"),
                (_, Err(_elapsed)) => cancelled += 1,
            }
        }
        (ok, failed, cancelled)
    });
    drop(rt);
    let m = c.metrics();
    assert!(
        ok > 0 && failed > 0 && cancelled > 0,
        "not a mix: ok {ok}, failed {failed}, cancelled {cancelled}"
    );
    assert_eq!(ok + failed + cancelled, 20_000);
    assert_eq!(
        (m.calls, m.failed_calls(), m.cancelled_calls),
        (20_000, failed, cancelled),
        "{m}"
    );
    assert_idle(&c);
}
