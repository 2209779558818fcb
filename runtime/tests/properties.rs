//! Property tests of the engine: random traffic, random cancellations, random
//! configurations and injected failures, each case on its own current-thread runtime
//! with a paused clock (so a case is deterministic and a hang shows up as a timeout).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use coalesce_runtime::{BatchOutput, Coalescer, Config, Dispatch, Error};
use proptest::prelude::*;

const INJECTED: &str = "injected panic";

fn f(k: u64) -> u64 {
    k * 1_000 + 7
}

type Batches = Arc<Mutex<Vec<Vec<u64>>>>;

#[derive(Clone, Copy, Debug)]
enum Fail {
    None,
    Err,
    /// On the first poll, before any await.
    PanicEarly,
    /// After the batch's sleep.
    PanicLate,
}

#[derive(Clone, Debug)]
struct Op {
    key: u64,
    /// When the call is made, in units of 250 µs.
    at: u64,
    /// Dropped after this many polls that found it pending, if any.
    cancel_after: Option<u32>,
    /// Dropped at the next wake-up, without reading a possibly ready entry.
    blind: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0u64..12,
        0u64..40,
        prop_oneof![3 => Just(None), 1 => (1u32..5).prop_map(Some)],
        proptest::bool::ANY,
    )
        .prop_map(|(key, at, cancel_after, blind)| Op {
            key,
            at,
            cancel_after,
            blind,
        })
}

fn fail() -> impl Strategy<Value = Fail> {
    prop_oneof![
        6 => Just(Fail::None),
        1 => Just(Fail::Err),
        1 => Just(Fail::PanicEarly),
        1 => Just(Fail::PanicLate),
    ]
}

/// Resolves to `None` once `limit` polls have found `inner` pending, dropping it:
/// at once (`blind == false`), or at the next poll, without polling `inner` again
/// (`blind == true`). A blind drop may leave an entry that is ready but unread.
struct DropAfter<F> {
    inner: Option<Pin<Box<F>>>,
    polls: u32,
    limit: Option<u32>,
    blind: bool,
}

impl<F: Future> Future for DropAfter<F> {
    type Output = Option<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.blind && this.limit.is_some_and(|l| this.polls >= l) {
            this.inner = None;
            return Poll::Ready(None);
        }
        let inner = this.inner.as_mut().expect("polled after completion");
        if let Poll::Ready(v) = inner.as_mut().poll(cx) {
            this.inner = None;
            return Poll::Ready(Some(v));
        }
        this.polls += 1;
        if !this.blind && this.limit.is_some_and(|l| this.polls >= l) {
            this.inner = None;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Keeps the injected panics out of the test output; any other panic is reported.
fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with(INJECTED));
            if !injected {
                default(info);
            }
        }));
    });
}

#[derive(Debug)]
struct Injected;

struct Case {
    max_batch: usize,
    window_us: u64,
    run_ms: u64,
    max_in_flight: usize,
    adaptive: bool,
    /// The batch returns an ordered `Vec` rather than a map.
    ordered: bool,
    max_pending: usize,
    ops: Vec<Op>,
    fails: Vec<Fail>,
}

/// A coalescer whose batches record their keys, then fail as `fails` says (in
/// turn) or return `shape(keys)`.
fn faulty<O>(
    config: Config,
    batches: Batches,
    n: Arc<AtomicUsize>,
    fails: Vec<Fail>,
    run_ms: u64,
    shape: fn(Vec<u64>) -> O,
) -> Coalescer<u64, u64, Injected>
where
    O: BatchOutput<u64, Value = u64, Error = Infallible> + Send + 'static,
{
    Coalescer::new(config, move |keys: Vec<u64>| {
        batches.lock().unwrap().push(keys.clone());
        let mode = fails[n.fetch_add(1, SeqCst) % fails.len()];
        async move {
            if let Fail::PanicEarly = mode {
                panic!("{INJECTED} (early)");
            }
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
            match mode {
                Fail::PanicLate => panic!("{INJECTED} (late)"),
                Fail::Err => Err(Injected),
                _ => Ok(shape(keys)),
            }
        }
    })
}

