//! Shared by the integration tests: service URLs, skip-or-fail when a service is
//! down, and names no other test (or test process) uses.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// PostgreSQL: `DATABASE_URL`, or the local test server.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Redis: `REDIS_URL`, or the local server.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// True when CI demands the services: an unreachable one fails the test.
pub fn services_required() -> bool {
    std::env::var("COALESCE_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Fails the test if services are required, else prints a skip note.
/// Returns `None` so that callers can `let Some(x) = ... else { return };`.
pub fn unavailable<T>(service: &str, url: &str, error: impl std::fmt::Display) -> Option<T> {
    if services_required() {
        panic!("{service} at {url} is unreachable and COALESCE_REQUIRE_SERVICES=1: {error}");
    }
    eprintln!("SKIP: {service} at {url} is unreachable ({error}); set COALESCE_REQUIRE_SERVICES=1 to fail instead");
    None
}

/// A name no other test in any process uses: `prefix_<pid>_<n>_<nanos>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// Polls `probe` until it returns `Some`, or gives up after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives the coalescers `names` a 50 ms window, before their first call: a test
/// that counts batches admits its burst from one task, which in a debug build on
/// a loaded machine can take longer than the 2 ms the examples use, and a window
/// lasts what it says.
pub fn generous_windows(names: &[&str]) {
    for name in names {
        coalesce::configure(name, |c| c.window(Duration::from_millis(50)));
    }
}
