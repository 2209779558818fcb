//! Nothing hangs, nothing leaks: the cases of issue 9, section 2, each observed on
//! the earlier engine (a caller waiting forever, a count leaked, a caller timed by
//! another runtime's clock, a panic instead of an answer), each a test here.
//!
//! Time-dependent tests run under Tokio's paused clock, where time is virtual and
//! durations are exact: a hang shows up as the one-hour guard (`no_hang`) firing.
//! Tests that need two runtimes or real time bound their waits generously; they
//! assert that something finishes, never how fast.

mod common;
use common::{quiet, Touchy};
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use coalesce_runtime::{Coalescer, Config, Core, Dispatch, Error};
use futures::future::join_all;

/// Fails the test (rather than blocking it) if `fut` never completes.
async fn no_hang<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .expect("a call hung")
}

fn tens(keys: Vec<Touchy>) -> HashMap<Touchy, u64> {
    keys.into_iter()
        .map(|k| {
            let v = k.0 * 10;
            (k, v)
        })
        .collect()
}

fn panicked_in(r: &Result<Option<u64>, Error>, what: &str) -> bool {
    matches!(r, Err(Error::Panicked { message, .. }) if message.contains(what))
}

/// A key whose `Clone`, `Hash` or `Eq` panics fails its own calls; every other
/// caller of the batch gets its value, and nothing stays pending or in flight.
#[tokio::test(start_paused = true)]
async fn a_key_whose_clone_hash_or_eq_panics_fails_alone() {
    quiet();
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let c = Coalescer::new(
            Config::new("s.touchy")
                .window(Duration::from_millis(5))
                .max_in_flight(2)
                .dispatch(dispatch),
            |keys: Vec<Touchy>| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tens(keys)
            },
        );
        let keys = [1, 2, 13, 3, 14, 15, 15, 4];
        let out = no_hang(join_all(keys.map(|k| c.load(Touchy(k))))).await;
        for (k, r) in keys.iter().zip(&out) {
            match k {
                13 => assert!(panicked_in(r, "`Clone`"), "{k}: {r:?}"),
                14 => assert!(panicked_in(r, "`Hash`"), "{k}: {r:?}"),
                15 => assert!(panicked_in(r, "`Eq`"), "{k}: {r:?}"),
                _ => assert_eq!(r.as_ref().unwrap(), &Some(k * 10), "{dispatch:?}"),
            }
        }
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{dispatch:?}: {m}");
    }
}

