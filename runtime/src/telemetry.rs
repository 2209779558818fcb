//! Export to the `metrics` facade and to `tracing`, each behind its cargo feature.
//!
//! Everything here runs once per batch (or per rejection/cancellation), never once
//! per successful call, so exporting stays off the hot path.
//!
//! Series, each labelled `function = <coalescer name>`:
//! `coalesce_calls_total`, `coalesce_keys_total`, `coalesce_dedup_hits_total`,
//! `coalesce_batches_total`, `coalesce_batch_size` (histogram),
//! `coalesce_wait_seconds` and `coalesce_run_seconds` (histograms),
//! `coalesce_errors_total{kind = batch|key|panic|timeout|shape}`,
//! `coalesce_overloaded_total`, `coalesce_cancelled_total`, and the gauges
//! `coalesce_in_flight` and `coalesce_pending`.

use std::time::Duration;

/// The span of one batch (a unit type without the `tracing` feature).
#[cfg(feature = "tracing")]
pub(crate) type BatchSpan = tracing::Span;
/// The span of one batch (a unit type without the `tracing` feature).
#[cfg(not(feature = "tracing"))]
pub(crate) type BatchSpan = ();

/// The span of the caller, captured when it joins a batch.
#[cfg(feature = "tracing")]
pub(crate) type CallerSpan = Option<tracing::Id>;
/// The span of the caller (a unit type without the `tracing` feature).
#[cfg(not(feature = "tracing"))]
pub(crate) type CallerSpan = ();

/// No span yet: a batch's span is made when it starts.
pub(crate) fn no_span() -> BatchSpan {
    #[cfg(feature = "tracing")]
    {
        tracing::Span::none()
    }
}

pub(crate) fn caller_span() -> CallerSpan {
    #[cfg(feature = "tracing")]
    {
        // Skip the thread-local look-up entirely until tracing is in use at all.
        if !tracing::dispatcher::has_been_set() {
            return None;
        }
        tracing::Span::current().id()
    }
}

/// One coalescer's export handles, built once when the coalescer is created (so a
/// `metrics` recorder must be installed before a coalescer's first call).
pub(crate) struct Telemetry {
    #[cfg(feature = "tracing")]
    name: std::sync::Arc<str>,
    #[cfg(feature = "metrics")]
    m: Handles,
}

#[cfg(feature = "metrics")]
struct Handles {
    calls: metrics::Counter,
    keys: metrics::Counter,
    dedup_hits: metrics::Counter,
    batches: metrics::Counter,
    batch_size: metrics::Histogram,
    wait: metrics::Histogram,
    run: metrics::Histogram,
    errors: [metrics::Counter; 6],
    overloaded: metrics::Counter,
    cancelled: metrics::Counter,
    in_flight: metrics::Gauge,
    pending: metrics::Gauge,
}

/// The `kind` labels of `coalesce_errors_total`, in the order of `Handles::errors`.
#[cfg(feature = "metrics")]
const ERROR_KINDS: [&str; 6] = ["batch", "key", "panic", "timeout", "shape", "error"];

impl Telemetry {
    #[allow(unused_variables)]
    pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
        #[cfg(feature = "metrics")]
        let m = {
            let f = name.to_string();
            Handles {
                calls: metrics::counter!("coalesce_calls_total", "function" => f.clone()),
                keys: metrics::counter!("coalesce_keys_total", "function" => f.clone()),
                dedup_hits: metrics::counter!("coalesce_dedup_hits_total", "function" => f.clone()),
                batches: metrics::counter!("coalesce_batches_total", "function" => f.clone()),
                batch_size: metrics::histogram!("coalesce_batch_size", "function" => f.clone()),
                wait: metrics::histogram!("coalesce_wait_seconds", "function" => f.clone()),
                run: metrics::histogram!("coalesce_run_seconds", "function" => f.clone()),
                errors: ERROR_KINDS.map(|kind| {
                    metrics::counter!("coalesce_errors_total", "function" => f.clone(), "kind" => kind)
                }),
                overloaded: metrics::counter!("coalesce_overloaded_total", "function" => f.clone()),
                cancelled: metrics::counter!("coalesce_cancelled_total", "function" => f.clone()),
                in_flight: metrics::gauge!("coalesce_in_flight", "function" => f.clone()),
                pending: metrics::gauge!("coalesce_pending", "function" => f),
            }
        };
        Telemetry {
            #[cfg(feature = "tracing")]
            name: name.clone(),
            #[cfg(feature = "metrics")]
            m,
        }
    }

    #[allow(unused_variables)]
    pub(crate) fn batch_started<'a>(
        &self,
        calls: usize,
        keys: usize,
        dedup_hits: u64,
        wait: Duration,
        callers: impl Iterator<Item = &'a CallerSpan>,
    ) -> BatchSpan {
        #[cfg(feature = "metrics")]
        {
            let m = &self.m;
            m.calls.increment(calls as u64);
            m.keys.increment(keys as u64);
            m.dedup_hits.increment(dedup_hits);
            m.batches.increment(1);
            m.batch_size.record(keys as f64);
            m.wait.record(wait.as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        {
            let span = tracing::info_span!(
                "coalesce.batch",
                function = &*self.name,
                batch_size = keys,
                calls = calls,
                wait_us = wait.as_micros() as u64,
                run_us = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            if !span.is_disabled() {
                for id in callers.flatten() {
                    span.follows_from(id.clone());
                }
            }
            span
        }
    }

    #[allow(unused_variables)]
    pub(crate) fn batch_finished(
        &self,
        span: &BatchSpan,
        run: Duration,
        outcome: &'static str,
        failed_calls: usize,
    ) {
        #[cfg(feature = "metrics")]
        {
            self.m.run.record(run.as_secs_f64());
            if failed_calls > 0 {
                let i = ERROR_KINDS.iter().position(|k| *k == outcome).unwrap_or(5);
                self.m.errors[i].increment(failed_calls as u64);
            }
        }
        #[cfg(feature = "tracing")]
        if !span.is_disabled() {
            span.record("run_us", run.as_micros() as u64);
            span.record("outcome", outcome);
        }
    }

    #[allow(unused_variables)]
    pub(crate) fn key_errors(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.m.errors[1].increment(n);
    }

    pub(crate) fn overloaded(&self) {
        #[cfg(feature = "metrics")]
        self.m.overloaded.increment(1);
    }

    pub(crate) fn cancelled(&self) {
        #[cfg(feature = "metrics")]
        self.m.cancelled.increment(1);
    }

    #[allow(unused_variables)]
    pub(crate) fn gauges(&self, in_flight: u64, pending: u64) {
        #[cfg(feature = "metrics")]
        {
            self.m.in_flight.set(in_flight as f64);
            self.m.pending.set(pending as f64);
        }
    }
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
    let () = *span;
    run
}
