//! Coalescers private to a scope: test isolation.
//!
//! The coalescer behind a `#[coalesce]` fn is a `static`, shared by every test
//! of the process, and `cargo test` runs tests in parallel: a test that counts
//! batches would count its neighbours', and two tests could not run one fn with
//! different settings. A [`Scope`] gives the calls made inside
//! [`Scope::run`] coalescers of their own — created on first use inside the
//! scope, with the scope's settings, read through [`Scope::metrics`], never
//! listed in [`metrics::snapshot`](crate::metrics::snapshot) nor exported, and
//! dropped with the scope.

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::Config;
use crate::metrics::MetricsSnapshot;

type Adjust = Arc<dyn Fn(Config) -> Config + Send + Sync>;

/// A coalescer made inside a scope, as the scope keeps it.
pub trait Scoped: Send + Sync + 'static {
    /// Its metrics, read now.
    fn scoped_metrics(&self) -> MetricsSnapshot;
}

/// What a [`Scope`] holds: its settings and the coalescers made in it.
#[doc(hidden)]
///
/// Its locks are held only to read or change its lists, never while user code
/// runs (an adjustment, a coalescer being made, a replaced adjustment or a
/// spare coalescer being dropped): that code may use the scope itself.
pub struct ScopeInner {
    adjust: Mutex<Vec<(String, Adjust)>>,
    /// By the address of the `static` slot and a type id.
    entries: Mutex<Vec<Entry>>,
}

impl fmt::Debug for ScopeInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

impl ScopeInner {
    /// This scope's settings for `config`'s name applied (after the process-wide
    /// [`configure`](crate::configure)).
    pub(crate) fn adjust(&self, config: Config) -> Config {
        let adjust = self
            .adjust
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(name, _)| name == config.name())
            .map(|(_, adjust)| adjust.clone());
        match adjust {
            Some(adjust) => {
                let name = config.name.clone();
                let mut config = adjust(config);
                config.name = name;
                config
            }
            None => config,
        }
    }

    /// The scope's coalescer for the `static` at `slot` and the type id `id`,
    /// made by `make` on first use.
    pub fn core<T: Scoped>(&self, slot: usize, id: TypeId, make: impl FnOnce() -> T) -> Arc<T> {
        self.entry(slot, id, || {
            let core = Arc::new(make());
            (core.clone(), Some(core as Arc<dyn Scoped>))
        })
    }

    /// Something else the scope keeps for the `static` at `slot` under `id`
    /// (a write fn's settler), made by `make` on first use.
    pub fn extra<T: Any + Send + Sync>(
        &self,
        slot: usize,
        id: TypeId,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        self.entry(slot, id, || (Arc::new(make()), None))
    }

    fn entry<T: Any + Send + Sync>(
        &self,
        slot: usize,
        id: TypeId,
        make: impl FnOnce() -> (Arc<T>, Option<Arc<dyn Scoped>>),
    ) -> Arc<T> {
        let find = |entries: &[Entry]| {
            entries
                .iter()
                .find(|entry| entry.slot == slot && entry.id == id)
                // Another type under this id cannot happen (the id names the
                // type); it is kept apart rather than trusted if it did.
                .and_then(|entry| entry.any.clone().downcast::<T>().ok())
        };
        if let Some(entry) = find(&self.entries()) {
            return entry;
        }
        // Made unlocked: making a coalescer runs the scope's and the
        // process's adjustments (user code, which may use the scope).
        let (made, scoped) = make();
        let mut entries = self.entries();
        match find(&entries) {
            // Another call made it meanwhile: theirs is the scope's.
            Some(entry) => {
                drop(entries);
                drop((made, scoped));
                entry
            }
            None => {
                entries.push(Entry {
                    slot,
                    id,
                    any: made.clone(),
                    scoped,
                });
                made
            }
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One thing a scope keeps.
struct Entry {
    slot: usize,
    id: TypeId,
    any: Arc<dyn Any + Send + Sync>,
    /// For [`Scope::metrics`], if it is a coalescer.
    scoped: Option<Arc<dyn Scoped>>,
}

tokio::task_local! {
    static CURRENT: Arc<ScopeInner>;
}

/// Scopes being run anywhere in the process: while there are none, a call does
/// not look for one (one relaxed load on the common path).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// The scope the current task runs in, if any.
#[doc(hidden)]
pub fn current() -> Option<Arc<ScopeInner>> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    CURRENT.try_with(Arc::clone).ok()
}

/// `future` in the scope the current task runs in, if any: the engine's own
/// tasks (a batch's driver, a promoted lone run) run the batch fn, whose
/// nested coalesced calls belong to the same scope as the calls it serves.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn carried<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let scope = current();
    async move {
        match scope {
            Some(inner) => {
                let _active = Active::enter();
                CURRENT.scope(inner, future).await
            }
            None => future.await,
        }
    }
}

