//! Behaviour of the engine on its own, deterministic under Tokio's paused clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalesce_runtime::{Coalescer, Config, Core, Dispatch, Error};
use futures::future::join_all;

/// A batch fn that records every batch it was given.
#[derive(Clone, Default)]
struct Recorder {
    batches: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl Recorder {
    fn sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(Vec::len).collect()
    }
    fn count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }
}

fn squares(config: Config, rec: &Recorder) -> Arc<Coalescer<u64, u64>> {
    let rec = rec.clone();
    Arc::new(Coalescer::new(config, move |keys: Vec<u64>| {
        rec.batches.lock().unwrap().push(keys.clone());
        async move {
            keys.into_iter()
                .map(|k| (k, k * k))
                .collect::<HashMap<_, _>>()
        }
    }))
}

async fn burst(
    c: &Arc<Coalescer<u64, u64>>,
    keys: impl IntoIterator<Item = u64>,
) -> Vec<(u64, Option<u64>)> {
    let handles: Vec<_> = keys
        .into_iter()
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move { (k, c.load(k).await.unwrap()) })
        })
        .collect();
    join_all(handles)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_1000_with_max_batch_100_makes_10_batches() {
    let rec = Recorder::default();
    let c = squares(Config::new("t.burst").max_batch(100), &rec);
    let out = burst(&c, 0..1000).await;
    for (k, v) in out {
        assert_eq!(v, Some(k * k));
    }
    assert_eq!(rec.sizes(), vec![100; 10]);
    let m = c.metrics();
    assert_eq!(
        (m.calls, m.keys, m.batches, m.pending, m.in_flight),
        (1000, 1000, 10, 0, 0)
    );
    assert_eq!((m.batch_size.min, m.batch_size.max), (100, 100));
}

#[tokio::test(start_paused = true)]
async fn duplicate_keys_share_one_slot() {
    let rec = Recorder::default();
    let c = squares(Config::new("t.dedup"), &rec);
    let out = burst(&c, (0..300).map(|i| i % 7)).await;
    for (k, v) in out {
        assert_eq!(v, Some(k * k));
    }
    assert_eq!(rec.sizes(), vec![7]);
    let m = c.metrics();
    assert_eq!((m.calls, m.keys, m.dedup_hits), (300, 7, 293));
}

