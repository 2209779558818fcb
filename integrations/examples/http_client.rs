//! An outbound HTTP client whose single-symbol price lookups coalesce into one
//! `GET /prices?symbols=A,B,C` request per window.
//!
//! ```text
//! cargo run --example http_client
//! ```
//!
//! Starts a fake price service (axum, 127.0.0.1, a free port) in-process, fires
//! 500 concurrent lookups through `PriceClient`, and prints calls in vs requests out.

#[macro_use]
#[path = "common/http.rs"]
mod http;

use http::{PriceClient, Server};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

coalesced_price!("http_client.price");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The fake service: a price per symbol, after 5 ms of "work"; counts requests.
    let (server, base) = http::serve(Server {
        latency: Duration::from_millis(5),
        ..Server::default()
    })
    .await?;
    let client = Arc::new(PriceClient::new(base));
    let calls = 500;
    let started = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.price(format!("SYM{}", i / 2)).await })
        })
        .collect();
    let mut priced = 0;
    for task in tasks {
        priced += usize::from(task.await??.is_some());
    }
    println!(
        "http_client: {calls} calls in ({priced} priced, 250 distinct symbols), {} requests out, in {:?}",
        server.requests.load(Ordering::SeqCst),
        started.elapsed()
    );
    if let Some(m) = coalesce::metrics::get("http_client.price") {
        println!("{m}");
    }
    Ok(())
}
