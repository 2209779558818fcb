//! The engine: a coalescer's state, its groups and batches, the drivers that run
//! them, and the calls that wait on them.
//!
//! # How a call travels
//!
//! 1. **Admission** (`call.rs`, under the state lock): the call's group is found
//!    (or made); the call joins the group's open batch, opens one (spawning its
//!    [driver](driver)), or, on an empty adaptive road, takes a lane and runs
//!    alone ([`solo`]). `max_pending` is enforced here.
//! 2. **Gathering and dispatch** ([`driver`]): the driver waits for the window
//!    (or settles same-instant calls), then takes a lane or queues for one
//!    ([`policy`] decides; [`group`] keeps lanes and queues).
//! 3. **Run**: the driver builds the batch function's future from the opener's
//!    (`'static`: a method's batch owns a clone of the instance) and polls it,
//!    catching panics and enforcing the timeout on a clock the runtime honours
//!    ([`clock`]).
//! 4. **Delivery** ([`deliver`]): each slot gets its entry, each caller is woken
//!    once and takes its own ([`batch`]).
//!
//! # Who can stall whom
//!
//! Nobody: no caller drives anything. A shared batch is driven by its own task,
//! spawned on the runtime of the call that opened it (or on the process-wide
//! `coalesce-driver` thread outside any Tokio runtime); a lone call's run is
//! moved into a task of its own (on its caller's runtime, timed by its
//! caller's clock) as soon as another batch waits for its lane, or opens
//! behind it, or another call joins it. A batch whose own ancestor holds the
//! lane it waits for (a re-entrant batch) leaves without waiting out its
//! window. A driver dropped unfinished (its runtime shut down) loses its
//! batch, and its callers enqueue their keys again on their own runtimes.
//!
//! # Where writes and streams plug in
//!
//! A write coalescer carries a payload per key (folded by a merge rule) and holds
//! back keys whose previous write is still running: it reuses [`group`] (lanes,
//! queue), [`policy`], [`clock`], the driver's gather/lane/run steps and
//! [`deliver`], with its own accumulator in place of [`batch::Entries`]. A
//! streamed batch is a run whose output arrives per key: the driver's run step
//! delivers each item to its slot as it arrives (the same `settle` matching,
//! one entry at a time) instead of once at the end.

pub(crate) mod batch;
mod call;
pub(crate) mod clock;
pub(crate) mod deliver;
pub(crate) mod driver;
pub(crate) mod group;
pub(crate) mod join;
pub(crate) mod many;
pub(crate) mod mode;
pub(crate) mod policy;
pub(crate) mod read;
pub(crate) mod reentry;
pub(crate) mod solo;
pub(crate) mod spawn;
pub(crate) mod stream;
pub(crate) mod sync;
pub(crate) mod tune;
pub(crate) mod write;

use std::any::TypeId;
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc as StdArc;

/// The hasher of keys and groups: hashbrown's default (seeded at random)
/// outside loom. Under loom a fixed one, so that an execution the model
/// checker replays hashes, probes its tables and takes their locks the same
/// way every time.
#[cfg(not(loom))]
pub(crate) type DefaultHashBuilder = hashbrown::DefaultHashBuilder;
#[cfg(loom)]
pub(crate) type DefaultHashBuilder =
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

use self::group::{Group, GroupKey, Groups, Identity};
use self::mode::Mode;
use self::policy::Release;
use self::read::Read;
use self::sync::{lock, Mutex};
use crate::config::{Config, Dispatch};
use crate::error::Error;
use crate::isolate;
use crate::metrics::MetricsSnapshot;
use crate::output::{BatchOutput, Delivery};
use crate::recorder::Recorder;

/// A running batch function, type-erased.
pub(crate) type Run<K, V, E> = Pin<Box<dyn Future<Output = Delivery<K, V, E>> + Send + 'static>>;