#[tokio::test(start_paused = true)]
async fn the_window_dispatches_a_partial_batch() {
    let rec = Recorder::default();
    let c = squares(
        Config::new("t.window").window(Duration::from_millis(10)),
        &rec,
    );
    let start = tokio::time::Instant::now();
    let out = burst(&c, 0..3).await;
    assert_eq!(out.len(), 3);
    assert_eq!(rec.sizes(), vec![3]);
    // Paused clock: time advances only to the window's deadline.
    assert!(start.elapsed() >= Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn every_caller_of_a_failed_batch_gets_the_error() {
    #[derive(Debug)]
    struct DbDown;
    let c = Arc::new(Coalescer::new(
        Config::new("t.fail"),
        |_keys: Vec<u64>| async { Err::<HashMap<u64, u64>, _>(DbDown) },
    ));
    let results = join_all((0..50).map(|k| {
        let c = c.clone();
        async move { c.load(k).await }
    }))
    .await;
    let mut sources = Vec::new();
    for r in results {
        match r {
            Err(Error::Batch { source, .. }) => sources.push(source),
            other => panic!("expected a batch error, got {other:?}"),
        }
    }
    // One error, shared: E need not be Clone.
    assert!(sources.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    assert_eq!(c.metrics().batch_errors, 50);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_batch_errors_its_callers_and_the_next_batch_works() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("t.panic"),
        move |keys: Vec<u64>| {
            let first = n2.fetch_add(1, SeqCst) == 0;
            async move {
                tokio::task::yield_now().await;
                if first {
                    panic!("boom in batch");
                }
                keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
            }
        },
    ));
    let first = join_all((0..10).map(|k| c.load(k))).await;
    for r in first {
        match r {
            Err(Error::Panicked { message, .. }) => assert!(message.contains("boom")),
            other => panic!("expected a panic error, got {other:?}"),
        }
    }
    let second = join_all((0..10).map(|k| c.load(k))).await;
    for (k, r) in second.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some(k as u64));
    }
    let m = c.metrics();
    assert_eq!((m.panics, m.batches, m.pending), (10, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_its_timeout_fails_with_timeout() {
    let c = Arc::new(Coalescer::new(
        Config::new("t.timeout").timeout(Duration::from_millis(50)),
        |keys: Vec<u64>| async move {
            std::future::pending::<()>().await;
            keys
        },
    ));
    let out = join_all((0..5).map(|k| c.load(k))).await;
    for r in out {
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
    assert_eq!(c.metrics().timeouts, 5);
}

#[tokio::test(start_paused = true)]
async fn wrong_vec_length_is_a_shape_error_for_every_caller() {
    let c = Arc::new(Coalescer::new(
        Config::new("t.shape"),
        |keys: Vec<u64>| async move { keys.into_iter().skip(1).collect::<Vec<u64>>() },
    ));
    let out = join_all((0..4).map(|k| c.load(k))).await;
    for r in out {
        assert!(
            matches!(
                r,
                Err(Error::Shape {
                    keys: 4,
                    values: 3,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ordered_results_reach_their_own_callers() {
    let c = Arc::new(Coalescer::new(
        Config::new("t.ordered"),
        |keys: Vec<u64>| async move { keys.into_iter().map(|k| k + 1000).collect::<Vec<u64>>() },
    ));
    let out = join_all((0..200).map(|k| c.load(k % 50))).await;
    for (i, r) in out.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some((i as u64 % 50) + 1000));
    }
}

#[tokio::test(start_paused = true)]
async fn max_pending_rejects_at_once() {
    let rec = Recorder::default();
    let c = squares(Config::new("t.overload").max_pending(10), &rec);
    let out = join_all((0..15).map(|k| c.load(k))).await;
    let ok = out.iter().filter(|r| r.is_ok()).count();
    let overloaded = out
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(Error::Overloaded {
                    max_pending: 10,
                    ..
                })
            )
        })
        .count();
    assert_eq!((ok, overloaded), (10, 5));
    assert_eq!(c.metrics().overloaded, 5);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_driver_does_not_cancel_the_batch() {
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("t.cancel"),
        move |keys: Vec<u64>| {
            s2.fetch_add(1, SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
            }
        },
    ));
    // The first caller drives; it gives up mid-batch.
    let driver = {
        let c = c.clone();
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_millis(30), c.load(1)).await },
        )
    };
    tokio::task::yield_now().await;
    let others: Vec<_> = (2..6)
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move { c.load(k).await })
        })
        .collect();
    assert!(
        driver.await.unwrap().is_err(),
        "the driver should have timed out"
    );
    for (k, h) in (2..6).zip(others) {
        assert_eq!(h.await.unwrap().unwrap(), Some(k));
    }
    assert_eq!(
        started.load(SeqCst),
        1,
        "the batch ran once and was not restarted"
    );
    let m = c.metrics();
    assert_eq!((m.cancelled_calls, m.pending, m.batches), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_callers_all_left_is_not_run() {
    let rec = Recorder::default();
    let c = squares(
        Config::new("t.abandon").window(Duration::from_millis(20)),
        &rec,
    );
    let calls =
        join_all((0..5).map(|k| tokio::time::timeout(Duration::from_millis(5), c.load(k)))).await;
    assert!(calls.iter().all(|r| r.is_err()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.count(), 0);
    let m = c.metrics();
    assert_eq!(
        (m.abandoned_batches, m.cancelled_calls, m.pending),
        (1, 5, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_holds_batches_back_and_keys_keep_gathering() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r2, p2) = (running.clone(), peak.clone());
    let c = Arc::new(Coalescer::new(
        Config::new("t.inflight").max_batch(10).max_in_flight(2),
        move |keys: Vec<u64>| {
            let (r, p) = (r2.clone(), p2.clone());
            async move {
                let now = r.fetch_add(1, SeqCst) + 1;
                p.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                r.fetch_sub(1, SeqCst);
                keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
            }
        },
    ));
    let out = join_all((0..100).map(|k| c.load(k))).await;
    for (k, r) in out.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some(k as u64));
    }
    assert_eq!(peak.load(SeqCst), 2);
    assert_eq!(c.metrics().batches, 10);
}

#[tokio::test(start_paused = true)]
async fn adaptive_sends_a_lone_caller_at_once_and_gathers_during_a_batch() {
    let rec = Recorder::default();
    let rec2 = rec.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("t.adaptive")
            .window(Duration::from_secs(10))
            .dispatch(Dispatch::Adaptive),
        move |keys: Vec<u64>| {
            rec2.batches.lock().unwrap().push(keys.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
            }
        },
    ));
    let start = tokio::time::Instant::now();
    assert_eq!(c.load(7).await.unwrap(), Some(7));
    // Not the 10 s window: only the batch's own 5 ms.
    assert!(start.elapsed() < Duration::from_secs(1));
    let lone = {
        let c = c.clone();
        tokio::spawn(async move { c.load(1).await })
    };
    tokio::task::yield_now().await;
    // These arrive while the first batch runs: they leave together when it completes.
    let burst = join_all((2..12).map(|k| c.load(k))).await;
    assert!(burst.iter().all(|r| r.is_ok()));
    lone.await.unwrap().unwrap();
    assert_eq!(rec.sizes(), vec![1, 1, 10]);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn groups_never_share_a_batch() {
    static CORE: std::sync::LazyLock<Core<u8, u64, (u8, u64)>> =
        std::sync::LazyLock::new(|| Core::new(Config::new("t.groups")));
    let out = join_all((0..100u64).map(|k| {
        let g = (k % 3) as u8;
        CORE.load(g, k, move |_: &u8, keys: Vec<u64>| async move {
            keys.into_iter()
                .map(|k| (k, (g, k)))
                .collect::<HashMap<_, _>>()
        })
    }))
    .await;
    for (k, r) in out.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some(((k % 3) as u8, k as u64)));
    }
    assert_eq!(CORE.metrics().batches, 3);
}

