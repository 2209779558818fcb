//! Write coalescing: each promise of `WriteCore` is a test here — net per key,
//! acknowledged after commit, ordered per key, failures shared and not
//! retried, accepted writes never withdrawn, flush and drain, runtimes that go
//! away, reads that follow writes, bounded memory, and user code that panics.
//!
//! Time-dependent tests run under Tokio's paused clock (virtual, exact time); a
//! hang shows up as the one-hour guard firing. Tests never assert how fast
//! anything is.

mod common;
use common::quiet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalesce_runtime::{Config, Core, Dispatch, Error, Unsure, WriteCore};
use futures::future::join_all;

async fn no_hang<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .expect("a write hung")
}

/// Rows as one batch sent them.
type Rows = Vec<(&'static str, i64)>;

/// A table the batch functions write to, recording each batch as sent.
#[derive(Clone, Default)]
struct Table {
    rows: Arc<Mutex<BTreeMap<&'static str, i64>>>,
    batches: Arc<Mutex<Vec<Rows>>>,
}

impl Table {
    fn upsert(&self, items: Vec<(&'static str, i64)>) {
        let mut sorted = items.clone();
        sorted.sort();
        self.batches.lock().unwrap().push(sorted);
        let mut rows = self.rows.lock().unwrap();
        for (k, v) in items {
            rows.insert(k, v);
        }
    }

    fn add(&self, items: Vec<(&'static str, i64)>) {
        let mut sorted = items.clone();
        sorted.sort();
        self.batches.lock().unwrap().push(sorted);
        let mut rows = self.rows.lock().unwrap();
        for (k, v) in items {
            *rows.entry(k).or_default() += v;
        }
    }
}

fn sum(total: &mut i64, n: i64) {
    *total += n;
}

/// Net per key: a sum merge of <A,1>, <D,5>, <A,20>, <A,300> flushes exactly
/// <A,321>, <D,5>, and every writer is answered by that one batch.
#[tokio::test(start_paused = true)]
async fn a_sum_merge_flushes_one_net_write_per_key() {
    let table = Table::default();
    let core: WriteCore<(), &'static str, i64> = WriteCore::with_merge(
        Config::new("w.net_sum").window(Duration::from_millis(20)),
        sum,
    );
    let t = table.clone();
    let write = |k, v| {
        let t = t.clone();
        core.save((), k, v, move |_, items| {
            let t = t.clone();
            async move { t.add(items) }
        })
    };
    let results = no_hang(join_all([
        write("A", 1),
        write("D", 5),
        write("A", 20),
        write("A", 300),
    ]))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(*table.batches.lock().unwrap(), [vec![("A", 321), ("D", 5)]]);
    let m = core.metrics();
    assert_eq!((m.calls, m.keys, m.dedup_hits, m.batches), (4, 2, 2, 1));
    assert_eq!(m.pending, 0);
}

/// Without a merge fn, the last write to a key wins.
#[tokio::test(start_paused = true)]
async fn without_a_merge_the_last_write_wins() {
    let table = Table::default();
    let core: WriteCore<(), &'static str, i64> =
        WriteCore::new(Config::new("w.lww").window(Duration::from_millis(20)));
    let t = table.clone();
    let write = |k, v| {
        let t = t.clone();
        core.save((), k, v, move |_, items| {
            let t = t.clone();
            async move { t.upsert(items) }
        })
    };
    let results = no_hang(join_all([
        write("A", 1),
        write("D", 5),
        write("A", 20),
        write("A", 300),
    ]))
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(*table.batches.lock().unwrap(), [vec![("A", 300), ("D", 5)]]);
}

/// Deletes are values the merge fn handles: `None` deletes, a later `Some`
/// writes again.
#[tokio::test(start_paused = true)]
async fn deletes_are_values_the_merge_handles() {
    #[derive(Debug, PartialEq, Clone)]
    enum Op {
        Add(i64),
        Delete,
    }
    let sent: Arc<Mutex<Vec<(u8, Op)>>> = Arc::default();
    let core: WriteCore<(), u8, Op> = WriteCore::with_merge(
        Config::new("w.deletes").window(Duration::from_millis(5)),
        |acc: &mut Op, later: Op| {
            *acc = match (&*acc, later) {
                (_, Op::Delete) => Op::Delete,
                (Op::Add(a), Op::Add(b)) => Op::Add(a + b),
                (Op::Delete, Op::Add(b)) => Op::Add(b),
            }
        },
    );
    let s = sent.clone();
    let batch = move |_: &(), items: Vec<(u8, Op)>| {
        let s = s.clone();
        async move { s.lock().unwrap().extend(items) }
    };
    let r = no_hang(join_all([
        core.save((), 1, Op::Add(2), batch.clone()),
        core.save((), 1, Op::Delete, batch.clone()),
        core.save((), 2, Op::Add(1), batch.clone()),
        core.save((), 2, Op::Delete, batch.clone()),
        core.save((), 2, Op::Add(7), batch.clone()),
    ]))
    .await;
    assert!(r.iter().all(Result::is_ok));
    let mut got = sent.lock().unwrap().clone();
    got.sort_by_key(|(k, _)| *k);
    assert_eq!(got, [(1, Op::Delete), (2, Op::Add(7))]);
}

/// Acknowledged after commit: no writer resolves while its batch runs; all
/// resolve once it returns — superseded writers included.
#[tokio::test(start_paused = true)]
async fn writers_resolve_only_after_the_batch_commits() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let core: WriteCore<(), u32, u32> =
        WriteCore::new(Config::new("w.after_commit").window(Duration::from_millis(1)));
    let g = gate.clone();
    let batch = move |_: &(), _items: Vec<(u32, u32)>| {
        let g = g.clone();
        async move {
            let _ = g.acquire().await.expect("gate");
        }
    };
    let mut writes: Vec<_> = (0..10u32)
        .map(|i| Box::pin(core.save((), i % 3, i, batch.clone())))
        .collect();
    // Admit them all; then let the window pass: the batch runs, held at the gate.
    for w in &mut writes {
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for w in &mut writes {
        assert!(
            futures::poll!(w.as_mut()).is_pending(),
            "answered before the commit"
        );
    }
    assert_eq!(core.metrics().in_flight, 1);
    gate.add_permits(1);
    for r in no_hang(join_all(writes)).await {
        assert!(r.is_ok());
    }
}

/// Every writer of a failed batch gets the same error (the batch error is not
/// `Clone`); the batch function is not called again (no retry); and a key
/// whose batch failed is not poisoned: its next write goes out.
#[tokio::test(start_paused = true)]
async fn failures_are_shared_not_retried_and_do_not_poison_the_key() {
    #[derive(Debug)]
    struct Refused; // not Clone
    let calls = Arc::new(AtomicUsize::new(0));
    let core: WriteCore<(), u32, u32, Refused> = WriteCore::with_merge(
        Config::new("w.failures").window(Duration::from_millis(5)),
        |a: &mut u32, b| *a += b,
    );
    let c = calls.clone();
    let batch = move |_: &(), items: Vec<(u32, u32)>| {
        let n = c.fetch_add(1, SeqCst);
        async move {
            if n == 0 {
                Err(Refused)
            } else {
                assert_eq!(items, [(7, 3)]);
                Ok(())
            }
        }
    };
    let r = no_hang(join_all([
        core.save((), 7, 1, batch.clone()),
        core.save((), 7, 2, batch.clone()),
        core.save((), 8, 2, batch.clone()),
    ]))
    .await;
    let errors: Vec<_> = r
        .iter()
        .map(|r| match r {
            Err(e @ Error::Batch { .. }) => e.batch_error().unwrap() as *const Refused,
            other => panic!("expected the batch error, got {other:?}"),
        })
        .collect();
    assert!(errors.windows(2).all(|w| w[0] == w[1]), "one shared error");
    assert_eq!(calls.load(SeqCst), 1, "a failed batch is not retried");
    no_hang(core.save((), 7, 3, batch.clone())).await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(core.metrics().batch_errors, 3);
}

/// A per-key outcome fails only that key's writers; keys left out committed.
#[tokio::test(start_paused = true)]
async fn a_per_key_error_fails_only_that_keys_writers() {
    let core: WriteCore<(), u32, u32, String> =
        WriteCore::new(Config::new("w.per_key").window(Duration::from_millis(5)));
    let batch = |_: &(), items: Vec<(u32, u32)>| async move {
        let out: HashMap<u32, Result<(), String>> = items
            .into_iter()
            .filter(|(k, _)| *k == 2)
            .map(|(k, _)| (k, Err(format!("row {k} refused"))))
            .collect();
        Ok::<_, String>(out)
    };
    let r = no_hang(join_all([
        core.save((), 1, 1, batch),
        core.save((), 2, 1, batch),
        core.save((), 2, 2, batch),
        core.save((), 3, 1, batch),
    ]))
    .await;
    assert!(r[0].is_ok() && r[3].is_ok());
    for e in [&r[1], &r[2]] {
        match e {
            Err(Error::Key { source, .. }) => assert_eq!(**source, "row 2 refused"),
            other => panic!("{other:?}"),
        }
    }
}

/// A timeout says the write *may* have committed.
#[tokio::test(start_paused = true)]
async fn a_timed_out_write_may_have_committed() {
    let core: WriteCore<(), u32, u32> = WriteCore::new(
        Config::new("w.timeout")
            .window(Duration::from_millis(1))
            .timeout(Duration::from_millis(100)),
    );
    let r = no_hang(core.save((), 1, 1, |_, _| std::future::pending::<()>())).await;
    match r {
        Err(Error::MaybeCommitted {
            why: Unsure::Timeout { after },
            ..
        }) => assert_eq!(after, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(core.metrics().maybe_committed, 1);
}

/// No accepted write is withdrawn: a writer that drops its future after the
/// write was accepted does not cancel it. Counted.
#[tokio::test(start_paused = true)]
async fn a_dropped_writer_does_not_withdraw_its_write() {
    let table = Table::default();
    let core: WriteCore<(), &'static str, i64> =
        WriteCore::new(Config::new("w.withdrawn").window(Duration::from_millis(10)));
    let t = table.clone();
    let batch = move |_: &(), items: Vec<(&'static str, i64)>| {
        let t = t.clone();
        async move { t.upsert(items) }
    };
    {
        let mut lone = Box::pin(core.save((), "gone", 1, batch.clone()));
        assert!(futures::poll!(lone.as_mut()).is_pending());
        // dropped here, after its write was accepted: every caller of the batch left
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    no_hang(core.flush()).await;
    assert_eq!(table.rows.lock().unwrap().get("gone"), Some(&1));
    let m = core.metrics();
    assert_eq!(m.withdrawn_writes, 1);
    assert_eq!(m.pending, 0);
}

/// `flush` sends what is gathering now and returns once everything accepted
/// before it is answered — long before the window would have ended.
#[tokio::test(start_paused = true)]
async fn flush_returns_once_everything_accepted_has_committed() {
    let table = Table::default();
    let core: Arc<WriteCore<(), &'static str, i64>> = Arc::new(WriteCore::new(
        Config::new("w.flush").window(Duration::from_secs(60)),
    ));
    let t = table.clone();
    let batch = move |_: &(), items: Vec<(&'static str, i64)>| {
        let t = t.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            t.upsert(items)
        }
    };
    let writers: Vec<_> = ["a", "b", "c", "d", "a"]
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let (core, batch) = (core.clone(), batch.clone());
            tokio::spawn(async move { core.save((), k, i as i64, batch).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let f = no_hang(core.flush()).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "flush waited the window out"
    );
    assert_eq!((f.keys, f.failed), (4, 0));
    let rows = table.rows.lock().unwrap().clone();
    assert_eq!(
        rows,
        BTreeMap::from([("a", 4), ("b", 1), ("c", 2), ("d", 3)])
    );
    for w in writers {
        w.await.unwrap().unwrap();
    }
}

/// A drain with a deadline fails what is left with typed errors and counts
/// them: the running batch's writers may have committed; writes held behind
/// it were never sent.
#[tokio::test(start_paused = true)]
async fn drain_fails_what_is_left_at_its_deadline() {
    let core: Arc<WriteCore<(), u32, u32>> = Arc::new(WriteCore::new(
        Config::new("w.drain")
            .window(Duration::from_millis(1))
            .max_in_flight(2),
    ));
    let hang = |_: &(), _: Vec<(u32, u32)>| std::future::pending::<()>();
    let c = core.clone();
    let first = tokio::spawn(async move { c.save((), 1, 1, hang).await });
    tokio::time::sleep(Duration::from_millis(10)).await; // key 1 is running now
    let c = core.clone();
    let second = tokio::spawn(async move { c.save((), 1, 2, hang).await });
    tokio::time::sleep(Duration::from_millis(10)).await; // held behind key 1
    let d = no_hang(core.drain(Duration::from_millis(100))).await;
    assert_eq!((d.settled, d.dropped, d.unsure), (0, 1, 1), "{d:?}");
    match first.await.unwrap() {
        Err(Error::MaybeCommitted {
            why: Unsure::Drained,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(second.await.unwrap(), Err(Error::Drained { .. })));
    let m = core.metrics();
    assert_eq!((m.drained_writes, m.maybe_committed, m.pending), (1, 1, 0));
}

/// A runtime dropped with writes pending gives errors, not hangs: a writer on
/// another runtime whose batch was driven by the dropped one learns that its
/// write may have committed (the batch was running) or was never sent (it was
/// still gathering).
/// A runtime to drop mid-batch (one worker, which drives the batch), and a
/// current-thread one whose writer outlives it.
fn two_runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let survivor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (doomed, survivor)
}

#[test]
fn a_runtime_dropped_with_writes_pending_gives_errors() {
    for running in [true, false] {
        let core: &'static WriteCore<(), u32, u32> = Box::leak(Box::new(WriteCore::new(
            Config::new("w.runtime_gone").window(Duration::from_millis(50)),
        )));
        let (doomed, survivor) = two_runtimes();
        // The batch opens on the doomed runtime (its driver lives there) ...
        let opener = doomed.spawn(core.save((), 1, 1, |_, _| std::future::pending::<()>()));
        std::thread::sleep(Duration::from_millis(5));
        // ... and a writer on another runtime joins it while it gathers.
        #[allow(clippy::async_yields_async)] // the writer, accepted, to await later
        let joined = survivor.block_on(async {
            let mut w = Box::pin(core.save((), 2, 2, |_, _| std::future::pending::<()>()));
            assert!(futures::poll!(w.as_mut()).is_pending());
            w
        });
        if running {
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(core.metrics().in_flight, 1);
        }
        drop(opener);
        drop(doomed);
        let r = survivor.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), joined)
                .await
                .expect("the writer hung after its runtime shut down")
        });
        if running {
            assert!(
                matches!(
                    r,
                    Err(Error::MaybeCommitted {
                        why: Unsure::Shutdown,
                        ..
                    })
                ),
                "{r:?}"
            );
        } else {
            assert!(matches!(r, Err(Error::Shutdown { .. })), "{r:?}");
        }
        let m = core.metrics();
        assert_eq!((m.pending, m.in_flight, m.lost_batches), (0, 0, 1));
    }
}