/// A batch whose every key's `Clone` panics at dispatch sends nothing: its
/// callers fail with that at once, and the batch fn is not called with no
/// keys. A streamed batch fn whose stream never ends used to be called, owe
/// nothing, and hold its callers forever.
#[tokio::test(start_paused = true)]
async fn a_batch_whose_every_key_clone_panics_fails_at_once() {
    quiet();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let map = Coalescer::new(
        Config::new("s.unsent.map").window(Duration::from_millis(1)),
        move |keys: Vec<Touchy>| {
            seen.fetch_add(1, SeqCst);
            async move { tens(keys) }
        },
    );
    let seen = calls.clone();
    let streamed = Coalescer::new(
        Config::new("s.unsent.stream").window(Duration::from_millis(1)),
        move |keys: Vec<Touchy>| {
            seen.fetch_add(1, SeqCst);
            let items = futures::stream::iter(keys.into_iter().map(|k| {
                let v = k.0 * 10;
                Ok::<_, String>((k, v))
            }));
            async move {
                coalesce_runtime::Streamed(futures::StreamExt::chain(
                    items,
                    futures::stream::pending(),
                ))
            }
        },
    );
    // Each shape on its own road first: the batch fn runs.
    assert_eq!(no_hang(map.load(Touchy(1))).await.unwrap(), Some(10));
    assert_eq!(no_hang(streamed.load(Touchy(1))).await.unwrap(), Some(10));
    assert_eq!(calls.load(SeqCst), 2);
    let (a, b) = no_hang(async { tokio::join!(map.load(Touchy(13)), map.load(Touchy(13))) }).await;
    assert!(
        panicked_in(&a, "`Clone`") && panicked_in(&b, "`Clone`"),
        "{a:?} {b:?}"
    );
    let s = no_hang(streamed.load(Touchy(13))).await;
    assert!(
        matches!(&s, Err(Error::Panicked { message, .. }) if message.contains("`Clone`")),
        "{s:?}"
    );
    assert_eq!(calls.load(SeqCst), 2, "a batch fn was called with no keys");
    for m in [map.metrics(), streamed.metrics()] {
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// A key whose `Clone` panics once a shared budget of clones is spent: run
/// with every budget, it reaches each place that clones a key.
#[derive(Debug)]
struct Budget(u64, Arc<AtomicUsize>);

impl Clone for Budget {
    fn clone(&self) -> Self {
        if self
            .1
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            panic!("provoked: Clone past the budget");
        }
        Budget(self.0, self.1.clone())
    }
}

impl Hash for Budget {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Budget {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Budget {}

/// `load_many` and `load_many_ordered` (on `Coalescer` and `Core`) turn a
/// panic in a key's `Clone`, `Hash` or `Eq` into `Error::Panicked` for that
/// call: whichever clone panics, nothing reaches the caller, and nothing
/// stays pending. (`load_many_ordered` cloned the keys outside any guard.)
#[tokio::test(start_paused = true)]
async fn load_many_lets_no_key_panic_through() {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;
    quiet();
    let budget = Arc::new(AtomicUsize::new(0));
    let c = Coalescer::new(
        Config::new("s.many.budget").window(Duration::from_millis(1)),
        |keys: Vec<Budget>| async move {
            keys.into_iter()
                .map(|k| (k.0, k.0 * 10))
                .map(|(id, v)| (Budget(id, Arc::new(AtomicUsize::new(usize::MAX))), v))
                .collect::<HashMap<_, _>>()
        },
    );
    let core: Core<(), Budget, u64> = Core::new(Config::new("s.many.budget.core"));
    let batch = |_: &(), keys: Vec<Budget>| async move {
        keys.into_iter()
            .map(|k| {
                let v = k.0 * 10;
                (k, v)
            })
            .collect::<HashMap<_, _>>()
    };
    let keys = |b: &Arc<AtomicUsize>| [1, 2, 1, 3].map(|id| Budget(id, b.clone()));
    let (mut ok, mut failed) = (0, 0);
    for n in 0..40 {
        budget.store(n, SeqCst);
        let many = AssertUnwindSafe(c.load_many(keys(&budget)))
            .catch_unwind()
            .await;
        budget.store(n, SeqCst);
        let ordered = AssertUnwindSafe(core.load_many_ordered((), keys(&budget), batch))
            .catch_unwind()
            .await;
        budget.store(n, SeqCst);
        let by_key = AssertUnwindSafe(core.load_many((), keys(&budget), batch))
            .catch_unwind()
            .await;
        let many = many.unwrap_or_else(|_| panic!("load_many panicked with {n} clones"));
        let ordered =
            ordered.unwrap_or_else(|_| panic!("load_many_ordered panicked with {n} clones"));
        let by_key = by_key.unwrap_or_else(|_| panic!("Core::load_many panicked with {n} clones"));
        match ordered {
            Ok(values) => {
                assert_eq!(values, [Some(10), Some(20), Some(10), Some(30)]);
                ok += 1;
            }
            Err(e) => {
                assert!(
                    matches!(&e, Error::Panicked { message, .. } if message.contains("`Clone`")),
                    "{e:?}"
                );
                failed += 1;
            }
        }
        for r in [many.map(|m| m.len()), by_key.map(|m| m.len())] {
            match r {
                Ok(n) => assert_eq!(n, 3),
                Err(e) => assert!(
                    matches!(&e, Error::Panicked { message, .. } if message.contains("`Clone`")),
                    "{e:?}"
                ),
            }
        }
    }
    // Every budget too small failed, every large enough one loaded.
    assert!(ok > 0 && failed > 0, "{ok} {failed}");
    for m in [c.metrics(), core.metrics()] {
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// A `Hash` panic used to leak the `pending` count: after `max_pending` such
/// calls, every later call was `Overloaded`.
#[tokio::test(start_paused = true)]
async fn a_panicking_hash_leaks_no_pending_count() {
    quiet();
    let c = Coalescer::new(
        Config::new("s.hash_leak")
            .window(Duration::from_millis(1))
            .max_pending(4),
        |keys: Vec<Touchy>| async move { tens(keys) },
    );
    for _ in 0..10 {
        assert!(panicked_in(&c.load(Touchy(14)).await, "`Hash`"));
    }
    let out = no_hang(join_all((1..=4).map(|k| c.load(Touchy(k))))).await;
    for (k, r) in (1..=4).zip(out) {
        assert_eq!(r.unwrap(), Some(k * 10), "not overloaded");
    }
    let m = c.metrics();
    assert_eq!((m.pending, m.overloaded), (0, 0), "{m}");
}

/// A key's `Clone` panics at dispatch while the batch function never returns:
/// the timeout still fails the other callers (it used to wait forever).
#[tokio::test(start_paused = true)]
async fn the_timeout_holds_when_a_key_clone_panics_at_dispatch() {
    quiet();
    let c = Coalescer::new(
        Config::new("s.clone_timeout")
            .window(Duration::from_millis(5))
            .timeout(Duration::from_millis(100)),
        |_keys: Vec<Touchy>| async move {
            std::future::pending::<()>().await;
            HashMap::<Touchy, u64>::new()
        },
    );
    let start = tokio::time::Instant::now();
    let out = no_hang(join_all([1, 13, 2].map(|k| c.load(Touchy(k))))).await;
    assert!(matches!(out[0], Err(Error::Timeout { .. })), "{:?}", out[0]);
    assert!(panicked_in(&out[1], "`Clone`"), "{:?}", out[1]);
    assert!(matches!(out[2], Err(Error::Timeout { .. })), "{:?}", out[2]);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(105),
        "window + timeout"
    );
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

/// A group value (an extra argument, `group = …`) whose `Hash` or `Eq` panics
/// fails that call alone.
#[tokio::test(start_paused = true)]
async fn a_group_whose_hash_or_eq_panics_fails_alone() {
    quiet();
    static CORE: LazyLock<Core<Touchy, u64, u64>> =
        LazyLock::new(|| Core::new(Config::new("s.group_panics").window(Duration::from_millis(5))));
    let calls = [1, 14, 15, 15, 1, 2].map(|g| {
        CORE.load(Touchy(g), g, |group: &Touchy, keys: Vec<u64>| {
            let g = group.0;
            async move {
                keys.into_iter()
                    .map(|k| (k, k + g))
                    .collect::<HashMap<_, _>>()
            }
        })
    });
    let out = no_hang(join_all(calls)).await;
    assert_eq!(out[0].as_ref().unwrap(), &Some(2));
    assert!(panicked_in(&out[1], "`Hash` of the group"), "{:?}", out[1]);
    assert!(
        out[2].is_ok(),
        "the first 15 finds no equal group to compare with"
    );
    assert!(panicked_in(&out[3], "`Eq` of the group"), "{:?}", out[3]);
    assert_eq!(out[4].as_ref().unwrap(), &Some(2));
    assert_eq!(out[5].as_ref().unwrap(), &Some(4));
    let m = CORE.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

fn squares(keys: Vec<u64>) -> HashMap<u64, u64> {
    keys.into_iter().map(|k| (k, k * k)).collect()
}

/// The common `select!` loop: the caller that opened a batch polls its call once,
/// then does long work without polling it. Other callers of the batch (window
/// mode), and callers queued behind its lane (adaptive, a lone call), finish
/// within window + run time; it used to stall them for as long as it was not
/// polled.
#[tokio::test(start_paused = true)]
async fn a_caller_alive_but_not_polled_delays_nobody() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let c = Arc::new(Coalescer::new(
            Config::new("s.unpolled")
                .window(Duration::from_millis(5))
                .dispatch(dispatch),
            |keys: Vec<u64>| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                squares(keys)
            },
        ));
        let c1 = c.clone();
        let opener = tokio::spawn(async move {
            let call = c1.load(1);
            tokio::pin!(call);
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                // `biased`: the call is polled first, so it is admitted (and, in
                // the earlier engine, became its batch's driver) before the tick.
                tokio::select! {
                    biased;
                    r = &mut call => break r,
                    _ = tick.tick() => {
                        // Long work, during which `call` is alive but not polled.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        let other = no_hang(c.load(2)).await;
        assert_eq!(other.unwrap(), Some(4));
        let took = start.elapsed();
        // Window: the shared batch waits its window (5 ms) and runs (10 ms).
        // Adaptive: the lone call runs (10 ms, promoted to a task of its own
        // when the second call's batch, due after its window, finds the lane
        // taken); then the second call's batch runs (10 ms).
        let bound = match dispatch {
            Dispatch::Window => Duration::from_millis(15),
            _ => Duration::from_millis(20),
        };
        assert!(took <= bound, "{dispatch:?}: waited {took:?}");
        assert_eq!(no_hang(opener).await.unwrap().unwrap(), Some(1));
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{dispatch:?}: {m}");
    }
}

/// A batch function that awaits its own coalescer (or one that calls back) while
/// `max_in_flight` is reached completes: the nested call's batch is exempt from
/// the limit (it used to wait, forever, for the lane its own caller held).
#[tokio::test(start_paused = true)]
async fn re_entrant_batch_functions_complete() {
    static SELF_CALLING: LazyLock<Coalescer<u64, u64>> = LazyLock::new(|| {
        Coalescer::new(
            Config::new("s.reentrant.self")
                .window(Duration::from_millis(1))
                .max_in_flight(1),
            |keys: Vec<u64>| async move {
                let mut out = HashMap::new();
                for k in keys {
                    let v = if k >= 100 {
                        SELF_CALLING.load(k - 100).await.unwrap().unwrap_or(0) + 1
                    } else {
                        k
                    };
                    out.insert(k, v);
                }
                out
            },
        )
    });
    let out = no_hang(join_all([105, 7, 200, 300].map(|k| SELF_CALLING.load(k)))).await;
    let got: Vec<_> = out.into_iter().map(|r| r.unwrap().unwrap()).collect();
    // 105 -> 5; 200 -> 100 -> 0; 300 -> 200 -> 100 -> 0: three levels deep.
    assert_eq!(got, [6, 7, 2, 3]);
    let m = SELF_CALLING.metrics();
    assert!(m.reentrant_batches >= 1, "{m}");
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");

    // Two coalescers that call each other, each with one lane.
    static PING: LazyLock<Coalescer<u64, u64>> = LazyLock::new(|| {
        Coalescer::new(
            Config::new("s.reentrant.ping")
                .dispatch(Dispatch::Adaptive)
                .max_in_flight(1),
            |keys: Vec<u64>| async move {
                let mut out = HashMap::new();
                for k in keys {
                    let v = if k > 0 {
                        PONG.load(k - 1).await.unwrap().unwrap() + 1
                    } else {
                        0
                    };
                    out.insert(k, v);
                }
                out
            },
        )
    });
    static PONG: LazyLock<Coalescer<u64, u64>> = LazyLock::new(|| {
        Coalescer::new(
            Config::new("s.reentrant.pong")
                .window(Duration::from_millis(1))
                .max_in_flight(1),
            |keys: Vec<u64>| async move {
                let mut out = HashMap::new();
                for k in keys {
                    let v = if k > 0 {
                        PING.load(k - 1).await.unwrap().unwrap() + 1
                    } else {
                        0
                    };
                    out.insert(k, v);
                }
                out
            },
        )
    });
    let out = no_hang(join_all((0..8u64).map(|k| PING.load(k)))).await;
    for (k, r) in (0..8u64).zip(out) {
        assert_eq!(r.unwrap(), Some(k));
    }
    for m in [PING.metrics(), PONG.metrics()] {
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// A re-entrant batch takes a lane past `max_in_flight`; when it ends, that
/// lane is given up, not handed to the next queued batch: the batches that are
/// not re-entrant never run more than `max_in_flight` at once. (The lane used
/// to be handed over, so that a queue that never emptied kept one batch more
/// than the limit in flight for as long as it lasted.)
#[tokio::test(start_paused = true)]
async fn a_re_entrant_batch_gives_its_extra_lane_up() {
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    static NESTING: LazyLock<Coalescer<u64, u64>> = LazyLock::new(|| {
        Coalescer::new(
            Config::new("s.reentrant.lane")
                .window(Duration::from_millis(1))
                .max_in_flight(1),
            |keys: Vec<u64>| async move {
                let outer = keys.iter().any(|&k| k >= 1000);
                if outer {
                    let now = RUNNING.fetch_add(1, SeqCst) + 1;
                    PEAK.fetch_max(now, SeqCst);
                }
                let mut out = HashMap::new();
                for k in keys {
                    let v = if k >= 1000 {
                        // Nested: an exempt batch past the limit.
                        NESTING.load(k - 1000).await.unwrap().unwrap_or(0)
                    } else {
                        k
                    };
                    out.insert(k, v);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                if outer {
                    RUNNING.fetch_sub(1, SeqCst);
                }
                out
            },
        )
    });
    // Pairs of calls 2.5 ms apart, every 20 ms. The first one's batch runs
    // from 1 ms and makes a nested call at once, whose batch (exempt, past
    // the limit) gathers until 2 ms and runs until 5 ms; the second one's
    // batch is due at 3.5 ms and queues. At 5 ms the exempt batch's lane
    // must not go to it: the first batch runs until 8 ms.
    let calls = (0..8u64).map(|i| async move {
        let at = 20_000 * (i / 2) + 2_500 * (i % 2);
        tokio::time::sleep(Duration::from_micros(at)).await;
        NESTING.load(1000 + i).await
    });
    let out = no_hang(join_all(calls)).await;
    for (i, r) in out.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some(i as u64));
    }
    let m = NESTING.metrics();
    assert!(m.reentrant_batches >= 4, "{m}");
    assert_eq!(PEAK.load(SeqCst), 1, "{m}");
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

/// `window = "0ms"` dispatches at the next scheduling point: calls made in the
/// same instant share a batch (it used to send each alone). On an adaptive road
/// a call that finds the road empty still goes alone (that is the policy); calls
/// made while it runs share one batch.
#[tokio::test(start_paused = true)]
async fn a_zero_window_still_batches_calls_made_in_the_same_instant() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let runs = Arc::new(AtomicUsize::new(0));
        let r2 = runs.clone();
        let c = Coalescer::new(
            Config::new("s.zero_window")
                .window(Duration::ZERO)
                .dispatch(dispatch)
                .max_in_flight(4),
            move |keys: Vec<u64>| {
                r2.fetch_add(1, SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    squares(keys)
                }
            },
        );
        let first = c.load(0);
        tokio::pin!(first);
        assert!(futures::poll!(first.as_mut()).is_pending());
        let out = no_hang(join_all((1..=5u64).map(|k| c.load(k)))).await;
        for (k, r) in (1..=5u64).zip(out) {
            assert_eq!(r.unwrap(), Some(k * k));
        }
        assert_eq!(first.await.unwrap(), Some(0));
        // Window: the five join the first call's batch (still settling). Adaptive:
        // the first call ran alone; the five share one batch beside it.
        let expected = if dispatch == Dispatch::Window { 1 } else { 2 };
        assert_eq!(runs.load(SeqCst), expected, "{dispatch:?}");
    }
}

/// The same, plainly: five calls joined in one task make one batch.
#[tokio::test(start_paused = true)]
async fn five_same_instant_calls_with_a_zero_window_make_one_batch() {
    let c = Coalescer::new(
        Config::new("s.zero_window.plain").window(Duration::ZERO),
        |keys: Vec<u64>| async move { squares(keys) },
    );
    let out = no_hang(join_all((1..=5u64).map(|k| c.load(k)))).await;
    assert!(out.into_iter().all(|r| r.is_ok()));
    assert_eq!(c.metrics().batches, 1);
}

/// Outside any Tokio runtime (`futures::executor::block_on`) and on a runtime
/// built without `enable_time`, calls work, windows and timeouts included (a
/// window-mode call used to panic with Tokio's "no reactor"/"timers are
/// disabled").
#[test]
fn calls_work_without_a_tokio_runtime_and_without_a_time_driver() {
    let c = Arc::new(Coalescer::new(
        Config::new("s.no_runtime")
            .window(Duration::from_millis(2))
            .timeout(Duration::from_secs(30)),
        |keys: Vec<u64>| async move { squares(keys) },
    ));
    assert_eq!(futures::executor::block_on(c.load(3)).unwrap(), Some(9));
    // Two threads, each blocking on its own call: one batch or two, both answered.
    let threads: Vec<_> = (4..6u64)
        .map(|k| {
            let c = c.clone();
            std::thread::spawn(move || futures::executor::block_on(c.load(k)))
        })
        .collect();
    for (k, t) in (4..6u64).zip(threads) {
        assert_eq!(t.join().unwrap().unwrap(), Some(k * k));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime without enable_time");
    let out = rt.block_on(join_all((7..10u64).map(|k| c.load(k))));
    for (k, r) in (7..10u64).zip(out) {
        assert_eq!(r.unwrap(), Some(k * k));
    }
    let adaptive = Coalescer::new(
        Config::new("s.no_runtime.adaptive").dispatch(Dispatch::Adaptive),
        |keys: Vec<u64>| async move { squares(keys) },
    );
    assert_eq!(
        futures::executor::block_on(adaptive.load(4)).unwrap(),
        Some(16)
    );
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight, m.panics), (0, 0, 0), "{m}");
}

fn paused_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn real_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits for a thread's result, failing (not blocking) after `secs` of real time:
/// a liveness bound, not a measurement.
fn within<T: Send + 'static>(secs: u64, rx: std::sync::mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("no answer in time: a caller waited on another runtime's clock")
}

/// A batch opened on a runtime whose clock is paused (and an hour ahead), joined
/// by a caller on a real-clock runtime; the opener then leaves. The real-clock
/// caller is answered once the window has passed on the paused clock (which the
/// idle runtime advances at once); it used to adopt the batch and wait, on its
/// own clock, for a deadline taken on the paused one: about an hour.
#[test]
fn a_real_clock_caller_is_not_timed_by_a_paused_clock_an_hour_ahead() {
    static CORE: LazyLock<Core<(), u64, u64>> =
        LazyLock::new(|| Core::new(Config::new("s.clocks").window(Duration::from_millis(20))));
    let batch = |_: &(), keys: Vec<u64>| async move { squares(keys) };
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (joined_tx, joined_rx) = std::sync::mpsc::channel::<()>();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let paused = std::thread::spawn(move || {
        paused_rt().block_on(async move {
            tokio::time::advance(Duration::from_secs(3600)).await;
            let mut call = Box::pin(CORE.load((), 1, batch));
            assert!(futures::poll!(call.as_mut()).is_pending(), "admitted");
            opened_tx.send(()).unwrap();
            // Blocks this runtime (no auto-advance) until the other caller joined.
            joined_rx.recv().unwrap();
            drop(call);
            // Idle until the other caller is answered: the paused clock advances.
            let _ = done_rx.await;
        })
    });
    let real = std::thread::spawn(move || {
        real_rt().block_on(async move {
            opened_rx.recv().unwrap();
            let mut call = Box::pin(CORE.load((), 2, batch));
            assert!(futures::poll!(call.as_mut()).is_pending(), "joined");
            joined_tx.send(()).unwrap();
            answer_tx.send(call.await).unwrap();
        })
    });
    assert_eq!(within(60, answer_rx).unwrap(), Some(4));
    let _ = done_tx.send(());
    paused.join().unwrap();
    real.join().unwrap();
    let m = CORE.metrics();
    assert_eq!((m.batches, m.pending, m.in_flight), (1, 0, 0), "{m}");
}

/// The other way round: a batch opened on a real clock, joined by a caller whose
/// paused clock is an hour ahead, and left by its opener. The joiner is answered
/// after the real window.
#[test]
fn a_paused_clock_caller_is_answered_by_a_batch_on_a_real_clock() {
    static CORE: LazyLock<Core<(), u64, u64>> = LazyLock::new(|| {
        Core::new(Config::new("s.clocks.reverse").window(Duration::from_millis(20)))
    });
    let batch = |_: &(), keys: Vec<u64>| async move { squares(keys) };
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<()>();
    let (joined_tx, joined_rx) = std::sync::mpsc::channel::<()>();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel();
    let real = std::thread::spawn(move || {
        real_rt().block_on(async move {
            let mut call = Box::pin(CORE.load((), 1, batch));
            assert!(futures::poll!(call.as_mut()).is_pending(), "admitted");
            opened_tx.send(()).unwrap();
            joined_rx.recv().unwrap();
            drop(call);
        })
    });
    let paused = std::thread::spawn(move || {
        paused_rt().block_on(async move {
            tokio::time::advance(Duration::from_secs(3600)).await;
            opened_rx.recv().unwrap();
            let mut call = Box::pin(CORE.load((), 2, batch));
            assert!(futures::poll!(call.as_mut()).is_pending(), "joined");
            joined_tx.send(()).unwrap();
            answer_tx.send(call.await).unwrap();
        })
    });
    assert_eq!(within(60, answer_rx).unwrap(), Some(4));
    real.join().unwrap();
    paused.join().unwrap();
    assert_eq!(CORE.metrics().batches, 1);
}

/// The runtime driving a batch shuts down while the batch runs; a caller of the
/// batch on another runtime gets its value: the batch is lost, and runs again on
/// the caller's runtime. It used to get `Error::Panicked("…being shutdown")`, or
/// to wait forever on a future its runtime would never poll.
#[test]
fn a_runtime_shut_down_mid_batch_re_runs_the_batch_for_callers_elsewhere() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    static CORE: LazyLock<Core<(), u64, u64>> =
        LazyLock::new(|| Core::new(Config::new("s.shutdown").window(Duration::from_millis(300))));
    let batch = |_: &(), keys: Vec<u64>| async move {
        if RUNS.fetch_add(1, SeqCst) == 0 {
            // The first run never finishes on its own (its runtime goes away).
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        squares(keys)
    };
    let rt_a = real_rt();
    let rt_b = real_rt();
    rt_a.spawn(CORE.load((), 1, batch));
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < until, "never {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for("admitted", &|| CORE.metrics().pending == 1);
    let (tx, rx) = std::sync::mpsc::channel();
    rt_b.spawn(async move { tx.send(CORE.load((), 2, batch).await).unwrap() });
    wait_for("running", &|| RUNS.load(SeqCst) == 1);
    rt_a.shutdown_timeout(Duration::from_secs(10));
    let got = within(30, rx);
    assert_eq!(got.unwrap(), Some(4));
    let m = CORE.metrics();
    assert_eq!((m.pending, m.in_flight, m.panics), (0, 0, 0), "{m}");
    assert!(m.lost_batches >= 1, "{m}");
    drop(rt_b);
}

/// Windows never end early, whatever their length (they are timed by the
/// precise timer, not rounded to a millisecond tick): a lower bound, which noise
/// cannot break. How close to its nominal length a window ends is measured in
/// `report window` (BENCHMARKS.md).
#[test]
fn windows_never_end_before_their_length() {
    let rt = real_rt();
    for window in [
        Duration::from_micros(300),
        Duration::from_millis(1),
        Duration::from_millis(3),
    ] {
        let c = Coalescer::new(
            Config::new("s.window_length").window(window),
            |keys: Vec<u64>| async move { squares(keys) },
        );
        rt.block_on(async {
            for k in 0..10u64 {
                assert_eq!(c.load(k).await.unwrap(), Some(k * k));
            }
        });
        let m = c.metrics();
        assert!(
            m.wait.min >= window,
            "{window:?}: a window ended early: {m}"
        );
    }
}

/// A coalescer whose batch fn sleeps `run` (Tokio's clock), then answers
/// `k -> k * 10`.
fn sleepy(config: Config, run: Duration) -> Arc<Coalescer<u64, u64>> {
    Arc::new(Coalescer::new(config, move |keys: Vec<u64>| async move {
        tokio::time::sleep(run).await;
        keys.into_iter()
            .map(|k| (k, k * 10))
            .collect::<HashMap<_, _>>()
    }))
}

/// On an adaptive road a lone call holds the one lane; its caller is polled
/// once, then never. A second call's batch waits for that lane: the lone run
/// moves to a task of its own as soon as the batch opens, so the batch leaves
/// when it ends, not at its window's end (10 s), nor never (`Duration::MAX`).
#[tokio::test(start_paused = true)]
async fn an_unpolled_lone_caller_holds_no_batch_for_its_window() {
    for dispatch in [Dispatch::Adaptive, Dispatch::Auto] {
        for window in [Duration::from_secs(10), Duration::MAX] {
            let c = sleepy(
                Config::new("s.unpolled.window")
                    .dispatch(dispatch)
                    .window(window),
                Duration::from_millis(10),
            );
            let mut first = Box::pin(c.load(1));
            assert!(futures::poll!(first.as_mut()).is_pending());
            let start = tokio::time::Instant::now();
            let second = no_hang(c.load(2)).await;
            assert_eq!(second.unwrap(), Some(20));
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "{dispatch:?} {window:?}: {took:?}"
            );
            assert_eq!(first.await.unwrap(), Some(10));
            let m = c.metrics();
            assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
        }
    }
}

/// A batch fn that loads keys of its own coalescer (`k >= 100` loads
/// `k - 100`), with one lane.
fn self_calling(dispatch: Dispatch, window: Duration) -> Arc<Coalescer<u64, u64>> {
    let slot: Arc<std::sync::OnceLock<std::sync::Weak<Coalescer<u64, u64>>>> = Arc::default();
    let s = slot.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("s.reentrant.window")
            .dispatch(dispatch)
            .window(window)
            .max_in_flight(1),
        move |keys: Vec<u64>| {
            let me = s.get().and_then(std::sync::Weak::upgrade);
            async move {
                let mut out = HashMap::new();
                for k in keys {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let v = match (&me, k >= 100) {
                        (Some(me), true) => me.load(k - 100).await.unwrap().unwrap_or(0) + 1,
                        _ => k,
                    };
                    out.insert(k, v);
                }
                out
            }
        },
    ));
    slot.set(Arc::downgrade(&c)).ok();
    c
}

/// A re-entrant batch (its batch fn waits for a batch of its own
/// coalescer, which waits for the lane the first holds) leaves once the
/// calls of its instant have joined: it used to wait out its window at every
/// level (30 s for three levels of a 10 s window), and forever with
/// `Duration::MAX` on an adaptive road. Only the outer call's own batch
/// waits a window, and only with window dispatch (the bus).
#[tokio::test(start_paused = true)]
async fn a_re_entrant_batch_does_not_wait_out_its_window() {
    let ten = Duration::from_secs(10);
    for (dispatch, window, outer) in [
        (Dispatch::Window, ten, ten),
        (Dispatch::Adaptive, ten, Duration::ZERO),
        (Dispatch::Adaptive, Duration::MAX, Duration::ZERO),
        (Dispatch::Auto, ten, Duration::ZERO),
        (Dispatch::Auto, Duration::MAX, Duration::ZERO),
    ] {
        let c = self_calling(dispatch, window);
        let start = tokio::time::Instant::now();
        let r = no_hang(c.load(305)).await;
        assert_eq!(r.unwrap(), Some(8), "{dispatch:?} {window:?}");
        let took = start.elapsed();
        assert!(
            took >= outer && took < outer + Duration::from_secs(1),
            "{dispatch:?} {window:?}: {took:?}"
        );
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// `Auto` with one lane under a steady load: a batch opened while the group
/// ran adaptive waits for the lane to free. If the controller starts to
/// linger meanwhile, the batch is still told when the lane frees: it used to
/// wait out the `window` ceiling (10 s, or forever).
#[tokio::test(start_paused = true)]
async fn auto_frees_a_batch_opened_before_it_started_to_linger() {
    for ceiling in [Duration::from_secs(10), Duration::MAX] {
        let c = sleepy(
            Config::new("s.auto.ceiling")
                .dispatch(Dispatch::Auto)
                .max_in_flight(1)
                .window(ceiling),
            Duration::from_millis(10),
        );
        let mut calls = Vec::new();
        for i in 0..200u64 {
            let c = c.clone();
            calls.push(tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                let r = no_hang(c.load(i)).await;
                (r.unwrap(), t0.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for (i, call) in calls.into_iter().enumerate() {
            let (r, took) = call.await.unwrap();
            assert_eq!(r, Some(i as u64 * 10));
            assert!(
                took < Duration::from_secs(1),
                "{ceiling:?}: call {i} took {took:?}"
            );
        }
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// A group value whose `Drop` panics for the instance a call was made with
/// (user code; `Hash` and `Eq` read `id` only).
#[derive(Debug)]
struct Tenant {
    id: u64,
    boom: bool,
}

impl PartialEq for Tenant {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Tenant {}

impl Clone for Tenant {
    /// Clones are quiet: only the instance the call was made with panics.
    fn clone(&self) -> Self {
        Tenant {
            id: self.id,
            boom: false,
        }
    }
}

impl Hash for Tenant {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.id.hash(h);
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if self.boom && !std::thread::panicking() {
            panic!("provoked: Drop of a group value");
        }
    }
}

async fn tenant_rows(keys: Vec<u64>) -> HashMap<u64, u64> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    keys.into_iter().map(|k| (k, k * 10)).collect()
}

/// A call's group value, or key, is dropped by the engine once the call is
/// admitted (its group exists already) or answered; a panic in its `Drop`
/// neither reaches the caller nor leaves a lane or a pending count behind
/// (the group's later calls stalled), in every dispatch mode, alone, joined
/// to a lone run, or in a batch.
#[tokio::test(start_paused = true)]
async fn a_group_value_whose_drop_panics_leaks_nothing() {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;
    quiet();
    let tenant = |id, boom| Tenant { id, boom };
    for dispatch in [Dispatch::Window, Dispatch::Adaptive, Dispatch::Auto] {
        for isolate in [0, 1] {
            let core: Core<Tenant, u64, u64> = Core::new(
                Config::new("s.group.drop")
                    .dispatch(dispatch)
                    .isolate(isolate)
                    .window(Duration::from_millis(5)),
            );
            let load = |g, k| core.load(g, k, |_: &Tenant, k| tenant_rows(k));
            assert_eq!(no_hang(load(tenant(1, false), 1)).await.unwrap(), Some(10));
            // Alone (or in a batch of its own), then joined to a running call.
            let alone = AssertUnwindSafe(load(tenant(1, true), 2))
                .catch_unwind()
                .await;
            let (first, joined) = no_hang(async {
                tokio::join!(
                    load(tenant(1, false), 4),
                    AssertUnwindSafe(load(tenant(1, true), 4)).catch_unwind()
                )
            })
            .await;
            let again = no_hang(load(tenant(1, false), 3)).await;
            let label = format!("{dispatch:?}, isolate {isolate}");
            assert_eq!(alone.expect(&label).unwrap(), Some(20), "{label}");
            assert_eq!(first.unwrap(), Some(40), "{label}");
            assert_eq!(joined.expect(&label).unwrap(), Some(40), "{label}");
            assert_eq!(again.unwrap(), Some(30), "{label}");
            let m = core.metrics();
            assert_eq!((m.pending, m.in_flight), (0, 0), "{label}: {m}");
        }
    }
}

/// A lone call's own key whose `Drop` panics: the call still gets its value
/// (it got the raw panic on the lone road, where a batch dropped it quietly).
#[tokio::test(start_paused = true)]
async fn a_lone_calls_key_whose_drop_panics_still_answers() {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;
    quiet();
    for dispatch in [Dispatch::Window, Dispatch::Adaptive, Dispatch::Auto] {
        let core: Core<(), Tenant, u64> = Core::new(Config::new("s.key.drop").dispatch(dispatch));
        let batch = |_: &(), keys: Vec<Tenant>| async move {
            keys.iter()
                .map(|k| {
                    (
                        Tenant {
                            id: k.id,
                            boom: false,
                        },
                        k.id * 10,
                    )
                })
                .collect::<HashMap<_, _>>()
        };
        let r = AssertUnwindSafe(core.load((), Tenant { id: 13, boom: true }, batch))
            .catch_unwind()
            .await;
        assert_eq!(
            r.expect("a panic reached the caller").unwrap(),
            Some(130),
            "{dispatch:?}"
        );
        let m = core.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
    }
}

/// A current-thread runtime with a real clock: it runs its tasks only while
/// something blocks on it.
fn current_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A lone call's run, moved to a task of its own when a call on another
/// runtime joins it or needs its lane, goes on on its caller's runtime and
/// clock. A promoter on a paused clock made its 5 s timeout fire in 50 ms; a
/// promoter on a current-thread runtime that was then no longer driven held
/// the caller forever.
#[test]
fn a_promoted_lone_run_stays_on_its_callers_runtime_and_clock() {
    // (max_in_flight, the other call's key): it joins the run, or queues for
    // its lane.
    for (lanes, other) in [(usize::MAX, 1u64), (1, 2)] {
        let c = sleepy(
            Config::new("s.promoted.home")
                .dispatch(Dispatch::Adaptive)
                .max_in_flight(lanes)
                .window(Duration::from_millis(1))
                .timeout(Duration::from_secs(5)),
            Duration::from_millis(300),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let (c1, tx1) = (c.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = real_rt().block_on(c1.load(1));
            tx1.send((1u64, r)).unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        let c2 = c.clone();
        std::thread::spawn(move || {
            let r = paused_rt().block_on(c2.load(other));
            tx.send((other, r)).unwrap();
        });
        for _ in 0..2 {
            let (k, r) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a call was never answered");
            assert_eq!(r.unwrap(), Some(k * 10), "lanes {lanes}: key {k}");
        }
    }
    // The joiner's runtime stops being driven once it gives up.
    let c = sleepy(
        Config::new("s.promoted.undriven").dispatch(Dispatch::Adaptive),
        Duration::from_millis(200),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let c1 = c.clone();
    std::thread::spawn(move || {
        tx.send(real_rt().block_on(c1.load(1))).unwrap();
    });
    std::thread::sleep(Duration::from_millis(50));
    let other = current_rt();
    let gave_up =
        other.block_on(async { tokio::time::timeout(Duration::from_millis(10), c.load(1)).await });
    assert!(gave_up.is_err());
    let owner = rx.recv_timeout(Duration::from_secs(30));
    drop(other);
    assert_eq!(owner.expect("the caller stalled").unwrap(), Some(10));
}
