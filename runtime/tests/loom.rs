//! Model checking of the engine with loom: every interleaving of the threads
//! below is explored (run with `RUSTFLAGS="--cfg loom"`). Drivers, which run as
//! tasks in production, run as loom threads here (`engine::spawn`).
//!
//! What the models cover: admission into a shared batch and a full batch's
//! closing; the driver's start and delivery and each caller taking its own entry;
//! deduplicated keys; a caller cancelled before or during its batch; the lane
//! hand-off from a finishing batch to a queued one (`max_in_flight`); a lone
//! call's lane, and its promotion to a task of its own when a batch queues for
//! it; and a queued batch abandoned by its only caller while a lane is handed to
//! it; a call joining a running batch or a lone run of its key (`join_running`),
//! racing that run's end, its other caller leaving, or leaving itself; a
//! streamed batch feeding each caller its own item, racing a caller leaving. For writes: a write racing the batch of its key (enqueue vs dispatch),
//! a key's second write held back while its first runs and released when it
//! commits (the per-key watermark), and a writer that leaves after its write
//! was accepted. What they do not: timers (windows are zero, no timeout) and a runtime
//! shutting down, which the paused-clock and multi-runtime tests cover.
//!
//! Each model explores every interleaving with at most two preemptions per
//! execution (set `LOOM_MAX_PREEMPTIONS` to explore more).
#![cfg(loom)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use coalesce_runtime::{Config, Core, Dispatch, Streamed, WriteCore};
use futures::StreamExt as _;
use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

type C = Core<(), u64, u64>;

/// Explores every interleaving with at most `LOOM_MAX_PREEMPTIONS` (default 2)
/// preemptions per execution, as tokio's own loom suite does: enough to reach
/// every two-party race at each hand-off, with a state space CI can finish.
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(2, f);
}

/// [`model`] with at most `bound` preemptions by default: for the models whose
/// hand-offs take many more lock steps (a streamed batch delivers item by
/// item), where two preemptions explode the state space.
fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    builder.check(f);
}

fn core(config: Config) -> Arc<C> {
    Arc::new(Core::new(config.window(Duration::ZERO)))
}

/// Pending once, then ready: a batch that is still running when first polled.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn times_ten(_: &(), keys: Vec<u64>) -> impl Future<Output = HashMap<u64, u64>> {
    async move {
        YieldOnce(false).await;
        keys.into_iter().map(|k| (k, k * 10)).collect()
    }
}

/// Polls a call once (it may be admitted, or open a batch), then drops it: a
/// caller that leaves.
fn poll_once_then_leave<F: Future>(fut: F) {
    let mut fut = Box::pin(fut);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let _ = fut.as_mut().poll(&mut cx);
}

/// Once every driver has finished: nothing pending, no lane held.
fn assert_idle(c: &C) {
    coalesce_runtime::join_drivers();
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

#[test]
fn concurrent_callers_each_get_their_own_entry() {
    model(|| {
        let c = core(Config::new("loom").max_batch(2));
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 1, times_ten)));
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        assert_eq!(t.join().unwrap().unwrap(), Some(10));
        assert_idle(&c);
        assert_eq!(c.metrics().calls, 2);
    });
}

#[test]
fn same_key_callers_share_or_split_but_both_complete() {
    model(|| {
        let c = core(Config::new("loom").max_batch(8));
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 5, times_ten)));
        let mine = block_on(c.load((), 5, times_ten));
        assert_eq!(mine.unwrap(), Some(50));
        assert_eq!(t.join().unwrap().unwrap(), Some(50));
        assert_idle(&c);
    });
}

#[test]
fn a_cancelled_caller_never_blocks_the_other() {
    model(|| {
        let c = core(Config::new("loom").max_batch(8));
        let c2 = c.clone();
        let t = thread::spawn(move || {
            // Poll once (it may open the batch), then give up.
            poll_once_then_leave(c2.load((), 1, times_ten));
        });
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        t.join().unwrap();
        assert_idle(&c);
    });
}

/// One lane, two batches: the second queues, and the first hands it the lane as
/// it finishes (or takes it when the first is done already).
#[test]
fn the_lane_is_handed_to_the_queued_batch() {
    model(|| {
        let c = core(Config::new("loom").max_batch(1).max_in_flight(1));
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 1, times_ten)));
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        assert_eq!(t.join().unwrap().unwrap(), Some(10));
        assert_idle(&c);
        assert_eq!(c.metrics().batches, 2);
    });
}

/// Adaptive, one lane: a lone call holds it; a second call's batch queues for it
/// and promotes the lone call's run to a task of its own (or finds the lane
/// free). Both are answered and the lane comes back.
#[test]
fn a_lone_call_holding_the_lane_is_promoted_or_finishes() {
    model(|| {
        let c = core(
            Config::new("loom")
                .dispatch(Dispatch::Adaptive)
                .max_batch(1)
                .max_in_flight(1),
        );
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 1, times_ten)));
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        assert_eq!(t.join().unwrap().unwrap(), Some(10));
        assert_idle(&c);
    });
}