/// Read your writes: a read that waits for `settled(key)` sees the folded
/// value, never a half-folded one.
#[tokio::test(start_paused = true)]
async fn a_read_after_settled_sees_the_whole_fold() {
    let table = Table::default();
    let writes: Arc<WriteCore<(), &'static str, i64>> = Arc::new(WriteCore::with_merge(
        Config::new("w.ryw").window(Duration::from_millis(20)),
        sum,
    ));
    let reads: Core<(), &'static str, i64> = Core::new(Config::new("w.ryw.read"));
    let t = table.clone();
    let batch = move |_: &(), items: Vec<(&'static str, i64)>| {
        let t = t.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            t.add(items)
        }
    };
    let w = writes.clone();
    let pending: Vec<_> = (1..=10)
        .map(|n| {
            let w = w.clone();
            let b = batch.clone();
            tokio::spawn(async move { w.save((), "k", n, b).await })
        })
        .collect();
    tokio::task::yield_now().await;
    writes.settled(&"k").await;
    let t = table.clone();
    let read = reads
        .load((), "k", move |_, keys: Vec<&'static str>| {
            let rows = t.rows.lock().unwrap().clone();
            async move {
                keys.into_iter()
                    .filter_map(|k| rows.get(k).map(|v| (k, *v)))
                    .collect::<HashMap<_, _>>()
            }
        })
        .await
        .unwrap();
    assert_eq!(read, Some(55));
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// Bounded: 1,000,000 writes over 1,000 keys never hold more than 1,000 net
/// writes in a batch; `max_pending` counts writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_writes_over_a_thousand_keys_stay_a_thousand_entries() {
    let core: Arc<WriteCore<(), u32, u64>> = Arc::new(WriteCore::with_merge(
        Config::new("w.bounded")
            .window(Duration::from_millis(20))
            .max_batch(1000)
            .max_pending(1_000_000),
        |a: &mut u64, b| *a += b,
    ));
    let total = Arc::new(Mutex::new(HashMap::<u32, u64>::new()));
    let runs = Arc::new(AtomicUsize::new(0));
    let (t, r) = (total.clone(), runs.clone());
    let batch = move |_: &(), items: Vec<(u32, u64)>| {
        let t = t.clone();
        r.fetch_add(1, SeqCst);
        async move {
            assert!(items.len() <= 1000);
            let mut t = t.lock().unwrap();
            for (k, v) in items {
                *t.entry(k).or_default() += v;
            }
        }
    };
    let tasks: Vec<_> = (0..4)
        .map(|part| {
            let core = core.clone();
            let batch = batch.clone();
            tokio::spawn(async move {
                for round in 0..5u32 {
                    let writes = (0..50_000u32).map(|i| {
                        let n = part * 250_000 + round * 50_000 + i;
                        core.save((), n % 1000, 1, batch.clone())
                    });
                    for r in join_all(writes).await {
                        r.unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(600), t)
            .await
            .expect("hung")
            .unwrap();
    }
    let m = core.metrics();
    assert_eq!(m.calls, 1_000_000);
    assert!(m.batch_size.max <= 1000, "{}", m.batch_size.max);
    // Every write is sent or absorbed; every batch counted ran.
    assert_eq!(m.calls, m.keys + m.dedup_hits, "{m}");
    assert_eq!(m.batches, runs.load(SeqCst) as u64);
    assert!(m.batch_size.min >= 1);
    assert_eq!(m.pending, 0);
    let total = total.lock().unwrap();
    assert_eq!(total.len(), 1000);
    assert!(total.values().all(|&v| v == 1000));
}

#[tokio::test(start_paused = true)]
async fn max_pending_counts_writers_not_keys() {
    let core: WriteCore<(), u32, u32> = WriteCore::new(
        Config::new("w.max_pending")
            .window(Duration::from_millis(5))
            .max_pending(3),
    );
    let ok = |_: &(), _: Vec<(u32, u32)>| async {};
    let mut held: Vec<_> = (0..3).map(|i| Box::pin(core.save((), 1, i, ok))).collect();
    for h in &mut held {
        assert!(futures::poll!(h.as_mut()).is_pending());
    }
    // One key in the batch, three writers pending: a fourth is refused.
    assert!(matches!(
        core.save((), 1, 9, ok).await,
        Err(Error::Overloaded { max_pending: 3, .. })
    ));
    for r in no_hang(join_all(held)).await {
        r.unwrap();
    }
}

/// Ordered per key: random writes over a few keys with `max_in_flight = 4`,
/// small random `max_batch` (full batches leave in whatever order their
/// drivers run) and random batch run times end in the state of a sequential
/// model (the last write per key in call order; the fold in call order), and
/// no key ever has two writes in flight.
#[test]
fn random_writes_end_in_the_sequential_models_state() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec((0u8..4, 1i64..100, 0u64..4, 0u64..3), 1..60);
    runner
        .run(
            &(strategy, any::<bool>(), 1usize..5),
            |(writes, merged, max_batch)| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .unwrap();
                rt.block_on(check_order(writes, merged, max_batch));
                Ok(())
            },
        )
        .unwrap();
}

/// The same on a multi-threaded runtime with real time: batch drivers race on
/// two workers, so full batches reach their lanes in any order.
#[test]
fn random_writes_on_two_workers_end_in_the_sequential_models_state() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec((0u8..4, 1i64..100, 0u64..2, 0u64..2), 1..80);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runner
        .run(
            &(strategy, any::<bool>(), 1usize..4),
            |(writes, merged, max_batch)| {
                rt.block_on(check_order(writes, merged, max_batch));
                Ok(())
            },
        )
        .unwrap();
}

