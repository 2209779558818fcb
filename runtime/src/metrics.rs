//! Per-coalescer metrics and the process-wide registry that lists them.
//!
//! Every coalescer registers itself here when it is created. [`snapshot`] reads all
//! of them; [`Coalescer::metrics`](crate::Coalescer::metrics) and
//! [`Core::metrics`](crate::Core::metrics) read one. Counters are updated once per
//! batch where possible, not once per call, so that metrics stay off the hot path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// Sub-buckets per power of two: values are kept to within 1/8 (12.5%) of their size.
const SUB: u32 = 8;
const SUB_BITS: u32 = 3;
const LINEAR: u64 = 16;
const BUCKETS: usize = (LINEAR as usize) + (64 - 4) * SUB as usize;

/// Adds `n` to `counter`, skipping the atomic write when there is nothing to add.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.fetch_add(n, Relaxed);
    }
}

/// A lock-free histogram of `u64` values with log-linear buckets.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) & u64::from(SUB - 1);
    LINEAR as usize + (exp as usize - 4) * SUB as usize + sub as usize
}

/// The highest value that falls into bucket `i`.
fn bucket_top(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let i = i - LINEAR as usize;
    let exp = (i / SUB as usize) as u32 + 4;
    let sub = (i % SUB as usize) as u64;
    let lo = (1u64 << exp) | (sub << (exp - SUB_BITS));
    lo.saturating_add((1u64 << (exp - SUB_BITS)) - 1)
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    /// Two atomic additions; the extremes are written only when they move (a plain
    /// load first), which after warm-up is rare. The count is the buckets' sum.
    pub(crate) fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Relaxed);
        if v != 0 {
            self.sum.fetch_add(v, Relaxed);
        }
        if v < self.min.load(Relaxed) {
            self.min.fetch_min(v, Relaxed);
        }
        if v > self.max.load(Relaxed) {
            self.max.fetch_max(v, Relaxed);
        }
    }

    fn summary(&self) -> Summary {
        self.summary_with(0, 0)
    }

    /// The summary as if `value` had also been recorded `times` times (values counted
    /// elsewhere, in one counter, to keep them off a hot path).
    fn summary_with(&self, value: u64, times: u64) -> Summary {
        let mut counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        counts[bucket_of(value)] += times;
        let count: u64 = counts.iter().sum();
        let (mut min, mut max) = (self.min.load(Relaxed), self.max.load(Relaxed));
        if times > 0 {
            (min, max) = (min.min(value), max.max(value));
        }
        let quantile = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_top(i).clamp(min, max);
                }
            }
            max
        };
        Summary {
            count,
            sum: self.sum.load(Relaxed) + value * times,
            min: if count == 0 { 0 } else { min },
            max,
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
        }
    }
}

/// A distribution: count, extremes, mean and percentiles.
///
/// Percentiles are read from log-linear buckets and are exact to within 12.5%; the
/// count, sum, min and max are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// How many values were recorded.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// The smallest (0 when empty).
    pub min: u64,
    /// The largest (0 when empty).
    pub max: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
}

impl Summary {
    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

/// The live counters of one coalescer.
pub(crate) struct Metrics {
    pub(crate) name: Arc<str>,
    settings: Settings,
    pub(crate) calls: AtomicU64,
    pub(crate) keys: AtomicU64,
    pub(crate) dedup_hits: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_errors: AtomicU64,
    pub(crate) key_errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) shape_errors: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) cancelled_calls: AtomicU64,
    pub(crate) abandoned_keys: AtomicU64,
    pub(crate) abandoned_batches: AtomicU64,
    pub(crate) cancelled_batches: AtomicU64,
    pub(crate) unrequested_entries: AtomicU64,
    pub(crate) split_batches: AtomicU64,
    pub(crate) reentrant_batches: AtomicU64,
    pub(crate) joined_running: AtomicU64,
    pub(crate) lost_batches: AtomicU64,
    pub(crate) shutdown_errors: AtomicU64,
    pub(crate) withdrawn: AtomicU64,
    pub(crate) drained: AtomicU64,
    pub(crate) maybe_committed: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) groups: AtomicU64,
    /// Batches of one run by a lone adaptive call: each is one call, one key, one
    /// batch of size 1 and a wait of 0, added in at snapshot time, so that such a
    /// call pays one atomic addition for all of them.
    pub(crate) solo: AtomicU64,
    pub(crate) batch_size: Histogram,
    pub(crate) wait_ns: Histogram,
    pub(crate) run_ns: Histogram,
    pub(crate) ack_ns: Histogram,
    pub(crate) first_item_ns: Histogram,
    /// The last decision of a group's controller (`Dispatch::Auto`).
    pub(crate) tuned: std::sync::Mutex<Option<Tuned>>,
    /// This coalescer's place in the registry.
    slot: usize,
    /// Creation order, for listing.
    seq: u64,
    /// In the registry (not a [`Scope`](crate::Scope)'s).
    listed: bool,
}

