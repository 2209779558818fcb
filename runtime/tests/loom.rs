//! Model checking of the coalescer's core with loom: every interleaving of the
//! threads below is explored (run with `RUSTFLAGS="--cfg loom"`).
//!
//! What the model covers: enqueue into a shared batch, sealing a full batch, the
//! start/complete hand-off, per-caller result delivery, a driver cancelled while its
//! batch runs (the batch future passed to another caller), and a caller cancelled
//! before dispatch. What it does not: Tokio's timer (windows are zero, so no `Sleep`
//! is created), the `max_in_flight` queue across many batches, and timeouts; those
//! are covered by the paused-clock tests in `engine.rs`.
#![cfg(loom)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use coalesce_runtime::{Config, Core};
use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

type C = Core<(), u64, u64>;

fn core(max_batch: usize) -> Arc<C> {
    Arc::new(Core::new(
        Config::new("loom")
            .window(Duration::ZERO)
            .max_batch(max_batch),
    ))
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

async fn times_ten(keys: Vec<u64>) -> HashMap<u64, u64> {
    YieldOnce(false).await;
    keys.into_iter().map(|k| (k, k * 10)).collect()
}

#[test]
fn concurrent_callers_each_get_their_own_entry() {
    loom::model(|| {
        let c = core(2);
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 1, times_ten)));
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        assert_eq!(t.join().unwrap().unwrap(), Some(10));
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight, m.calls), (0, 0, 2));
    });
}

#[test]
fn same_key_callers_share_or_split_but_both_complete() {
    loom::model(|| {
        let c = core(8);
        let c2 = c.clone();
        let t = thread::spawn(move || block_on(c2.load((), 5, times_ten)));
        let mine = block_on(c.load((), 5, times_ten));
        assert_eq!(mine.unwrap(), Some(50));
        assert_eq!(t.join().unwrap().unwrap(), Some(50));
        assert_eq!(c.metrics().pending, 0);
    });
}

#[test]
fn a_cancelled_caller_never_blocks_the_other() {
    loom::model(|| {
        let c = core(8);
        let c2 = c.clone();
        let t = thread::spawn(move || {
            // Poll once (it may become the driver and start the batch), then give up.
            let mut fut = Box::pin(c2.load((), 1, times_ten));
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = fut.as_mut().poll(&mut cx);
            drop(fut);
        });
        let mine = block_on(c.load((), 2, times_ten));
        assert_eq!(mine.unwrap(), Some(20));
        t.join().unwrap();
        let m = c.metrics();
        assert_eq!(m.pending, 0);
        assert_eq!(m.in_flight, 0);
    });
}