/// Each write: (key, value, batch run time in ms, pause before the next write in ms).
async fn check_order(writes: Vec<(u8, i64, u64, u64)>, merged: bool, max_batch: usize) {
    let config = Config::new("w.order")
        .window(Duration::from_millis(2))
        .max_batch(max_batch)
        .max_in_flight(4);
    let core: Arc<WriteCore<(), u8, (i64, u64)>> = Arc::new(if merged {
        WriteCore::with_merge(config, |a: &mut (i64, u64), b: (i64, u64)| {
            a.0 += b.0;
            a.1 = b.1;
        })
    } else {
        WriteCore::new(config)
    });
    let table: Arc<Mutex<HashMap<u8, i64>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<u8>>> = Arc::default();
    let (t, f) = (table.clone(), in_flight.clone());
    let batch = move |_: &(), items: Vec<(u8, (i64, u64))>| {
        let (t, f) = (t.clone(), f.clone());
        async move {
            for (k, _) in &items {
                assert!(
                    f.lock().unwrap().insert(*k),
                    "two writes of key {k} in flight"
                );
            }
            let delay = items.iter().map(|(_, (_, d))| *d).max().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut t = t.lock().unwrap();
            for (k, (v, _)) in items {
                f.lock().unwrap().remove(&k);
                if merged {
                    *t.entry(k).or_default() += v;
                } else {
                    t.insert(k, v);
                }
            }
        }
    };
    let mut model: HashMap<u8, i64> = HashMap::new();
    let mut handles = Vec::new();
    for (k, v, delay, pause) in writes {
        if merged {
            *model.entry(k).or_default() += v;
        } else {
            model.insert(k, v);
        }
        let core = core.clone();
        let batch = batch.clone();
        let mut h = Box::pin(async move { core.save((), k, (v, delay), batch).await });
        // Accepted now, in call order (on two workers, a batch of one may
        // even commit before this poll returns).
        match futures::poll!(h.as_mut()) {
            std::task::Poll::Ready(r) => r.unwrap(),
            std::task::Poll::Pending => handles.push(tokio::spawn(h)),
        }
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    for h in handles {
        no_hang(h).await.unwrap().unwrap();
    }
    assert_eq!(*table.lock().unwrap(), model);
}

/// A merge fn that panics fails the writers of that key in that batch only;
/// the other keys of the batch commit.
#[tokio::test(start_paused = true)]
async fn a_panicking_merge_fails_only_its_keys_writers() {
    quiet();
    let table = Table::default();
    let core: WriteCore<(), &'static str, i64> = WriteCore::with_merge(
        Config::new("w.merge_panic").window(Duration::from_millis(5)),
        |a: &mut i64, b| {
            if b == 13 {
                panic!("provoked: merge");
            }
            *a += b;
        },
    );
    let t = table.clone();
    let batch = move |_: &(), items: Vec<(&'static str, i64)>| {
        let t = t.clone();
        async move { t.add(items) }
    };
    let r = no_hang(join_all([
        core.save((), "bad", 1, batch.clone()),
        core.save((), "bad", 13, batch.clone()),
        core.save((), "good", 2, batch.clone()),
    ]))
    .await;
    assert!(matches!(r[0], Err(Error::Panicked { .. })));
    assert!(matches!(r[1], Err(Error::Panicked { .. })));
    assert!(r[2].is_ok());
    assert_eq!(*table.batches.lock().unwrap(), [vec![("good", 2)]]);
    // The key is not poisoned for later batches.
    no_hang(core.save((), "bad", 5, batch)).await.unwrap();
    assert_eq!(table.rows.lock().unwrap().get("bad"), Some(&5));
    assert_eq!(core.metrics().pending, 0);
}

