//! The self-tuning controller of [`Dispatch::Auto`](crate::Dispatch::Auto): each
//! group sets its own lanes (batches in flight) and window from what it
//! measures, between the bounds the user gives (`max_in_flight` and `window`
//! are ceilings; `max_batch` stays a hard cap).
//!
//! # What it measures
//!
//! - **Arrival rate**: calls admitted over each decision period (the batch
//!   starts of [`DECIDE_EVERY`] batches), smoothed (EWMA). Lone calls read no
//!   clock: they are counted, and a period with [`DECIDE_EVERY`] of them marks
//!   the group as mostly idle.
//! - **Cost of a batch alone**: `run ≈ fixed + per_key × size`, fitted online
//!   by least squares with exponential forgetting, on the batches that started
//!   with no other batch of the group running.
//! - **Slowdown under concurrency**: for a batch that ran beside `n` others
//!   (whose cost alone the fit tells without much extrapolation: see
//!   [`REACH_COST`]), `(run / alone − 1) / n`, smoothed (with
//!   its variance): how much longer each batch beside it makes it (the
//!   gradient limiters of Netflix's concurrency-limits, `Gradient2Limit`, and
//!   Envoy's adaptive concurrency measure the same thing as a ratio of
//!   latencies).
//! - **Lanes in use** at each batch start, and whether a due batch queued for
//!   a lane.
//!
//! # What it decides, every [`DECIDE_EVERY`] batches
//!
//! - **Lanes**: a batch may run at most `TOLERANCE` (1.75) times as long as
//!   alone, so lanes are capped at `1 + (TOLERANCE − 1) / slowdown`, with
//!   the slowdown the samples show for sure (their mean less two standard
//!   errors: a noisy backend that does not slow down is not capped by its
//!   noise); the ceiling while fewer than [`MIN_SAMPLES`] are measured. The cap
//!   the lanes follow moves only when the computed one leaves a band around
//!   it (40%, at least one lane: hysteresis, so that a noisy slowdown
//!   does not move the lanes). Below the cap lanes grow — one per decision
//!   (additive increase: a late step is one lane, not a quarter more) —
//!   while batches queue for a lane and the group is not app-limited (at
//!   least half its lanes in use); above it (the backend saturates) they
//!   shrink half the way to it (multiplicative decrease). Demand is a due batch queued
//!   for a lane, or calls gathering while every lane is busy. A **backlog** —
//!   a full batch (`max_batch` keys) queued for a lane — is different:
//!   batching can absorb no more, so lanes double per decision up to the
//!   ceiling (`max_in_flight`, what the backend takes, such as its pool),
//!   whatever the slowdown, and neither shrink to the cap nor make the
//!   window linger by the rules below until [`BACKLOG_MEMORY`] decisions
//!   without one (bursts come back).
//! - **Window**: lingering pays only where more lanes cannot be had — at the
//!   cap or the ceiling, with demand beyond them — and enough calls arrive
//!   within one batch's fixed cost that waiting for them saves batches
//!   (PostgreSQL's `commit_delay` waits only when `commit_siblings` others are
//!   active). Two cases, each with hysteresis, the window reached a quarter of
//!   the way per decision and at most the ceiling:
//!   - at a measured cap below the ceiling, where batches slow each other
//!     by at least [`LINGER_SLOWDOWN`] per lane (half of it to go on): a
//!     short window, [`CONTENDED_SHARE`] of the smoothed fixed cost, from
//!     [`CONTENDED_ON`] arrivals per fixed cost until fewer than
//!     [`CONTENDED_OFF`]. Waiting merges calls that come close together and
//!     spares the backend a batch beside the others, but every caller pays
//!     the whole wait;
//!   - at the ceiling (more lanes would be taken if allowed; on a backend
//!     that does not slow down, the only case): half the smoothed fixed
//!     cost, from [`LINGER_ON`] arrivals per fixed cost until fewer than
//!     [`LINGER_OFF`].
//!
//!   Lingering stops when lanes can grow again.
//! - **After a backlog** (within [`BACKLOG_MEMORY`] decisions of one, and at
//!   once when it comes), a batch opened beside running ones gathers until
//!   it is full, for at most one smoothed fixed cost (and at most the
//!   ceiling), instead of leaving with the calls of its instant: calls come
//!   faster than full batches carry them, and a batch that left small would
//!   take a lane, and a fixed cost, that a full batch needs. On PostgreSQL
//!   (`pg_burst`: 10,000 calls, `max_batch` 1,000) this halves the queries
//!   a burst sends (12–14 a round against 20–26, the window's 11).
//!
//! A window, lingering or after a backlog, applies only while the group has
//! a batch running and is not mostly idle: on an idle group a call goes at
//! once.
//! - **Probe**: if no batch ran alone for [`PROBE_EVERY`] decisions (the cost
//!   alone is stale), one lane fewer for one period, so that the fit sees
//!   other concurrencies again; the lane comes back at the next decision, and
//!   the window does not stop for it.
//!
//! Everything here is a pure function of the samples it is given (times are
//! passed in), so the rules are unit-tested alone (below) and through the
//! engine under a paused clock (`tests/tune.rs`).

use std::time::{Duration, Instant};

