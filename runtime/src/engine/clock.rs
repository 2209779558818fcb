//! The clock a driver times windows and timeouts with.
//!
//! On a real clock every wait goes to the precise timer thread (`crate::timer`):
//! Tokio's timer rounds each deadline up to its next millisecond tick, so a 1 ms
//! window would last about 2 ms, and it needs a runtime built with
//! `enable_time`, which a coalesced call must not require. Under a paused Tokio
//! clock (`#[tokio::test(start_paused = true)]`, `tokio::time::pause`), waits use
//! Tokio's timer, so that tests advance through windows and timeouts without
//! waiting for them. A paused clock always has a time driver, so that is the
//! only case that creates a Tokio `Sleep`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::timer::PreciseSleep;

/// Which clock the current context honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clock {
    /// Real time (no runtime, or a runtime whose clock runs).
    Real,
    /// A Tokio runtime whose clock is paused: only Tokio's timer advances it.
    Paused,
}

impl Clock {
    /// The clock of the current context. A paused Tokio clock returns the very
    /// same instant until it is advanced; a running one never does for long, so
    /// reads that stay equal across a short spin mean a paused clock.
    pub(crate) fn detect() -> Clock {
        if cfg!(loom) || !super::spawn::on_runtime() {
            return Clock::Real;
        }
        let first = tokio::time::Instant::now();
        for _ in 0..64 {
            if tokio::time::Instant::now() != first {
                return Clock::Real;
            }
            std::hint::spin_loop();
        }
        Clock::Paused
    }
}

impl Clock {
    /// Now, on this clock (a paused Tokio clock's instant, as a std one).
    pub(crate) fn now(self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            Clock::Paused => tokio::time::Instant::now().into_std(),
        }
    }
}

/// `from + duration`, or, when that is past what an [`Instant`] holds (a
/// window or timeout of [`Duration::MAX`], meant as "never"), a point about 30
/// years on: a deadline that does not come, not an overflow.
pub(crate) fn after(from: Instant, duration: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    // Every `Instant` of the platforms Rust supports holds 30 more years; the
    // last fallback only keeps this total.
    from.checked_add(duration)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// A wait until a deadline, on the clock it was made for.
pub(crate) struct Sleep(Kind);

enum Kind {
    Precise(PreciseSleep),
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Sleep {
    /// A wait of `duration` from now.
    pub(crate) fn new(clock: Clock, duration: Duration) -> Sleep {
        match clock {
            Clock::Real => Sleep(Kind::Precise(PreciseSleep::until(after(
                Instant::now(),
                duration,
            )))),
            Clock::Paused => Sleep(Kind::Tokio(Box::pin(tokio::time::sleep(duration)))),
        }
    }

    /// A wait until `deadline` of the real clock, or `duration` from now on a
    /// paused one.
    pub(crate) fn until(clock: Clock, deadline: Instant) -> Sleep {
        let left = deadline.saturating_duration_since(Instant::now());
        Sleep::new(clock, left)
    }

    /// Ready once the deadline has passed.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Kind::Precise(sleep) => Pin::new(sleep).poll(cx),
            Kind::Tokio(sleep) => sleep.as_mut().poll(cx),
        }
    }
}