/// Starts one run of the batch function for a group and its keys. Shared, so
/// that `isolate` may call it for the halves of a failed batch.
pub(crate) type Maker<G, K, V, E> =
    StdArc<dyn Fn(&G, Vec<K>) -> Run<K, V, E> + Send + Sync + 'static>;

/// What a call brings to build the batch function, if it ends up needing one.
pub(crate) trait Source<G, K, V, E> {
    /// The batch function of a batch this call opens (it runs in the batch's
    /// driver). May run user code (`Clone` of an instance).
    fn maker(&mut self) -> Maker<G, K, V, E>;
    /// The run of this call's one key, when it runs alone.
    fn run_one(&mut self, group: &G, key: K) -> Run<K, V, E>;
    /// The batch fn streams its entries: its calls never run alone (a shared
    /// batch's driver reads the stream).
    fn streamed(&self) -> bool;
}

/// The engine behind every coalesced function: many concurrent single-key loads
/// become one batch call per group.
///
/// `G` partitions calls: only calls with equal groups share a batch (use `()` for
/// none), and the batch function receives the group it serves. The batch function
/// is passed with each call rather than stored, so that it may capture per-call
/// context; the batch is run with the function of the call that opened it. Most
/// code wants [`Coalescer`](crate::Coalescer), which stores one batch function;
/// `#[coalesce]` expands to a `static` `Core`.
///
/// ```
/// # use coalesce_runtime as coalesce;
/// use coalesce::{Config, Core};
/// use std::collections::HashMap;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// static SQUARES: std::sync::LazyLock<Core<(), u64, u64>> =
///     std::sync::LazyLock::new(|| Core::new(Config::new("squares")));
///
/// async fn squares(keys: Vec<u64>) -> HashMap<u64, u64> {
///     keys.into_iter().map(|k| (k, k * k)).collect()
/// }
///
/// let (a, b) = tokio::join!(
///     SQUARES.load((), 3, |_, keys| squares(keys)),
///     SQUARES.load((), 4, |_, keys| squares(keys)),
/// );
/// assert_eq!((a.unwrap(), b.unwrap()), (Some(9), Some(16)));
/// assert_eq!(SQUARES.metrics().batches, 1);
/// # }
/// ```
pub struct Core<G, K, V, E = Infallible>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    inner: StdArc<Inner<Read<G, K, V, E>>>,
}

/// A coalescer's shared state: what calls, drivers and lone calls all reach.
/// Held in a std `Arc` even under loom: its count is not part of any hand-off.
pub(crate) struct Inner<M: Mode> {
    /// Unique in the process: names this coalescer in re-entrancy frames.
    pub(crate) id: u64,
    pub(crate) config: Config,
    /// Lanes per group: `max_in_flight`, or one for adaptive dispatch without it.
    pub(crate) lanes: usize,
    pub(crate) name: StdArc<str>,
    pub(crate) rec: Recorder,
    pub(crate) hasher: DefaultHashBuilder,
    pub(crate) state: Mutex<State<M>>,
    /// The mode's own settings.
    #[allow(dead_code)] // the write mode reads it
    pub(crate) settings: M::Settings,
}

impl<M: Mode> Inner<M> {
    /// A coalescer's state, registered in the metrics registry. A run-time
    /// adjustment registered with [`configure`](crate::configure) for the
    /// config's name applies.
    pub(crate) fn new(config: Config, settings: M::Settings) -> Self {
        let (mut config, (metrics, same)) = config.adjusted(|config| {
            crate::metrics::Metrics::register(
                StdArc::from(config.name()),
                crate::metrics::Settings::of(config),
                config.listed(),
            )
        });
        crate::metrics::duplicate_name(config.name(), same);
        // A scope's coalescer keeps no handle on its scope (which holds it).
        let listed = config.listed();
        config.scope = None;
        let name: StdArc<str> = StdArc::from(config.name());
        let lanes = match config.dispatch {
            Dispatch::Window => config.max_in_flight,
            Dispatch::Adaptive | Dispatch::Auto => config.lanes(),
        };
        Inner {
            id: NEXT_ID.fetch_add(1, Relaxed),
            rec: Recorder::new(name.clone(), metrics, listed),
            name,
            lanes,
            config,
            hasher: DefaultHashBuilder::default(),
            state: Mutex::new(State {
                groups: Groups::new(),
                pending: 0,
                in_flight: 0,
                gathering: 0,
                extra: M::Shared::default(),
            }),
            settings,
        }
    }
}