impl Metrics {
    /// Creates the counters of a coalescer named `name` and lists them in the
    /// registry (O(1): a free slot is reused, nothing is scanned).
    ///
    /// A coalescer that is not `listed` (a [`Scope`](crate::Scope)'s) gets
    /// counters of its own that no listing shows.
    ///
    /// Also returns how many other live coalescers had its name, for
    /// [`duplicate_name`] (called by the caller, after its own locks: it logs,
    /// and a `tracing` subscriber is user code).
    pub(crate) fn register(
        name: Arc<str>,
        settings: Settings,
        listed: bool,
    ) -> (Arc<Metrics>, u32) {
        if !listed {
            return (Arc::new(Metrics::unlisted(name, settings)), 0);
        }
        let mut reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match reg.free.pop() {
            Some(slot) => slot,
            None => {
                reg.entries.push(None);
                reg.entries.len() - 1
            }
        };
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let same = {
            let count = reg.names.entry(name.clone()).or_insert(0);
            *count += 1;
            *count - 1
        };
        let m = Arc::new(Metrics::with(name.clone(), settings, slot, seq, true));
        reg.entries[slot] = Some(Arc::downgrade(&m));
        drop(reg);
        (m, same)
    }

    /// The counters of a coalescer in no registry.
    fn unlisted(name: Arc<str>, settings: Settings) -> Metrics {
        Metrics::with(name, settings, usize::MAX, 0, false)
    }