/// Batches between two decisions.
pub(crate) const DECIDE_EVERY: u32 = 8;
/// Arrivals per fixed cost above which the window lingers.
pub(crate) const LINGER_ON: f64 = 4.0;
/// Arrivals per fixed cost below which it stops lingering.
pub(crate) const LINGER_OFF: f64 = 2.0;
/// On a contended backend (batches beside each other slow each other
/// down), the window lingers from this many arrivals per fixed cost …
pub(crate) const CONTENDED_ON: f64 = 2.0;
/// … until fewer than this many …
pub(crate) const CONTENDED_OFF: f64 = 1.0;
/// … for this share of the fixed cost: a short window. Waiting merges calls
/// that come close together, which spares the backend a batch beside the
/// others, but every caller pays the whole wait; a longer window merges more
/// calls per batch only as the rate allows, and each of them waits.
const CONTENDED_SHARE: f64 = 1.0 / 8.0;
/// Slowdown per lane below which a measured lane cap does not make the
/// window start lingering (each batch beside one makes it less than 10%
/// longer); it stops below half of it.
const LINGER_SLOWDOWN: f64 = 0.1;
/// Decisions between two probes of the baseline.
pub(crate) const PROBE_EVERY: u32 = 256;
/// Lanes when `max_in_flight` is not set.
pub(crate) const MAX_LANES: usize = 32;
/// Forgetting factor of the run-time fit, per batch.
const FIT_DECAY: f64 = 0.97;
/// Smoothing of the batch size and of the arrival rate.
const SIZE: f64 = 0.3;
const RATE: f64 = 0.2;
const SLOWDOWN: f64 = 0.05;
const FIXED: f64 = 0.1;
/// How much longer than alone a batch may run because of the batches beside
/// it (Gradient2's tolerance): lanes stop growing there. For a backend
/// slowing 24% per lane: at 1.5 the cap (3 lanes) lands where the load is
/// just carried (1,000 calls/s of lone calls fill it) and batches queue for
/// a lane; at 2 (5 lanes) the fifth lane slows every batch more than it
/// shortens the queue (8% of p99 at 32,000 calls/s in BENCHMARKS.md); 1.75
/// gives 4.
const TOLERANCE: f64 = 1.75;
/// Decisions after a backlog during which lanes do not shrink to the cap:
/// bursts of full batches come back (the next burst starts with the lanes
/// the last one needed).
const BACKLOG_MEMORY: u32 = 16;
/// How far past the largest batch seen alone the fit is trusted: a batch
/// beside others whose cost alone would be extrapolated gives no slowdown
/// sample (a per-key cost fitted on small batches reads a large batch's own
/// cost as slowdown): at most this share of its cost alone beyond that
/// batch's size …
const REACH_COST: f64 = 0.25;
/// … and at most this many times that size.
const REACH_SIZE: f64 = 8.0;
/// Slowdown samples (batches that ran beside others) before the slowdown
/// caps the lanes: the first few, while lanes grow, are mostly noise.
pub(crate) const MIN_SAMPLES: u32 = 16;
/// How far (relative; at least one lane) the computed lane cap must move
/// from the one the lanes follow before they follow it.
const CAP_BAND: f64 = 0.4;

/// One group's controller.
#[derive(Clone, Debug)]
pub(crate) struct Tune {
    /// Lanes the group may use now.
    pub(crate) lanes: usize,
    /// The window a batch opened now lingers for.
    pub(crate) window: Duration,
    ceiling_lanes: usize,
    ceiling_window: Duration,
    /// The lane cap the lanes follow (see [`Tune::cap`]); `None` until a
    /// slowdown is measured (the ceiling).
    held_cap: Option<f64>,
    lingering: bool,
    /// Arrival rate, calls per second.
    rate: f64,
    last_start: Option<Instant>,
    /// The first batch start of the current decision period, and the calls
    /// admitted since (the rate is measured over a whole period: a batch's
    /// own interval is too noisy).
    period_start: Option<Instant>,
    period_calls: u64,
    /// Lone calls since the last decision: the group is mostly idle.
    solos: u32,
    /// The fixed cost, smoothed (the window follows it).
    fixed: f64,
    /// Batches that ran alone.
    fit: Fit,
    /// Relative slowdown per other batch running (see [`Costs::per_lane`]),
    /// smoothed; `None` until measured.
    slowdown: Option<f64>,
    /// Slowdown samples so far (saturating).
    slowdown_samples: u32,
    /// The variance of the slowdown samples (exponentially weighted).
    slowdown_var: f64,
    /// Smoothed batch size.
    size: f64,
    /// Since the last decision: batches finished, most lanes in use, whether a
    /// batch queued for a lane.
    batches: u32,
    peak_used: usize,
    queued: bool,
    /// Since the last decision: a full batch queued for a lane.
    backlog: bool,
    /// Decisions since the last one that saw a backlog.
    since_backlog: u32,
    /// What a batch opened beside running ones gathers for after a backlog
    /// (see [`Tune::lingers`]): one smoothed fixed cost, at most the
    /// ceiling; set at each decision, as the fixed cost is.
    burst: Duration,
    decisions: u32,
    /// A batch ran alone since the last probe (the fit is current).
    alone_seen: bool,
    /// A probe took a lane for the current period.
    lent: bool,
}

/// `run ≈ fixed + per_key × size` of batches that ran alone, by least squares
/// with forgetting.
#[derive(Clone, Debug, Default)]
struct Fit {
    /// The largest batch seen alone, forgotten as the fit forgets.
    largest: f64,
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

/// The fitted costs, seconds; `per_lane` is relative: each batch running
/// beside one makes it take `per_lane` times longer than alone.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Costs {
    fixed: f64,
    per_key: f64,
    per_lane: f64,
}