/// Guarded by `Inner::state`.
pub(crate) struct State<M: Mode> {
    pub(crate) groups: Groups<M>,
    /// Calls admitted and not yet answered, cancelled or lost.
    pub(crate) pending: usize,
    /// Lanes in use over all groups.
    pub(crate) in_flight: usize,
    /// Open batches over all groups (to tell when calls split across groups).
    pub(crate) gathering: usize,
    /// The mode's own state.
    pub(crate) extra: M::Shared,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A clone is another handle on the same coalescer: calls through either share
/// batches, settings and metrics.
impl<G, K, V, E> Clone for Core<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn clone(&self) -> Self {
        Core {
            inner: self.inner.clone(),
        }
    }
}

impl<G, K, V, E> Core<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A coalescer with `config`, registered in the metrics registry under its name.
    ///
    /// A run-time adjustment registered with [`configure`](crate::configure) for
    /// the config's name applies.
    pub fn new(config: Config) -> Self {
        Core {
            inner: StdArc::new(Inner::new(config, ())),
        }
    }

    /// The configuration this coalescer runs with (after [`configure`](crate::configure)).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Fewer than `max_pending` calls wait now (read under the state lock:
    /// the exported gauge is stored after the lock is released, so a slower
    /// thread may store an older count over a newer one).
    #[cfg(feature = "tower")]
    pub(crate) fn has_room(&self) -> bool {
        lock(&self.inner.state).pending < self.inner.config.max_pending
    }

    /// `max_pending` is zero: no call is ever admitted.
    #[cfg(feature = "tower")]
    pub(crate) fn never_admits(&self) -> Option<Error<E>> {
        (self.inner.config.max_pending == 0).then(|| self.inner.overloaded())
    }

    /// Wakes `waker` when a call is answered or leaves.
    #[cfg(feature = "tower")]
    pub(crate) fn wake_on_change(&self, waker: &std::task::Waker) {
        self.inner.rec.wake_on_change(waker);
    }

    /// This coalescer's metrics, read now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.snapshot()
    }

    /// Loads `key` through the batch of `group`.
    ///
    /// Resolves to the batch function's entry for `key` (`None` if it returned
    /// none), or to an [`Error`]. If this call opens the batch, `batch` becomes its
    /// batch function and runs with the group and every distinct key the batch
    /// gathered; otherwise it is dropped unused. Dropping the returned future
    /// cancels this call only: the batch still runs for its other callers.
    pub fn load<F, Fut>(
        &self,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + '_
    where
        F: Fn(&G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let src = FnSource(Held::new(batch));
        self.inner.call(Identity::Shared, group, key, src)
    }

    /// Loads `key` through the batch of `group` *for the object `this`*: calls
    /// through the same object coalesce, calls through different objects never
    /// share a batch (nor do objects of different types at one address).
    ///
    /// The batch runs with a clone of the object of the call that opened it
    /// (`batch` receives it by value), so the batch owns what it reads and may
    /// outlive every caller. Use [`Core::load_with`] to let clones of one object
    /// (a repository cloned per request) share batches.
    pub fn load_for<'a, S, F, Fut>(
        &'a self,
        this: &'a S,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S, &G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let identity = Identity::Object {
            ty: TypeId::of::<S>(),
            addr: this as *const S as usize,
        };
        let src = ObjectSource {
            this,
            held: Held::new(batch),
        };
        self.inner.call(identity, group, key, src)
    }

    /// Loads `key` through the batch of `group`, with `this` as the instance the
    /// batch runs with: calls with equal groups share a batch whatever object
    /// they come through, and the batch runs with a clone of the opener's
    /// `this`. Put what tells instances apart (a schema, a base URL, a
    /// credential) in the group; clones of one repository then coalesce.
    pub fn load_with<'a, S, F, Fut>(
        &'a self,
        this: &'a S,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S, &G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let src = ObjectSource {
            this,
            held: Held::new(batch),
        };
        self.inner.call(Identity::Shared, group, key, src)
    }

    /// Loads `key` through the batch of `group` for the object behind `this`: as
    /// [`Core::load_for`], with the object named by its address in the `Arc`
    /// (which the batch keeps alive), so `T` may be unsized (`dyn Trait`).
    pub fn load_for_arc<'a, T, F, Fut>(
        &'a self,
        this: &'a StdArc<T>,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a
    where
        T: ?Sized + Send + Sync + 'static,
        F: Fn(StdArc<T>, &G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let identity = Identity::Object {
            ty: TypeId::of::<T>(),
            addr: StdArc::as_ptr(this) as *const () as usize,
        };
        let src = ObjectSource {
            this,
            held: Held::new(batch),
        };
        self.inner.call(identity, group, key, src)
    }

    /// Loads many keys at once through the shared batches of `group`: each
    /// distinct key joins a batch exactly as a single-key call does (so it is
    /// deduplicated against concurrent callers, split at `max_batch` and
    /// counted in the metrics). Resolves to the entries found, by key, or to
    /// the first error of any key.
    pub fn load_many<F, Fut>(
        &self,
        group: G,
        keys: impl IntoIterator<Item = K>,
        batch: F,
    ) -> impl Future<Output = Result<std::collections::HashMap<K, V>, Error<E>>> + Send + '_
    where
        G: Clone,
        F: Fn(&G, Vec<K>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let keys = many::distinct(keys);
        async move {
            many::load(&self.inner.name, keys, |k| {
                self.load(group.clone(), k, batch.clone())
            })
            .await
        }
    }

    /// As [`Core::load_many`], with the entries in the order of `keys` (one per
    /// key given, duplicates included; `None` where there is no entry).
    pub fn load_many_ordered<F, Fut>(
        &self,
        group: G,
        keys: impl IntoIterator<Item = K>,
        batch: F,
    ) -> impl Future<Output = Result<Vec<Option<V>>, Error<E>>> + Send + '_
    where
        G: Clone,
        F: Fn(&G, Vec<K>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let keys = many::ordered(keys);
        async move {
            many::load_ordered(&self.inner.name, keys, |k| {
                self.load(group.clone(), k, batch.clone())
            })
            .await
        }
    }

    /// Sends every batch gathering now without waiting out its window (for a
    /// caller that knows no more keys are coming). Returns how many it sent.
    pub fn dispatch_now(&self) -> usize {
        let (n, wakers) = self.inner.kick_open();
        wakers.into_iter().for_each(|w| w.wake());
        n
    }

    /// Loads `key` with a stored batch function (for [`Coalescer`](crate::Coalescer)).
    pub(crate) fn load_stored<'a>(
        &'a self,
        group: G,
        key: K,
        maker: &'a Maker<G, K, V, E>,
        streamed: bool,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a {
        self.inner
            .call(Identity::Shared, group, key, StoredSource(maker, streamed))
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn inner(&self) -> &Inner<Read<G, K, V, E>> {
        &self.inner
    }
}