    fn with(name: Arc<str>, settings: Settings, slot: usize, seq: u64, listed: bool) -> Metrics {
        Metrics {
            name,
            settings,
            calls: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            dedup_hits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_errors: AtomicU64::new(0),
            key_errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            shape_errors: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            cancelled_calls: AtomicU64::new(0),
            abandoned_keys: AtomicU64::new(0),
            abandoned_batches: AtomicU64::new(0),
            cancelled_batches: AtomicU64::new(0),
            unrequested_entries: AtomicU64::new(0),
            split_batches: AtomicU64::new(0),
            reentrant_batches: AtomicU64::new(0),
            joined_running: AtomicU64::new(0),
            lost_batches: AtomicU64::new(0),
            shutdown_errors: AtomicU64::new(0),
            withdrawn: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            maybe_committed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            solo: AtomicU64::new(0),
            batch_size: Histogram::new(),
            wait_ns: Histogram::new(),
            run_ns: Histogram::new(),
            ack_ns: Histogram::new(),
            first_item_ns: Histogram::new(),
            tuned: std::sync::Mutex::new(None),
            slot,
            seq,
            listed,
        }
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let ns = |s: Summary| DurationSummary {
            count: s.count,
            mean: Duration::from_nanos(s.mean() as u64),
            min: Duration::from_nanos(s.min),
            max: Duration::from_nanos(s.max),
            p50: Duration::from_nanos(s.p50),
            p90: Duration::from_nanos(s.p90),
            p99: Duration::from_nanos(s.p99),
        };
        let solo = self.solo.load(Relaxed);
        let same_name = match self.listed {
            true => REGISTRY
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .names
                .get(&self.name)
                .map_or(0, |n| n.saturating_sub(1)),
            false => 0,
        };
        MetricsSnapshot {
            name: self.name.to_string(),
            settings: self.settings.clone(),
            same_name,
            calls: self.calls.load(Relaxed) + solo,
            keys: self.keys.load(Relaxed) + solo,
            dedup_hits: self.dedup_hits.load(Relaxed),
            batches: self.batches.load(Relaxed) + solo,
            batch_errors: self.batch_errors.load(Relaxed),
            key_errors: self.key_errors.load(Relaxed),
            panics: self.panics.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            shape_errors: self.shape_errors.load(Relaxed),
            overloaded: self.overloaded.load(Relaxed),
            cancelled_calls: self.cancelled_calls.load(Relaxed),
            abandoned_keys: self.abandoned_keys.load(Relaxed),
            abandoned_batches: self.abandoned_batches.load(Relaxed),
            cancelled_batches: self.cancelled_batches.load(Relaxed),
            unrequested_entries: self.unrequested_entries.load(Relaxed),
            split_batches: self.split_batches.load(Relaxed),
            reentrant_batches: self.reentrant_batches.load(Relaxed),
            joined_running: self.joined_running.load(Relaxed),
            lost_batches: self.lost_batches.load(Relaxed),
            shutdown_errors: self.shutdown_errors.load(Relaxed),
            withdrawn_writes: self.withdrawn.load(Relaxed),
            drained_writes: self.drained.load(Relaxed),
            maybe_committed: self.maybe_committed.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            pending: self.pending.load(Relaxed),
            groups: self.groups.load(Relaxed),
            batch_size: self.batch_size.summary_with(1, solo),
            wait: ns(self.wait_ns.summary_with(0, solo)),
            run: ns(self.run_ns.summary()),
            ack: ns(self.ack_ns.summary()),
            first_item: ns(self.first_item_ns.summary()),
            tuned: *self
                .tuned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if !self.listed {
            return;
        }
        let mut reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        if reg.entries.get(self.slot).is_some_and(Option::is_some) {
            reg.entries[self.slot] = None;
            reg.free.push(self.slot);
        }
        if let Some(n) = reg.names.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                reg.names.remove(&self.name);
            }
        }
    }
}

/// Every live coalescer's counters.
struct Registry {
    entries: Vec<Option<Weak<Metrics>>>,
    free: Vec<usize>,
    /// Live coalescers per name.
    names: std::collections::HashMap<Arc<str>, u32>,
    next_seq: u64,
}

static REGISTRY: std::sync::LazyLock<Mutex<Registry>> = std::sync::LazyLock::new(|| {
    Mutex::new(Registry {
        entries: Vec::new(),
        free: Vec::new(),
        names: std::collections::HashMap::new(),
        next_seq: 0,
    })
});

/// `same` other live coalescers share a new one's name: they are reported
/// separately, but `configure` and `metrics::get` cannot tell them apart.
pub(crate) fn duplicate_name(name: &str, same: u32) {
    if same == 0 {
        return;
    }
    let count = same + 1;
    #[cfg(feature = "tracing")]
    tracing::warn!(
        coalescer = name,
        count,
        "{count} live coalescers are named `{name}`: their metrics are listed separately, \
         but `configure` adjusts all of them and `metrics::get` returns the first; give each \
         its own `name`"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (name, count);
}

/// The live coalescers, oldest first.
fn live() -> Vec<Arc<Metrics>> {
    let mut live: Vec<Arc<Metrics>> = REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entries
        .iter()
        .flatten()
        .filter_map(Weak::upgrade)
        .collect();
    live.sort_by_key(|m| m.seq);
    live
}

/// The metrics of every live coalescer in the process, in the order they were created.
///
/// A coalescer behind `#[coalesce]` is created on its first call, so it is listed
/// from then on.
pub fn snapshot() -> Vec<MetricsSnapshot> {
    live().iter().map(|m| m.snapshot()).collect()
}

/// The metrics of the live coalescer named `name`, if there is one (the oldest,
/// if several share the name: see [`MetricsSnapshot::same_name`]).
pub fn get(name: &str) -> Option<MetricsSnapshot> {
    live()
        .iter()
        .find(|m| &*m.name == name)
        .map(|m| m.snapshot())
}

#[cfg(test)]
pub(crate) fn registry_len() -> usize {
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entries
        .len()
}

/// A distribution of durations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DurationSummary {
    /// How many were recorded.
    pub count: u64,
    /// The mean.
    pub mean: Duration,
    /// The shortest.
    pub min: Duration,
    /// The longest.
    pub max: Duration,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

/// The settings a coalescer runs with: what the code wrote, after any
/// [`configure`](crate::configure) registered for its name before it was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Longest wait of a key for company.
    pub window: Duration,
    /// Distinct keys per batch, at most.
    pub max_batch: usize,
    /// Batches of one group running at once, at most (`None`: unbounded).
    pub max_in_flight: Option<usize>,
    /// Calls waiting at once, at most (`None`: unbounded).
    pub max_pending: Option<usize>,
    /// Calls of one group waiting at once, at most (`None`: unbounded).
    pub max_pending_per_group: Option<usize>,
    /// A batch's longest run (`None`: no timeout).
    pub timeout: Option<Duration>,
    /// A streamed batch's longest gap between items (`None`: no bound).
    pub idle_timeout: Option<Duration>,
    /// `"window"`, `"adaptive"` or `"auto"`.
    pub dispatch: &'static str,
    /// Levels of bisection of a failed batch (0: off).
    pub isolate: u32,
    /// Whether calls join a running batch fetching their key
    /// ([`Config::join_running`](crate::Config::join_running)).
    pub join_running: bool,
}