impl Fit {
    fn add(&mut self, size: f64, run: f64) {
        let d = FIT_DECAY;
        self.largest = (self.largest * d).max(size);
        self.w = self.w * d + 1.0;
        self.x = self.x * d + size;
        self.y = self.y * d + run;
        self.xx = self.xx * d + size * size;
        self.xy = self.xy * d + size * run;
    }

    /// `(fixed, per_key)` once there are samples; with one size only, all of
    /// the run is taken as fixed.
    fn costs(&self) -> Option<(f64, f64)> {
        if self.w < 2.0 {
            return None;
        }
        let mean_x = self.x / self.w;
        let mean_y = self.y / self.w;
        let var = self.xx / self.w - mean_x * mean_x;
        if var <= 1e-9 * mean_x.max(1.0).powi(2) {
            return Some((mean_y.max(0.0), 0.0));
        }
        let per_key = ((self.xy / self.w - mean_x * mean_y) / var).max(0.0);
        let fixed = (mean_y - per_key * mean_x).max(0.0);
        Some((fixed, per_key))
    }

    /// The run of a batch of `size` alone, if the fit tells it without much
    /// extrapolation: at most [`REACH_COST`] of it lies beyond the largest
    /// batch seen alone, and the batch is at most [`REACH_SIZE`] times that
    /// size (a per-key cost fitted on batches of one size is unknown, not
    /// zero).
    fn alone(&self, size: f64) -> Option<f64> {
        let (fixed, per_key) = self.costs()?;
        let alone = fixed + per_key * size;
        let beyond = per_key * (size - self.largest).max(0.0);
        (alone > 0.0 && beyond <= REACH_COST * alone && size <= REACH_SIZE * self.largest)
            .then_some(alone)
    }
}

/// What the metrics show of a controller.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct TuneView {
    pub(crate) lanes: usize,
    pub(crate) window: Duration,
    pub(crate) fixed_cost: Duration,
    pub(crate) per_key_cost: Duration,
    pub(crate) slowdown_per_lane: f64,
    pub(crate) arrival_rate: f64,
}

impl Tune {
    /// A controller between these ceilings: one lane, no window, until it has
    /// measured something.
    pub(crate) fn new(max_in_flight: usize, window: Duration) -> Self {
        let ceiling_lanes = if max_in_flight == usize::MAX {
            MAX_LANES
        } else {
            max_in_flight.max(1)
        };
        Tune {
            lanes: 1,
            window: Duration::ZERO,
            ceiling_lanes,
            ceiling_window: window,
            held_cap: None,
            lingering: false,
            rate: 0.0,
            last_start: None,
            period_start: None,
            period_calls: 0,
            solos: 0,
            fixed: 0.0,
            fit: Fit::default(),
            slowdown: None,
            slowdown_samples: 0,
            slowdown_var: 0.0,
            size: 1.0,
            batches: 0,
            peak_used: 0,
            queued: false,
            backlog: false,
            since_backlog: BACKLOG_MEMORY,
            burst: Duration::ZERO,
            decisions: 0,
            alone_seen: false,
            lent: false,
        }
    }

    /// A batch of `calls` calls starts at `now` with `lanes_used` lanes in use
    /// (itself included); `queued` other batches wait for a lane.
    pub(crate) fn started(&mut self, now: Instant, calls: u64, lanes_used: usize, queued: usize) {
        match self.period_start {
            None => self.period_start = Some(now),
            // The calls of the period's first batch arrived before it.
            Some(_) => self.period_calls += calls,
        }
        self.last_start = Some(now);
        self.peak_used = self.peak_used.max(lanes_used);
        self.queued |= queued > 0;
    }

    /// A call goes alone (an idle group). No clock is read on this path:
    /// it counts, and once [`DECIDE_EVERY`] lone calls come between two
    /// decisions the group counts as idle (no lingering; see
    /// [`Tune::lingers`]). True when that happens, for the metrics.
    pub(crate) fn alone(&mut self) -> bool {
        self.solos = self.solos.saturating_add(1);
        self.solos == DECIDE_EVERY
    }

    /// Calls gather while every lane is busy, or a due batch queued for a
    /// lane: demand beyond the lanes.
    pub(crate) fn waited(&mut self) {
        self.queued = true;
    }

    /// A full batch (`max_batch` keys) queued for a lane: a backlog that
    /// batching cannot absorb (a larger batch is not allowed), so only more
    /// lanes carry it faster — whatever the slowdown, as long as the backend
    /// does more work with them (see [`Tune::decide`]).
    pub(crate) fn backlogged(&mut self) {
        self.queued = true;
        self.backlog = true;
    }

    /// The window a batch opened now lingers for: zero while the group is
    /// mostly idle.
    pub(crate) fn lingers(&self) -> Duration {
        if self.solos >= DECIDE_EVERY {
            Duration::ZERO
        } else if self.remembers_backlog() {
            self.window.max(self.burst)
        } else {
            self.window
        }
    }

    /// A backlog came since the last decision or within [`BACKLOG_MEMORY`]
    /// decisions. Then a batch opened beside running ones gathers until it
    /// is full, for at most one fixed cost (`burst`): calls come faster than
    /// full batches carry them, so one that left with whatever came in the
    /// same instant would take a lane, and pay a fixed cost, that a full
    /// batch needs.
    fn remembers_backlog(&self) -> bool {
        self.backlog || self.since_backlog < BACKLOG_MEMORY
    }