impl<G, K, V, E> Inner<Read<G, K, V, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// One run of `maker` over `keys`, bisected on failure when `isolate` is
    /// set (with `idle`, the idle timeout that bounds the halves' streams).
    pub(crate) fn start_run(
        &self,
        maker: Maker<G, K, V, E>,
        group: StdArc<GroupKey<G>>,
        keys: Vec<K>,
        idle: Option<isolate::Idle>,
    ) -> Run<K, V, E> {
        let depth = self.config.isolate;
        if depth == 0 {
            return maker(&group.group, keys);
        }
        isolate::run(
            StdArc::new(move |keys| maker(&group.group, keys)),
            keys,
            depth,
            idle,
        )
    }
}

impl<M: Mode> Inner<M> {
    /// Gives back a lane of the group `key`: to its oldest queued batch, or
    /// frees it (kicking the open batch on an adaptive road). Returns the waker
    /// to wake and a retired group to drop, both once the lock is released.
    pub(crate) fn release_lane(
        &self,
        state: &mut State<M>,
        key: &StdArc<GroupKey<M::G>>,
        hash: u64,
    ) -> Released<M> {
        self.release_lane_with(state, StdArc::as_ptr(key) as usize, hash, |_| {})
    }

    /// As [`Inner::release_lane`], for the group whose key's `Arc` is at `key`,
    /// running `before` on the group first (one look-up for both).
    pub(crate) fn release_lane_with(
        &self,
        state: &mut State<M>,
        key: usize,
        hash: u64,
        before: impl FnOnce(&mut Group<M>),
    ) -> Released<M> {
        let Some(group) = state.groups.by_addr(hash, key) else {
            return (None, None);
        };
        before(group);
        let road = group.road(self.lanes);
        let (dispatch, _) = group.policy(self.config.dispatch, self.config.window);
        let mut wake = None;
        match policy::release(dispatch, road, group.open.is_some()) {
            Release::HandOver => {
                if let Some(next) = group.queue.pop_front() {
                    let mut st = lock(&next.st);
                    st.phase = batch::Phase::Leaving;
                    wake = st.driver_waker();
                }
            }
            Release::FreeAndKick => {
                group.lanes_used -= 1;
                state.in_flight -= 1;
                if let Some(open) = &group.open {
                    let mut st = lock(&open.st);
                    st.kicked = true;
                    wake = st.driver_waker();
                }
            }
            Release::Free => {
                group.lanes_used -= 1;
                state.in_flight -= 1;
                // A batch opened on an adaptive road waits for a lane to free
                // (its window is only a bound), whatever the group runs now
                // (`Auto` may have started to linger since it opened).
                if let Some(open) = &group.open {
                    let mut st = lock(&open.st);
                    if st.awaits_lane && !st.kicked && road.lanes_used <= road.lanes {
                        st.kicked = true;
                        wake = st.driver_waker();
                    }
                }
            }
        }
        let garbage = if state.groups.len() > group::IDLE_KEPT {
            state.groups.retire_addr(hash, key)
        } else {
            None
        };
        if garbage.is_some() {
            state.groups_changed(&self.rec);
        }
        (wake, garbage)
    }
}