impl Settings {
    pub(crate) fn of(c: &crate::config::Config) -> Self {
        let bound = |n: usize| (n != usize::MAX).then_some(n);
        Settings {
            window: c.window,
            max_batch: c.max_batch,
            max_in_flight: bound(c.max_in_flight),
            max_pending: bound(c.max_pending),
            max_pending_per_group: bound(c.max_pending_per_group),
            timeout: c.timeout,
            idle_timeout: c.idle_timeout,
            dispatch: match c.dispatch {
                crate::config::Dispatch::Window => "window",
                crate::config::Dispatch::Adaptive => "adaptive",
                crate::config::Dispatch::Auto => "auto",
            },
            isolate: c.isolate,
            join_running: c.join_running,
        }
    }
}

/// What one coalescer has done since it was created, read at one moment.
///
/// Counters count since creation; `in_flight` and `pending` are gauges. Every call
/// ends in exactly one of: a value or `None`, an error (`batch_errors` and the other
/// error counters count calls, not batches), or a cancellation by its caller.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// The coalescer's name.
    pub name: String,
    /// The settings it runs with (after `configure`).
    pub settings: Settings,
    /// How many other live coalescers have the same name (0 when the name is
    /// unique). They are listed separately; give each its own `name` to tell
    /// them apart in `configure` and exported metrics.
    pub same_name: u32,
    /// Calls admitted (single-key loads), overload rejections excluded. A call
    /// whose batch was lost to a runtime shutting down, and that was enqueued
    /// again, counts once per admission.
    pub calls: u64,
    /// Distinct keys sent to the batch function, summed over batches.
    pub keys: u64,
    /// Calls that shared a key already in a batch: waiting in the same
    /// batch, or being fetched by a running one (`joined_running`).
    pub dedup_hits: u64,
    /// Of `dedup_hits`, the calls that joined a batch (or a lone call) already
    /// running for their key, instead of fetching it again
    /// ([`Config::join_running`](crate::Config::join_running)).
    pub joined_running: u64,
    /// Batch function executions.
    pub batches: u64,
    /// Calls failed because their batch returned an error.
    pub batch_errors: u64,
    /// Calls failed by a per-key error.
    pub key_errors: u64,
    /// Calls failed because their batch panicked.
    pub panics: u64,
    /// Calls failed because their batch exceeded the timeout, or its stream
    /// the idle timeout.
    pub timeouts: u64,
    /// Calls failed because their batch returned a result of the wrong shape.
    pub shape_errors: u64,
    /// Calls refused at once because `max_pending` calls were waiting.
    pub overloaded: u64,
    /// Calls whose caller dropped the future before it completed.
    pub cancelled_calls: u64,
    /// Keys dropped from a batch before dispatch because every caller of the key left.
    pub abandoned_keys: u64,
    /// Batches never run because every caller left before dispatch.
    pub abandoned_batches: u64,
    /// Batches stopped while running because every caller left.
    pub cancelled_batches: u64,
    /// Entries the batch function returned for keys nobody asked for (ignored).
    pub unrequested_entries: u64,
    /// Batches opened while a batch of another group (another instance, tenant
    /// or set of extra arguments) of this coalescer was gathering: calls that
    /// split across groups. Close to `batches` with small batch sizes means the
    /// calls land on different groups, e.g. a method called through a fresh
    /// clone per request without `instance = …`.
    pub split_batches: u64,
    /// Batches that went past `max_in_flight` because a batch function awaited
    /// this coalescer (directly or through others) while holding a lane. Each
    /// gives its extra lane up when it ends (no queued batch inherits it).
    pub reentrant_batches: u64,
    /// Batches whose driver was dropped before they finished (the runtime
    /// running it shut down); their callers enqueued their keys again.
    pub lost_batches: u64,
    /// Calls failed with `Error::Shutdown`: their batches were lost repeatedly.
    pub shutdown_errors: u64,
    /// Writes whose caller dropped its future after the write was accepted:
    /// committed all the same (an accepted write is never withdrawn).
    pub withdrawn_writes: u64,
    /// Writes failed with `Error::Drained`: not yet sent when a drain reached
    /// its deadline.
    pub drained_writes: u64,
    /// Writes failed with `Error::MaybeCommitted`: their batch timed out, or
    /// its runtime shut down (or a drain's deadline passed) while it ran.
    pub maybe_committed: u64,
    /// Batches running now.
    pub in_flight: u64,
    /// Calls admitted and not yet completed now.
    pub pending: u64,
    /// Groups (instances, `group` values, extra arguments) known now.
    pub groups: u64,
    /// Distinct keys per batch.
    pub batch_size: Summary,
    /// Per batch: from its first call to its dispatch (the longest wait in the batch).
    pub wait: DurationSummary,
    /// Per batch: the batch function's execution.
    pub run: DurationSummary,
    /// Write coalescers, per write: from its acceptance to its acknowledgement
    /// (the window and any wait for a lane or for the key's previous write,
    /// plus the run of the batch that committed it). Empty for reads.
    pub ack: DurationSummary,
    /// Streamed batches ([`Streamed`](crate::Streamed)): from the run's start
    /// to the stream's first item. Empty for other shapes.
    pub first_item: DurationSummary,
    /// [`Dispatch::Auto`](crate::Dispatch::Auto): what the controller set and
    /// measured at its last decision (of the group that decided last); `None`
    /// for the other policies, and until the first decision.
    pub tuned: Option<Tuned>,
}