/// A key whose `Hash` panics fails that write alone; a batch fn that panics
/// fails its batch's writers only, and the coalescer goes on.
#[tokio::test(start_paused = true)]
async fn panics_in_user_code_fail_that_write_or_batch_only() {
    quiet();
    #[derive(Clone, PartialEq, Eq, Debug)]
    struct Touchy(u32);
    impl Hash for Touchy {
        fn hash<H: Hasher>(&self, h: &mut H) {
            if self.0 == 666 {
                panic!("provoked: hash");
            }
            self.0.hash(h)
        }
    }
    let core: WriteCore<(), Touchy, u32> =
        WriteCore::new(Config::new("w.panics").window(Duration::from_millis(5)));
    let batch = |_: &(), items: Vec<(Touchy, u32)>| async move {
        if items.iter().any(|(k, _)| k.0 == 7) {
            panic!("provoked: batch");
        }
    };
    let r = no_hang(join_all([
        core.save((), Touchy(666), 1, batch),
        core.save((), Touchy(1), 1, batch),
    ]))
    .await;
    assert!(matches!(r[0], Err(Error::Panicked { .. })));
    assert!(r[1].is_ok());
    let r = no_hang(core.save((), Touchy(7), 1, batch)).await;
    assert!(matches!(r, Err(Error::Panicked { .. })));
    no_hang(core.save((), Touchy(8), 1, batch)).await.unwrap();
    assert_eq!(core.metrics().pending, 0);
}