#[derive(Clone)]
struct Repo {
    id: u8,
}

impl Repo {
    async fn batch(&self, keys: Vec<u64>) -> HashMap<u64, (u8, u64)> {
        tokio::task::yield_now().await;
        keys.into_iter().map(|k| (k, (self.id, k))).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn methods_coalesce_per_instance() {
    static CORE: std::sync::LazyLock<Core<(), u64, (u8, u64)>> =
        std::sync::LazyLock::new(|| Core::new(Config::new("t.instances")));
    let (a, b) = (Repo { id: 1 }, Repo { id: 2 });
    let calls = (0..40u64).map(|k| {
        let repo = if k % 2 == 0 { &a } else { &b };
        CORE.load_for(repo, (), k, |r: Repo, _, keys| async move {
            r.batch(keys).await
        })
    });
    for (k, r) in join_all(calls).await.into_iter().enumerate() {
        let id = if k % 2 == 0 { 1 } else { 2 };
        assert_eq!(r.unwrap(), Some((id, k as u64)));
    }
    assert_eq!(CORE.metrics().batches, 2);
}

static SHARED: std::sync::LazyLock<Core<(), u64, u64>> = std::sync::LazyLock::new(|| {
    Core::new(Config::new("t.runtimes").window(Duration::from_millis(1)))
});

async fn double(keys: Vec<u64>) -> HashMap<u64, u64> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    keys.into_iter().map(|k| (k, 2 * k)).collect()
}

#[test]
fn a_static_coalescer_outlives_the_runtime_that_first_used_it() {
    for round in 0..3u64 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(join_all(
            (0..20).map(|k| SHARED.load((), k + round, |_, keys| double(keys))),
        ));
        for (k, r) in out.into_iter().enumerate() {
            assert_eq!(r.unwrap(), Some(2 * (k as u64 + round)));
        }
        drop(rt);
    }
}