impl<M: Mode> Inner<M> {
    /// Opens a new batch in `group` (under the state lock): it becomes the
    /// group's open batch. `gathering` is `State::gathering`.
    pub(crate) fn open_batch(
        &self,
        gathering: &mut usize,
        group: &mut Group<M>,
        group_hash: u64,
        settle: bool,
    ) -> sync::Arc<batch::Batch<M>> {
        let capacity = group.hint.min(self.config.max_batch);
        let (dispatch, window) = group.policy(self.config.dispatch, self.config.window);
        let mut state = batch::BatchState::new(capacity, settle, window);
        state.awaits_lane = dispatch == crate::config::Dispatch::Adaptive;
        let batch = sync::Arc::new(batch::Batch {
            group: group.key.clone(),
            group_hash,
            st: Mutex::new(state),
        });
        group.open = Some(batch.clone());
        if *gathering > 0 {
            self.rec.split_batch();
        }
        *gathering += 1;
        batch
    }

    /// A call joined `batch` (under the state lock and the batch's): counts
    /// it, marks the batch re-entrant if the call comes from a batch it must
    /// not wait for, and closes it once it is full. Returns the driver's waker
    /// to wake once the locks are released, if the driver must look again.
    pub(crate) fn joined(
        &self,
        state: &mut State<M>,
        batch: &sync::Arc<batch::Batch<M>>,
        st: &mut batch::BatchState<M>,
        reentrant: bool,
        ancestry: &[u64],
    ) -> Option<std::task::Waker> {
        st.admitted += 1;
        let mut kick = None;
        if !ancestry.is_empty() {
            reentry::merge(&mut st.ancestry, ancestry);
        }
        if reentrant && !st.exempt {
            // A batch this one must not wait for is running: leave past the limit.
            st.exempt = true;
            self.rec.reentrant();
            match st.phase {
                batch::Phase::Queued => kick = st.driver_waker(),
                // Its ancestor holds the lane it would wait for, and waits for
                // it: it leaves once the calls of this instant have joined,
                // not at its window's end (or never, for a window that never
                // ends).
                batch::Phase::Gathering if !st.kicked => {
                    st.kicked = true;
                    kick = st.driver_waker();
                }
                _ => {}
            }
        }
        if M::live_keys(&st.entries) >= self.config.max_batch && !st.full {
            st.full = true;
            if let Some(g) = state.groups.by_key(batch.group_hash, &batch.group) {
                if g.close(batch) {
                    state.gathering -= 1;
                }
            }
            kick = st.driver_waker();
        }
        kick
    }