/// Groups and instances: writes through different objects never share a batch;
/// extra arguments (the group) keep batches apart too.
#[tokio::test(start_paused = true)]
async fn different_instances_and_groups_never_share_a_write_batch() {
    #[derive(Clone)]
    struct Shard(&'static str);
    type Seen = Vec<(String, Vec<u32>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let core: WriteCore<u8, u32, u32> =
        WriteCore::new(Config::new("w.instances").window(Duration::from_millis(5)));
    let (a, b) = (Shard("a"), Shard("b"));
    let s = seen.clone();
    let batch = move |shard: Shard, g: &u8, items: Vec<(u32, u32)>| {
        let s = s.clone();
        let tag = format!("{}/{g}", shard.0);
        async move {
            let mut keys: Vec<u32> = items.into_iter().map(|(k, _)| k).collect();
            keys.sort();
            s.lock().unwrap().push((tag, keys));
        }
    };
    let r = no_hang(join_all([
        core.save_for(&a, 0, 1, 1, batch.clone()),
        core.save_for(&b, 0, 2, 1, batch.clone()),
        core.save_for(&a, 1, 3, 1, batch.clone()),
        core.save_for(&a, 0, 4, 1, batch.clone()),
    ]))
    .await;
    assert!(r.iter().all(Result::is_ok));
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            ("a/0".to_owned(), vec![1, 4]),
            ("a/1".to_owned(), vec![3]),
            ("b/0".to_owned(), vec![2]),
        ]
    );
}

/// Adaptive dispatch writes too: a lone write goes at once, and writes that
/// arrive while a batch runs fold into the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_dispatch_batches_writes_while_a_batch_runs() {
    let core: Arc<WriteCore<(), u32, u32>> = Arc::new(WriteCore::with_merge(
        Config::new("w.adaptive")
            .dispatch(Dispatch::Adaptive)
            .max_in_flight(1),
        |a: &mut u32, b| *a += b,
    ));
    let total = Arc::new(AtomicUsize::new(0));
    let t = total.clone();
    let batch = move |_: &(), items: Vec<(u32, u32)>| {
        let t = t.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            for (_, v) in items {
                t.fetch_add(v as usize, SeqCst);
            }
        }
    };
    let writes = (0..2000u32).map(|i| core.save((), i % 10, 1, batch.clone()));
    for r in join_all(writes).await {
        r.unwrap();
    }
    assert_eq!(total.load(SeqCst), 2000);
    let m = core.metrics();
    assert!(m.batches < 2000, "{} batches for 2000 writes", m.batches);
    assert_eq!(m.pending, 0);
}

