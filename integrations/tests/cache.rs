//! The cache example (`examples/cache.rs`), tested: moka in front of a
//! coalesced fn, with TTL, invalidation and priming.

#[allow(dead_code)]
#[path = "../examples/cache.rs"]
mod example;

use std::sync::atomic::Ordering;
use std::time::Duration;

use example::{Users, BATCHES};

fn batches() -> usize {
    BATCHES.load(Ordering::SeqCst)
}

// One test: the example's backend counter is process-wide.
#[tokio::test]
async fn a_cache_in_front_of_a_coalesced_fn() {
    let users = Users::new(1_000, Duration::from_millis(300));

    // Misses of many keys share one batch; misses of one key, one fetch.
    let before = batches();
    let reads = futures::future::join_all((0..50).map(|i| users.get(1 + i % 5))).await;
    assert_eq!(batches() - before, 1);
    for (i, read) in reads.into_iter().enumerate() {
        assert_eq!(read.unwrap(), Some(format!("user-{}", 1 + i % 5)));
    }

    // Hits, including a cached `None`, fetch nothing.
    assert_eq!(users.get(0).await.unwrap(), None);
    let before = batches();
    assert_eq!(users.get(2).await.unwrap().as_deref(), Some("user-2"));
    assert_eq!(users.get(0).await.unwrap(), None);
    assert_eq!(batches(), before);

    // Invalidation: the next read fetches.
    users.invalidate(2).await;
    users.get(2).await.unwrap();
    assert_eq!(batches(), before + 1);

    // Priming: no fetch.
    users.prime([(77, "primed".to_owned())]).await;
    assert_eq!(users.get(77).await.unwrap().as_deref(), Some("primed"));
    assert_eq!(batches(), before + 1);

    // Past the TTL, a read fetches again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    users.get(77).await.unwrap();
    assert_eq!(batches(), before + 2);
}