    /// Asks every open batch to leave now (a driver not yet polled sees it at
    /// its first poll); returns how many, and the drivers' wakers to wake once
    /// the caller is ready.
    pub(crate) fn kick_open(&self) -> (usize, Vec<std::task::Waker>) {
        let mut guard = lock(&self.state);
        let mut wakers = Vec::new();
        let mut n = 0;
        for group in guard.groups.iter_mut() {
            if let Some(open) = &group.open {
                let mut st = lock(&open.st);
                st.kicked = true;
                n += 1;
                wakers.extend(st.driver_waker());
            }
        }
        drop(guard);
        (n, wakers)
    }

    /// Takes a place for one call in `group`'s `max_pending_per_group`, if that
    /// is set; refuses the call when the group is at its bound.
    pub(crate) fn group_slot<E>(&self, group: &Group<M>) -> Result<GroupSlot, Error<E>> {
        let limit = self.config.max_pending_per_group;
        if limit == usize::MAX {
            return Ok(GroupSlot(None));
        }
        if group.pending.fetch_add(1, Relaxed) >= limit {
            group.pending.fetch_sub(1, Relaxed);
            self.rec.overloaded();
            return Err(Error::GroupOverloaded {
                name: self.name.clone(),
                max_pending_per_group: limit,
            });
        }
        Ok(GroupSlot(Some(group.pending.clone())))
    }

    /// The metrics, with the gauges read under the state lock: the exported
    /// ones are stored after it is released, and a slower thread may store an
    /// older count over a newer one until the next change.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let mut snapshot = self.rec.snapshot();
        let state = lock(&self.state);
        snapshot.pending = state.pending as u64;
        snapshot.in_flight = state.in_flight as u64;
        snapshot
    }

    /// The error of a call refused because `max_pending` calls wait.
    pub(crate) fn overloaded<E>(&self) -> Error<E> {
        self.rec.overloaded();
        Error::Overloaded {
            name: self.name.clone(),
            max_pending: self.config.max_pending,
        }
    }
}

impl<M: Mode> State<M> {
    /// Reports the number of groups to the recorder.
    pub(crate) fn groups_changed(&self, rec: &Recorder) {
        rec.groups(self.groups.len());
    }
}

/// One call's place in its group's `max_pending_per_group`, given back when
/// dropped (a read: when the call ends; a write hands it to its ack, which
/// gives its writers' places back when it is answered).
pub(crate) struct GroupSlot(Option<StdArc<std::sync::atomic::AtomicUsize>>);

