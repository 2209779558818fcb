use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(
    window = "0.5ms",
    max_batch = 64,
    max_in_flight = 4,
    max_pending = 10_000,
    timeout = "2s",
    group = "all",
    name = "users.load",
    dispatch = "adaptive"
)]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id + 1)).collect()
}

#[coalesce(window = "0ms", dispatch = "window", timeout = "250us")]
async fn no_wait(ids: Vec<u64>) -> HashMap<u64, u64> {
    load_batch(ids).await
}

// A trailing comma is fine.
#[rustfmt::skip]
#[coalesce(window = "100 ns",)]
async fn spaced(ids: Vec<u64>) -> HashMap<u64, u64> {
    load_batch(ids).await
}

#[tokio::main]
async fn main() {
    assert_eq!(load(1).await.unwrap(), Some(2));
    assert_eq!(no_wait(2).await.unwrap(), Some(3));
    assert_eq!(spaced(3).await.unwrap(), Some(4));
}
