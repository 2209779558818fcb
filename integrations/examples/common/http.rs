//! Shared by `examples/http_client.rs` and `tests/integration_http.rs`: the price
//! client, its error type and an in-process fake price service (axum, 127.0.0.1).

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a batch of lookups failed; every caller of the batch receives it.
#[derive(Debug)]
pub enum PriceError {
    /// Could not send the request or read the response.
    Transport(reqwest::Error),
    /// The service answered with an error status.
    Status(u16),
    /// The body was not the JSON map we expect.
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

/// A client of the price service at `base`. Cheap to clone (`reqwest::Client` is
/// an `Arc` inside); clones share batches (`instance = self.base`), clients of
/// two services never do.
#[derive(Clone)]
pub struct PriceClient {
    http: reqwest::Client,
    /// The service's base URL: what makes two clients two instances.
    pub base: std::sync::Arc<str>,
}

impl PriceClient {
    pub fn new(base: String) -> Self {
        PriceClient {
            http: reqwest::Client::new(),
            base: base.into(),
        }
    }

    /// One `GET /prices?symbols=A,B,C` request for every symbol of the batch.
    pub async fn fetch(&self, symbols: Vec<String>) -> Result<HashMap<String, f64>, PriceError> {
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

/// Adds the coalesced `PriceClient::price` to the crate, under the metrics name
/// `$name`:
/// `client.price(symbol).await -> Result<Option<f64>, coalesce::Error<PriceError>>`.
///
/// `max_batch` keeps URLs short; `timeout` bounds how long callers wait on the service.
/// The including crate declares this module as `mod http;`.
macro_rules! coalesced_price {
    ($name:literal) => {
        #[rustfmt::skip]
        impl $crate::http::PriceClient {
            #[::coalesce::coalesce(window = "2ms", max_batch = 100, timeout = "200ms", name = $name, instance = self.base)]
            pub async fn price(
                &self,
                symbols: Vec<String>,
            ) -> Result<::std::collections::HashMap<String, f64>, $crate::http::PriceError> {
                self.fetch(symbols).await
            }
        }
    };
}

/// How the fake service answers (`Server::mode`).
pub const OK: u8 = 0;
pub const FAIL: u8 = 1;
pub const SLOW: u8 = 2;
pub const MALFORMED: u8 = 3;

/// What the fake price service has seen, and how it behaves.
#[derive(Default)]
pub struct Server {
    pub requests: AtomicU64,
    pub longest_uri: AtomicUsize,
    pub mode: AtomicU8,
    /// "Work" per request in mode `OK`.
    pub latency: Duration,
}

/// The price the fake service quotes for `symbol`.
pub fn price_of(symbol: &str) -> f64 {
    symbol.bytes().map(f64::from).sum::<f64>() / 100.0
}

async fn prices(State(server): State<Arc<Server>>, uri: Uri) -> Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    server
        .longest_uri
        .fetch_max(uri.to_string().len(), Ordering::SeqCst);
    match server.mode.load(Ordering::SeqCst) {
        FAIL => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        SLOW => tokio::time::sleep(Duration::from_secs(2)).await,
        MALFORMED => return (StatusCode::OK, "{\"AAA\": 1.0,").into_response(),
        OK if !server.latency.is_zero() => tokio::time::sleep(server.latency).await,
        _ => {}
    }
    let symbols = uri
        .query()
        .and_then(|q| q.strip_prefix("symbols="))
        .unwrap_or("");
    let body: HashMap<&str, f64> = symbols
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| (s, price_of(s)))
        .collect();
    Json(body).into_response()
}

/// Starts the service on 127.0.0.1, on a free port; returns it and its base URL.
pub async fn serve(server: Server) -> std::io::Result<(Arc<Server>, String)> {
    let server = Arc::new(server);
    let app = Router::new()
        .route("/prices", get(prices))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((server, format!("http://{addr}")))
}