/// Coalescers of its own for the calls made inside [`Scope::run`]: a test's
/// batches counted without its neighbours', and a fn run with test-local
/// settings.
///
/// ```
/// # use coalesce_runtime as coalesce;
/// # async fn load_user(id: u64) -> Result<Option<String>, coalesce::Error> { Ok(None) }
/// # async fn test() {
/// use std::time::Duration;
/// use coalesce::Scope;
///
/// let scope = Scope::new().configure("my_app::load_user", |c| c.window(Duration::from_millis(50)));
/// scope
///     .run(async {
///         let (a, b) = tokio::join!(load_user(1), load_user(2));
///         # let _ = (a, b);
///     })
///     .await;
/// // This test's calls only, whatever runs beside it:
/// if let Some(m) = scope.metrics("my_app::load_user") {
///     assert_eq!(m.batches, 1);
/// }
/// # }
/// ```
///
/// A task spawned inside `run` is outside the scope unless it is run in it too:
/// `tokio::spawn(scope.run(fut))`. The engine's own tasks (a batch's, which
/// runs the batch fn) carry the scope of the call that started them, so the
/// coalesced calls a batch fn makes stay in the scope. The scope's coalescers are dropped with the
/// last clone of the scope (and of the futures `run` returned).
#[derive(Clone, Debug)]
pub struct Scope {
    inner: Arc<ScopeInner>,
}

impl Default for Scope {
    fn default() -> Self {
        Self::new()
    }
}

impl Scope {
    /// A scope with no coalescers yet and no settings of its own.
    pub fn new() -> Self {
        Scope {
            inner: Arc::new(ScopeInner {
                adjust: Mutex::new(Vec::new()),
                entries: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Adjusts, in this scope only, the settings of the coalescer named `name`
    /// (as [`configure`](crate::configure) does for the process, and applied
    /// after it). Applies to the scope's coalescers made after the call: call it
    /// before [`run`](Scope::run).
    pub fn configure(
        self,
        name: &str,
        adjust: impl Fn(Config) -> Config + Send + Sync + 'static,
    ) -> Self {
        let replaced = {
            let mut all = self
                .inner
                .adjust
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let replaced = all
                .iter()
                .position(|(n, _)| n == name)
                .map(|at| all.remove(at));
            all.push((name.to_owned(), Arc::new(adjust)));
            replaced
        };
        // User data: dropped unlocked.
        drop(replaced);
        self
    }

    /// Runs `future` in this scope: the `#[coalesce]` fns it calls (in its own
    /// task) use this scope's coalescers.
    pub fn run<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        let inner = self.inner.clone();
        async move {
            let _active = Active::enter();
            CURRENT.scope(inner, future).await
        }
    }

    /// The metrics of this scope's coalescer named `name`, if a call in the
    /// scope made one (the first made, if several share the name).
    pub fn metrics(&self, name: &str) -> Option<MetricsSnapshot> {
        self.snapshot().into_iter().find(|m| m.name == name)
    }

    /// The metrics of every coalescer made in this scope, in the order made.
    pub fn snapshot(&self) -> Vec<MetricsSnapshot> {
        let cores: Vec<Arc<dyn Scoped>> = self
            .inner
            .entries()
            .iter()
            .filter_map(|entry| entry.scoped.clone())
            .collect();
        cores.iter().map(|core| core.scoped_metrics()).collect()
    }

    /// The configuration for a coalescer made in this scope.
    #[doc(hidden)]
    pub fn config_for(inner: &Arc<ScopeInner>, config: Config) -> Config {
        config.scoped(inner.clone())
    }
}

/// Counts a running scope in [`ACTIVE`] while it lives.
struct Active;

impl Active {
    fn enter() -> Self {
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<G, K, V, E> Scoped for crate::Core<G, K, V, E>
where
    G: std::hash::Hash + Eq + Send + Sync + 'static,
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn scoped_metrics(&self) -> MetricsSnapshot {
        self.metrics()
    }
}

impl<G, K, W, E> Scoped for crate::WriteCore<G, K, W, E>
where
    G: std::hash::Hash + Eq + Send + Sync + 'static,
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
{
    fn scoped_metrics(&self) -> MetricsSnapshot {
        self.metrics()
    }
}