/// Adaptive: two calls for one key. The second joins the first's lone run
/// (attached, the run promoted to a task) or a batch of its own, or shares a
/// batch; each gets the value, and the lane comes back.
#[test]
fn a_call_joins_a_lone_run_of_its_key_or_fetches_it() {
    model(|| {
        let c = core(Config::new("loom").dispatch(Dispatch::Adaptive));
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 5, times_ten)));
        let mine = block_on(c.load((), 5, times_ten));
        assert_eq!(mine.unwrap(), Some(50));
        assert_eq!(t.join().unwrap().unwrap(), Some(50));
        assert_idle(&c);
        let m = c.metrics();
        assert_eq!(m.calls, m.keys + m.dedup_hits, "{m}");
    });
}

/// Adaptive: a call that may have joined a lone run leaves after one poll,
/// racing the run's end and its answer; the lone caller is answered, and
/// nothing stays pending.
#[test]
fn a_joiner_leaving_races_the_answer() {
    model(|| {
        let c = core(Config::new("loom").dispatch(Dispatch::Adaptive));
        let c2 = c.clone();
        let t = thread::spawn(move || {
            poll_once_then_leave(c2.load((), 5, times_ten));
        });
        let mine = block_on(c.load((), 5, times_ten));
        assert_eq!(mine.unwrap(), Some(50));
        t.join().unwrap();
        assert_idle(&c);
    });
}

/// Window mode: a call joins a running batch of its key while that batch's
/// only caller leaves; the joiner is answered either way (the batch goes on
/// for it, or it fetches in a batch of its own).
#[test]
fn a_join_races_the_last_caller_leaving_a_running_batch() {
    model(|| {
        let c = core(Config::new("loom").max_batch(8));
        let c2 = c.clone();
        let t = thread::spawn(move || {
            let mut fut = Box::pin(c2.load((), 5, times_ten));
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = fut.as_mut().poll(&mut cx);
            thread::yield_now();
            drop(fut);
        });
        let mine = block_on(c.load((), 5, times_ten));
        assert_eq!(mine.unwrap(), Some(50));
        t.join().unwrap();
        assert_idle(&c);
    });
}

/// A batch that streams its entries once its run has been pending once.
fn streamed_times_ten(
    _: &(),
    keys: Vec<u64>,
) -> impl Future<Output = Streamed<futures::stream::BoxStream<'static, Result<(u64, u64), Infallible>>>>
{
    async move {
        // Pending once before the stream, so that its callers race its items.
        YieldOnce(false).await;
        let items = futures::stream::iter(keys.into_iter().map(|k| Ok((k, k * 10))));
        Streamed(futures::StreamExt::boxed(items))
    }
}

/// Streamed: two callers of a shared batch, each fed by its own item while the
/// other may still wait; each gets its own entry, and nothing stays pending.
#[test]
fn streamed_items_reach_their_own_callers() {
    model_bounded(1, || {
        let c = core(Config::new("loom").max_batch(8));
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 1, streamed_times_ten)));
        let mine = block_on(c.load((), 2, streamed_times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        assert_eq!(t.join().unwrap().unwrap(), Some(10));
        assert_idle(&c);
    });
}