#[tokio::test(start_paused = true)]
async fn isolation_fails_only_the_callers_of_a_poisonous_key() {
    #[derive(Debug)]
    struct Poison(u64);
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("t.isolate").isolate(6),
        move |keys: Vec<u64>| {
            calls2.fetch_add(1, SeqCst);
            async move {
                match keys.iter().find(|&&k| k == 13) {
                    Some(&k) => Err(Poison(k)),
                    None => Ok(keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()),
                }
            }
        },
    ));
    let out = join_all((0..32u64).map(|k| c.load(k))).await;
    for (k, r) in out.into_iter().enumerate() {
        match (k, r) {
            (13, Err(Error::Key { source, .. })) => assert_eq!(source.0, 13),
            (13, other) => panic!("key 13 should fail alone, got {other:?}"),
            (k, r) => assert_eq!(r.unwrap(), Some(k as u64)),
        }
    }
    // 1 + 2 per level down to the single key: 1 + 2 * 5.
    assert_eq!(calls.load(SeqCst), 11);
    assert_eq!(c.metrics().key_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn without_isolation_the_whole_batch_fails() {
    let c = Arc::new(Coalescer::new(
        Config::new("t.no_isolate"),
        |keys: Vec<u64>| async move {
            if keys.contains(&13) {
                Err("poison")
            } else {
                Ok(keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>())
            }
        },
    ));
    let out = join_all((0..32u64).map(|k| c.load(k))).await;
    assert!(out.iter().all(|r| matches!(r, Err(Error::Batch { .. }))));
}

#[tokio::test(start_paused = true)]
async fn per_key_results_fail_only_their_own_key() {
    use coalesce_runtime::PerKey;
    let c = Arc::new(Coalescer::new(
        Config::new("t.per_key"),
        |keys: Vec<u64>| async move {
            PerKey(
                keys.into_iter()
                    .map(|k| {
                        (
                            k,
                            if k % 10 == 3 {
                                Err(format!("bad {k}"))
                            } else {
                                Ok(k * 2)
                            },
                        )
                    })
                    .collect::<HashMap<_, _>>(),
            )
        },
    ));
    let out = join_all((0..40u64).map(|k| c.load(k))).await;
    for (k, r) in out.into_iter().enumerate() {
        let k = k as u64;
        if k % 10 == 3 {
            match r {
                Err(Error::Key { source, .. }) => assert_eq!(*source, format!("bad {k}")),
                other => panic!("{other:?}"),
            }
        } else {
            assert_eq!(r.unwrap(), Some(k * 2));
        }
    }
    assert_eq!(c.metrics().key_errors, 4);
}

#[tokio::test(start_paused = true)]
async fn adaptive_with_lanes_sends_callers_at_once_while_a_lane_is_free() {
    let rec = Recorder::default();
    let rec2 = rec.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("t.adaptive_lanes")
            .window(Duration::from_secs(10))
            .max_in_flight(3)
            .dispatch(Dispatch::Adaptive),
        move |keys: Vec<u64>| {
            rec2.batches.lock().unwrap().push(keys.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
            }
        },
    ));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::new();
    // Three callers, one after another while the others' batches run: each finds a
    // free lane and leaves at once.
    for k in 0..3u64 {
        let c = c.clone();
        handles.push(tokio::spawn(async move { c.load(k).await }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // All lanes busy: these gather and leave together when the first lane frees.
    for k in 3..8u64 {
        let c = c.clone();
        handles.push(tokio::spawn(async move { c.load(k).await }));
    }
    for (k, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().unwrap(), Some(k as u64));
    }
    assert_eq!(rec.sizes(), vec![1, 1, 1, 5]);
    // The gathered batch left when the first lane freed (10 ms), not after the window.
    assert!(start.elapsed() < Duration::from_millis(30));
}

/// A lone adaptive caller runs its batch alone, on a lane it holds; every outcome of
/// that batch reaches it the way it reaches callers of a shared batch, and the lane
/// comes back whatever happens.
#[tokio::test(start_paused = true)]
async fn adaptive_solo_calls_report_every_outcome_and_free_their_lane() {
    fn adaptive(name: &'static str) -> Config {
        Config::new(name)
            .window(Duration::from_secs(10))
            .dispatch(Dispatch::Adaptive)
            .timeout(Duration::from_millis(50))
    }
    // A panic, then a normal batch: the lane was given back.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Coalescer::new(adaptive("t.solo.panic"), move |keys: Vec<u64>| {
        let first = n2.fetch_add(1, SeqCst) == 0;
        async move {
            if first {
                panic!("solo boom");
            }
            keys
        }
    });
    assert!(
        matches!(c.load(1).await, Err(Error::Panicked { message, .. }) if message.contains("solo boom"))
    );
    assert_eq!(c.load(2).await.unwrap(), Some(2));
    let m = c.metrics();
    assert_eq!((m.batches, m.panics, m.in_flight, m.pending), (2, 1, 0, 0));

    // A batch that never returns times out.
    let c = Coalescer::new(adaptive("t.solo.timeout"), |keys: Vec<u64>| async move {
        std::future::pending::<()>().await;
        keys
    });
    assert!(matches!(c.load(1).await, Err(Error::Timeout { .. })));
    assert_eq!((c.metrics().timeouts, c.metrics().in_flight), (1, 0));

    // Two values for one key is a shape error.
    let c = Coalescer::new(adaptive("t.solo.shape"), |keys: Vec<u64>| async move {
        vec![keys[0], keys[0]]
    });
    assert!(matches!(
        c.load(1).await,
        Err(Error::Shape {
            keys: 1,
            values: 2,
            ..
        })
    ));

    // Keyed: entries for other keys are counted, a missing entry is `None`, and a
    // per-key error fails only that key.
    let c = Coalescer::new(adaptive("t.solo.keyed"), |keys: Vec<u64>| async move {
        let k = keys[0];
        let mut out: HashMap<u64, Result<u64, &'static str>> = HashMap::new();
        out.insert(k + 100, Ok(0));
        match k {
            1 => {
                out.insert(k, Ok(k * 10));
            }
            2 => {
                out.insert(k, Err("bad key"));
            }
            _ => {}
        }
        coalesce_runtime::PerKey(out)
    });
    assert_eq!(c.load(1).await.unwrap(), Some(10));
    assert!(matches!(c.load(2).await, Err(Error::Key { .. })));
    assert_eq!(c.load(3).await.unwrap(), None);
    let m = c.metrics();
    assert_eq!((m.unrequested_entries, m.key_errors, m.batches), (3, 1, 3));

    // A caller dropped while its solo batch runs cancels that batch and frees the
    // lane: the next caller goes alone at once instead of waiting for the window.
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let d2 = dropped.clone();
    let rec = Recorder::default();
    let rec2 = rec.clone();
    let c = Arc::new(Coalescer::new(
        adaptive("t.solo.cancel"),
        move |keys: Vec<u64>| {
            rec2.batches.lock().unwrap().push(keys.clone());
            let guard = Guard(d2.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_millis(20)).await;
                keys
            }
        },
    ));
    let c2 = c.clone();
    let first = tokio::spawn(async move { c2.load(1).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(dropped.load(SeqCst), 1, "the batch future was dropped");
    let start = tokio::time::Instant::now();
    assert_eq!(c.load(2).await.unwrap(), Some(2));
    assert!(
        start.elapsed() < Duration::from_millis(25),
        "no window wait"
    );
    assert_eq!(rec.sizes(), vec![1, 1]);
    let m = c.metrics();
    assert_eq!(
        (
            m.cancelled_calls,
            m.cancelled_batches,
            m.in_flight,
            m.pending
        ),
        (1, 1, 0, 0)
    );
}

/// While a batch of its group runs, an adaptive call on a free lane does not leave
/// alone: the calls made in the same instant join it, and it leaves with them at
/// once, without waiting for the window.
#[tokio::test(start_paused = true)]
async fn adaptive_calls_made_in_the_same_instant_share_a_free_lane() {
    let rec = Recorder::default();
    let rec2 = rec.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("t.adaptive_settle")
            .window(Duration::from_secs(10))
            .max_in_flight(4)
            .dispatch(Dispatch::Adaptive),
        move |keys: Vec<u64>| {
            rec2.batches.lock().unwrap().push(keys.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                keys
            }
        },
    ));
    let start = tokio::time::Instant::now();
    let c0 = c.clone();
    let lone = tokio::spawn(async move { c0.load(0).await });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // One lane busy, three free: these six arrive together and take one lane.
    let together: Vec<_> = (1..7u64)
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move { c.load(k).await })
        })
        .collect();
    assert_eq!(lone.await.unwrap().unwrap(), Some(0));
    for (k, h) in together.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().unwrap(), Some(k as u64 + 1));
    }
    assert_eq!(rec.sizes(), vec![1, 6]);
    assert!(
        start.elapsed() < Duration::from_millis(20),
        "no window wait"
    );
    assert_eq!(c.metrics().batches, 2);
}

