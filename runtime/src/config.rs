//! How a coalescer decides when a batch leaves.

use std::borrow::Cow;
use std::time::Duration;

/// When a gathered batch is dispatched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dispatch {
    /// The bus: a batch leaves when its window has elapsed since its first key
    /// arrived, or at once when it holds `max_batch` distinct keys. Every call pays
    /// up to one window of latency; batches are as full as the traffic allows.
    #[default]
    Window,
    /// "When the road is empty, let everyone drive": a call that finds a free lane
    /// (fewer batches of its group in flight than `max_in_flight`, or none in flight
    /// when `max_in_flight` is not set) is dispatched at once. When nothing of its
    /// group runs it leaves alone, as a batch of one; when other batches run, the
    /// calls made in the same instant (tasks already runnable) join it first, so a
    /// burst takes one lane rather than one lane per call.
    /// Calls that arrive while every lane is busy gather, and leave together when a
    /// running batch completes, when the window elapses, or when `max_batch` is
    /// reached — whichever is first. A quiet service pays no window; a busy one
    /// batches as much as it needs to. Set `max_in_flight` to what the backend can
    /// serve at once (its connection pool, say) to let that many calls drive.
    Adaptive,
    /// Self-tuning: each group sets its own lanes (batches in flight) and
    /// window from what it measures — the arrival rate, the batch fn's run time
    /// as a fixed cost plus a cost per key (fitted online), and how much a batch
    /// slows down when others run beside it — between the bounds the
    /// configuration gives: `window` and `max_in_flight` (32 when unset) become
    /// ceilings, `max_batch` stays a hard cap. At idle the window is zero and a
    /// lone call goes at once (as in [`Dispatch::Adaptive`]); lanes grow, one
    /// per decision (every 8 batches), while calls wait for one and more lanes do not make a batch run more than
    /// 1.75 times as long as alone (judged by the slowdown the samples show beyond
    /// their noise), and shrink when they do; a backlog of full batches
    /// (`max_batch` keys, waiting for a lane) takes every lane up to the
    /// ceiling, and for a while after one a batch opened beside running ones
    /// gathers until it is full (for at most one fixed cost) instead of
    /// leaving small; otherwise the window lingers only where lanes cannot grow and enough
    /// calls arrive within one batch's fixed cost — for an eighth of that cost
    /// at the lane cap of a backend that slows down under concurrency, for half
    /// of it at the ceiling. The live lanes and window, and the fitted costs, are in
    /// [`MetricsSnapshot::tuned`](crate::metrics::MetricsSnapshot::tuned).
    Auto,
}

/// The settings of one coalescer.
///
/// Built with [`Config::new`] and the chained setters; every setting has a default:
/// a 5 ms window, batches of at most 1,000 distinct keys, [`Dispatch::Window`], and
/// no bound on batches in flight, on waiting calls or on a batch's run time.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) name: Cow<'static, str>,
    pub(crate) window: Duration,
    pub(crate) max_batch: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_pending_per_group: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) dispatch: Dispatch,
    pub(crate) isolate: u32,
    pub(crate) join_running: bool,
    /// The [`Scope`](crate::Scope) this coalescer belongs to: its settings apply
    /// last, and the coalescer is neither listed nor exported.
    pub(crate) scope: Option<std::sync::Arc<crate::scope::ScopeInner>>,
}

impl Config {
    /// The default window: how long the first key of a batch waits for company.
    pub const DEFAULT_WINDOW: Duration = Duration::from_millis(5);
    /// The default bound on distinct keys in one batch.
    pub const DEFAULT_MAX_BATCH: usize = 1000;

