//! Coalescer metrics through the `metrics` facade into Prometheus: install the
//! exporter's recorder, serve `/metrics` with axum on 127.0.0.1, scrape it, and find
//! the series of an annotated fn.

use axum::routing::get;
use axum::Router;
use coalesce::coalesce;
use futures::future::join_all;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;

const NAME: &str = "tests.prometheus.squares";

#[coalesce(window = "2ms", max_batch = 100, name = "tests.prometheus.squares")]
async fn square(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id * id)).collect()
}

/// Serves `handle.render()` at `/metrics`; returns the scrape URL.
async fn serve(handle: PrometheusHandle) -> String {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/metrics")
}

/// The value of `metric{function="<NAME>", ...}` in a Prometheus text exposition.
fn sample(text: &str, metric: &str) -> Option<f64> {
    let label = format!("function=\"{NAME}\"");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .find(|line| line.contains(&label))
        .and_then(|line| line.rsplit(' ').next())
        .map(|value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_scraped_from_prometheus() {
    // Before any coalescer exists, so that every series reaches this recorder.
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder in this test binary");
    let url = serve(handle).await;

    // 250 calls, 250 distinct keys, max_batch = 100: at least three batches.
    let results = join_all((0..250).map(square)).await;
    for (id, result) in (0..250).zip(results) {
        assert_eq!(result.unwrap(), Some(id * id));
    }
    let snapshot = coalesce::metrics::get(NAME).expect("the coalescer is registered");

    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let batches = sample(&text, "coalesce_batches_total").unwrap_or_else(|| {
        panic!("no coalesce_batches_total{{function=\"{NAME}\"}} in the scrape:\n{text}")
    });
    assert_eq!(batches as u64, snapshot.batches, "scrape:\n{text}");
    assert!(
        batches >= 3.0,
        "{batches} batches for 250 keys, max_batch = 100"
    );
    let calls = sample(&text, "coalesce_calls_total").unwrap_or_else(|| {
        panic!("no coalesce_calls_total{{function=\"{NAME}\"}} in the scrape:\n{text}")
    });
    assert_eq!(calls, 250.0, "scrape:\n{text}");
    println!("prometheus: 250 calls in, {batches} batches out, scraped from {url}");
}
