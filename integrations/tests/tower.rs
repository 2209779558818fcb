//! `Coalescer` as a `tower::Service` (the `tower` feature): `poll_ready` reports a
//! full `max_pending`, so tower's layers compose — here `load_shed` and `timeout`.

use std::time::Duration;

use coalesce::{Coalescer, Config};
use tower::{Service, ServiceBuilder, ServiceExt};

fn slow(max_pending: usize, run: Duration) -> Coalescer<u64, u64> {
    Coalescer::new(
        Config::new("tower.slow")
            .window(Duration::from_millis(1))
            .max_pending(max_pending),
        move |ids: Vec<u64>| async move {
            tokio::time::sleep(run).await;
            ids.into_iter()
                .map(|id| (id, id * 3))
                .collect::<std::collections::HashMap<_, _>>()
        },
    )
}

#[tokio::test]
async fn load_shed_turns_a_full_coalescer_into_overloaded_and_timeout_bounds_a_call() {
    let coalescer = slow(2, Duration::from_millis(200));
    let mut svc = ServiceBuilder::new()
        .load_shed()
        .timeout(Duration::from_secs(5))
        .service(coalescer.clone());

    // Two calls fill `max_pending` while their batch runs.
    let first = tokio::spawn(svc.clone().oneshot(1));
    let second = tokio::spawn(svc.clone().oneshot(2));
    while coalescer.metrics().pending < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The third is shed at once, by tower's own error.
    let shed = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert!(shed.is::<tower::load_shed::error::Overloaded>(), "{shed}");
    assert_eq!(first.await.unwrap().unwrap(), Some(3));
    assert_eq!(second.await.unwrap().unwrap(), Some(6));
    // Room again: served.
    assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), Some(12));

    // The timeout layer bounds a call whose batch runs too long.
    let mut bounded = ServiceBuilder::new()
        .timeout(Duration::from_millis(20))
        .service(slow(10, Duration::from_millis(500)));
    let late = bounded.ready().await.unwrap().call(5).await.unwrap_err();
    assert!(late.is::<tower::timeout::error::Elapsed>(), "{late}");
}

#[tokio::test]
async fn ready_waits_for_room_and_wakes_when_a_call_is_answered() {
    let coalescer = slow(1, Duration::from_millis(50));
    let mut svc = coalescer.clone();
    let held = tokio::spawn(coalescer.clone().oneshot(7));
    while coalescer.metrics().pending < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Not ready while the one call waits; ready once it is answered.
    let ready = tokio::time::timeout(Duration::from_secs(5), svc.ready()).await;
    assert!(ready.is_ok(), "poll_ready was never woken");
    assert_eq!(held.await.unwrap().unwrap(), Some(21));
    assert_eq!(svc.call(8).await.unwrap(), Some(24));
}