/// `isolate` on a last-write-wins coalescer bisects a failed batch: only the
/// write that fails on its own gets the error (as its own); the others commit.
#[tokio::test(start_paused = true)]
async fn isolate_bisects_a_failed_last_write_wins_batch() {
    let table = Table::default();
    let core: WriteCore<(), &'static str, i64, String> = WriteCore::isolating(
        Config::new("w.isolate")
            .window(Duration::from_millis(5))
            .isolate(4),
    );
    let t = table.clone();
    let batch = move |_: &(), items: Vec<(&'static str, i64)>| {
        let t = t.clone();
        async move {
            if items.iter().any(|(k, _)| *k == "poison") {
                return Err(format!("{} rows refused", items.len()));
            }
            t.upsert(items);
            Ok(())
        }
    };
    let keys = ["a", "b", "poison", "c", "d"];
    let r = no_hang(join_all(
        keys.iter().map(|k| core.save((), *k, 1, batch.clone())),
    ))
    .await;
    for (k, r) in keys.iter().zip(&r) {
        match (*k, r) {
            ("poison", Err(Error::Key { source, .. })) => assert_eq!(**source, "1 rows refused"),
            ("poison", other) => panic!("{other:?}"),
            (_, r) => assert!(r.is_ok(), "{k}: {r:?}"),
        }
    }
    assert_eq!(table.rows.lock().unwrap().len(), 4);
    // One batch, bisected inside its run.
    assert_eq!(core.metrics().batches, 1);
}

/// A merge coalescer never re-sends (a folded increment would apply twice):
/// `isolate` is off there, whatever the config says.
#[tokio::test(start_paused = true)]
async fn a_merge_coalescer_never_resends_a_failed_batch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let core: WriteCore<(), u8, u8, String> = WriteCore::with_merge(
        Config::new("w.isolate.merge").isolate(4),
        |a: &mut u8, b| *a += b,
    );
    let c = calls.clone();
    let batch = move |_: &(), _: Vec<(u8, u8)>| {
        c.fetch_add(1, SeqCst);
        async { Err::<(), _>("refused".to_owned()) }
    };
    let r = no_hang(join_all((0..4).map(|k| core.save((), k, 1, batch.clone())))).await;
    assert!(r.iter().all(|r| matches!(r, Err(Error::Batch { .. }))));
    assert_eq!(calls.load(SeqCst), 1);
}

static ARM_CLONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A key whose `Clone` panics once, when armed.
#[derive(PartialEq, Eq, Hash, Debug)]
struct FlakyClone(u32);

impl Clone for FlakyClone {
    fn clone(&self) -> Self {
        if ARM_CLONE.swap(false, SeqCst) {
            panic!("provoked: Clone of a key");
        }
        FlakyClone(self.0)
    }
}

/// A key whose `Clone` panicked when its batch was sent fails that write
/// only: the key stops "running" with the batch, so its next write goes out
/// (it was held back behind the unsent one forever).
#[tokio::test(start_paused = true)]
async fn a_key_whose_clone_panicked_writes_again() {
    quiet();
    let core: WriteCore<(), FlakyClone, u32> =
        WriteCore::new(Config::new("w.clone_once").window(Duration::from_millis(1)));
    let ok = |_: &(), _: Vec<(FlakyClone, u32)>| async {};
    ARM_CLONE.store(true, SeqCst);
    let r = no_hang(core.save((), FlakyClone(1), 1, ok)).await;
    assert!(matches!(r, Err(Error::Panicked { .. })), "{r:?}");
    let again = no_hang(core.save((), FlakyClone(1), 2, ok)).await;
    assert!(again.is_ok(), "{again:?}");
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

static ARM_E_DROP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A batch fn error whose `Drop` panics, when armed.
#[derive(Debug)]
struct BoomOnDrop;

impl Drop for BoomOnDrop {
    fn drop(&mut self) {
        if ARM_E_DROP.swap(false, SeqCst) {
            panic!("provoked: Drop of the batch error");
        }
    }
}

/// A failed batch whose writers all left: the driver holds the last
/// reference to the error, and its `Drop` panics. The lane is given back all
/// the same (it leaked, and every later write stalled).
#[tokio::test(start_paused = true)]
async fn an_error_whose_drop_panics_leaks_no_lane() {
    quiet();
    let core: WriteCore<(), u32, u32, BoomOnDrop> = WriteCore::new(
        Config::new("w.e_drop")
            .window(Duration::from_millis(1))
            .max_in_flight(1),
    );
    let batch = |_: &(), items: Vec<(u32, u32)>| async move {
        if items.iter().any(|(k, _)| *k == 1) {
            Err(BoomOnDrop)
        } else {
            Ok(())
        }
    };
    ARM_E_DROP.store(true, SeqCst);
    {
        let mut w = Box::pin(core.save((), 1, 1, batch));
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = no_hang(core.save((), 2, 2, batch)).await;
    assert!(r.is_ok(), "{r:?}");
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

static ARM_K_DROP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A key whose `Drop` panics for an original (not a clone), when armed.
#[derive(PartialEq, Eq, Hash, Debug)]
struct DropBomb(u32);

impl Clone for DropBomb {
    fn clone(&self) -> Self {
        DropBomb(self.0 + 1000)
    }
}

impl Drop for DropBomb {
    fn drop(&mut self) {
        if self.0 < 1000 && ARM_K_DROP.swap(false, SeqCst) {
            panic!("provoked: Drop of a key");
        }
    }
}

/// The runtime running a write batch goes away, and a key's `Drop` panics as
/// the lost batch lets go of it: a writer waiting on another runtime is
/// still answered (it was never woken, and `pending` leaked).
#[test]
fn a_lost_batch_whose_key_drop_panics_still_answers_its_writers() {
    quiet();
    let core: &'static WriteCore<(), DropBomb, u32> = Box::leak(Box::new(WriteCore::new(
        Config::new("w.k_drop").window(Duration::from_millis(5)),
    )));
    let (doomed, survivor) = two_runtimes();
    let hang = |_: &(), _: Vec<(DropBomb, u32)>| std::future::pending::<()>();
    let opener = doomed.spawn(core.save((), DropBomb(1), 1, hang));
    std::thread::sleep(Duration::from_millis(2));
    #[allow(clippy::async_yields_async)]
    let joined = survivor.block_on(async {
        let mut w = Box::pin(core.save((), DropBomb(2), 2, hang));
        assert!(futures::poll!(w.as_mut()).is_pending());
        w
    });
    // Generous: the batch runs once its 5 ms window has passed on the doomed
    // runtime's worker.
    for _ in 0..200 {
        if core.metrics().in_flight == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(core.metrics().in_flight, 1, "the batch runs");
    drop(opener);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        ARM_K_DROP.store(true, SeqCst);
        drop(doomed);
    });
    let r = survivor.block_on(async {
        let mut joined = joined;
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(60)) => None,
            r = &mut joined => Some(r),
        }
    });
    killer.join().unwrap();
    assert!(
        matches!(
            r,
            Some(Err(Error::MaybeCommitted {
                why: Unsure::Shutdown,
                ..
            }))
        ),
        "the writer was never answered: {r:?}"
    );
    assert_eq!(core.metrics().pending, 0);
}

