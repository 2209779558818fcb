//! `configure` says what it did, and the settings a coalescer runs with are
//! readable in its metrics.

use std::time::Duration;

use coalesce_runtime::{configure, metrics, Config, Configured, Core, Dispatch};

#[test]
fn configure_before_creation_applies_and_is_visible() {
    let done = configure("settings.before", |c| {
        c.window(Duration::from_micros(700))
            .max_pending_per_group(3)
    });
    assert_eq!(done, Configured::BeforeCreation);
    let core: Core<(), u32, u32> = Core::new(
        Config::new("settings.before")
            .window(Duration::from_millis(5))
            .dispatch(Dispatch::Adaptive),
    );
    let s = core.metrics().settings;
    assert_eq!(s.window, Duration::from_micros(700));
    assert_eq!(s.max_pending_per_group, Some(3));
    assert_eq!(s.dispatch, "adaptive");
    assert_eq!(s.max_pending, None);
    assert_eq!(metrics::get("settings.before").unwrap().settings, s);
}

#[test]
fn configure_after_creation_says_it_came_too_late() {
    let core: Core<(), u32, u32> =
        Core::new(Config::new("settings.late").window(Duration::from_millis(5)));
    let done = configure("settings.late", |c| c.window(Duration::from_millis(1)));
    assert_eq!(done, Configured::TooLate { live: 1 });
    // The live coalescer keeps what it was created with.
    assert_eq!(core.metrics().settings.window, Duration::from_millis(5));
}

/// Durations as long as `Duration` allows (a window, timeout or idle timeout
/// meant as "never"): no deadline computed from them overflows, on either
/// clock, on the shared, lone, streamed and write paths.
#[test]
fn the_longest_durations_mean_never() {
    use coalesce_runtime::{Coalescer, Streamed, WriteCore};
    use futures::StreamExt;
    use std::collections::HashMap;

    for paused in [false, true] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(paused)
            .build()
            .unwrap();
        rt.block_on(async {
            for dispatch in [Dispatch::Window, Dispatch::Adaptive, Dispatch::Auto] {
                let config = Config::new("settings.longest")
                    .dispatch(dispatch)
                    .window(Duration::MAX)
                    .timeout(Duration::MAX)
                    .idle_timeout(Duration::MAX)
                    .max_batch(2);
                let map = Coalescer::new(config.clone(), |keys: Vec<u32>| async move {
                    keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
                });
                // Two keys fill the batch: it leaves at once, whatever its window.
                let (a, b) = tokio::join!(map.load(1), map.load(2));
                assert_eq!((a.unwrap(), b.unwrap()), (Some(1), Some(2)));
                // A lone call (adaptive, auto: it goes at once), or a batch
                // that only a manual dispatch sends (window).
                let one = map.load(3);
                tokio::pin!(one);
                let answer = match futures::poll!(one.as_mut()) {
                    std::task::Poll::Ready(answer) => answer,
                    std::task::Poll::Pending => {
                        map.dispatch_now();
                        one.await
                    }
                };
                assert_eq!(answer.unwrap(), Some(3));
                // A stream that waits before each item: the idle timeout is
                // armed.
                let streamed = Coalescer::new(config.clone(), |keys: Vec<u32>| async move {
                    Streamed(futures::stream::iter(keys).then(|k| async move {
                        tokio::task::yield_now().await;
                        Ok::<_, ()>((k, k))
                    }))
                });
                let (a, b) = tokio::join!(streamed.load(1), streamed.load(2));
                assert_eq!((a.unwrap(), b.unwrap()), (Some(1), Some(2)));
                // Writes: one that gathers until flushed, and a drain whose
                // deadline is never.
                let writes: WriteCore<(), u32, u32> = WriteCore::new(config);
                let (saved, flushed) =
                    tokio::join!(writes.save((), 1, 1, |_, _| async {}), writes.flush());
                assert!(saved.is_ok(), "{saved:?}");
                assert_eq!(flushed.failed, 0);
                let (saved, drained) = tokio::join!(
                    writes.save((), 2, 2, |_, _| async {}),
                    writes.drain(Duration::MAX)
                );
                assert!(saved.is_ok(), "{saved:?}");
                assert_eq!((drained.dropped, drained.unsure), (0, 0), "{drained:?}");
            }
        });
    }
}