    /// A configuration with the defaults, named `name` in metrics, errors and spans.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Config {
            name: name.into(),
            window: Self::DEFAULT_WINDOW,
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_in_flight: usize::MAX,
            max_pending: usize::MAX,
            max_pending_per_group: usize::MAX,
            timeout: None,
            idle_timeout: None,
            dispatch: Dispatch::Window,
            isolate: 0,
            join_running: true,
            scope: None,
        }
    }

    /// The longest time a key waits for company before its batch is dispatched.
    /// `Duration::ZERO` dispatches on the next scheduling point: calls made in the
    /// same instant still share a batch.
    ///
    /// Tokio's timer ticks once a millisecond and rounds up, so every window on a
    /// real clock is timed by one process-wide thread (`coalesce-timer`) instead,
    /// precise to some tens of microseconds: a 200 µs window lasts about 250 µs,
    /// not 1–2 ms. Under a paused Tokio clock (`start_paused` tests) Tokio's
    /// timer times it, so every window follows that clock.
    ///
    /// Any length is accepted: a window past what the clock can hold
    /// (`Duration::MAX`) never ends, and batches leave when full, when a
    /// lane frees (adaptive dispatch) or on `dispatch_now`.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// A batch is dispatched at once when it holds this many distinct keys; bigger
    /// bursts split into several batches. Zero is treated as one.
    #[must_use]
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// At most this many batches of one group run at once. A batch that is due while
    /// the limit is reached keeps gathering keys (up to `max_batch`) until a running
    /// batch completes. Zero is treated as one.
    #[must_use]
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// At most this many calls may wait at once (gathering or in a running batch);
    /// past it a call fails at once with [`Error::Overloaded`](crate::Error::Overloaded).
    /// This bounds the memory a flood can take.
    #[must_use]
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// At most this many calls of one group (one `group` value, tenant,
    /// instance or set of extra arguments) may wait at once; past it a call of
    /// that group fails at once with
    /// [`Error::GroupOverloaded`](crate::Error::GroupOverloaded), while other
    /// groups go on: one flooding tenant cannot take the whole of `max_pending`.
    #[must_use]
    pub fn max_pending_per_group(mut self, max_pending: usize) -> Self {
        self.max_pending_per_group = max_pending;
        self
    }

    /// A batch that runs longer than this is abandoned and its callers get
    /// [`Error::Timeout`](crate::Error::Timeout). Unset, or a length past
    /// what the clock can hold (`Duration::MAX`), it never times out.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// For a batch that streams its entries ([`Streamed`](crate::Streamed)):
    /// the longest gap between two items (or before the first). When it
    /// passes, the stream is dropped and the keys not yet delivered fail with
    /// [`Error::IdleTimeout`](crate::Error::IdleTimeout); delivered ones stand. The
    /// `timeout` bounds the whole run as well. `Duration::MAX` (like unset)
    /// never passes.
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// How batches are dispatched: see [`Dispatch`].
    #[must_use]
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Isolates bad keys: when a batch fails as a whole (the batch function returns
    /// `Err`), it is split in halves and each half retried, down to `depth` levels,
    /// so that one poisonous key fails only its own callers. Keys of a part that
    /// still fails at the last level (or alone) get that part's error as
    /// [`Error::Key`](crate::Error::Key). Each split costs one more call of the batch
    /// function per half; `0` (the default) never retries. A panic is not retried:
    /// it fails the whole batch.
    ///
    /// A half whose batch function streams ([`Streamed`](crate::Streamed)) is
    /// read until each of its keys has an item (then dropped, as an unsplit
    /// stream is), until it ends or fails, or until it goes quiet for the
    /// `idle_timeout` (its keys not delivered then fail with
    /// [`Error::IdleTimeout`](crate::Error::IdleTimeout)); the split batch's callers are
    /// answered once both halves are read.
    #[must_use]
    pub fn isolate(mut self, depth: u32) -> Self {
        self.isolate = depth;
        self
    }

    /// Whether a call for a key that a batch of its group is fetching right now
    /// (running, or a lone call's run) waits for that run's answer instead of
    /// fetching the key again (Go's `singleflight`). On by default. Turn it off
    /// for a function whose callers must see a write made after the running
    /// batch started: each call then fetches in a batch that starts after it
    /// was made. A key in a batch that is full but has not started is joined
    /// either way (that batch starts after the call, so it sees every write the
    /// caller made before it).
    #[must_use]
    pub fn join_running(mut self, join: bool) -> Self {
        self.join_running = join;
        self
    }

    /// How many batches of a group may leave at once in [`Dispatch::Adaptive`]:
    /// `max_in_flight`, or one lane when it is not set.
    pub(crate) fn lanes(&self) -> usize {
        if self.max_in_flight == usize::MAX {
            1
        } else {
            self.max_in_flight
        }
    }

    /// The name this coalescer reports under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

type Adjust = std::sync::Arc<dyn Fn(Config) -> Config + Send + Sync>;

/// How many times a coalescer being created reads its adjustment, when
/// `configure` keeps replacing it meanwhile (see [`Config::adjusted`]).
const READS: u32 = 8;

/// The adjustments [`configure`] registered, by name, each with the number of
/// the change that set it.
struct Overrides {
    list: Vec<(String, Adjust, u64)>,
    changes: u64,
}

/// Held only to read or change the list, and to register a coalescer (see
/// [`Config::adjusted`]); never while an adjustment (user code) runs or is
/// dropped, so an adjustment may itself call [`configure`] or create a
/// coalescer.
static OVERRIDES: std::sync::Mutex<Overrides> = std::sync::Mutex::new(Overrides {
    list: Vec::new(),
    changes: 0,
});

fn overrides() -> std::sync::MutexGuard<'static, Overrides> {
    OVERRIDES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adjusts, at run time, the configuration of the coalescer named `name`: `adjust`
/// receives the configuration written in the code (the `#[coalesce(...)]` arguments)
/// and returns the one to use.
///
/// It applies to coalescers created after the call. A `#[coalesce]` function's
/// coalescer is created on its first call, so call `configure` at start-up, before
/// traffic: from command-line flags, environment variables or a config file.
/// Configuring the same name again replaces the earlier adjustment. What it did is
/// returned ([`Configured`]), and a call that comes too late for a live coalescer
/// is also logged at `warn` (with the `tracing` feature); the settings a coalescer
/// actually runs with are in its metrics ([`MetricsSnapshot::settings`](crate::metrics::MetricsSnapshot::settings)).
///
/// A `configure` that races the creation of its coalescer either applies to it
/// (and says [`Configured::BeforeCreation`]) or finds it made (and says
/// [`Configured::TooLate`]). `adjust` runs with no lock of the library held: it
/// may call `configure` or create coalescers.
///
/// ```
/// # use coalesce_runtime as coalesce;
/// use std::time::Duration;
/// let done = coalesce::configure("users.load", |c| c.window(Duration::from_millis(2)).max_batch(200));
/// assert_eq!(done, coalesce::Configured::BeforeCreation);
/// ```
pub fn configure(
    name: &str,
    adjust: impl Fn(Config) -> Config + Send + Sync + 'static,
) -> Configured {
    let adjust: Adjust = std::sync::Arc::new(adjust);
    let mut overrides = overrides();
    let replaced = overrides
        .list
        .iter()
        .position(|(n, _, _)| n == name)
        .map(|at| overrides.list.remove(at));
    overrides.changes += 1;
    let change = overrides.changes;
    overrides.list.push((name.to_owned(), adjust, change));
    // Read under the lock a coalescer registers under (see
    // `Config::adjusted`): each one of that name either counts here, and runs
    // with the settings it read before, or has not registered yet, and reads
    // this adjustment first.
    let live = crate::metrics::live_named(name);
    drop(overrides);
    // The earlier adjustment's captures are user data: dropped unlocked.
    drop(replaced);
    match live {
        0 => Configured::BeforeCreation,
        live => {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                coalescer = name,
                live,
                "configure(\"{name}\") came after {live} coalescer(s) of that name were created: \
                 they keep their settings; call configure before the first call"
            );
            Configured::TooLate { live }
        }
    }
}