/// Streamed: a caller leaves after one poll, racing its item's delivery and
/// the batch's end; the other caller is answered.
#[test]
fn a_streamed_caller_leaving_races_its_item() {
    model(|| {
        let c = core(Config::new("loom").max_batch(8));
        let c2 = c.clone();
        let t = thread::spawn(move || {
            poll_once_then_leave(c2.load((), 1, streamed_times_ten));
        });
        let mine = block_on(c.load((), 2, streamed_times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        t.join().unwrap();
        assert_idle(&c);
    });
}

/// A stream that yields key 2's item (if it was asked for) and then never ends.
fn key_two_then_forever(
    _: &(),
    keys: Vec<u64>,
) -> impl Future<Output = Streamed<futures::stream::BoxStream<'static, Result<(u64, u64), Infallible>>>>
{
    async move {
        YieldOnce(false).await;
        let items = futures::stream::iter(
            keys.into_iter()
                .filter(|&k| k == 2)
                .map(|k| Ok((k, k * 10))),
        );
        Streamed(futures::StreamExt::boxed(futures::StreamExt::chain(
            items,
            futures::stream::pending(),
        )))
    }
}

/// Streamed, never ending: key 1's caller leaves after one poll while key 2's
/// takes its item. Whichever goes last stops the run, so the stream (which
/// owes key 1 forever) is dropped and the lane given back: every driver ends.
#[test]
fn the_last_caller_of_a_stream_that_owes_keys_stops_it() {
    model_bounded(1, || {
        let c = core(Config::new("loom").max_batch(8));
        let c2 = c.clone();
        let t = thread::spawn(move || {
            poll_once_then_leave(c2.load((), 1, key_two_then_forever));
        });
        let mine = block_on(c.load((), 2, key_two_then_forever));
        assert_eq!(mine.unwrap(), Some(20));
        t.join().unwrap();
        assert_idle(&c);
    });
}

/// One lane: a batch runs; the only caller of a second, queued batch leaves while
/// the first hands it the lane. The lane is given back exactly once.
#[test]
fn a_queued_batch_abandoned_while_a_lane_is_handed_to_it() {
    model(|| {
        let c = core(Config::new("loom").max_batch(1).max_in_flight(1));
        let c2 = c.clone();
        let t = thread::spawn(move || {
            let mut fut = Box::pin(c2.load((), 1, times_ten));
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = fut.as_mut().poll(&mut cx);
            thread::yield_now();
            drop(fut);
        });
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        t.join().unwrap();
        assert_idle(&c);
    });
}

/// A table the write models commit to: rows, and the keys whose write is in
/// flight (to catch two writes of one key running at once).
#[derive(Clone, Default)]
struct Table {
    rows: std::sync::Arc<std::sync::Mutex<HashMap<u64, u64>>>,
    running: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Table {
    fn batch(
        &self,
    ) -> impl Fn(&(), Vec<(u64, u64)>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static
    {
        let t = self.clone();
        move |_, items| {
            let t = t.clone();
            Box::pin(async move {
                for (k, _) in &items {
                    let mut running = t.running.lock().unwrap();
                    assert!(!running.contains(k), "two writes of key {k} in flight");
                    running.push(*k);
                }
                YieldOnce(false).await;
                let mut rows = t.rows.lock().unwrap();
                for (k, v) in items {
                    *rows.entry(k).or_default() += v;
                    t.running.lock().unwrap().retain(|r| *r != k);
                }
            })
        }
    }
}

fn writes(config: Config) -> Arc<WriteCore<(), u64, u64>> {
    Arc::new(WriteCore::with_merge(
        config.window(Duration::ZERO),
        |a: &mut u64, b| *a += b,
    ))
}

fn assert_writes_idle(c: &WriteCore<(), u64, u64>) {
    coalesce_runtime::join_drivers();
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

/// Two writes of one key, one per batch (`max_batch = 1`), two lanes: the
/// second is held back while the first runs, then released into a batch of
/// its own. Never two in flight; both answered; the sum is whole.
#[test]
fn a_keys_second_write_waits_for_its_first() {
    model(|| {
        let table = Table::default();
        let c = writes(Config::new("loom.w").max_batch(1).max_in_flight(2));
        let (c2, b2) = (c.clone(), table.batch());
        let t = thread::spawn(move || block_on(c2.save((), 7, 1, b2)));
        let mine = block_on(c.save((), 7, 2, table.batch()));
        mine.unwrap();
        t.join().unwrap().unwrap();
        assert_writes_idle(&c);
        assert_eq!(table.rows.lock().unwrap().get(&7), Some(&3));
    });
}

/// Writes of two keys race the dispatch of the batch: each lands in the
/// batch or in the next one, and both commit.
#[test]
fn a_write_racing_its_batchs_dispatch_lands_in_one_batch() {
    model(|| {
        let table = Table::default();
        let c = writes(Config::new("loom.w").max_batch(8));
        let (c2, b2) = (c.clone(), table.batch());
        let t = thread::spawn(move || block_on(c2.save((), 1, 10, b2)));
        block_on(c.save((), 2, 20, table.batch())).unwrap();
        t.join().unwrap().unwrap();
        assert_writes_idle(&c);
        let rows = table.rows.lock().unwrap().clone();
        assert_eq!(rows, HashMap::from([(1, 10), (2, 20)]));
    });
}

/// A writer leaves right after its write was accepted: the write commits all
/// the same, and nothing stays pending.
#[test]
fn a_writer_that_leaves_does_not_withdraw_its_write() {
    model(|| {
        let table = Table::default();
        let c = writes(Config::new("loom.w").max_batch(8));
        let (c2, b2) = (c.clone(), table.batch());
        let t = thread::spawn(move || {
            let mut fut = Box::pin(c2.save((), 3, 5, b2));
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            // Accepted by this poll (and maybe answered already).
            let _ = fut.as_mut().poll(&mut cx);
            drop(fut);
        });
        block_on(c.save((), 3, 1, table.batch())).unwrap();
        t.join().unwrap();
        assert_writes_idle(&c);
        assert_eq!(table.rows.lock().unwrap().get(&3), Some(&6));
    });
}
