//! One recorder feeds both the in-process snapshot and the `metrics` export: the
//! exported gauges follow every change, cancellations included (they used to
//! stay at the last batch's value when calls were cancelled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalesce::{Coalescer, Config};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// The last value of every gauge, by name.
#[derive(Default)]
struct Gauges(Mutex<HashMap<String, f64>>);

struct Cell {
    name: String,
    gauges: Arc<Gauges>,
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, value: f64) {
        *self
            .gauges
            .0
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self
            .gauges
            .0
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.gauges
            .0
            .lock()
            .unwrap()
            .insert(self.name.clone(), value);
    }
}

struct Capture(Arc<Gauges>);

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Cell {
            name: key.name().to_owned(),
            gauges: self.0.clone(),
        }))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn exported_gauges_follow_cancelled_calls() {
    let gauges = Arc::new(Gauges::default());
    let recorder = Capture(gauges.clone());
    // The coalescer's export handles bind to the recorder current when it is made.
    let c = metrics::with_local_recorder(&recorder, || {
        Arc::new(Coalescer::new(
            Config::new("recorder.gauges").window(Duration::from_millis(50)),
            |keys: Vec<u64>| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                keys
            },
        ))
    });
    let gauge = |name: &str| gauges.0.lock().unwrap().get(name).copied();
    let tasks: Vec<_> = (0..10u64)
        .map(|k| {
            let c = c.clone();
            tokio::spawn(async move { c.load(k).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gauge("coalesce_pending_calls"), Some(10.0));
    // Five callers leave before dispatch.
    for t in &tasks[..5] {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(c.metrics().pending, 5);
    assert_eq!(
        gauge("coalesce_pending_calls"),
        Some(5.0),
        "the export follows cancellations"
    );
    // The batch runs for the other five.
    tokio::time::sleep(Duration::from_millis(55)).await;
    assert_eq!(gauge("coalesce_in_flight_batches"), Some(1.0));
    for t in tasks.into_iter().skip(5) {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(gauge("coalesce_pending_calls"), Some(0.0));
    assert_eq!(gauge("coalesce_in_flight_batches"), Some(0.0));
    // Every caller of a batch leaves: abandoned, and the gauge says so.
    let lone = {
        let c = c.clone();
        tokio::spawn(async move { c.load(99).await })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gauge("coalesce_pending_calls"), Some(1.0));
    lone.abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gauge("coalesce_pending_calls"), Some(0.0));
    let m = c.metrics();
    assert_eq!(
        (m.pending, m.in_flight, m.cancelled_calls),
        (0, 0, 6),
        "{m}"
    );
}