/// What [`configure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Configured {
    /// No coalescer of that name exists yet: the adjustment applies when one is
    /// created (a `#[coalesce]` fn's, at its first call). A mistyped name stays
    /// here for good: check [`MetricsSnapshot::settings`](crate::metrics::MetricsSnapshot::settings)
    /// once the coalescer runs.
    BeforeCreation,
    /// `live` coalescers of that name already run, with their settings; the
    /// adjustment applies only to coalescers created from now on.
    TooLate {
        /// Coalescers of that name running now.
        live: u32,
    },
}

impl Config {
    /// This configuration after the run-time adjustment registered for its
    /// name, if any, and then its scope's, with `register` (the coalescer's
    /// entry in the registry) run on it where [`configure`] cannot come in
    /// between: a `configure` racing the creation either finds the coalescer
    /// registered (and says [`Configured::TooLate`]) or is applied to it. The
    /// adjustments run unlocked (they are user code: one may call `configure`
    /// or create a coalescer); one that changed meanwhile is read again, up
    /// to [`READS`] times (an adjustment that keeps replacing itself is
    /// taken as last read).
    pub(crate) fn adjusted<R>(self, mut register: impl FnMut(&Config) -> R) -> (Config, R) {
        let name = self.name.clone();
        let read = |overrides: &Overrides| {
            overrides
                .list
                .iter()
                .find(|(n, _, _)| **n == *name)
                .map(|(_, adjust, change)| (adjust.clone(), *change))
        };
        let mut adjust = read(&overrides());
        let mut reads = 1;
        loop {
            let config = self.clone().adjusted_by(adjust.as_ref().map(|(a, _)| &**a));
            let overrides = overrides();
            let now = read(&overrides);
            let change = |a: &Option<(Adjust, u64)>| a.as_ref().map(|(_, c)| *c);
            if change(&now) == change(&adjust) || reads >= READS {
                let registered = register(&config);
                drop(overrides);
                // The adjustments' handles (user data) are dropped unlocked.
                drop((now, adjust));
                return (config, registered);
            }
            drop(overrides);
            adjust = now;
            reads += 1;
        }
    }

    /// This configuration after `adjust` (the process-wide one), then its
    /// scope's.
    fn adjusted_by(self, adjust: Option<&(dyn Fn(Config) -> Config + Send + Sync)>) -> Config {
        let scope = self.scope.clone();
        let config = match adjust {
            Some(adjust) => {
                let name = self.name.clone();
                let mut c = adjust(self);
                c.name = name;
                c
            }
            None => self,
        };
        match scope {
            Some(scope) => {
                let mut config = scope.adjust(config);
                config.scope = Some(scope);
                config
            }
            None => config,
        }
    }

    /// This configuration for a coalescer of `scope`.
    pub(crate) fn scoped(mut self, scope: std::sync::Arc<crate::scope::ScopeInner>) -> Config {
        self.scope = Some(scope);
        self
    }

    /// Whether the coalescer is listed in the registry and exported (it is not
    /// when it belongs to a [`Scope`](crate::Scope)).
    pub(crate) fn listed(&self) -> bool {
        self.scope.is_none()
    }
}
