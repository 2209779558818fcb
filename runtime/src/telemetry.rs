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
        tracing::Span::current().id()
    }
}

#[allow(unused_variables)]
pub(crate) fn batch_started<'a>(
    name: &str,
    calls: usize,
    keys: usize,
    dedup_hits: u64,
    wait: Duration,
    callers: impl Iterator<Item = &'a CallerSpan>,
) -> BatchSpan {
    #[cfg(feature = "metrics")]
    {
        let f = name.to_owned();
        metrics::counter!("coalesce_calls_total", "function" => f.clone()).increment(calls as u64);
        metrics::counter!("coalesce_keys_total", "function" => f.clone()).increment(keys as u64);
        metrics::counter!("coalesce_dedup_hits_total", "function" => f.clone())
            .increment(dedup_hits);
        metrics::counter!("coalesce_batches_total", "function" => f.clone()).increment(1);
        metrics::histogram!("coalesce_batch_size", "function" => f.clone()).record(keys as f64);
        metrics::histogram!("coalesce_wait_seconds", "function" => f).record(wait.as_secs_f64());
    }
    #[cfg(feature = "tracing")]
    {
        let span = tracing::info_span!(
            "coalesce.batch",
            function = name,
            batch_size = keys,
            calls = calls,
            wait_us = wait.as_micros() as u64,
            run_us = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        for id in callers.flatten() {
            span.follows_from(id.clone());
        }
        span
    }
}

#[allow(unused_variables)]
pub(crate) fn batch_finished(
    name: &str,
    span: &BatchSpan,
    run: Duration,
    outcome: &'static str,
    failed_calls: usize,
) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("coalesce_run_seconds", "function" => name.to_owned())
            .record(run.as_secs_f64());
        if failed_calls > 0 {
            metrics::counter!("coalesce_errors_total", "function" => name.to_owned(), "kind" => outcome)
                .increment(failed_calls as u64);
        }
    }
    #[cfg(feature = "tracing")]
    {
        span.record("run_us", run.as_micros() as u64);
        span.record("outcome", outcome);
    }
}

#[allow(unused_variables)]
pub(crate) fn key_errors(name: &str, n: u64) {
    #[cfg(feature = "metrics")]
    if n > 0 {
        metrics::counter!("coalesce_errors_total", "function" => name.to_owned(), "kind" => "key")
            .increment(n);
    }
}

#[allow(unused_variables)]
pub(crate) fn overloaded(name: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("coalesce_overloaded_total", "function" => name.to_owned()).increment(1);
}

#[allow(unused_variables)]
pub(crate) fn cancelled(name: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("coalesce_cancelled_total", "function" => name.to_owned()).increment(1);
}

#[allow(unused_variables)]
pub(crate) fn gauges(name: &str, in_flight: u64, pending: u64) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("coalesce_in_flight", "function" => name.to_owned()).set(in_flight as f64);
        metrics::gauge!("coalesce_pending", "function" => name.to_owned()).set(pending as f64);
    }
}

/// Runs the batch future inside its span.
#[cfg(feature = "tracing")]
pub(crate) fn instrument<F: std::future::Future + Send + 'static>(
    run: F,
    span: BatchSpan,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = F::Output> + Send>> {
    use tracing::Instrument;
    Box::pin(run.instrument(span))
}
