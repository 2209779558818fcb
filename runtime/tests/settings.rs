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
