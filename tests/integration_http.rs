//! `#[coalesce]` on an outbound HTTP client: concurrent single-symbol lookups
//! become a handful of `GET /prices?symbols=A,B,C` requests to an in-process
//! axum server, and server failures reach every caller as typed errors.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use coalesce::{coalesce, Error};
use futures::future::join_all;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The coalescer's metrics name.
const NAME: &str = "tests.http.prices";

/// Tests here read the one coalescer's metrics: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OK: u8 = 0;
const FAIL: u8 = 1;
const SLOW: u8 = 2;
const MALFORMED: u8 = 3;

/// What the fake price service has seen, and how it behaves.
#[derive(Default)]
struct Server {
    requests: AtomicU64,
    longest_uri: AtomicUsize,
    mode: AtomicU8,
}

fn price_of(symbol: &str) -> f64 {
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

/// Starts the service on 127.0.0.1, on a free port.
async fn serve() -> (Arc<Server>, String) {
    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/prices", get(prices))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (server, format!("http://{addr}"))
}

#[derive(Debug)]
enum PriceError {
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

struct PriceClient {
    http: reqwest::Client,
    base: String,
}

impl PriceClient {
    /// One request for every symbol of the batch.
    #[coalesce(
        window = "2ms",
        max_batch = 100,
        timeout = "200ms",
        name = "tests.http.prices"
    )]
    async fn price(&self, symbols: Vec<String>) -> Result<HashMap<String, f64>, PriceError> {
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

fn symbol(i: usize) -> String {
    format!("SYM{i:04}")
}

fn batches() -> u64 {
    coalesce::metrics::get(NAME).map_or(0, |m| m.batches)
}

async fn client() -> (Arc<Server>, PriceClient) {
    let (server, base) = serve().await;
    let client = PriceClient {
        http: reqwest::Client::new(),
        base,
    };
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_calls_make_a_handful_of_requests() {
    let _serial = SERIAL.lock().await;
    let (server, client) = client().await;
    let batches_before = batches();

    let results = join_all((0..500).map(|i| client.price(symbol(i)))).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), Some(price_of(&symbol(i))));
    }
    let requests = server.requests.load(Ordering::SeqCst);
    let batches = batches() - batches_before;
    println!("http: 500 calls in, {requests} requests out ({batches} batches)");
    assert!(requests <= 10, "500 calls made {requests} requests");
    assert_eq!(requests, batches, "one request per batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_bounds_the_url_length() {
    let _serial = SERIAL.lock().await;
    let (server, client) = client().await;
    let results = join_all((0..1000).map(|i| client.price(symbol(i)))).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Some(_)))));
    // "/prices?symbols=" + at most 100 symbols of 7 characters and their commas.
    let bound = "/prices?symbols=".len() + 100 * 8;
    let longest = server.longest_uri.load(Ordering::SeqCst);
    println!(
        "http: 1000 calls in, {} requests out, longest URL {longest} bytes",
        server.requests.load(Ordering::SeqCst)
    );
    assert!(longest <= bound, "a URL of {longest} bytes, bound {bound}");
    // Without max_batch one URL would have held all 1,000 symbols.
    assert!(
        longest > bound / 2,
        "batches were not full: {longest} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_reaches_every_caller_as_a_status_error() {
    let _serial = SERIAL.lock().await;
    let (server, client) = client().await;
    server.mode.store(FAIL, Ordering::SeqCst);
    let results = join_all((0..50).map(|i| client.price(symbol(i)))).await;
    for result in results {
        match result {
            Err(Error::Batch { source, .. }) => {
                assert!(matches!(*source, PriceError::Status(500)), "{source:?}")
            }
            other => panic!("expected a batch error, got {other:?}"),
        }
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // The service recovers, and so do the callers.
    server.mode.store(OK, Ordering::SeqCst);
    assert_eq!(
        client.price(symbol(1)).await.unwrap(),
        Some(price_of(&symbol(1)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_times_out_every_caller() {
    let _serial = SERIAL.lock().await;
    let (server, client) = client().await;
    server.mode.store(SLOW, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let results = join_all((0..50).map(|i| client.price(symbol(i)))).await;
    let elapsed = started.elapsed();
    for result in results {
        match result {
            Err(Error::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(200)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    assert!(
        elapsed < Duration::from_secs(1),
        "callers waited {elapsed:?}, not the 200ms timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_reaches_every_caller_as_a_decode_error() {
    let _serial = SERIAL.lock().await;
    let (server, client) = client().await;
    server.mode.store(MALFORMED, Ordering::SeqCst);
    let results = join_all((0..50).map(|i| client.price(symbol(i)))).await;
    for result in results {
        match result {
            Err(Error::Batch { source, .. }) => {
                assert!(matches!(*source, PriceError::Decode(_)), "{source:?}");
                assert!(source.to_string().contains("malformed"), "{source}");
            }
            other => panic!("expected a batch error, got {other:?}"),
        }
    }
}
