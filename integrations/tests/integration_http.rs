//! `#[coalesce]` on an outbound HTTP client: concurrent single-symbol lookups
//! become a handful of `GET /prices?symbols=A,B,C` requests to an in-process
//! axum server, and server failures reach every caller as typed errors.

#[macro_use]
#[path = "../examples/common/http.rs"]
mod http;
mod support;

use coalesce::Error;
use futures::future::join_all;
use http::{price_of, PriceClient, PriceError, Server, FAIL, MALFORMED, OK, SLOW};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The coalescer's metrics name.
const NAME: &str = "tests.http.prices";

/// Tests here read the one coalescer's metrics: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// This test's own coalescer, so that its metrics are this file's alone.
coalesced_price!("tests.http.prices");

fn symbol(i: usize) -> String {
    format!("SYM{i:04}")
}

fn batches() -> u64 {
    coalesce::metrics::get(NAME).map_or(0, |m| m.batches)
}

async fn client() -> (Arc<Server>, PriceClient) {
    let (server, base) = http::serve(Server::default()).await.unwrap();
    (server, PriceClient::new(base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_calls_make_a_handful_of_requests() {
    support::generous_windows(&["tests.http.prices"]);
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
    support::generous_windows(&["tests.http.prices"]);
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
    support::generous_windows(&["tests.http.prices"]);
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
    support::generous_windows(&["tests.http.prices"]);
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
    support::generous_windows(&["tests.http.prices"]);
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