    /// A batch of `size` distinct keys, started with `lanes_used` lanes in use
    /// (itself included), ran for `run`. Returns whether a decision was made
    /// (its result goes to the metrics).
    pub(crate) fn finished(&mut self, size: usize, lanes_used: usize, run: Duration) -> bool {
        let size = size.max(1) as f64;
        let run = run.as_secs_f64();
        if lanes_used <= 1 {
            self.fit.add(size, run);
            self.alone_seen = true;
        } else if let Some(alone) = self.fit.alone(size) {
            // Clipped at zero: a batch beside others that ran faster than
            // the fit of batches alone says (the fit is off for its size, or
            // it started as the others ended) tells nothing of the backend.
            // On a backend that does not slow down this leaves a small mean
            // of pure noise, which `sure_slowdown` tells apart.
            let sample = ((run / alone - 1.0) / (lanes_used - 1) as f64).max(0.0);
            self.slowdown_samples = self.slowdown_samples.saturating_add(1);
            self.slowdown = Some(match self.slowdown {
                None => sample,
                Some(s) => {
                    // Exponentially weighted mean and variance.
                    let diff = sample - s;
                    let step = SLOWDOWN * diff;
                    self.slowdown_var = (1.0 - SLOWDOWN) * (self.slowdown_var + diff * step);
                    s + step
                }
            });
        }
        self.size += SIZE * (size - self.size);
        self.batches += 1;
        if self.batches < DECIDE_EVERY {
            return false;
        }
        self.decide()
    }

    /// The most lanes worth running: past `1 + (TOLERANCE − 1) / slowdown`
    /// lanes a batch runs more than `TOLERANCE` times as long as alone. The
    /// ceiling until [`MIN_SAMPLES`] slowdowns are measured, or while the
    /// slowdown is not told apart from zero (see [`Tune::sure_slowdown`]).
    fn cap(&self) -> f64 {
        let cap = match self.sure_slowdown() {
            Some(s) if s > 1e-3 => 1.0 + (TOLERANCE - 1.0) / s,
            _ => self.ceiling_lanes as f64,
        };
        cap.clamp(1.0, self.ceiling_lanes as f64)
    }

    /// The slowdown the samples show for sure: their smoothed mean less two
    /// standard errors (an exponentially weighted mean of factor `a` weighs
    /// about `(2 − a) / a` samples). A backend that does not slow down but
    /// whose run times are noisy reads a small mean with a large error; its
    /// lanes are not capped by that noise. `None` before [`MIN_SAMPLES`].
    fn sure_slowdown(&self) -> Option<f64> {
        let mean = self
            .slowdown
            .filter(|_| self.slowdown_samples >= MIN_SAMPLES)?;
        let weight = (2.0 - SLOWDOWN) / SLOWDOWN;
        let error = (self.slowdown_var.max(0.0) / weight).sqrt();
        Some((mean - 2.0 * error).max(0.0))
    }

    /// The cap the lanes follow: the computed one once it leaves the band
    /// around the held one (hysteresis).
    fn follow_cap(&mut self) -> f64 {
        let cap = self.cap();
        let held = match self.held_cap {
            Some(h) if (cap - h).abs() < (CAP_BAND * h).max(1.0) => h,
            _ => cap,
        };
        self.held_cap = Some(held);
        held
    }

    fn costs(&self) -> Option<Costs> {
        let (fixed, per_key) = self.fit.costs()?;
        Some(Costs {
            fixed,
            per_key,
            per_lane: self.slowdown.unwrap_or(0.0),
        })
    }

