//! The one recorder: every event of a coalescer goes through [`Recorder`], which
//! updates the in-process counters (read by [`crate::metrics::snapshot`]) and,
//! behind their cargo features, the `metrics` facade and `tracing` spans, in the
//! same call, so the two never drift apart.
//!
//! Per-batch events carry the batch's counts; per-call work is kept to what a
//! call changes (the `pending` and `in_flight` gauges, and a failure's kind).
//!
//! Exported series, each labelled `function = <coalescer name>`:
//! `coalesce_calls_total`, `coalesce_keys_total`, `coalesce_dedup_hits_total`,
//! `coalesce_batches_total`, `coalesce_batch_size` (histogram),
//! `coalesce_wait_seconds`, `coalesce_run_seconds` and
//! `coalesce_first_item_seconds` (streamed batches) (histograms),
//! `coalesce_errors_total{kind = batch|key|panic|timeout|shape|shutdown|maybe_committed|drained}`,
//! `coalesce_overloaded_total`, `coalesce_cancelled_total`, and the gauges
//! `coalesce_in_flight_batches` and `coalesce_pending_calls`.

#[cfg(feature = "metrics")]
use std::sync::atomic::Ordering::Acquire;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::metrics::{add, Metrics, MetricsSnapshot};

/// The span of one batch (a unit type without the `tracing` feature).
#[cfg(feature = "tracing")]
pub(crate) type BatchSpan = tracing::Span;
/// Stands for a span without the `tracing` feature.
#[cfg(not(feature = "tracing"))]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NoSpan;

/// The span of one batch (nothing without the `tracing` feature).
#[cfg(not(feature = "tracing"))]
pub(crate) type BatchSpan = NoSpan;

/// The span of a caller, captured when it joins a batch.
#[cfg(feature = "tracing")]
pub(crate) type CallerSpan = Option<tracing::Id>;
/// The span of a caller (nothing without the `tracing` feature).
#[cfg(not(feature = "tracing"))]
pub(crate) type CallerSpan = NoSpan;

/// The caller's current span, if tracing is in use at all.
pub(crate) fn caller_span() -> CallerSpan {
    #[cfg(not(feature = "tracing"))]
    {
        NoSpan
    }
    #[cfg(feature = "tracing")]
    {
        // Skip the thread-local look-up entirely until tracing is in use.
        if !tracing::dispatcher::has_been_set() {
            return None;
        }
        tracing::Span::current().id()
    }
}

/// Records one coalescer's events.
pub(crate) struct Recorder {
    m: Arc<Metrics>,
    /// `tower::Service::poll_ready` callers waiting for room under `max_pending`.
    #[cfg(feature = "tower")]
    ready: ReadyWaiters,
    #[cfg(feature = "tracing")]
    name: Arc<str>,
    #[cfg(feature = "metrics")]
    x: Export,
}

#[cfg(feature = "metrics")]
struct Export {
    calls: metrics::Counter,
    keys: metrics::Counter,
    dedup_hits: metrics::Counter,
    batches: metrics::Counter,
    batch_size: metrics::Histogram,
    wait: metrics::Histogram,
    run: metrics::Histogram,
    first_item: metrics::Histogram,
    errors: [metrics::Counter; ERROR_KINDS.len()],
    overloaded: metrics::Counter,
    cancelled: metrics::Counter,
    in_flight: metrics::Gauge,
    tuned_lanes: metrics::Gauge,
    tuned_window: metrics::Gauge,
    fixed_cost: metrics::Gauge,
    per_key_cost: metrics::Gauge,
    pending: metrics::Gauge,
    withdrawn: metrics::Counter,
    ack: metrics::Histogram,
}

/// Wakers of `poll_ready` callers; one relaxed load per gauge change when none.
#[cfg(feature = "tower")]
#[derive(Default)]
struct ReadyWaiters {
    any: std::sync::atomic::AtomicBool,
    wakers: std::sync::Mutex<Vec<std::task::Waker>>,
}