impl GroupSlot {
    /// The counter, for an ack to give back later (this slot gives nothing
    /// back itself).
    pub(crate) fn hand_over(mut self) -> Option<StdArc<std::sync::atomic::AtomicUsize>> {
        self.0.take()
    }
}

impl Drop for GroupSlot {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Relaxed);
        }
    }
}

/// What giving a lane back leaves to do once the state lock is released: the
/// waker to wake, and a retired group to drop.
pub(crate) type Released<M> = (Option<std::task::Waker>, Option<Group<M>>);

/// A batch function passed with a call: borrowed by a lone run, moved into a
/// shared [`Maker`] the first time a batch needs one (then used for both).
struct Held<F, G, K, V, E> {
    f: Option<F>,
    made: Option<Maker<G, K, V, E>>,
}

impl<F, G: 'static, K: 'static, V: 'static, E: 'static> Held<F, G, K, V, E> {
    fn new(f: F) -> Self {
        Held {
            f: Some(f),
            made: None,
        }
    }

    /// The shared maker, built from the fn by `build` on first use.
    fn maker(&mut self, build: impl FnOnce(F) -> Maker<G, K, V, E>) -> Maker<G, K, V, E> {
        if let Some(made) = &self.made {
            return made.clone();
        }
        let maker = match self.f.take() {
            Some(f) => build(f),
            // Unreachable: `made` is set whenever `f` is taken, unless `build`
            // panicked (user `Clone` of an instance), which failed that call.
            None => StdArc::new(|_: &G, _: Vec<K>| -> Run<K, V, E> {
                Box::pin(async { panic!("internal: a batch function was used twice") })
            }),
        };
        self.made = Some(maker.clone());
        maker
    }
}

/// The run of a batch function's future.
fn run_of<K, V, E, Fut>(fut: Fut) -> Run<K, V, E>
where
    Fut: Future + Send + 'static,
    Fut::Output: BatchOutput<K, Value = V, Error = E>,
{
    Box::pin(async move { fut.await.into_delivery() })
}

/// A batch function passed with the call (`Core::load`).
struct FnSource<F, G, K, V, E>(Held<F, G, K, V, E>);

impl<F, Fut, G, K, V, E> Source<G, K, V, E> for FnSource<F, G, K, V, E>
where
    F: Fn(&G, Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: BatchOutput<K, Value = V, Error = E>,
    G: 'static,
    K: 'static,
    V: 'static,
    E: 'static,
{
    fn maker(&mut self) -> Maker<G, K, V, E> {
        self.0
            .maker(|f| StdArc::new(move |g: &G, keys: Vec<K>| run_of(f(g, keys))))
    }

    fn streamed(&self) -> bool {
        <Fut::Output as BatchOutput<K>>::STREAMED
    }

    fn run_one(&mut self, group: &G, key: K) -> Run<K, V, E> {
        match &self.0.f {
            Some(f) => run_of(f(group, vec![key])),
            None => self.maker()(group, vec![key]),
        }
    }
}

/// A batch function over an instance (`Core::load_for`, `Core::load_with`).
struct ObjectSource<'a, S, F, G, K, V, E> {
    this: &'a S,
    held: Held<F, G, K, V, E>,
}

impl<S, F, Fut, G, K, V, E> Source<G, K, V, E> for ObjectSource<'_, S, F, G, K, V, E>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, &G, Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: BatchOutput<K, Value = V, Error = E>,
    G: 'static,
    K: 'static,
    V: 'static,
    E: 'static,
{
    fn maker(&mut self) -> Maker<G, K, V, E> {
        let this = self.this;
        self.held.maker(|f| {
            // The batch owns its instance: a clone of the opener's.
            let this = this.clone();
            StdArc::new(move |g: &G, keys: Vec<K>| run_of(f(this.clone(), g, keys)))
        })
    }

    fn streamed(&self) -> bool {
        <Fut::Output as BatchOutput<K>>::STREAMED
    }

    fn run_one(&mut self, group: &G, key: K) -> Run<K, V, E> {
        match &self.held.f {
            Some(f) => run_of(f(self.this.clone(), group, vec![key])),
            None => self.maker()(group, vec![key]),
        }
    }
}