/// What a self-tuning coalescer ([`Dispatch::Auto`](crate::Dispatch::Auto))
/// runs with now, and what it measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Tuned {
    /// Lanes (batches of one group in flight) it allows now.
    pub lanes: usize,
    /// The window a batch opened now lingers for (zero: it goes at once when a
    /// lane is free).
    pub window: Duration,
    /// The batch fn's fitted fixed cost per batch (run alone).
    pub fixed_cost: Duration,
    /// The batch fn's fitted cost per key (run alone).
    pub per_key_cost: Duration,
    /// How much longer a batch runs per other batch running beside it, as a
    /// fraction of its run alone.
    pub slowdown_per_lane: f64,
    /// Calls per second, smoothed.
    pub arrival_rate: f64,
}

impl MetricsSnapshot {
    /// Calls that failed with an error of any kind (overload rejections excluded).
    pub fn failed_calls(&self) -> u64 {
        self.batch_errors
            + self.key_errors
            + self.panics
            + self.timeouts
            + self.shape_errors
            + self.drained_writes
            + self.maybe_committed
    }
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.batch_size;
        if self.same_name > 0 {
            writeln!(
                f,
                "{} (one of {} coalescers with this name)",
                self.name,
                self.same_name + 1
            )?;
        } else {
            writeln!(f, "{}", self.name)?;
        }
        writeln!(
            f,
            "  calls {}  keys {}  dedup hits {} (joined running {})  batches {}  in flight {}  pending {}",
            self.calls,
            self.keys,
            self.dedup_hits,
            self.joined_running,
            self.batches,
            self.in_flight,
            self.pending
        )?;
        writeln!(
            f,
            "  batch size  min {}  mean {:.1}  p50 {}  p99 {}  max {}",
            b.min,
            b.mean(),
            b.p50,
            b.p99,
            b.max
        )?;
        let ack = [("ack ", &self.ack)];
        let ack = if self.ack.count > 0 { &ack[..] } else { &[] };
        for (label, d) in [("wait", &self.wait), ("run ", &self.run)]
            .iter()
            .chain(ack)
            .copied()
        {
            writeln!(
                f,
                "  {label}        mean {}  p50 {}  p99 {}  max {}",
                Short(d.mean),
                Short(d.p50),
                Short(d.p99),
                Short(d.max)
            )?;
        }
        write!(
            f,
            "  errors {}  key errors {}  panics {}  timeouts {}  shape errors {}  overloaded {}  cancelled calls {}  abandoned keys {}  abandoned batches {}  unrequested entries {}  split batches {}  groups {}  lost batches {}  shutdown errors {}",
            self.batch_errors,
            self.key_errors,
            self.panics,
            self.timeouts,
            self.shape_errors,
            self.overloaded,
            self.cancelled_calls,
            self.abandoned_keys,
            self.abandoned_batches,
            self.unrequested_entries,
            self.split_batches,
            self.groups,
            self.lost_batches,
            self.shutdown_errors
        )?;
        if self.ack.count > 0 {
            write!(
                f,
                "\n  writes: absorbed {}  withdrawn {}  drained {}  maybe committed {}",
                self.dedup_hits, self.withdrawn_writes, self.drained_writes, self.maybe_committed
            )?;
        }
        Ok(())
    }
}