#[cfg(feature = "tower")]
impl ReadyWaiters {
    fn add(&self, waker: &std::task::Waker) {
        let mut wakers = self
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.any.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn wake(&self) {
        if !self.any.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let wakers = {
            let mut wakers = self
                .wakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.any.store(false, std::sync::atomic::Ordering::SeqCst);
            std::mem::take(&mut *wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

#[cfg(feature = "metrics")]
impl Export {
    /// Handles that record nothing: a [`Scope`](crate::Scope)'s coalescer.
    fn noop() -> Self {
        use metrics::{Counter, Gauge, Histogram};
        Export {
            calls: Counter::noop(),
            keys: Counter::noop(),
            dedup_hits: Counter::noop(),
            batches: Counter::noop(),
            batch_size: Histogram::noop(),
            wait: Histogram::noop(),
            run: Histogram::noop(),
            first_item: Histogram::noop(),
            errors: std::array::from_fn(|_| Counter::noop()),
            overloaded: Counter::noop(),
            cancelled: Counter::noop(),
            in_flight: Gauge::noop(),
            tuned_lanes: Gauge::noop(),
            tuned_window: Gauge::noop(),
            fixed_cost: Gauge::noop(),
            per_key_cost: Gauge::noop(),
            pending: Gauge::noop(),
            withdrawn: Counter::noop(),
            ack: Histogram::noop(),
        }
    }
}

/// The HELP text and unit of every exported metric, given to the recorder
/// installed now (each coalescer made describes them again: a recorder installed
/// later still gets them).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "coalesce_calls_total",
        Unit::Count,
        "Calls of a coalesced fn."
    );
    describe_counter!(
        "coalesce_keys_total",
        Unit::Count,
        "Distinct keys sent to the batch fn (net writes for a write fn)."
    );
    describe_counter!(
        "coalesce_dedup_hits_total",
        Unit::Count,
        "Calls that shared a key with another call of their batch (writes absorbed)."
    );
    describe_counter!("coalesce_batches_total", Unit::Count, "Batch fn calls.");
    describe_histogram!(
        "coalesce_batch_size",
        Unit::Count,
        "Distinct keys per batch."
    );
    describe_histogram!(
        "coalesce_wait_seconds",
        Unit::Seconds,
        "Time from a batch's first call to its dispatch."
    );
    describe_histogram!(
        "coalesce_run_seconds",
        Unit::Seconds,
        "Run time of the batch fn."
    );
    describe_histogram!(
        "coalesce_first_item_seconds",
        Unit::Seconds,
        "Streamed batches: time from the run's start to the stream's first item."
    );
    describe_gauge!(
        "coalesce_tuned_lanes",
        Unit::Count,
        "dispatch = auto: batches of one group the controller lets run at once."
    );
    describe_gauge!(
        "coalesce_tuned_window_seconds",
        Unit::Seconds,
        "dispatch = auto: the window the controller set (0: a call goes at once)."
    );
    describe_gauge!(
        "coalesce_fixed_cost_seconds",
        Unit::Seconds,
        "dispatch = auto: the batch fn's fitted fixed cost per batch."
    );
    describe_gauge!(
        "coalesce_per_key_cost_seconds",
        Unit::Seconds,
        "dispatch = auto: the batch fn's fitted cost per key."
    );
    describe_counter!(
        "coalesce_errors_total",
        Unit::Count,
        "Calls failed, by kind: batch (the batch fn's error), key (a per-key error), \
         panic, timeout, shape (a Vec of the wrong length), shutdown, maybe_committed, drained."
    );
    describe_counter!(
        "coalesce_overloaded_total",
        Unit::Count,
        "Calls refused at max_pending or max_pending_per_group."
    );
    describe_counter!(
        "coalesce_cancelled_total",
        Unit::Count,
        "Calls dropped by their caller before their answer."
    );
    describe_gauge!(
        "coalesce_in_flight_batches",
        Unit::Count,
        "Batches running now."
    );
    describe_gauge!(
        "coalesce_pending_calls",
        Unit::Count,
        "Calls waiting for their batch now."
    );
    describe_counter!(
        "coalesce_withdrawn_writes_total",
        Unit::Count,
        "Writes whose writer left before the acknowledgement (they commit anyway)."
    );
    describe_histogram!(
        "coalesce_ack_seconds",
        Unit::Seconds,
        "Time from a write's acceptance to its acknowledgement."
    );
}

/// The `kind` labels of `coalesce_errors_total`.
#[cfg(feature = "metrics")]
const ERROR_KINDS: [&str; 8] = [
    "batch",
    "key",
    "panic",
    "timeout",
    "shape",
    "shutdown",
    "maybe_committed",
    "drained",
];

/// The index in `ERROR_KINDS` of a call's failure, if it is counted there.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn kind_of<E>(err: &Error<E>) -> Option<usize> {
    Some(match err {
        Error::Batch { .. } => 0,
        Error::Key { .. } => 1,
        Error::Panicked { .. } => 2,
        Error::Timeout { .. } | Error::IdleTimeout { .. } => 3,
        Error::Shape { .. } => 4,
        Error::Shutdown { .. } => 5,
        Error::MaybeCommitted { .. } => 6,
        Error::Drained { .. } => 7,
        _ => return None,
    })
}

impl Recorder {
    /// A recorder for the coalescer `name`, registered in the metrics registry.
    /// A coalescer that is not `listed` (a [`Scope`](crate::Scope)'s) is neither
    /// in the registry nor exported.
    pub(crate) fn new(name: Arc<str>, m: Arc<Metrics>, listed: bool) -> Self {
        // Read only by the `metrics` and `tracing` features.
        let _ = (&name, listed);
        #[cfg(feature = "metrics")]
        let x = if !listed {
            Export::noop()
        } else {
            describe();
            let f = name.to_string();
            Export {
                calls: metrics::counter!("coalesce_calls_total", "function" => f.clone()),
                keys: metrics::counter!("coalesce_keys_total", "function" => f.clone()),
                dedup_hits: metrics::counter!("coalesce_dedup_hits_total", "function" => f.clone()),
                batches: metrics::counter!("coalesce_batches_total", "function" => f.clone()),
                batch_size: metrics::histogram!("coalesce_batch_size", "function" => f.clone()),
                wait: metrics::histogram!("coalesce_wait_seconds", "function" => f.clone()),
                run: metrics::histogram!("coalesce_run_seconds", "function" => f.clone()),
                first_item: metrics::histogram!("coalesce_first_item_seconds", "function" => f.clone()),
                errors: ERROR_KINDS.map(|kind| {
                    metrics::counter!("coalesce_errors_total", "function" => f.clone(), "kind" => kind)
                }),
                overloaded: metrics::counter!("coalesce_overloaded_total", "function" => f.clone()),
                cancelled: metrics::counter!("coalesce_cancelled_total", "function" => f.clone()),
                in_flight: metrics::gauge!("coalesce_in_flight_batches", "function" => f.clone()),
                tuned_lanes: metrics::gauge!("coalesce_tuned_lanes", "function" => f.clone()),
                tuned_window: metrics::gauge!("coalesce_tuned_window_seconds", "function" => f.clone()),
                fixed_cost: metrics::gauge!("coalesce_fixed_cost_seconds", "function" => f.clone()),
                per_key_cost: metrics::gauge!("coalesce_per_key_cost_seconds", "function" => f.clone()),
                pending: metrics::gauge!("coalesce_pending_calls", "function" => f.clone()),
                withdrawn: metrics::counter!("coalesce_withdrawn_writes_total", "function" => f.clone()),
                ack: metrics::histogram!("coalesce_ack_seconds", "function" => f),
            }
        };
        Recorder {
            m,
            #[cfg(feature = "tower")]
            ready: ReadyWaiters::default(),
            #[cfg(feature = "tracing")]
            name,
            #[cfg(feature = "metrics")]
            x,
        }
    }

    /// The in-process figures, read now.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        self.m.snapshot()
    }

    /// The gauges' new values, stored under the engine's lock (so in the
    /// order of the changes); [`Recorder::publish`] exports them once it is
    /// released.
    pub(crate) fn counts(&self, in_flight: usize, pending: usize) {
        self.m.in_flight.store(in_flight as u64, Release);
        self.m.pending.store(pending as u64, Release);
    }

    /// After a change of the gauges, with the engine's lock released: wakes
    /// the tower readiness waiters and exports the gauges. The export reads
    /// the stored values again after setting them, until they hold still: a
    /// thread slow between its change and its export would otherwise set an
    /// older value over a newer one (a `pending` of 1 left exported after the
    /// last call was answered). Whichever export sets last has read the last
    /// values since.
    pub(crate) fn publish(&self) {
        #[cfg(feature = "tower")]
        self.ready.wake();
        #[cfg(feature = "metrics")]
        {
            let mut set = None;
            loop {
                let now = (self.m.in_flight.load(Acquire), self.m.pending.load(Acquire));
                if set == Some(now) {
                    break;
                }
                self.x.in_flight.set(now.0 as f64);
                self.x.pending.set(now.1 as f64);
                set = Some(now);
            }
        }
    }

    /// Wakes `waker` at the next change of the gauges (a call answered or left).
    #[cfg(feature = "tower")]
    pub(crate) fn wake_on_change(&self, waker: &std::task::Waker) {
        self.ready.add(waker);
    }

    /// The number of groups, after a change.
    pub(crate) fn groups(&self, n: usize) {
        self.m.groups.store(n as u64, Relaxed);
    }

    pub(crate) fn overloaded(&self) {
        self.m.overloaded.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.x.overloaded.increment(1);
    }

    pub(crate) fn cancelled_call(&self) {
        self.m.cancelled_calls.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.x.cancelled.increment(1);
    }

    /// A batch stopped while running because every caller left.
    pub(crate) fn cancelled_batch(&self) {
        self.m.cancelled_batches.fetch_add(1, Relaxed);
    }

    /// A batch never run because every caller left; its calls are counted here
    /// since no dispatch counts them.
    pub(crate) fn abandoned_batch(&self, calls: u64, keys: u64) {
        let m = &self.m;
        m.abandoned_batches.fetch_add(1, Relaxed);
        add(&m.abandoned_keys, keys);
        add(&m.calls, calls);
        #[cfg(feature = "metrics")]
        self.x.calls.increment(calls);
    }

    /// Keys dropped from an open batch because every caller of each left.
    pub(crate) fn abandoned_keys(&self, keys: u64) {
        add(&self.m.abandoned_keys, keys);
    }

    /// A batch opened while another group's batch was gathering.
    pub(crate) fn split_batch(&self) {
        self.m.split_batches.fetch_add(1, Relaxed);
    }

    /// A call joined a run already fetching its key: a call, and a duplicate.
    pub(crate) fn joined_running(&self) {
        let m = &self.m;
        m.calls.fetch_add(1, Relaxed);
        m.dedup_hits.fetch_add(1, Relaxed);
        m.joined_running.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        {
            self.x.calls.increment(1);
            self.x.dedup_hits.increment(1);
        }
    }

    /// A batch became re-entrant (exempt from `max_in_flight`).
    pub(crate) fn reentrant(&self) {
        self.m.reentrant_batches.fetch_add(1, Relaxed);
    }

    /// A batch whose driver was dropped before it finished; `calls` admitted
    /// into it are counted here if it never started (no dispatch counted them).
    pub(crate) fn lost_batch(&self, calls: u64) {
        self.m.lost_batches.fetch_add(1, Relaxed);
        add(&self.m.calls, calls);
        #[cfg(feature = "metrics")]
        self.x.calls.increment(calls);
    }

    /// A call given up after its batches were lost again and again.
    pub(crate) fn shutdown_error(&self) {
        self.m.shutdown_errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.x.errors[5].increment(1);
    }

    /// One caller failed with `err`.
    pub(crate) fn failed<E>(&self, err: &Error<E>) {
        let m = &self.m;
        let counter = match err {
            Error::Batch { .. } => &m.batch_errors,
            Error::Key { .. } => &m.key_errors,
            Error::Panicked { .. } => &m.panics,
            Error::Timeout { .. } | Error::IdleTimeout { .. } => &m.timeouts,
            Error::Shape { .. } => &m.shape_errors,
            Error::Shutdown { .. } => return, // counted by `shutdown_error`
            Error::MaybeCommitted { .. } => &m.maybe_committed,
            Error::Drained { .. } => &m.drained,
            _ => return,
        };
        counter.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(i) = kind_of(err) {
            self.x.errors[i].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = kind_of(err);
    }

    /// The ids of the callers' spans, for the batch span's links.
    pub(crate) fn caller_spans(&self, tickets: &[crate::engine::read::Ticket]) -> Vec<CallerSpan> {
        #[cfg(feature = "tracing")]
        {
            if !tracing::dispatcher::has_been_set() {
                return Vec::new();
            }
            tickets
                .iter()
                .filter(|t| t.live && t.span.is_some())
                .map(|t| t.span.clone())
                .collect()
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = tickets;
            Vec::new()
        }
    }

    /// A batch starts: `counts` is (calls admitted, distinct keys dispatched,
    /// duplicate calls, keys abandoned before dispatch).
    #[allow(unused_variables)]
    pub(crate) fn batch_started(
        &self,
        counts: (u64, usize, u64, u64),
        wait: Duration,
        callers: Vec<CallerSpan>,
    ) -> BatchSpan {
        let (calls, keys, dedup_hits, abandoned) = counts;
        let m = &self.m;
        m.calls.fetch_add(calls, Relaxed);
        add(&m.dedup_hits, dedup_hits);
        add(&m.abandoned_keys, abandoned);
        if keys == 0 {
            // A write batch whose every key waits for its previous write: it
            // sends nothing, and is no batch.
            #[cfg(feature = "metrics")]
            {
                self.x.calls.increment(calls);
                self.x.dedup_hits.increment(dedup_hits);
            }
            #[cfg(not(feature = "tracing"))]
            return NoSpan;
            #[cfg(feature = "tracing")]
            return tracing::Span::none();
        }
        m.keys.fetch_add(keys as u64, Relaxed);
        m.batches.fetch_add(1, Relaxed);
        m.batch_size.record(keys as u64);
        m.wait_ns.record(wait.as_nanos() as u64);
        #[cfg(feature = "metrics")]
        {
            let x = &self.x;
            x.calls.increment(calls);
            x.keys.increment(keys as u64);
            x.dedup_hits.increment(dedup_hits);
            x.batches.increment(1);
            x.batch_size.record(keys as f64);
            x.wait.record(wait.as_secs_f64());
        }
        #[cfg(not(feature = "tracing"))]
        {
            NoSpan
        }
        #[cfg(feature = "tracing")]
        {
            let span = batch_span(&self.name, keys as u64, calls, wait.as_micros() as u64);
            if !span.is_disabled() {
                for id in callers.into_iter().flatten() {
                    span.follows_from(id);
                }
            }
            span
        }
    }

    /// A batch's run ended with `outcome` (a label), `failed` callers failing
    /// with the batch's shared error.
    #[allow(unused_variables)]
    pub(crate) fn batch_finished(
        &self,
        span: &BatchSpan,
        run: Duration,
        outcome: &'static str,
        failed: usize,
        unrequested: u64,
    ) {
        self.run_time(run);
        add(&self.m.unrequested_entries, unrequested);
        #[cfg(feature = "tracing")]
        if !span.is_disabled() {
            span.record("coalesce.batch.run_us", run.as_micros() as u64);
            span.record("coalesce.batch.outcome", outcome);
            // OpenTelemetry's conventions, for `tracing-opentelemetry`.
            if outcome == "ok" {
                span.record("otel.status_code", "OK");
            } else {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", outcome);
            }
        }
    }

    /// Writes folded into another write of their key after their batch left
    /// (held back behind a running write of the key): counted with the
    /// duplicates, so that calls = keys sent + dedup hits.
    pub(crate) fn absorbed(&self, n: u64) {
        add(&self.m.dedup_hits, n);
        #[cfg(feature = "metrics")]
        self.x.dedup_hits.increment(n);
    }

    /// A writer left before its acknowledgement: its write commits anyway.
    pub(crate) fn withdrawn(&self) {
        self.m.withdrawn.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.x.withdrawn.increment(1);
    }

    /// A writer got its acknowledgement `ack` after its write was accepted.
    pub(crate) fn ack_time(&self, ack: Duration) {
        self.m.ack_ns.record(ack.as_nanos() as u64);
        #[cfg(feature = "metrics")]
        self.x.ack.record(ack.as_secs_f64());
    }

    /// A group's controller decided (`Dispatch::Auto`).
    pub(crate) fn tuned(&self, view: crate::engine::tune::TuneView) {
        let tuned = crate::metrics::Tuned {
            lanes: view.lanes,
            window: view.window,
            fixed_cost: view.fixed_cost,
            per_key_cost: view.per_key_cost,
            slowdown_per_lane: view.slowdown_per_lane,
            arrival_rate: view.arrival_rate,
        };
        *self
            .m
            .tuned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tuned);
        #[cfg(feature = "metrics")]
        {
            let x = &self.x;
            x.tuned_lanes.set(view.lanes as f64);
            x.tuned_window.set(view.window.as_secs_f64());
            x.fixed_cost.set(view.fixed_cost.as_secs_f64());
            x.per_key_cost.set(view.per_key_cost.as_secs_f64());
        }
    }

    /// A streamed batch's first item came `after` its run started.
    pub(crate) fn first_item(&self, after: Duration) {
        self.m.first_item_ns.record(after.as_nanos() as u64);
        #[cfg(feature = "metrics")]
        self.x.first_item.record(after.as_secs_f64());
    }

    /// The run time of one batch.
    /// Entries a batch returned for keys nobody asked for.
    pub(crate) fn unrequested(&self, n: u64) {
        add(&self.m.unrequested_entries, n);
    }

    pub(crate) fn run_time(&self, run: Duration) {
        self.m.run_ns.record(run.as_nanos() as u64);
        #[cfg(feature = "metrics")]
        self.x.run.record(run.as_secs_f64());
    }

    /// A lone call starts its run: one call, one key, one batch of one, no wait.
    /// In process, one counter folded into the others at snapshot time.
    pub(crate) fn solo_started(&self) -> BatchSpan {
        self.m.solo.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        {
            let x = &self.x;
            x.calls.increment(1);
            x.keys.increment(1);
            x.batches.increment(1);
            x.batch_size.record(1.0);
            x.wait.record(0.0);
        }
        #[cfg(not(feature = "tracing"))]
        {
            NoSpan
        }
        #[cfg(feature = "tracing")]
        {
            if !tracing::dispatcher::has_been_set() {
                return tracing::Span::none();
            }
            let span = batch_span(&self.name, 1, 1, 0);
            if !span.is_disabled() {
                if let Some(id) = caller_span() {
                    span.follows_from(id);
                }
            }
            span
        }
    }
}

/// The span of one batch: at `DEBUG` (a library's spans are detail, not the
/// application's own story), its fields namespaced `coalesce.*`, with
/// OpenTelemetry's `otel.status_code` and `error.type` recorded when it ends.
#[cfg(feature = "tracing")]
fn batch_span(function: &str, size: u64, calls: u64, wait_us: u64) -> tracing::Span {
    tracing::debug_span!(
        "coalesce.batch",
        coalesce.function = function,
        coalesce.batch.size = size,
        coalesce.batch.calls = calls,
        coalesce.batch.wait_us = wait_us,
        coalesce.batch.run_us = tracing::field::Empty,
        coalesce.batch.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Runs the batch future inside its span; a future whose span is disabled (no
/// subscriber wants it) is returned as it is, without another allocation.
pub(crate) fn instrument<T: 'static>(
    run: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>,
    span: &BatchSpan,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> {
    #[cfg(feature = "tracing")]
    if !span.is_disabled() {
        use tracing::Instrument;
        return Box::pin(run.instrument(span.clone()));
    }
    #[cfg(not(feature = "tracing"))]
    let NoSpan = *span;
    run
}