    /// Sets the lanes and the window from what the period measured, and
    /// starts a new period. Always true (a decision was made).
    fn decide(&mut self) -> bool {
        self.decisions += 1;
        if let (Some(first), Some(last)) = (self.period_start, self.last_start) {
            let dt = last.saturating_duration_since(first).as_secs_f64();
            if dt > 0.0 {
                let sample = self.period_calls as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    sample
                } else {
                    self.rate + RATE * (sample - self.rate)
                };
            }
        }
        if let Some(c) = self.costs() {
            self.fixed = if self.fixed == 0.0 {
                c.fixed
            } else {
                self.fixed + FIXED * (c.fixed - self.fixed)
            };
            self.burst = secs(self.fixed).min(self.ceiling_window);
            let cap = self.follow_cap();
            if self.lent {
                // The probe's period is over: its lane comes back.
                self.lent = false;
                self.lanes += 1;
            }
            let busy = 2 * self.peak_used >= self.lanes;
            self.since_backlog = if self.backlog {
                0
            } else {
                self.since_backlog.saturating_add(1)
            };
            if self.backlog && busy {
                // Full batches wait for a lane: a larger batch is not allowed,
                // so only more lanes carry the backlog faster. Every lane the
                // ceiling allows (`max_in_flight`: what the user says the
                // backend takes, such as its pool), twice as many per
                // decision, whatever each batch's own slowdown.
                self.lanes = (self.lanes * 2).min(self.ceiling_lanes);
            } else if self.lanes as f64 > cap + 0.5 && !self.remembers_backlog() {
                // Saturated: more lanes only slow every batch down. Half the
                // way to the cap per decision.
                let over = self.lanes as f64 - cap;
                self.lanes -= ((over / 2.0).ceil() as usize).max(1);
            } else if self.queued && busy && ((self.lanes + 1) as f64) <= cap + 0.5 {
                // Batches wait for a lane, and more do not slow the backend
                // past the tolerance: one more per decision. A decision comes
                // every few batches, so this is quick in time where batches
                // are many; and where lanes are many, a step late in a steady
                // load moves them by one, not by a quarter.
                self.lanes += 1;
            } else if self.decisions % PROBE_EVERY == 0 {
                if !self.alone_seen && self.lanes > 1 && busy {
                    // A probe of the baseline: no batch ran alone for a
                    // while, so the cost alone is stale; one lane fewer for
                    // one period lets the fit see other concurrencies.
                    self.lanes -= 1;
                    self.lent = true;
                }
                self.alone_seen = false;
            }
            self.lanes = self.lanes.clamp(1, self.ceiling_lanes);
            // The lanes the window is judged against: a probe's lane is
            // lent for one period, not given back (the window does not stop
            // for it).
            let lanes = self.lanes + usize::from(self.lent);
            // Lingering pays only when lanes cannot grow (at the cap or the
            // ceiling) while demand exceeds them, and enough calls arrive per
            // fixed cost that waiting for them saves batches; more lanes
            // lower latency where they can be had. At a measured cap, only
            // if batches slow each other down enough that running fewer at
            // once pays: below that the cap is the fit's noise, not the
            // backend's.
            let siblings = self.rate * self.fixed;
            let at_ceiling = lanes >= self.ceiling_lanes;
            // The slowdown gate has hysteresis too: on at LINGER_SLOWDOWN, off
            // below half of it.
            let gate = if self.lingering {
                LINGER_SLOWDOWN / 2.0
            } else {
                LINGER_SLOWDOWN
            };
            let contended = self.sure_slowdown().is_some_and(|s| s >= gate);
            // Not after a backlog: full batches leave at once anyway, and the
            // lanes are there to carry them, not because demand passed a cap.
            let at_cap = (lanes + 1) as f64 > cap + 0.5
                && (at_ceiling || contended)
                && !self.remembers_backlog();
            // Below the ceiling lingering happens only on a contended
            // backend, for a short window (see `CONTENDED_SHARE`); at the
            // ceiling of a backend that does not slow down, for half the
            // fixed cost, which waiting for siblings saves batches of.
            let (on, off, share) = if contended && !at_ceiling {
                (CONTENDED_ON, CONTENDED_OFF, CONTENDED_SHARE)
            } else {
                (LINGER_ON, LINGER_OFF, 0.5)
            };
            if self.lingering && (siblings < off || !at_cap) {
                self.lingering = false;
            } else if !self.lingering && siblings >= on && at_cap && self.queued {
                self.lingering = true;
            }
            let target = if self.lingering {
                secs(self.fixed * share).min(self.ceiling_window)
            } else {
                Duration::ZERO
            };
            // A quarter of the way there per decision, and all the way to zero.
            self.window = if target.is_zero() {
                target
            } else {
                self.window.saturating_mul(3).saturating_add(target) / 4
            };
        }
        self.batches = 0;
        self.peak_used = 0;
        self.queued = false;
        self.backlog = false;
        self.solos = 0;
        self.period_start = None;
        self.period_calls = 0;
        true
    }

    pub(crate) fn view(&self) -> TuneView {
        let c = self.costs().unwrap_or_default();
        TuneView {
            lanes: self.lanes,
            window: self.lingers(),
            fixed_cost: secs(c.fixed),
            per_key_cost: secs(c.per_key),
            slowdown_per_lane: c.per_lane,
            arrival_rate: self.rate,
        }
    }
}

