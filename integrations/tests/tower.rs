//! `Coalescer` as a `tower::Service` (the `tower` feature): `poll_ready` reports a
//! full `max_pending`, so tower's layers compose — here `load_shed` and `timeout`.

use std::time::Duration;

use coalesce::{Coalescer, Config};
use tower::{Service, ServiceBuilder, ServiceExt};

fn slow(max_pending: usize, run: Duration) -> Coalescer<u64, u64> {
    Coalescer::new(
        Config::new("tower.slow")
            .window(Duration::from_millis(1))
            .max_pending(max_pending),
        move |ids: Vec<u64>| async move {
            tokio::time::sleep(run).await;
            ids.into_iter()
                .map(|id| (id, id * 3))
                .collect::<std::collections::HashMap<_, _>>()
        },
    )
}

#[tokio::test]
async fn load_shed_turns_a_full_coalescer_into_overloaded_and_timeout_bounds_a_call() {
    let coalescer = slow(2, Duration::from_millis(200));
    let mut svc = ServiceBuilder::new()
        .load_shed()
        .timeout(Duration::from_secs(5))
        .service(coalescer.clone());

    // Two calls fill `max_pending` while their batch runs.
    let first = tokio::spawn(svc.clone().oneshot(1));
    let second = tokio::spawn(svc.clone().oneshot(2));
    while coalescer.metrics().pending < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The third is shed at once, by tower's own error.
    let shed = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert!(shed.is::<tower::load_shed::error::Overloaded>(), "{shed}");
    assert_eq!(first.await.unwrap().unwrap(), Some(3));
    assert_eq!(second.await.unwrap().unwrap(), Some(6));
    // Room again: served.
    assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), Some(12));

    // The timeout layer bounds a call whose batch runs too long.
    let mut bounded = ServiceBuilder::new()
        .timeout(Duration::from_millis(20))
        .service(slow(10, Duration::from_millis(500)));
    let late = bounded.ready().await.unwrap().call(5).await.unwrap_err();
    assert!(late.is::<tower::timeout::error::Elapsed>(), "{late}");
}

#[tokio::test]
async fn ready_waits_for_room_and_wakes_when_a_call_is_answered() {
    let coalescer = slow(1, Duration::from_millis(50));
    let mut svc = coalescer.clone();
    let held = tokio::spawn(coalescer.clone().oneshot(7));
    while coalescer.metrics().pending < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Not ready while the one call waits; ready once it is answered.
    let ready = tokio::time::timeout(Duration::from_secs(5), svc.ready()).await;
    assert!(ready.is_ok(), "poll_ready was never woken");
    assert_eq!(held.await.unwrap().unwrap(), Some(21));
    assert_eq!(svc.call(8).await.unwrap(), Some(24));
}

/// A `metrics` recorder whose `coalesce_calls_total` counter, once armed,
/// sleeps in its first increment: a thread preempted between admitting a
/// call (under the engine's lock) and storing the gauges (after it).
/// The exported `coalesce_pending_calls` is kept in the second field.
struct SlowCalls(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::sync::Arc<LastGauge>,
);

/// The last value a gauge was set to.
#[derive(Default)]
struct LastGauge(std::sync::Mutex<Option<f64>>);

impl metrics::GaugeFn for LastGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        *self.0.lock().unwrap() = Some(value);
    }
}

struct SlowCounter(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl metrics::CounterFn for SlowCounter {
    fn increment(&self, _: u64) {
        if self.0.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    fn absolute(&self, _: u64) {}
}

impl metrics::Recorder for SlowCalls {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "coalesce_calls_total" {
            metrics::Counter::from_arc(std::sync::Arc::new(SlowCounter(self.0.clone())))
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        if key.name() == "coalesce_pending_calls" {
            metrics::Gauge::from_arc(self.1.clone())
        } else {
            metrics::Gauge::noop()
        }
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A thread that admitted a call exports the gauges after the engine's lock;
/// if it is slow, the batch may end and export `pending = 0` first. `poll_ready`
/// and `metrics()` read the engine's own count: ready, and 0, once every call
/// is answered (the stale gauge left `poll_ready` pending forever); and the
/// exported gauge ends at 0 (the slow thread exported its older count of 1).
#[test]
fn poll_ready_and_metrics_do_not_trust_a_stale_gauge() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let arm = Arc::new(AtomicBool::new(false));
    let pending = Arc::new(LastGauge::default());
    let recorder = SlowCalls(arm.clone(), pending.clone());
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let c: Coalescer<u64, u64> = metrics::with_local_recorder(&recorder, || {
        Coalescer::new(
            Config::new("tower.stale")
                .window(Duration::from_millis(1))
                .max_pending(2),
            move |ids: Vec<u64>| {
                let r = r.clone();
                async move {
                    r.notified().await;
                    ids.into_iter()
                        .map(|i| (i, i * 10))
                        .collect::<std::collections::HashMap<_, _>>()
                }
            },
        )
    });
    rt.block_on(async {
        let a = tokio::spawn({
            let c = c.clone();
            async move { c.load(1).await }
        });
        while c.metrics().in_flight < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        arm.store(true, Ordering::SeqCst);
        // Joins the running batch, then sleeps before storing the gauges.
        let joiner = {
            let c = c.clone();
            std::thread::spawn(move || futures::executor::block_on(c.load(1)))
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        release.notify_one();
        assert_eq!(a.await.unwrap().unwrap(), Some(10));
        assert_eq!(joiner.join().unwrap().unwrap(), Some(10));
        let mut svc = c.clone();
        let ready = tokio::time::timeout(Duration::from_secs(5), svc.ready()).await;
        assert!(ready.is_ok(), "poll_ready never became ready");
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
        // The exported gauge and the registry's listing too: the slow
        // thread's export came last, and set what is true now, not the count
        // it changed.
        assert_eq!(*pending.0.lock().unwrap(), Some(0.0));
        let listed = coalesce::metrics::get("tower.stale").unwrap();
        assert_eq!((listed.pending, listed.in_flight), (0, 0), "{listed}");
    });
}

/// With `max_pending(0)` no call is ever admitted: `poll_ready` fails at
/// once with `Overloaded`, as a call does (it stayed pending forever).
#[tokio::test]
async fn poll_ready_with_no_room_at_all_fails_at_once() {
    let c = slow(0, Duration::from_millis(1));
    let mut svc = c.clone();
    let ready = tokio::time::timeout(Duration::from_secs(5), svc.ready())
        .await
        .map(|r| r.map(|_| ()));
    assert!(
        matches!(
            ready,
            Ok(Err(coalesce::Error::Overloaded { max_pending: 0, .. }))
        ),
        "{ready:?}"
    );
}