/// Writes held behind their key's running write join the open batch when it
/// ends; one that fills it to `max_batch` closes it, so the next write of a
/// new key opens another batch (it went into that one: 3 keys against a
/// `max_batch` of 2).
#[tokio::test(start_paused = true)]
async fn held_writes_never_push_a_batch_past_max_batch() {
    let sizes: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let core: Arc<WriteCore<(), u32, u32>> = Arc::new(WriteCore::new(
        Config::new("w.held.max_batch")
            .window(Duration::from_millis(10))
            .max_batch(2)
            .max_in_flight(2),
    ));
    let (s, g, ret) = (sizes.clone(), gate.clone(), returned.clone());
    let batch = move |_: &(), items: Vec<(u32, u32)>| {
        let (s, g, ret) = (s.clone(), g.clone(), ret.clone());
        async move {
            let mut keys: Vec<u32> = items.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            let first = keys == [100] && s.lock().unwrap().is_empty();
            s.lock().unwrap().push(keys);
            if first {
                let _permit = g.acquire().await.unwrap();
                ret.store(true, SeqCst);
            }
        }
    };
    let spawn = |k: u32, v: u32| {
        let (c, b) = (core.clone(), batch.clone());
        tokio::spawn(async move { c.save((), k, v, b).await })
    };
    let w1 = spawn(100, 1);
    tokio::time::sleep(Duration::from_millis(20)).await; // [100] runs
    let w2 = spawn(100, 2);
    tokio::time::sleep(Duration::from_millis(20)).await; // held behind it
    let w3 = spawn(1, 1);
    tokio::task::yield_now().await; // an open batch with [1]
    gate.add_permits(1);
    while !returned.load(SeqCst) {
        tokio::task::yield_now().await;
    }
    // The held write of 100 joins [1]: full. A new key, admitted now.
    let mut w4 = Box::pin(core.save((), 2, 1, batch.clone()));
    assert!(futures::poll!(w4.as_mut()).is_pending());
    for w in [w1, w2, w3] {
        no_hang(w).await.unwrap().unwrap();
    }
    no_hang(w4).await.unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|b| b.len() <= 2), "{sizes:?}");
    assert_eq!(sizes.iter().map(Vec::len).sum::<usize>(), 4, "{sizes:?}");
}

/// The batches a batch fn was given.
type Sent = Arc<Mutex<Vec<Vec<(u32, u32)>>>>;

/// A drain whose deadline passes while a full batch waits for its driver
/// (neither open nor queued): its writes were never sent, so they fail with
/// `Drained` and are not sent later. They were answered `MaybeCommitted`,
/// sent anyway, and a later write of their key was answered at once with the
/// drain's error, leaving `pending` above zero for good.
#[test]
fn a_drain_fails_a_full_batch_its_driver_has_not_taken() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sent: Sent = Arc::default();
        let core: WriteCore<(), u32, u32> = WriteCore::new(
            Config::new("w.drain.full")
                .window(Duration::from_secs(3600))
                .max_batch(2),
        );
        let s = sent.clone();
        let batch = move |_: &(), mut items: Vec<(u32, u32)>| {
            let s = s.clone();
            async move {
                items.sort_unstable();
                s.lock().unwrap().push(items);
            }
        };
        // One poll of this task: the full batch's driver has not run yet.
        let mut w1 = Box::pin(core.save((), 1, 10, batch.clone()));
        let mut w2 = Box::pin(core.save((), 2, 20, batch.clone()));
        assert!(futures::poll!(w1.as_mut()).is_pending());
        assert!(futures::poll!(w2.as_mut()).is_pending());
        let mut d = Box::pin(core.drain(Duration::from_millis(5)));
        assert!(futures::poll!(d.as_mut()).is_pending());
        std::thread::sleep(Duration::from_millis(30));
        let std::task::Poll::Ready(drained) = futures::poll!(d.as_mut()) else {
            panic!("the drain is not over after its deadline");
        };
        assert_eq!((drained.dropped, drained.unsure), (2, 0), "{drained:?}");
        for w in [w1, w2] {
            assert!(matches!(w.await, Err(Error::Drained { .. })));
        }
        // A write after the drain is accepted as usual, and sent by a flush.
        let mut w3 = Box::pin(core.save((), 1, 30, batch.clone()));
        assert!(futures::poll!(w3.as_mut()).is_pending());
        core.flush().await;
        w3.await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sent.lock().unwrap().clone(), [vec![(1, 30)]]);
        let m = core.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    });
}

/// What a `save_for` batch fn saw: the instance it ran with, and its items.
type BySchema = Arc<Mutex<Vec<(&'static str, Vec<(u32, u32)>)>>>;

#[derive(Clone)]
struct Repo {
    schema: &'static str,
}

/// A boxed write, as `by_schema` makes them.
type Boxed = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn by_schema(
    seen: &BySchema,
    run: Duration,
) -> impl Fn(Repo, &(), Vec<(u32, u32)>) -> Boxed + Clone + Send + Sync + 'static {
    let seen = seen.clone();
    move |repo: Repo, _: &(), mut items: Vec<(u32, u32)>| {
        let seen = seen.clone();
        Box::pin(async move {
            tokio::time::sleep(run).await;
            items.sort_unstable();
            seen.lock().unwrap().push((repo.schema, items));
        })
    }
}