/// Seconds as a [`Duration`], saturating (zero for a negative or NaN value,
/// [`Duration::MAX`] past it): the fitted costs are finite and not negative,
/// but arithmetic on the batch fn's timings must not panic in the engine.
fn secs(x: f64) -> Duration {
    if x.is_nan() || x <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(x).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted backend: `2 ms + 2 µs × size`, times `1 + slowdown ×
    /// (lanes in use − 1)` (saturation).
    fn backend(size: usize, used: usize, slowdown: f64) -> Duration {
        let base = 0.002 + 0.000_002 * size as f64;
        Duration::from_secs_f64(base * (1.0 + slowdown * (used as f64 - 1.0)))
    }

    /// One batch of `size` keys `gap` after the last, started with `used`
    /// lanes in use and `queued` batches waiting, that ran for `run`. Returns
    /// whether a decision was made.
    fn one(
        t: &mut Tune,
        now: &mut Instant,
        gap: Duration,
        (size, used, queued): (usize, usize, usize),
        run: Duration,
    ) -> bool {
        *now += gap;
        t.started(*now, size as u64, used, queued);
        t.finished(size, used, run)
    }

    /// Feeds `batches` batches at `rate` calls/s: batch `i` starts with
    /// `1 + i % lanes` lanes in use (batches start at different times), and
    /// `queued` batches wait.
    fn feed(
        t: &mut Tune,
        now: &mut Instant,
        rate: f64,
        batches: u32,
        slowdown: f64,
        queued: usize,
    ) {
        for i in 0..batches as usize {
            let lanes = t.lanes;
            let used = 1 + i % lanes;
            let run = backend(100, lanes, slowdown);
            let gap = run / lanes as u32;
            let calls = (rate * gap.as_secs_f64()).round().max(1.0) as usize;
            one(
                t,
                now,
                gap,
                (calls, used, queued),
                backend(calls, used, slowdown),
            );
        }
    }

    #[test]
    fn the_fit_recovers_fixed_and_per_key_costs_and_the_slowdown() {
        let mut t = Tune::new(8, Duration::from_millis(5));
        let mut now = Instant::now();
        for (i, size) in [1usize, 10, 100, 1000, 50, 5, 500, 20]
            .iter()
            .cycle()
            .take(64)
            .enumerate()
        {
            let used = 1 + i % 3;
            let run = backend(*size, used, 0.25);
            one(
                &mut t,
                &mut now,
                Duration::from_millis(1),
                (*size, used, 0),
                run,
            );
        }
        let c = t.costs().unwrap();
        assert!((c.fixed - 0.002).abs() < 1e-6, "{c:?}");
        assert!((c.per_key - 0.000_002).abs() < 1e-9, "{c:?}");
        assert!((c.per_lane - 0.25).abs() < 1e-3, "{c:?}");
    }

    #[test]
    fn seconds_saturate_instead_of_panicking() {
        assert_eq!(secs(0.5), Duration::from_millis(500));
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(f64::INFINITY), Duration::MAX);
        assert_eq!(secs(1e30), Duration::MAX);
    }

    #[test]
    fn idle_means_no_window_and_one_lane() {
        let t = Tune::new(8, Duration::from_millis(5));
        assert_eq!((t.lanes, t.window), (1, Duration::ZERO));
    }

    #[test]
    fn lanes_grow_under_queueing_on_a_backend_that_scales() {
        let mut t = Tune::new(8, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 20_000.0, 400, 0.0, 2);
        assert_eq!(t.lanes, 8, "{t:?}");
    }

    #[test]
    fn lanes_grow_one_per_decision() {
        let mut t = Tune::new(32, Duration::from_millis(5));
        let mut now = Instant::now();
        let mut seen = vec![t.lanes];
        for _ in 0..300 {
            // Every lane busy, batches queued, a backend that scales.
            let used = t.lanes;
            let run = backend(40, used, 0.0);
            one(&mut t, &mut now, run / used as u32, (40, used, 2), run);
            if seen.last() != Some(&t.lanes) {
                seen.push(t.lanes);
            }
        }
        let expected: Vec<usize> = (1..=seen.len()).collect();
        assert_eq!(seen, expected, "{t:?}");
        assert!(t.lanes >= 24, "{t:?}");
    }

    #[test]
    fn lanes_shrink_when_the_backend_saturates() {
        let mut t = Tune::new(16, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 20_000.0, 400, 0.0, 2);
        let grown = t.lanes;
        assert!(grown >= 12, "{t:?}");
        // Each extra lane now doubles every batch's run: with a second lane a
        // batch runs twice as long as alone, past the tolerance.
        feed(&mut t, &mut now, 20_000.0, 400, 1.0, 2);
        assert!(t.lanes <= 3, "{grown} -> {t:?}");
    }

    #[test]
    fn no_growth_while_app_limited() {
        let mut t = Tune::new(8, Duration::from_millis(5));
        let mut now = Instant::now();
        for _ in 0..200 {
            one(
                &mut t,
                &mut now,
                Duration::from_millis(10),
                (1, 1, 0),
                backend(1, 1, 0.0),
            );
        }
        assert_eq!(t.lanes, 1);
        assert_eq!(t.window, Duration::ZERO);
    }

    #[test]
    fn the_window_lingers_only_with_enough_siblings_and_has_hysteresis() {
        let mut t = Tune::new(1, Duration::from_millis(5));
        let mut now = Instant::now();
        // 10,000 calls/s, 2 ms fixed cost: 20 arrivals per fixed cost.
        feed(&mut t, &mut now, 10_000.0, 80, 0.0, 1);
        assert!(t.window > Duration::ZERO, "{t:?}");
        assert!(t.window <= Duration::from_millis(5));
        // 1,500 calls/s: 3 per fixed cost, between the thresholds: it stays.
        feed(&mut t, &mut now, 1_500.0, 80, 0.0, 1);
        assert!(t.window > Duration::ZERO, "{t:?}");
        // 200 calls/s: below the lower threshold, the window goes to zero.
        feed(&mut t, &mut now, 200.0, 80, 0.0, 1);
        assert_eq!(t.window, Duration::ZERO, "{t:?}");
        // 3 per fixed cost again: not enough to start lingering.
        feed(&mut t, &mut now, 1_500.0, 80, 0.0, 1);
        assert_eq!(t.window, Duration::ZERO, "{t:?}");
    }

    #[test]
    fn no_lingering_while_lanes_can_grow() {
        // Many calls per fixed cost, but a backend that scales and lanes to
        // spare: more lanes, not a window.
        let mut t = Tune::new(8, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 10_000.0, 16, 0.0, 1);
        assert_eq!(t.window, Duration::ZERO, "{t:?}");
        assert!(t.lanes > 1, "{t:?}");
    }

    #[test]
    fn lone_calls_turn_lingering_off_without_a_clock() {
        let mut t = Tune::new(1, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 10_000.0, 80, 0.0, 1);
        assert!(t.lingers() > Duration::ZERO, "{t:?}");
        let published = (0..DECIDE_EVERY).map(|_| t.alone()).filter(|p| *p).count();
        assert_eq!(published, 1);
        assert_eq!(t.lingers(), Duration::ZERO);
        assert_eq!(t.view().window, Duration::ZERO);
    }

    #[test]
    fn large_batches_beside_others_are_not_read_against_small_ones_alone() {
        // A burst: the batch that starts alone is small, the ones beside it
        // are large, and the backend's cost per key is real but does not grow
        // with concurrency. Read against the small batches' fit (all fixed
        // cost), the large ones would show a large slowdown.
        let mut t = Tune::new(10, Duration::from_micros(500));
        let mut now = Instant::now();
        for i in 0..400usize {
            let (size, used) = if i % 10 == 0 {
                (1 + i % 3, 1)
            } else {
                (1000, 2 + i % 8)
            };
            let run = backend(size, 1, 0.0);
            one(
                &mut t,
                &mut now,
                Duration::from_micros(300),
                (size, used, 1),
                run,
            );
        }
        assert_eq!(t.slowdown, None, "{t:?}");
        assert_eq!(t.cap(), 10.0, "{t:?}");
        assert_eq!(t.lanes, 10, "{t:?}");
    }

    #[test]
    fn a_backlog_of_full_batches_takes_every_lane_then_gives_them_back() {
        let mut t = Tune::new(10, Duration::from_micros(500));
        let mut now = Instant::now();
        // A backend that saturates (50% per batch beside it): two lanes.
        feed(&mut t, &mut now, 20_000.0, 400, 0.5, 1);
        assert!(t.lanes <= 3, "{t:?}");
        // A burst: full batches queue for a lane at every decision.
        let mut seen = Vec::new();
        for _ in 0..4 {
            for _ in 0..DECIDE_EVERY {
                t.backlogged();
            }
            feed(&mut t, &mut now, 20_000.0, DECIDE_EVERY, 0.5, 1);
            seen.push(t.lanes);
        }
        assert_eq!(seen.last(), Some(&10), "{seen:?}");
        // Doubling, not a jump.
        assert!(seen[0] <= 6, "{seen:?}");
        // The backlog is gone: the lanes stay for a while (bursts come
        // back), then go back to the cap, half the way per decision.
        feed(
            &mut t,
            &mut now,
            20_000.0,
            (BACKLOG_MEMORY - 1) * DECIDE_EVERY,
            0.5,
            1,
        );
        assert_eq!(t.lanes, 10, "{t:?}");
        feed(&mut t, &mut now, 20_000.0, 8 * DECIDE_EVERY, 0.5, 1);
        assert!(t.lanes <= 3, "{t:?}");
    }

    #[test]
    fn after_a_backlog_a_batch_gathers_for_one_fixed_cost() {
        let mut t = Tune::new(10, Duration::from_millis(5));
        let mut now = Instant::now();
        // A backend that scales, below its ceiling: no window.
        feed(&mut t, &mut now, 2_000.0, 400, 0.0, 0);
        assert_eq!(t.lingers(), Duration::ZERO, "{t:?}");
        // A full batch queues for a lane: at once, the next batch gathers for
        // one fixed cost (2 ms and a little per key).
        t.backlogged();
        let fixed = t.lingers();
        assert!(
            fixed >= Duration::from_millis(2) && fixed < Duration::from_micros(2_100),
            "{t:?}"
        );
        // It remembers the backlog for BACKLOG_MEMORY decisions after the
        // one that saw it, then goes at once again.
        feed(
            &mut t,
            &mut now,
            2_000.0,
            BACKLOG_MEMORY * DECIDE_EVERY,
            0.0,
            0,
        );
        assert!(t.lingers() >= Duration::from_millis(2), "{t:?}");
        feed(&mut t, &mut now, 2_000.0, DECIDE_EVERY, 0.0, 0);
        assert_eq!(t.lingers(), Duration::ZERO, "{t:?}");
        // At most the ceiling.
        let mut short = Tune::new(10, Duration::from_micros(500));
        feed(&mut short, &mut now, 2_000.0, 400, 0.0, 0);
        short.backlogged();
        assert_eq!(short.lingers(), Duration::from_micros(500), "{short:?}");
        // An idle group still goes at once.
        for _ in 0..DECIDE_EVERY {
            short.alone();
        }
        assert_eq!(short.lingers(), Duration::ZERO, "{short:?}");
    }

    #[test]
    fn noise_alone_does_not_cap_the_lanes() {
        // A backend that does not slow down, whose runs vary by ±20% (a
        // timer, a busy machine): each slowdown sample is noise, and their
        // mean is above zero (a sample is never negative).
        let mut t = Tune::new(16, Duration::from_millis(5));
        let mut now = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut noise = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            0.8 + 0.4 * (seed % 1000) as f64 / 1000.0
        };
        for i in 0..2000usize {
            // Up to two batches beside it.
            let used = 1 + i % 3;
            let run = backend(4, 1, 0.0).mul_f64(noise());
            one(
                &mut t,
                &mut now,
                Duration::from_micros(200),
                (4, used, 1),
                run,
            );
        }
        // Taken at its word, the mean would cap the lanes at 11 or fewer;
        // what it shows for sure leaves them half as many again.
        let naive = 1.0 + 0.5 / t.slowdown.unwrap();
        assert!(naive < 11.0, "{t:?}");
        assert!(t.cap() > 1.4 * naive, "{} {t:?}", t.cap());
        assert!(t.lanes >= 5, "{t:?}");
        assert_eq!(t.window, Duration::ZERO, "{t:?}");
    }

    #[test]
    fn a_noisy_slowdown_does_not_move_the_lanes() {
        let mut t = Tune::new(16, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 20_000.0, 400, 0.07, 1);
        let settled = t.lanes;
        let mut seen = Vec::new();
        let mut fitted = Vec::new();
        for i in 0..40 {
            // The backend's slowdown wanders between 0.05 and 0.09 per lane
            // (what the fit reads on this machine's flat backend, scaled):
            // the cap moves between 1 + 0.5 / 0.09 = 6.6 and 11 lanes.
            let s = if i % 2 == 0 { 0.05 } else { 0.09 };
            feed(&mut t, &mut now, 20_000.0, 4 * DECIDE_EVERY, s, 1);
            seen.push(t.lanes);
            fitted.push(t.slowdown.unwrap());
        }
        let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        let (flo, fhi) = fitted
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), s| (a.min(*s), b.max(*s)));
        // The fit does move (a third or more), the lanes do not.
        assert!(fhi > 1.3 * flo, "{fitted:?}");
        assert_eq!((*lo, *hi), (settled, settled), "{seen:?}");
    }

    #[test]
    fn a_contended_backend_lingers_for_a_short_window() {
        // 25% slower per batch beside it: lanes stop at the cap, and 1,500
        // calls/s is 3 arrivals per 2 ms fixed cost, enough to linger on a
        // contended backend (not at the ceiling of one that does not slow).
        let mut t = Tune::new(16, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 1_500.0, 800, 0.25, 1);
        let fixed = t.costs().unwrap().fixed;
        // An eighth of the fixed cost, not the half a flat backend's ceiling
        // lingers for.
        let short = Duration::from_secs_f64(fixed / 8.0);
        assert!(t.lanes < 16, "{t:?}");
        assert!(t.window > short.mul_f64(0.9), "{t:?}");
        assert!(t.window < short.mul_f64(1.1), "{t:?}");
        // The same rate at the ceiling of a backend that does not slow down:
        // below the 4 arrivals per fixed cost that lingering there needs.
        let mut flat = Tune::new(1, Duration::from_millis(5));
        feed(&mut flat, &mut now, 1_500.0, 800, 0.0, 1);
        assert_eq!(flat.window, Duration::ZERO, "{flat:?}");
        // At 10,000 calls/s it lingers there, for half the fixed cost.
        feed(&mut flat, &mut now, 10_000.0, 800, 0.0, 1);
        let half = Duration::from_secs_f64(flat.costs().unwrap().fixed / 2.0);
        assert!(flat.window > half.mul_f64(0.9), "{flat:?}");
        // The contended group's window stops below 1 arrival per fixed cost:
        // here one call every 5 ms (0.4 per fixed cost).
        for i in 0..800 {
            let used = 1 + i % 2;
            let run = backend(1, used, 0.25);
            one(
                &mut t,
                &mut now,
                Duration::from_millis(5),
                (1, used, 1),
                run,
            );
        }
        assert_eq!(t.window, Duration::ZERO, "{t:?}");
    }

    #[test]
    fn a_probe_does_not_stop_the_window() {
        let mut t = Tune::new(16, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 1_500.0, 800, 0.25, 1);
        assert!(t.window > Duration::ZERO, "{t:?}");
        // No batch runs alone any more: every PROBE_EVERY decisions the
        // controller lends a lane to see the baseline again.
        let mut lanes = Vec::new();
        let mut windows = Vec::new();
        for i in 0..(3 * PROBE_EVERY * DECIDE_EVERY) as usize {
            let used = 2 + i % (t.lanes.max(2) - 1);
            let run = backend(1, used, 0.25);
            if one(
                &mut t,
                &mut now,
                Duration::from_micros(700),
                (1, used, 1),
                run,
            ) {
                lanes.push(t.lanes);
                windows.push(t.window);
            }
        }
        let (lo, hi) = (lanes.iter().min().unwrap(), lanes.iter().max().unwrap());
        assert!(lo < hi, "no probe: {lanes:?}");
        // The lane is lent for one period: it is back at the next decision.
        for i in 1..lanes.len() - 1 {
            if lanes[i] < lanes[i - 1] {
                assert_eq!(lanes[i + 1], lanes[i - 1], "{i}: {lanes:?}");
            }
        }
        assert!(windows.iter().all(|w| !w.is_zero()), "{windows:?}");
    }

    #[test]
    fn a_constant_load_settles_without_oscillating() {
        let mut t = Tune::new(16, Duration::from_millis(5));
        let mut now = Instant::now();
        feed(&mut t, &mut now, 20_000.0, 400, 0.4, 1);
        let mut seen = Vec::new();
        for _ in 0..50 {
            feed(&mut t, &mut now, 20_000.0, DECIDE_EVERY, 0.4, 1);
            seen.push(t.lanes);
        }
        let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        // Within one lane (the periodic probe) of where it settled.
        assert!(hi - lo <= 1, "{seen:?}");
        // 40% per extra lane: a cap of 1 + 0.75 / 0.4 = 2.875 lanes (a
        // batch runs at most 1.75 times as long as alone), so 3 — not the 4
        // of a tolerance of 2 (a cap of 3.5) nor the 2 of one of 1.5 (2.25).
        assert_eq!(*hi, 3, "{seen:?}");
        assert!(*lo >= 2, "{seen:?}");
    }
}