/// A duration with three significant digits: `37.7ms`, `328µs`, `2.72s`.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos() as f64;
        let (v, unit) = if ns >= 1e9 {
            (ns / 1e9, "s")
        } else if ns >= 1e6 {
            (ns / 1e6, "ms")
        } else if ns >= 1e3 {
            (ns / 1e3, "µs")
        } else {
            (ns, "ns")
        };
        let decimals = if v >= 100.0 {
            0
        } else if v >= 10.0 {
            1
        } else {
            2
        };
        write!(f, "{v:.decimals$}{unit}")
    }
}

/// How many live coalescers are named `name` now.
pub(crate) fn live_named(name: &str) -> u32 {
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .names
        .get(name)
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for v in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket of {v} went backwards");
            assert!(bucket_top(b) >= v, "bucket {b} top below {v}");
            last = b;
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn short_durations_keep_three_digits() {
        let s = |d| Short(d).to_string();
        assert_eq!(s(Duration::from_nanos(37_748_735)), "37.7ms");
        assert_eq!(s(Duration::from_nanos(327_679)), "328µs");
        assert_eq!(s(Duration::from_nanos(2_720_911_000)), "2.72s");
        assert_eq!(s(Duration::from_nanos(512)), "512ns");
    }

    #[test]
    fn summary_of_known_values() {
        let h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.count, s.min, s.max, s.sum), (100, 1, 100, 5050));
        assert!((50..=56).contains(&s.p50), "p50 {}", s.p50);
        assert!((99..=100).contains(&s.p99), "p99 {}", s.p99);
    }

    #[test]
    fn values_counted_elsewhere_join_the_summary() {
        let h = Histogram::new();
        for v in [10, 20, 30] {
            h.record(v);
        }
        let s = h.summary_with(1, 7);
        assert_eq!((s.count, s.min, s.max, s.sum), (10, 1, 30, 67));
        assert_eq!(s.p50, 1);
        let empty = Histogram::new().summary_with(0, 4);
        assert_eq!((empty.count, empty.min, empty.max, empty.sum), (4, 0, 0, 0));
        assert_eq!(Histogram::new().summary_with(5, 0), Summary::default());
    }
}
