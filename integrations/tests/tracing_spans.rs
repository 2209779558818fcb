//! One `coalesce.batch` span per batch, with its fields recorded and linked from the
//! spans of the calls it carried (`follows_from`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use coalesce::coalesce;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Instrument;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

#[derive(Default, Debug, Clone)]
struct Captured {
    name: String,
    fields: HashMap<String, String>,
    follows: Vec<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<HashMap<u64, Captured>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
    for Capture
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut c = Captured {
            name: attrs.metadata().name().to_owned(),
            ..Default::default()
        };
        attrs.record(&mut Fields(&mut c.fields));
        self.0.lock().unwrap().insert(id.into_u64(), c);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(c) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut c.fields));
        }
    }
    fn on_follows_from(&self, id: &Id, follows: &Id, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        let from = spans
            .get(&follows.into_u64())
            .map(|c| c.fields.get("request").cloned().unwrap_or_default());
        if let (Some(from), Some(c)) = (from, spans.get_mut(&id.into_u64())) {
            c.follows.push(from);
        }
    }
}

#[coalesce(window = "1ms", name = "tests.tracing.squares")]
async fn squares(keys: Vec<u64>) -> HashMap<u64, u64> {
    keys.into_iter().map(|k| (k, k * k)).collect()
}

#[tokio::test]
async fn a_batch_span_records_its_fields_and_follows_from_its_callers() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let calls = (0..5u64).map(|k| {
        let span = tracing::info_span!("request", request = k);
        async move { squares(k).await }.instrument(span)
    });
    let out = futures::future::join_all(calls).await;
    for (k, r) in out.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some((k * k) as u64));
    }

    let spans = capture.0.lock().unwrap();
    let batches: Vec<&Captured> = spans
        .values()
        .filter(|c| c.name == "coalesce.batch")
        .collect();
    assert_eq!(batches.len(), 1, "one batch span: {batches:?}");
    let b = batches[0];
    assert_eq!(b.fields["coalesce.function"], "tests.tracing.squares");
    assert_eq!(b.fields["coalesce.batch.size"], "5");
    assert_eq!(b.fields["coalesce.batch.calls"], "5");
    assert_eq!(b.fields["coalesce.batch.outcome"], "ok");
    assert_eq!(b.fields["otel.status_code"], "OK");
    assert!(!b.fields.contains_key("error.type"));
    assert!(
        b.fields.contains_key("coalesce.batch.wait_us")
            && b.fields.contains_key("coalesce.batch.run_us")
    );
    let mut follows = b.follows.clone();
    follows.sort();
    assert_eq!(
        follows,
        ["0", "1", "2", "3", "4"],
        "linked from every caller's span"
    );
}

/// `#[tracing::instrument]` above `#[coalesce]` sees the batch fn: one span per
/// batch run, with the batch's keys.
#[tracing::instrument(name = "above", skip_all, fields(keys = ids.len()))]
#[coalesce(window = "1ms", name = "tests.tracing.above")]
async fn above(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|k| (k, k + 1)).collect()
}

/// `#[tracing::instrument]` below `#[coalesce]` sees the single-key fn: one
/// span per call, with its key.
#[coalesce(window = "1ms", name = "tests.tracing.below")]
#[tracing::instrument(name = "below")]
async fn below(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|k| (k, k + 2)).collect()
}

#[tokio::test]
async fn instrument_above_traces_batches_and_below_traces_calls() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let (a, b, c) = tokio::join!(above(1), above(2), above(3));
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        (Some(2), Some(3), Some(4))
    );
    let (d, e, f) = tokio::join!(below(1), below(2), below(3));
    assert_eq!(
        (d.unwrap(), e.unwrap(), f.unwrap()),
        (Some(3), Some(4), Some(5))
    );

    let spans = capture.0.lock().unwrap();
    let named = |name: &str| -> Vec<Captured> {
        spans.values().filter(|c| c.name == name).cloned().collect()
    };
    let above = named("above");
    assert_eq!(above.len(), 1, "one span for the one batch: {above:?}");
    assert_eq!(above[0].fields["keys"], "3");
    let mut below: Vec<String> = named("below")
        .iter()
        .map(|c| c.fields["id"].clone())
        .collect();
    below.sort();
    assert_eq!(below, ["1", "2", "3"], "one span per call, with its key");
}