/// A stored batch function (`Coalescer`), and whether it streams.
struct StoredSource<'a, G, K, V, E>(&'a Maker<G, K, V, E>, bool);

impl<G, K, V, E> Source<G, K, V, E> for StoredSource<'_, G, K, V, E> {
    fn maker(&mut self) -> Maker<G, K, V, E> {
        self.0.clone()
    }

    fn streamed(&self) -> bool {
        self.1
    }

    fn run_one(&mut self, group: &G, key: K) -> Run<K, V, E> {
        (self.0)(group, vec![key])
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One call in each of 1,000 groups (tenants, say): idle groups are forgotten
    /// once there are more than a handful, so the group table stays small.
    #[tokio::test]
    async fn idle_groups_do_not_pile_up() {
        for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
            let core: Core<u64, u64, u64> = Core::new(
                Config::new("t.idle_groups")
                    .window(Duration::ZERO)
                    .dispatch(dispatch),
            );
            for g in 0..1000u64 {
                let got = core
                    .load(g, g, |_, keys: Vec<u64>| async move { keys })
                    .await;
                assert_eq!(got.unwrap(), Some(g));
            }
            let groups = lock(&core.inner().state).groups.len();
            assert!(groups <= group::IDLE_KEPT, "{groups} groups kept");
            assert_eq!(core.metrics().batches, 1000);
        }
    }

    /// 100,000 groups at once, then quiet: the table gives its memory back.
    #[tokio::test(flavor = "current_thread")]
    async fn the_group_table_shrinks_after_a_flood_of_groups() {
        let core: Core<u64, u64, u64> =
            Core::new(Config::new("t.shrink").window(Duration::from_millis(1)));
        let calls =
            (0..100_000u64).map(|g| core.load(g, g, |_, keys: Vec<u64>| async move { keys }));
        let peak = {
            let all = futures_util::future::join_all(calls);
            tokio::pin!(all);
            // Admit every call (each opens its own group), then look.
            assert!(futures_util::poll!(all.as_mut()).is_pending());
            let peak = lock(&core.inner().state).groups.capacity();
            for (g, r) in all.await.into_iter().enumerate() {
                assert_eq!(r.unwrap(), Some(g as u64));
            }
            peak
        };
        let after = lock(&core.inner().state).groups.capacity();
        assert!(peak >= 100_000, "peak capacity {peak}");
        assert!(
            after <= 1024,
            "capacity {after} after the flood (peak {peak})"
        );
        assert_eq!(
            core.metrics().groups as usize,
            lock(&core.inner().state).groups.len()
        );
    }

    /// Registering a coalescer reuses freed registry slots and scans nothing:
    /// 40,000 live coalescers, dropped and made again, leave the registry at its
    /// peak size, and a snapshot lists exactly the live ones.
    #[test]
    fn registration_reuses_slots_and_lists_only_live_coalescers() {
        let make = || -> Vec<Core<(), u64, u64>> {
            (0..40_000)
                .map(|_| Core::new(Config::new("t.registry.many")))
                .collect()
        };
        let first = make();
        let peak = crate::metrics::registry_len();
        drop(first);
        let second = make();
        assert!(
            crate::metrics::registry_len() <= peak,
            "registry grew from {peak} to {}",
            crate::metrics::registry_len()
        );
        let listed = crate::metrics::snapshot()
            .into_iter()
            .filter(|m| m.name == "t.registry.many")
            .count();
        assert_eq!(listed, second.len());
        assert_eq!(
            crate::metrics::get("t.registry.many").map(|m| m.same_name),
            Some(39_999)
        );
        drop(second);
        assert!(crate::metrics::get("t.registry.many").is_none());
    }
}
