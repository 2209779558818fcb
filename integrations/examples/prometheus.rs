//! Coalescer metrics in Prometheus: install the exporter's recorder, serve
//! `/metrics` with axum on 127.0.0.1, and drive an annotated fn.
//!
//! ```text
//! cargo run --example prometheus
//! ```
//!
//! Runs 2,000 concurrent calls, scrapes its own `/metrics`, and prints calls in vs
//! batches out plus every `coalesce_*` series. Pass `-- --serve` to keep serving
//! on http://127.0.0.1:9898/metrics (Ctrl-C to stop).

use axum::routing::get;
use axum::Router;
use coalesce::coalesce;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::collections::HashMap;
use std::time::Duration;

/// A slow lookup: one 10 ms round trip per batch, whatever its size.
#[coalesce(window = "2ms", max_batch = 250, name = "example.lookup")]
async fn lookup(ids: Vec<u64>) -> HashMap<u64, String> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    ids.into_iter()
        .map(|id| (id, format!("item-{id}")))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_forever = std::env::args().any(|a| a == "--serve");
    // Install before the first coalesced call, so every series reaches it.
    let handle = PrometheusBuilder::new().install_recorder()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let port = if serve_forever { 9898 } else { 0 };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let calls = 2000u64;
    let tasks: Vec<_> = (0..calls).map(|i| tokio::spawn(lookup(i % 1500))).collect();
    for task in tasks {
        task.await??;
    }

    let text = reqwest::get(&url).await?.text().await?;
    let batches = coalesce::metrics::get("example.lookup").map_or(0, |m| m.batches);
    println!("prometheus: {calls} calls in, {batches} batches out; scraped {url}:");
    for line in text.lines().filter(|l| l.starts_with("coalesce_")) {
        println!("  {line}");
    }
    if serve_forever {
        println!("serving {url} until Ctrl-C");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = server => {}
        }
    }
    Ok(())
}
