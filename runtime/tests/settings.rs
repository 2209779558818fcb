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

/// Runs `f` on its own thread and returns its result, or fails the test if it
/// has not returned within 20 s (a deadlock: the thread is left behind).
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return: a deadlock"))
}

/// An adjustment is user code: it may call `configure` and create coalescers
/// (which read the adjustments) without deadlocking on the registry of
/// adjustments, and dropping a replaced one may too.
#[test]
fn an_adjustment_may_configure_and_create_coalescers() {
    struct OnDrop;
    impl Drop for OnDrop {
        fn drop(&mut self) {
            // Replacing the adjustment that holds this drops it.
            configure("settings.nested.on_drop", |c| c);
        }
    }
    let held = OnDrop;
    configure("settings.nested", move |c| {
        let _ = &held;
        configure("settings.nested.inner", |c| c.max_batch(3));
        let inner: Core<(), u32, u32> = Core::new(Config::new("settings.nested.inner"));
        assert_eq!(inner.metrics().settings.max_batch, 3);
        c.max_batch(9)
    });
    let core = within_20s("creating a coalescer whose adjustment configures", || {
        let core: Core<(), u32, u32> = Core::new(Config::new("settings.nested"));
        core.metrics().settings.max_batch
    });
    assert_eq!(core, 9);
    within_20s("replacing an adjustment whose drop configures", || {
        configure("settings.nested", |c| c)
    });
}

/// A `configure` that races the creation of its coalescer either applies to
/// it (and says `BeforeCreation`) or finds it made (and says `TooLate`): never
/// `BeforeCreation` for a coalescer that runs the settings read before.
#[test]
fn configure_racing_a_creation_is_applied_or_says_too_late() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    configure("settings.race", move |c| {
        // The creation reads this adjustment, and stops inside it while
        // `configure` replaces it.
        let _ = entered_tx.send(());
        let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
        c.max_batch(5)
    });
    let creation = std::thread::spawn(|| {
        let core: Core<(), u32, u32> = Core::new(Config::new("settings.race"));
        core.metrics().settings.max_batch
    });
    entered.recv_timeout(Duration::from_secs(20)).unwrap();
    let done = within_20s("configure during a creation", || {
        configure("settings.race", |c| c.max_batch(7))
    });
    go.send(()).unwrap();
    let max_batch = creation.join().unwrap();
    match done {
        Configured::BeforeCreation => assert_eq!(max_batch, 7),
        Configured::TooLate { live: 1 } => assert_eq!(max_batch, 5),
        other => panic!("{other:?} with max_batch {max_batch}"),
    }
    // Here the creation had not registered when `configure` came.
    assert_eq!(done, Configured::BeforeCreation);
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
