//! `flush_all` and `drain_all` reach every write coalescer of the process (a
//! test binary of its own, so that no other test's coalescers are in it).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use coalesce_runtime::{drain_all, flush_all, Config, Error, WriteCore};

#[tokio::test(start_paused = true)]
async fn flush_all_then_drain_all_reach_every_write_coalescer() {
    // Two coalescers with hour-long windows: only a flush sends their writes.
    let committed = Arc::new(AtomicUsize::new(0));
    let a: Arc<WriteCore<(), u32, u32>> = Arc::new(WriteCore::new(
        Config::new("flush_all.a").window(Duration::from_secs(3600)),
    ));
    let b: Arc<WriteCore<u8, String, i64>> = Arc::new(WriteCore::with_merge(
        Config::new("flush_all.b").window(Duration::from_secs(3600)),
        |x: &mut i64, y| *x += y,
    ));
    let mut writers = Vec::new();
    for i in 0..10u32 {
        let (a, c) = (a.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            a.save((), i % 3, i, move |_, items| {
                let c = c.clone();
                async move {
                    c.fetch_add(items.len(), SeqCst);
                }
            })
            .await
        }));
        let (b, c) = (b.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            b.save(1, format!("k{}", i % 2), 1, move |_, items| {
                let c = c.clone();
                async move {
                    c.fetch_add(items.len(), SeqCst);
                }
            })
            .await
        }));
    }
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let flushed = tokio::time::timeout(Duration::from_secs(60), flush_all())
        .await
        .expect("flush_all waited for the windows");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!((flushed.keys, flushed.failed), (3 + 2, 0));
    assert_eq!(committed.load(SeqCst), 5);
    for w in writers {
        w.await.unwrap().unwrap();
    }

    // A coalescer whose batch never ends: drain_all fails what is left at its
    // deadline, and the others are untouched.
    let stuck: Arc<WriteCore<(), u32, u32>> = Arc::new(WriteCore::new(
        Config::new("flush_all.stuck").window(Duration::from_millis(1)),
    ));
    let s = stuck.clone();
    let running =
        tokio::spawn(async move { s.save((), 1, 1, |_, _| std::future::pending::<()>()).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = stuck.clone();
    let held =
        tokio::spawn(async move { s.save((), 1, 2, |_, _| std::future::pending::<()>()).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let drained = drain_all(Duration::from_millis(100)).await;
    assert_eq!((drained.dropped, drained.unsure), (1, 1), "{drained:?}");
    assert!(matches!(
        running.await.unwrap(),
        Err(Error::MaybeCommitted { .. })
    ));
    assert!(matches!(held.await.unwrap(), Err(Error::Drained { .. })));
    for core in [stuck.metrics(), a.metrics(), b.metrics()] {
        assert_eq!(core.pending, 0, "{core}");
    }
}
