//! End to end through OpenTelemetry: the batch span exported by
//! `tracing-opentelemetry` (with its `coalesce.*` attributes, a link to every
//! caller's span, and its status), and the metrics with their HELP text, from
//! one coalescer.

use std::collections::HashMap;
use std::time::Duration;

use coalesce::{Coalescer, Config};
use metrics_exporter_prometheus::PrometheusBuilder;
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// An attribute as text (`tracing-opentelemetry` records a `u64` as a string).
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn is(value: Option<String>, text: &str) -> bool {
    value.as_deref() == Some(text)
}

#[tokio::test]
async fn a_batch_is_one_otel_span_linked_to_its_callers_and_counted_in_the_metrics() {
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("coalesce-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let coalescer = metrics::with_local_recorder(&recorder, || {
        Coalescer::new(
            Config::new("otel.e2e").window(Duration::from_millis(5)),
            |ids: Vec<u64>| async move {
                if ids.contains(&13) {
                    return Err("unlucky batch".to_owned());
                }
                Ok(ids
                    .into_iter()
                    .map(|id| (id, id + 1))
                    .collect::<HashMap<_, _>>())
            },
        )
    });

    // Three callers, each in its own request span: one batch.
    let calls = (1..=3u64).map(|id| {
        let span = tracing::info_span!("request", request = id);
        coalescer.load(id).instrument(span)
    });
    for (id, answer) in (1..=3u64).zip(futures::future::join_all(calls).await) {
        assert_eq!(answer.unwrap(), Some(id + 1));
    }
    // A failing batch.
    let failed = coalescer
        .load(13)
        .instrument(tracing::info_span!("request", request = 13u64))
        .await;
    assert!(failed.is_err());
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let requests: Vec<&SpanData> = spans.iter().filter(|s| s.name == "request").collect();
    let batches: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "coalesce.batch")
        .collect();
    assert_eq!((requests.len(), batches.len()), (4, 2), "{spans:#?}");

    let ok = batches
        .iter()
        .find(|s| is(attribute(s, "coalesce.batch.size"), "3"))
        .unwrap_or_else(|| panic!("the batch of three: {batches:#?}"));
    assert!(is(attribute(ok, "coalesce.function"), "otel.e2e"));
    assert!(is(attribute(ok, "coalesce.batch.calls"), "3"));
    assert!(is(attribute(ok, "coalesce.batch.outcome"), "ok"));
    assert_eq!(ok.status, Status::Ok);
    // Linked to each of its three callers' spans.
    let mut linked: Vec<String> = ok
        .links
        .iter()
        .map(|l| l.span_context.span_id().to_string())
        .collect();
    let mut callers: Vec<String> = requests
        .iter()
        .filter(|r| !is(attribute(r, "request"), "13"))
        .map(|r| r.span_context.span_id().to_string())
        .collect();
    linked.sort();
    callers.sort();
    assert_eq!(linked, callers);

    let failed = batches
        .iter()
        .find(|s| is(attribute(s, "coalesce.batch.size"), "1"))
        .expect("the failed batch");
    assert!(
        matches!(failed.status, Status::Error { .. }),
        "{:?}",
        failed.status
    );
    assert!(is(attribute(failed, "error.type"), "batch"));

    // The same coalescer's metrics, with their HELP text.
    let scraped = handle.render();
    assert!(
        scraped.contains(r#"coalesce_batches_total{function="otel.e2e"} 2"#),
        "{scraped}"
    );
    assert!(
        scraped.contains(r#"coalesce_calls_total{function="otel.e2e"} 4"#),
        "{scraped}"
    );
    assert!(
        scraped.contains("# HELP coalesce_batches_total Batch fn calls."),
        "{scraped}"
    );
    assert!(
        scraped.contains(r#"coalesce_pending_calls{function="otel.e2e"} 0"#),
        "{scraped}"
    );
}