/// A window under a millisecond (timed by the precise timer thread as well as
/// Tokio's) gathers the calls made together and never leaves before the window has
/// passed, on a real clock.
#[test]
fn a_sub_millisecond_window_gathers_and_never_leaves_early() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let rec = Recorder::default();
    let window = Duration::from_micros(300);
    let c = squares(Config::new("t.sub_ms").window(window), &rec);
    rt.block_on(async {
        for round in 0..20u64 {
            let start = std::time::Instant::now();
            let out = join_all((0..10u64).map(|k| c.load(round * 10 + k))).await;
            assert!(start.elapsed() >= window, "left before its window");
            for (k, r) in out.into_iter().enumerate() {
                let k = round * 10 + k as u64;
                assert_eq!(r.unwrap(), Some(k * k));
            }
        }
    });
    assert_eq!(rec.sizes(), vec![10; 20]);
}

/// Under a paused Tokio clock a sub-millisecond window follows that clock (Tokio's
/// timer auto-advances), so a paused test never waits on the real one.
#[tokio::test(start_paused = true)]
async fn a_sub_millisecond_window_follows_a_paused_clock() {
    let rec = Recorder::default();
    let c = squares(
        Config::new("t.sub_ms_paused").window(Duration::from_micros(250)),
        &rec,
    );
    // Far ahead of the real clock: a real-time deadline would be an hour away.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let start = tokio::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(1),
        join_all((0..5u64).map(|k| c.load(k))),
    )
    .await
    .expect("the window ended on the paused clock");
    assert!(out.into_iter().all(|r| r.is_ok()));
    assert!(start.elapsed() >= Duration::from_micros(250));
    assert_eq!(rec.sizes(), vec![5]);
}