fn run_case(case: Case) -> Result<(), TestCaseError> {
    quiet_injected_panics();
    let batches: Batches = Default::default();
    let n = Arc::new(AtomicUsize::new(0));
    let (b2, n2, fails, run_ms) = (batches.clone(), n.clone(), case.fails.clone(), case.run_ms);
    let config = Config::new("p.invariants")
        .max_batch(case.max_batch)
        .window(Duration::from_micros(case.window_us))
        .max_in_flight(case.max_in_flight)
        .max_pending(case.max_pending)
        .dispatch(if case.adaptive {
            Dispatch::Adaptive
        } else {
            Dispatch::Window
        });
    let c = Arc::new(if case.ordered {
        faulty(config, b2, n2, fails, run_ms, |keys| {
            keys.into_iter().map(f).collect::<Vec<u64>>()
        })
    } else {
        faulty(config, b2, n2, fails, run_ms, |keys| {
            keys.into_iter()
                .map(|k| (k, f(k)))
                .collect::<HashMap<_, _>>()
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let handles: Vec<_> = case
            .ops
            .iter()
            .map(|op| {
                let (c, op) = (c.clone(), op.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(op.at * 250)).await;
                    let call = DropAfter {
                        inner: Some(Box::pin(async { c.load(op.key).await })),
                        polls: 0,
                        limit: op.cancel_after,
                        blind: op.blind,
                    };
                    call.await
                })
            })
            .collect();
        let all = futures::future::join_all(handles);
        tokio::time::timeout(Duration::from_secs(24 * 3600), all).await
    });
    drop(rt);
    let results = match results {
        Ok(r) => r,
        Err(_) => return Err(TestCaseError::fail("a call never completed")),
    };

    let (mut ok, mut failed, mut cancelled, mut overloaded) = (0u64, 0u64, 0u64, 0u64);
    for (op, r) in case.ops.iter().zip(results) {
        let r = r.map_err(|e| TestCaseError::fail(format!("task failed: {e}")))?;
        match r {
            None => {
                prop_assert!(op.cancel_after.is_some());
                cancelled += 1;
            }
            Some(Ok(v)) => {
                prop_assert_eq!(v, Some(f(op.key)), "key {} got a wrong value", op.key);
                ok += 1;
            }
            Some(Err(Error::Batch { .. })) => failed += 1,
            Some(Err(Error::Overloaded { max_pending, .. })) => {
                prop_assert_eq!(max_pending, case.max_pending);
                overloaded += 1;
            }
            Some(Err(Error::Panicked { message, .. })) => {
                prop_assert!(
                    message.starts_with(&format!("the batch function panicked: {INJECTED}")),
                    "panic: {}",
                    message
                );
                failed += 1;
            }
            Some(Err(e)) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
        }
    }
    if case.fails.iter().all(|f| matches!(f, Fail::None)) {
        prop_assert_eq!(failed, 0);
    }

    let batches = batches.lock().unwrap().clone();
    for b in &batches {
        prop_assert!(!b.is_empty(), "an empty batch was run");
        prop_assert!(
            b.len() <= case.max_batch,
            "batch of {} > max_batch",
            b.len()
        );
        let distinct: HashSet<_> = b.iter().collect();
        prop_assert_eq!(distinct.len(), b.len(), "duplicate keys in {:?}", b);
    }

    let m = c.metrics();
    prop_assert_eq!(m.overloaded, overloaded, "{}", m);
    prop_assert_eq!(m.calls + overloaded, case.ops.len() as u64, "{}", m);
    prop_assert_eq!(m.calls, ok + m.failed_calls() + m.cancelled_calls, "{}", m);
    prop_assert_eq!(m.failed_calls(), failed, "{}", m);
    prop_assert_eq!(m.cancelled_calls, cancelled, "{}", m);
    prop_assert_eq!((m.pending, m.in_flight), (0, 0), "{}", m);
    prop_assert_eq!(m.batches, batches.len() as u64, "{}", m);
    prop_assert_eq!(
        m.keys,
        batches.iter().map(Vec::len).sum::<usize>() as u64,
        "{}",
        m
    );
    prop_assert!(m.batch_size.max <= case.max_batch as u64, "{}", m);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=5000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_call_completes_with_its_own_value_and_the_metrics_add_up(
        max_batch in 1usize..50,
        window_us in 0u64..5_000,
        run_ms in 0u64..4,
        max_in_flight in prop_oneof![3 => Just(usize::MAX), 1 => 1usize..4],
        adaptive in proptest::bool::weighted(0.25),
        ordered in proptest::bool::ANY,
        max_pending in prop_oneof![3 => Just(usize::MAX), 1 => 1usize..40],
        ops in proptest::collection::vec(op(), 1..150),
        fails in proptest::collection::vec(fail(), 1..6),
    ) {
        run_case(Case { max_batch, window_us, run_ms, max_in_flight, adaptive, ordered, max_pending, ops, fails })?;
    }
}
