//! An outbound HTTP client whose single-symbol price lookups coalesce into one
//! `GET /prices?symbols=A,B,C` request per window.
//!
//! ```text
//! cargo run --example http_client
//! ```
//!
//! Starts a fake price service (axum, 127.0.0.1, a free port) in-process, fires
//! 500 concurrent lookups through `PriceClient`, and prints calls in vs requests out.

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use coalesce::coalesce;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a batch of lookups failed; every caller of the batch receives it.
#[derive(Debug)]
pub enum PriceError {
    Transport(reqwest::Error),
    Status(u16),
    Decode(serde_json::Error),
}

impl std::fmt::Display for PriceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PriceError::Transport(e) => write!(f, "price service unreachable: {e}"),
            PriceError::Status(code) => write!(f, "price service answered {code}"),
            PriceError::Decode(e) => write!(f, "price service sent a malformed body: {e}"),
        }
    }
}

impl std::error::Error for PriceError {}

pub struct PriceClient {
    http: reqwest::Client,
    base: String,
}

impl PriceClient {
    /// `client.price(symbol).await -> Result<Option<f64>, coalesce::Error<PriceError>>`
    ///
    /// `max_batch` keeps URLs short; `timeout` bounds how long callers wait on the service.
    #[coalesce(
        window = "2ms",
        max_batch = 100,
        timeout = "200ms",
        name = "http_client.price"
    )]
    pub async fn price(&self, symbols: Vec<String>) -> Result<HashMap<String, f64>, PriceError> {
        let url = format!("{}/prices?symbols={}", self.base, symbols.join(","));
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(PriceError::Transport)?;
        if !response.status().is_success() {
            return Err(PriceError::Status(response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(PriceError::Transport)?;
        serde_json::from_slice(&body).map_err(PriceError::Decode)
    }
}

/// The fake service: a price per symbol, after 5 ms of "work"; counts requests.
async fn prices(State(requests): State<Arc<AtomicU64>>, uri: Uri) -> Json<HashMap<String, f64>> {
    requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let symbols = uri
        .query()
        .and_then(|q| q.strip_prefix("symbols="))
        .unwrap_or("");
    Json(
        symbols
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_string(), s.len() as f64 * 10.0))
            .collect(),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/prices", get(prices))
        .with_state(requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Arc::new(PriceClient {
        http: reqwest::Client::new(),
        base,
    });
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
        requests.load(Ordering::Relaxed),
        started.elapsed()
    );
    if let Some(m) = coalesce::metrics::get("http_client.price") {
        println!("{m}");
    }
    Ok(())
}