/// Writes through an object (`save_for`) group by its address. A writer
/// leaves before its answer, its object is dropped, and another object is
/// made at the same address: its write runs with its own instance, not with
/// the first object's clone (it joined that batch: tenant B's write went to
/// tenant A's schema).
#[tokio::test(start_paused = true)]
async fn a_new_object_at_a_gone_objects_address_writes_through_itself() {
    let seen: BySchema = Arc::default();
    let core: WriteCore<(), u32, u32> =
        WriteCore::new(Config::new("w.addr.reuse").window(Duration::from_millis(10)));
    let batch = by_schema(&seen, Duration::from_millis(1));
    let mut repo = Repo { schema: "tenant_a" };
    {
        let mut w = Box::pin(core.save_for(&repo, (), 1, 1, batch.clone()));
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    repo = Repo { schema: "tenant_b" };
    no_hang(core.save_for(&repo, (), 2, 2, batch.clone()))
        .await
        .unwrap();
    no_hang(core.flush()).await;
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(
        got,
        [("tenant_a", vec![(1, 1)]), ("tenant_b", vec![(2, 2)])]
    );
    let m = core.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

/// The same object writes a key, its writer leaves, and it writes the key
/// again: the second write waits for the first, so they commit in call order
/// (the last write wins), whether the first is still gathering, running, or
/// held behind an earlier one.
#[tokio::test(start_paused = true)]
async fn an_object_writing_again_after_its_writer_left_keeps_call_order() {
    for first_runs in [false, true] {
        let seen: BySchema = Arc::default();
        let core: WriteCore<(), u32, u32> =
            WriteCore::new(Config::new("w.addr.order").window(Duration::from_millis(10)));
        let batch = by_schema(&seen, Duration::from_millis(30));
        let repo = Repo { schema: "tenant_a" };
        {
            let mut w = Box::pin(core.save_for(&repo, (), 7, 1, batch.clone()));
            assert!(futures::poll!(w.as_mut()).is_pending());
        }
        if first_runs {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        no_hang(core.save_for(&repo, (), 7, 2, batch.clone()))
            .await
            .unwrap();
        no_hang(core.flush()).await;
        let got = seen.lock().unwrap().clone();
        let values: Vec<u32> = got
            .iter()
            .flat_map(|(_, items)| items.iter().map(|(_, v)| *v))
            .collect();
        assert_eq!(values.last(), Some(&2), "first_runs {first_runs}: {got:?}");
        let m = core.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// A drain reports, of the writes pending when it began, how many were
/// answered by its deadline: a write accepted after it began (and failed at
/// the deadline too) is not subtracted from them (it was: 0 instead of 1).
#[tokio::test(start_paused = true)]
async fn a_drains_report_counts_only_the_writes_it_waited_for() {
    let core: Arc<WriteCore<(), u32, u32>> = Arc::new(WriteCore::new(
        Config::new("w.drain.report")
            .window(Duration::from_secs(3600))
            .max_batch(1),
    ));
    // Key 1 commits after 10 ms; keys 2 and 3 never do.
    let batch = |_: &(), items: Vec<(u32, u32)>| async move {
        if items.iter().any(|(k, _)| *k >= 2) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (c1, c2) = (core.clone(), core.clone());
    let a = tokio::spawn(async move { c1.save((), 1, 1, batch).await });
    let b = tokio::spawn(async move { c2.save((), 2, 1, batch).await });
    tokio::task::yield_now().await;
    assert_eq!(core.metrics().pending, 2);
    let c = core.clone();
    let drain = tokio::spawn(async move { c.drain(Duration::from_millis(100)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = core.clone();
    let late = tokio::spawn(async move { c.save((), 3, 1, batch).await });
    let drained = no_hang(drain).await.unwrap();
    assert_eq!(
        (drained.settled, drained.dropped, drained.unsure),
        (1, 0, 2),
        "{drained:?}"
    );
    assert!(a.await.unwrap().is_ok());
    for w in [b, late] {
        assert!(matches!(
            w.await.unwrap(),
            Err(Error::MaybeCommitted {
                why: Unsure::Drained,
                ..
            })
        ));
    }
}

/// A failure is counted once per writer where it is given, whether or not
/// the writer stayed to read it: a drain that fails writes whose writers left
/// counts them, and so does a batch that fails with no writer left (both
/// counted nothing: failures were counted when a writer read its result).
#[tokio::test(start_paused = true)]
async fn failures_of_writers_that_left_are_counted() {
    let core: WriteCore<(), u32, u32> =
        WriteCore::new(Config::new("w.left.drain").window(Duration::from_millis(1)));
    let hang = |_: &(), _: Vec<(u32, u32)>| std::future::pending::<()>();
    {
        let mut running = Box::pin(core.save((), 1, 1, hang));
        assert!(futures::poll!(running.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut held = Box::pin(core.save((), 1, 2, hang));
        assert!(futures::poll!(held.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = no_hang(core.drain(Duration::from_millis(100))).await;
    assert_eq!((drained.dropped, drained.unsure), (1, 1), "{drained:?}");
    let m = core.metrics();
    assert_eq!(
        (m.drained_writes, m.maybe_committed, m.pending),
        (1, 1, 0),
        "{m}"
    );

    let failing: WriteCore<(), u32, u32, String> =
        WriteCore::new(Config::new("w.left.failed").window(Duration::from_millis(1)));
    let fail = |_: &(), _: Vec<(u32, u32)>| async { Err::<(), _>("down".to_owned()) };
    {
        let mut w = Box::pin(failing.save((), 5, 1, fail));
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    // And a writer that stays is counted once, not twice.
    assert!(no_hang(failing.save((), 6, 1, fail)).await.is_err());
    let m = failing.metrics();
    assert_eq!((m.batch_errors, m.pending), (2, 0), "{m}");
}
