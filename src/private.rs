//! Paths the `#[coalesce]` expansion names. Not public API: hidden from docs and
//! kept off the crate root so that it never shows up in "did you mean" hints.

pub use ::coalesce_runtime::{
    per_key, streamed, BatchOutput, Config, Core, Dispatch, Error, Keyed, PerKey, Streamed,
    WriteCore, WriteOutput,
};
pub use ::std::time::Duration;

use ::coalesce_runtime::scope::{self, Scope};
use ::core::any::{Any, TypeId};
use ::core::future::Future;
use ::core::hash::Hash;
use ::std::borrow::Cow;
use ::std::boxed::Box;
use ::std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use ::std::vec::Vec;

/// The parts of a `Result`, for the error behind an alias (`sqlx::Result<T>`).
pub trait Fallible {
    /// `T` of `Result<T, E>`.
    type Ok;
    /// `E` of `Result<T, E>`.
    type Error;
}

impl<T, E> Fallible for Result<T, E> {
    type Ok = T;
    type Error = E;
}

/// `Result<M, E>` → `Result<Keyed<M>, E>`: a map of any type, inside a `Result`.
pub fn keyed_result<M, E>(result: Result<M, E>) -> Result<Keyed<M>, E> {
    result.map(Keyed)
}

/// The per-key error `Self` of `Result<HashMap<K, Result<V, Self>>, E>`, which
/// converts into the batch error `E`; named as `<E2 as KeyError<E>>::Checked`
/// at the user's tokens, so that a missing conversion is reported there.
#[diagnostic::on_unimplemented(
    message = "the per-key error `{Self}` does not convert into the batch error `{E}`",
    label = "callers get `coalesce::Error<{E}>`, so this error must become a `{E}`",
    note = "implement `From<{Self}> for {E}`, or use one error type for both"
)]
pub trait KeyError<E> {
    /// `Self`.
    type Checked;
}

impl<E2: Into<E>, E> KeyError<E> for E2 {
    type Checked = E2;
}

/// [`per_key`] for a batch fn whose per-key error `E2` converts into its batch
/// error `E`.
pub fn per_key_into<K, V, E, E2, I>(result: Result<I, E>) -> ::coalesce_runtime::Delivery<K, V, E>
where
    I: IntoIterator<Item = (K, Result<V, E2>)>,
    I::IntoIter: Send + 'static,
    E2: Into<E> + 'static,
    E: 'static,
{
    match result {
        Ok(entries) => per_key(Ok(entries
            .into_iter()
            .map(|(key, result)| (key, result.map_err(Into::into))))),
        Err(error) => ::coalesce_runtime::Delivery::Failed(error),
    }
}

/// A coalescer's name as the expansion knows it.
#[derive(Clone, Copy)]
pub enum Name {
    /// `name = "..."`, as written.
    Given(&'static str),
    /// A free fn: `module::path::fn`.
    Path(&'static str),
    /// A method: its fn name; the coalescer is named `<type of Self>::fn`, so
    /// that `Users::get` and `Orders::get` in one module (and the instantiations
    /// of a generic impl) have names of their own.
    Method(&'static str),
}

impl Name {
    fn resolve<S: ?Sized>(self) -> Cow<'static, str> {
        match self {
            Name::Given(name) | Name::Path(name) => Cow::Borrowed(name),
            Name::Method(name) => Cow::Owned(format!("{}::{name}", ::core::any::type_name::<S>())),
        }
    }
}

/// The `static` behind one `#[coalesce]` fn: its [`Core`]s, one per
/// instantiation, each created on first use.
///
/// A `static` in an `impl<T>` is shared by every `T`, and cannot name `T`; the
/// slot therefore keeps one core per type it is used with (the instance type and
/// the core's types), so that the instantiations of a generic impl never share
/// a coalescer, let alone a batch. The core is stored type-erased, so that the
/// `static` itself puts no bounds on any type; every bound is checked at the
/// call of [`Opened::load`], [`Opened::load_for`] or [`Opened::load_with`],
/// whose type arguments the expansion writes with the user's own type tokens.
pub struct Slot {
    first: OnceLock<(TypeId, &'static (dyn Any + Send + Sync))>,
    /// Every entry but the first; also the lock under which entries are
    /// published (see [`Slot::entry`]).
    more: RwLock<Vec<(TypeId, &'static (dyn Any + Send + Sync))>>,
    /// Write cores only: by instance and key type, what `after_writes`
    /// waits on (a [`Settler`]), so that a read needs no other type.
    settlers: Mutex<Vec<(TypeId, &'static (dyn Any + Send + Sync))>>,
}

/// Waits for the pending writes of a key (type-erased `WriteCore::settled`).
type Settler<K> =
    Box<dyn Fn(&K) -> ::core::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A scope's settler for a write fn, set when the fn first runs in the scope.
type SettlerCell<K> = Mutex<Option<Settler<K>>>;

impl Slot {
    /// An empty slot, for the initializer of the `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Slot {
            first: OnceLock::new(),
            more: RwLock::new(Vec::new()),
            settlers: Mutex::new(Vec::new()),
        }
    }

    /// The core for instance type `S`, made on first use. Cores live as long as
    /// the program (they are `static`s): one per instantiation used.
    fn core<S, G, K, V, E>(
        &'static self,
        name: Name,
        config: fn(Config) -> Config,
    ) -> CoreRef<Core<G, K, V, E>>
    where
        S: ?Sized + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + 'static,
        E: Send + Sync + 'static,
    {
        let id = TypeId::of::<(fn() -> *const S, Core<G, K, V, E>)>();
        let make = || Core::<G, K, V, E>::new(config(Config::new(name.resolve::<S>())));
        if let Some(scope) = scope::current() {
            return CoreRef::Scoped(scope.core(self.address(), id, || {
                Core::new(Scope::config_for(
                    &scope,
                    config(Config::new(name.resolve::<S>())),
                ))
            }));
        }
        let any = self.entry(id, || Box::new(make()), |_| ());
        match any.downcast_ref() {
            Some(core) => CoreRef::Static(core),
            // Every entry is stored under the `TypeId` of its own type.
            None => {
                unreachable!("a coalesce slot holds a core of another type under this type's id")
            }
        }
    }

    /// This slot's address: its identity in a [`Scope`].
    fn address(&'static self) -> usize {
        self as *const Slot as usize
    }
}

/// A coalescer: the program's, in its `static` slot, or the current
/// [`Scope`]'s.
pub enum CoreRef<C: 'static> {
    /// The slot's, for the program's lifetime.
    Static(&'static C),
    /// The scope's, for as long as the scope (or a call in it) lives.
    Scoped(Arc<C>),
}

impl<C: 'static> ::core::ops::Deref for CoreRef<C> {
    type Target = C;

    fn deref(&self) -> &C {
        match self {
            CoreRef::Static(core) => core,
            CoreRef::Scoped(core) => core,
        }
    }
}

impl Slot {
    /// The entry for type id `id`, made with `make` on first use.
    ///
    /// `make` runs with no lock held: it creates a coalescer, which runs the
    /// user's `configure` adjustment, and that may call coalesced fns,
    /// including this one's other instantiations. Two first calls racing may
    /// both make one; the first published is kept (and leaked: it lives as
    /// long as the `static`), after `published` ran on it under the publishing
    /// lock; the other is dropped.
    fn entry(
        &'static self,
        id: TypeId,
        make: impl FnOnce() -> Box<dyn Any + Send + Sync>,
        published: impl FnOnce(&'static (dyn Any + Send + Sync)),
    ) -> &'static (dyn Any + Send + Sync) {
        // The first entry is read with no lock (the common case: one type).
        let first = || {
            self.first
                .get()
                .filter(|(first_id, _)| *first_id == id)
                .map(|(_, core)| *core)
        };
        let in_more = |more: &[(TypeId, &'static (dyn Any + Send + Sync))]| {
            more.iter().find(|(t, _)| *t == id).map(|(_, core)| *core)
        };
        if let Some(core) =
            first().or_else(|| in_more(&self.more.read().unwrap_or_else(PoisonError::into_inner)))
        {
            return core;
        }
        let made = make();
        let mut more = self.more.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(core) = first().or_else(|| in_more(&more)) {
            drop(more);
            // Another call published one meanwhile: this one goes (a
            // coalescer's drop runs no user code of a batch; its registry
            // entry goes with it).
            drop(made);
            return core;
        }
        let core: &'static (dyn Any + Send + Sync) = Box::leak(made);
        published(core);
        // Entries are published only under this lock, so the first is unset
        // here only if no entry was ever published.
        if let Err((_, core)) = self.first.set((id, core)) {
            more.push((id, core));
        }
        core
    }

    /// The write core for instance type `S`, made on first use by `build`.
    fn write_core<S, G, K, W, E>(
        &'static self,
        name: Name,
        config: fn(Config) -> Config,
        build: Build<W>,
    ) -> CoreRef<WriteCore<G, K, W, E>>
    where
        S: ?Sized + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        W: Send + 'static,
        E: Send + Sync + 'static,
    {
        let id = TypeId::of::<(fn() -> *const S, WriteCore<G, K, W, E>)>();
        let settler_id = TypeId::of::<(fn() -> *const S, K)>();
        let make = |config: Config| match build {
            Build::Plain => WriteCore::new(config),
            Build::Merge(merge) => {
                let merge = merge();
                WriteCore::with_merge(config, move |a: &mut W, b| merge(a, b))
            }
            Build::Isolate(copy) => WriteCore::isolating_by(config, copy),
        };
        if let Some(scope) = scope::current() {
            let core = scope.core(self.address(), id, || {
                make(Scope::config_for(
                    &scope,
                    config(Config::new(name.resolve::<S>())),
                ))
            });
            // What `after_writes` waits on, inside the scope.
            let cell = scope.extra(self.address(), settler_id, SettlerCell::<K>::default);
            let mut cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
            if cell.is_none() {
                let weak = Arc::downgrade(&core);
                *cell = Some(Box::new(move |key: &K| match weak.upgrade() {
                    Some(core) => Box::pin(core.settled(key)),
                    None => Box::pin(::core::future::ready(())),
                }));
            }
            drop(cell);
            return CoreRef::Scoped(core);
        }
        let any = self.entry(
            id,
            || Box::new(make(config(Config::new(name.resolve::<S>())))),
            |core| {
                // What `after_writes` waits on, published with the core.
                let Some(core) = core.downcast_ref::<WriteCore<G, K, W, E>>() else {
                    return;
                };
                let settler: Settler<K> = Box::new(move |key: &K| Box::pin(core.settled(key)));
                let settler: &'static Settler<K> = Box::leak(Box::new(settler));
                self.settlers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((settler_id, settler));
            },
        );
        match any.downcast_ref() {
            Some(core) => CoreRef::Static(core),
            None => {
                unreachable!("a coalesce slot holds a core of another type under this type's id")
            }
        }
    }
}

/// The writes to `key` accepted so far by the write fn of `slot` (for
/// instance type `S`) are answered: what `#[coalesce(after_writes = …)]` waits
/// for, through the write fn's hidden `__coalesce_settled_<name>` companion.
/// Before the write fn's first call there is nothing to wait for.
pub fn settled<S, K>(slot: &'static Slot, key: &K) -> impl Future<Output = ()> + Send + 'static
where
    S: ?Sized + 'static,
    K: 'static,
{
    let id = TypeId::of::<(fn() -> *const S, K)>();
    let wait = match scope::current() {
        Some(scope) => {
            let cell = scope.extra(slot.address(), id, SettlerCell::<K>::default);
            let cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
            cell.as_ref().map(|settler| settler(key))
        }
        None => slot
            .settlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, s)| s.downcast_ref::<Settler<K>>())
            .map(|settler| settler(key)),
    };
    async move {
        if let Some(wait) = wait {
            wait.await;
        }
    }
}

/// How the expansion asks for its write core to be built.
pub enum Build<W> {
    /// Last write wins.
    Plain,
    /// `merge = …`: folded by the fn.
    Merge(fn() -> Merger<W>),
    /// `isolate = …` (last write wins): failed batches bisected, values
    /// re-sent as copies made by `Clone::clone`.
    Isolate(fn(&W) -> W),
}

/// A write fn's merge fn, as the expansion passes it.
pub type Merger<W> = Arc<dyn Fn(&mut W, W) + Send + Sync + 'static>;

/// What a `merge = …` fn must be.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the merge fn of writes of `{W}`: it must be `fn(&mut {W}, {W})`",
    label = "folds a later write into the earlier one: `fn(earlier: &mut {W}, later: {W})`",
    note = "for example `fn add(total: &mut {W}, n: {W}) {{ *total += n }}`; it must be \
            `Send + Sync + 'static` (a fn item or a closure that captures nothing borrowed)"
)]
pub trait MergeFn<W>: Fn(&mut W, W) + Send + Sync + 'static {}

impl<W, F: Fn(&mut W, W) + Send + Sync + 'static> MergeFn<W> for F {}

/// Checks a `merge = …` fn: an error lands on the user's path, once (what it
/// returns names no type of the user's fn).
pub fn merge<W, F: MergeFn<W>>(f: F) -> Merger<W> {
    Arc::new(f)
}

/// What a written value's type must be (named `<W as Written>::Checked`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the value of a #[coalesce] write fn: written values must be `Send + 'static`",
    label = "the value a write carries",
    note = "the coalescer holds each write until its batch commits, and may run the batch on another thread"
)]
pub trait Written {
    /// `Self`, once the bounds hold.
    type Checked;
}

impl<T: Send + 'static> Written for T {
    type Checked = T;
}

impl Opened {
    /// The body of a `#[coalesce]` write fn with no `self`: `A` is what owns
    /// it, `()` for a free fn and `Self` for an associated fn, so that each
    /// instantiation of a generic `impl` has a coalescer of its own.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn save<A, G, K, W, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        build: Build<W>,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send
    where
        A: ?Sized + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        W: Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(&G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        let core = slot.write_core::<A, G, K, W, E>(name, config, build);
        async move { core.save(group, key, value, batch).await }
    }

    /// The body of a `#[coalesce]` write method on `&self`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn save_for<'a, S, G, K, W, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        build: Build<W>,
        this: &'a S,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        W: Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(S, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        let core = slot.write_core::<S, G, K, W, E>(name, config, build);
        async move { core.save_for(this, group, key, value, batch).await }
    }

    /// The body of a `#[coalesce]` write method on `self: Arc<Self>` or `self: &Arc<Self>`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn save_for_arc<'a, T, G, K, W, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        build: Build<W>,
        this: &'a Arc<T>,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + 'a
    where
        T: ?Sized + Send + Sync + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        W: Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(Arc<T>, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        let core = slot.write_core::<T, G, K, W, E>(name, config, build);
        async move { core.save_for_arc(this, group, key, value, batch).await }
    }

    /// The body of a `#[coalesce(instance = …)]` write method.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn save_with<'a, S, G, K, W, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        build: Build<W>,
        this: &'a S,
        group: G,
        key: K,
        value: W,
        batch: F,
    ) -> impl Future<Output = Result<(), Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        W: Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(S, &G, Vec<(K, W)>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: WriteOutput<K, Error = E>,
    {
        let core = slot.write_core::<S, G, K, W, E>(name, config, build);
        async move { core.save_with(this, group, key, value, batch).await }
    }
}

/// What a coalesced method's `Self` must be: each batch runs with a clone of
/// the instance of the call that opened it, so that it owns what it reads and
/// can outlive any one caller.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must be `Clone + Send + Sync + 'static` to have #[coalesce] methods",
    label = "each batch owns a clone of the instance it runs with",
    note = "derive or implement `Clone` (cheap when the state is behind `Arc`s or pools, as \
            `PgPool` and `reqwest::Client` are), or take `self: Arc<Self>` or `self: &Arc<Self>`"
)]
pub trait Instance {
    /// `Self`, once the bounds hold.
    type Checked;
}

impl<T: Clone + Send + Sync + 'static> Instance for T {
    type Checked = T;
}

/// What a key type must be. The expansion names the key type as
/// `<K as Key>::Checked`, spanned at the key type the user wrote: an unmet
/// bound is reported there, and only there (the [`Gate`] is [`Closed`], whose
/// methods do not bound the key type).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the key of a #[coalesce] fn: keys must be `Hash + Eq + Clone + Send + Sync + 'static`",
    label = "the key type of a batch",
    note = "the coalescer deduplicates keys (`Hash + Eq`), hands the batch fn its own copies \
            (`Clone`) and may run the batch on another thread (`Send + Sync + 'static`)"
)]
pub trait Key {
    /// `Self`, once the bounds hold.
    type Checked;
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Key for T {
    type Checked = T;
}

/// What a value type must be (named `<V as Value>::Checked`; see [`Key`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the value of a #[coalesce] fn: values must be `Clone + Send + 'static`",
    label = "the value type of a batch",
    note = "callers of one key each get a value (`Clone`), handed over from the batch's task (`Send + 'static`)"
)]
pub trait Value {
    /// `Self`, once the bounds hold.
    type Checked;
}

impl<T: Clone + Send + 'static> Value for T {
    type Checked = T;
}

/// What a batch error type must be (named `<E as BatchError>::Checked`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error of a #[coalesce] fn: errors must be `Send + Sync + 'static`",
    label = "the error type of a batch",
    note = "every caller of a failed batch shares the error behind an `Arc` (`Send + Sync + 'static`); it need not be `Clone`"
)]
pub trait BatchError {
    /// `Self`, once the bounds hold.
    type Checked;
}

impl<T: Send + Sync + 'static> BatchError for T {
    type Checked = T;
}

/// What another parameter's type must be (named `<T as Param>::Checked`): only
/// calls with equal arguments share a batch.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a #[coalesce] fn: parameters besides the keys must be `Hash + Eq + Clone + Send + Sync + 'static`",
    label = "calls share a batch only when this argument is equal",
    note = "the coalescer compares the arguments of calls (`Hash + Eq`) and hands the batch fn its own copy (`Clone`, `Send + Sync + 'static`)"
)]
pub trait Param {
    /// `Self`, once the bounds hold.
    type Checked;
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Param for T {
    type Checked = T;
}

/// What `Self` must be for `self: Arc<Self>` and `self: &Arc<Self>` methods.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must be `Send + Sync + 'static` to have #[coalesce] methods on `Arc<Self>`",
    label = "each batch holds an `Arc` of the instance it runs with, and may run on another thread"
)]
pub trait Shared {
    /// `Self`, once the bounds hold.
    type Checked: ?Sized;
}

impl<T: ?Sized + Send + Sync + 'static> Shared for T {
    type Checked = T;
}

/// Whether the user's types meet the coalescer's bounds, decided by autoref
/// specialization in the expansion:
/// `(&&Gate::<Read, (G, K, V, E, S)>::new()).__coalesce_gate()` is [`Opened`] when the
/// group, key, value, error and instance types meet them and [`Closed`]
/// otherwise; the fn's body then calls `load`, `save` or `many` on that value.
///
/// An unmet bound is reported on the user's tokens by the projection that
/// names the type (`<K as Key>::Checked`). rustc reports it again wherever
/// generated code meets the bound, and merges the reports only when their
/// spans coincide: the future a call returns is checked at the call (which
/// spans the key type, not the value's) and at its `.await` (the `await`
/// keyword: one token, where a type may be several). [`Closed`] takes the same
/// arguments as [`Opened`] but bounds none of the user's types, so nothing
/// reports the bound again.
///
/// The gate asks of each type what its projection's trait asks ([`Key`],
/// [`Value`], [`Written`], [`BatchError`], [`Param`], [`Instance`],
/// [`Shared`]; regions aside, which method resolution does not look at, so a
/// region error is reported as before), so it is closed only when one of those
/// is reported: a program that reaches [`Closed`] does not compile, and its
/// never-ready futures never run.
pub struct Gate<R, T>(::core::marker::PhantomData<fn() -> (R, T)>);

impl<R, T> Gate<R, T> {
    /// The gate.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Gate(::core::marker::PhantomData)
    }
}

/// [`Gate`] role of a read fn: the value is `Clone + Send + 'static`.
pub struct Read;

/// [`Gate`] role of a write fn: the written value is `Send + 'static`.
pub struct Write;

/// The parameters besides the keys, as [`Gate`] sees them: `(A, (B, ()))`,
/// each `Hash + Eq + Send + Sync + 'static` (as [`Param`] asks; the group is a
/// tuple of them).
pub trait Params {}

impl Params for () {}

impl<H: Hash + Eq + Send + Sync + 'static, T: Params> Params for (H, T) {}

/// The instance of a method, as [`Gate`] sees it: `()` for a fn without
/// `self`, [`AsInstance`] or [`AsShared`].
pub trait Receiver {}

impl Receiver for () {}

/// The `Self` of a `&self` method (or the `Arc<Self>` of an `instance = …`
/// method on `Arc<Self>`): batches own a clone of it.
pub struct AsInstance<S: ?Sized>(
    ::core::marker::PhantomData<fn() -> ::core::marker::PhantomData<S>>,
);

impl<S: Clone + Send + Sync + 'static> Receiver for AsInstance<S> {}

/// The `Self` of a `self: Arc<Self>` or `self: &Arc<Self>` method.
pub struct AsShared<T: ?Sized>(::core::marker::PhantomData<fn() -> ::core::marker::PhantomData<T>>);

impl<T: ?Sized + Send + Sync + 'static> Receiver for AsShared<T> {}

/// The bounds hold: [`Opened`].
pub trait Open {
    /// [`Opened`].
    fn __coalesce_gate(&self) -> Opened;
}

impl<G, K, V, E, S> Open for &Gate<Read, (G, K, V, E, S)>
where
    G: Params,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
    S: Receiver,
{
    fn __coalesce_gate(&self) -> Opened {
        Opened
    }
}

impl<G, K, W, E, S> Open for &Gate<Write, (G, K, W, E, S)>
where
    G: Params,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    W: Send + 'static,
    E: Send + Sync + 'static,
    S: Receiver,
{
    fn __coalesce_gate(&self) -> Opened {
        Opened
    }
}

/// A bound does not hold (and is reported elsewhere): [`Closed`].
pub trait Shut {
    /// [`Closed`].
    fn __coalesce_gate(&self) -> Closed;
}

impl<R, T> Shut for Gate<R, T> {
    fn __coalesce_gate(&self) -> Closed {
        Closed
    }
}

/// The way to the coalescer, for types that meet its bounds (see [`Gate`]).
#[derive(Clone, Copy)]
pub struct Opened;

/// What the expansion calls instead of [`Opened`] when a bound on the user's
/// types does not hold: the same methods, bounding only what the closures'
/// types are inferred from. The program does not compile (the unmet bound is
/// reported), so these never run.
#[derive(Clone, Copy)]
pub struct Closed;

/// Never ready: the future of a [`Closed`] call.
type Never<T> = ::core::future::Pending<T>;

#[allow(clippy::too_many_arguments, clippy::unused_self)]
impl Closed {
    /// See [`Opened::load`].
    pub fn load<A: ?Sized, G, K, V, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _group: G,
        _key: K,
        _batch: F,
    ) -> Never<Result<Option<V>, Error<E>>>
    where
        F: Fn(&G, Vec<K>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::load_for`].
    pub fn load_for<S, G, K, V, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _this: &S,
        _group: G,
        _key: K,
        _batch: F,
    ) -> Never<Result<Option<V>, Error<E>>>
    where
        F: Fn(S, &G, Vec<K>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::load_for_arc`].
    pub fn load_for_arc<T: ?Sized, G, K, V, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _this: &Arc<T>,
        _group: G,
        _key: K,
        _batch: F,
    ) -> Never<Result<Option<V>, Error<E>>>
    where
        F: Fn(Arc<T>, &G, Vec<K>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::load_with`].
    pub fn load_with<S, G, K, V, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _this: &S,
        _group: G,
        _key: K,
        _batch: F,
    ) -> Never<Result<Option<V>, Error<E>>>
    where
        F: Fn(S, &G, Vec<K>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::save`].
    pub fn save<A: ?Sized, G, K, W, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _build: Build<W>,
        _group: G,
        _key: K,
        _value: W,
        _batch: F,
    ) -> Never<Result<(), Error<E>>>
    where
        F: Fn(&G, Vec<(K, W)>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::save_for`].
    pub fn save_for<S, G, K, W, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _build: Build<W>,
        _this: &S,
        _group: G,
        _key: K,
        _value: W,
        _batch: F,
    ) -> Never<Result<(), Error<E>>>
    where
        F: Fn(S, &G, Vec<(K, W)>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::save_for_arc`].
    pub fn save_for_arc<T: ?Sized, G, K, W, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _build: Build<W>,
        _this: &Arc<T>,
        _group: G,
        _key: K,
        _value: W,
        _batch: F,
    ) -> Never<Result<(), Error<E>>>
    where
        F: Fn(Arc<T>, &G, Vec<(K, W)>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::save_with`].
    pub fn save_with<S, G, K, W, E, F, Fut>(
        self,
        _slot: &'static Slot,
        _name: Name,
        _config: fn(Config) -> Config,
        _build: Build<W>,
        _this: &S,
        _group: G,
        _key: K,
        _value: W,
        _batch: F,
    ) -> Never<Result<(), Error<E>>>
    where
        F: Fn(S, &G, Vec<(K, W)>) -> Fut,
    {
        ::core::future::pending()
    }

    /// See [`Opened::many`].
    pub fn many<S: ?Sized, K, V, E, Fut>(
        self,
        _name: Name,
        _keys: Vec<K>,
        _one: impl Fn(K) -> Fut,
    ) -> Never<Result<::std::collections::HashMap<K, V>, Error<E>>>
    where
        Fut: Future<Output = Result<Option<V>, Error<E>>>,
    {
        ::core::future::pending()
    }

    /// See [`Opened::many_required`].
    pub fn many_required<S: ?Sized, K, V, E, Fut>(
        self,
        _name: Name,
        _keys: Vec<K>,
        _one: impl Fn(K) -> Fut,
    ) -> Never<Result<::std::collections::HashMap<K, V>, Error<E>>>
    where
        Fut: Future<Output = Result<V, Error<E>>>,
    {
        ::core::future::pending()
    }
}

#[allow(clippy::too_many_arguments)]
impl Opened {
    /// The body of a `#[coalesce]` fn with no `self`: `A` is what owns it,
    /// `()` for a free fn and `Self` for an associated fn, so that each
    /// instantiation of a generic `impl` has a coalescer of its own.
    #[inline]
    pub fn load<A, G, K, V, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send
    where
        A: ?Sized + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(&G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let core = slot.core::<A, G, K, V, E>(name, config);
        async move { core.load(group, key, batch).await }
    }

    /// The body of a `#[coalesce]` method on `&self`: calls through the same object
    /// coalesce.
    #[inline]
    pub fn load_for<'a, S, G, K, V, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        this: &'a S,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(S, &G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let core = slot.core::<S, G, K, V, E>(name, config);
        async move { core.load_for(this, group, key, batch).await }
    }

    /// The body of a `#[coalesce]` method on `self: Arc<Self>` or `self: &Arc<Self>`:
    /// calls through the same object coalesce.
    #[inline]
    pub fn load_for_arc<'a, T, G, K, V, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        this: &'a Arc<T>,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a
    where
        T: ?Sized + Send + Sync + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(Arc<T>, &G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let core = slot.core::<T, G, K, V, E>(name, config);
        async move { core.load_for_arc(this, group, key, batch).await }
    }

    /// The body of a `#[coalesce(instance = …)]` method: calls with equal instance
    /// values (the first element of `group`) coalesce, whatever object they come
    /// through; the batch runs with a clone of the opener's `self`.
    #[inline]
    pub fn load_with<'a, S, G, K, V, E, F, Fut>(
        self,
        slot: &'static Slot,
        name: Name,
        config: fn(Config) -> Config,
        this: &'a S,
        group: G,
        key: K,
        batch: F,
    ) -> impl Future<Output = Result<Option<V>, Error<E>>> + Send + 'a
    where
        S: Clone + Send + Sync + 'static,
        G: Hash + Eq + Send + Sync + 'static,
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + 'static,
        E: Send + Sync + 'static,
        F: Fn(S, &G, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutput<K, Value = V, Error = E>,
    {
        let core = slot.core::<S, G, K, V, E>(name, config);
        async move { core.load_with(this, group, key, batch).await }
    }

    /// The body of `<fn>_many`: each distinct key through the single-key fn,
    /// concurrently (so the keys join the shared batches like any other call).
    pub async fn many<S: ?Sized, K, V, E, Fut>(
        self,
        name: Name,
        keys: Vec<K>,
        one: impl Fn(K) -> Fut,
    ) -> Result<::std::collections::HashMap<K, V>, Error<E>>
    where
        K: Hash + Eq + Clone,
        Fut: Future<Output = Result<Option<V>, Error<E>>>,
    {
        ::coalesce_runtime::load_each(&name.resolve::<S>(), keys, one).await
    }

    /// As [`Opened::many`], for the `Vec`-shaped single-key fns (an entry is required).
    pub async fn many_required<S: ?Sized, K, V, E, Fut>(
        self,
        name: Name,
        keys: Vec<K>,
        one: impl Fn(K) -> Fut,
    ) -> Result<::std::collections::HashMap<K, V>, Error<E>>
    where
        K: Hash + Eq + Clone,
        Fut: Future<Output = Result<V, Error<E>>>,
    {
        let one = &one;
        ::coalesce_runtime::load_each(&name.resolve::<S>(), keys, |k| {
            let call = one(k);
            async move { call.await.map(Some) }
        })
        .await
    }
}

/// Finds, by autoref specialization in the expansion, how to see a batch error
/// type as a `std::error::Error` (itself, what it derefs to, or not at all):
/// `(&&&Probe::<E>::new()).__coalesce_source_of()`.
pub struct Probe<E>(::core::marker::PhantomData<fn() -> E>);

impl<E> Probe<E> {
    /// The probe.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Probe(::core::marker::PhantomData)
    }
}

/// `E: std::error::Error`: the error itself.
pub trait ViaError<E> {
    /// How to see an `E` as an error.
    fn __coalesce_source_of(&self) -> Option<::coalesce_runtime::SourceOf<E>>;
}

impl<E: ::std::error::Error + 'static> ViaError<E> for &&Probe<E> {
    fn __coalesce_source_of(&self) -> Option<::coalesce_runtime::SourceOf<E>> {
        Some(|e| Some(e))
    }
}

/// `E: Deref<Target = dyn Error + Send + Sync>` (`anyhow::Error`, `Box<dyn Error
/// + Send + Sync>`): what it derefs to.
pub trait ViaDeref<E> {
    /// How to see an `E` as an error.
    fn __coalesce_source_of(&self) -> Option<::coalesce_runtime::SourceOf<E>>;
}

impl<E> ViaDeref<E> for &Probe<E>
where
    E: ::core::ops::Deref<Target = dyn ::std::error::Error + Send + Sync> + 'static,
{
    fn __coalesce_source_of(&self) -> Option<::coalesce_runtime::SourceOf<E>> {
        Some(|e| Some(&**e))
    }
}

/// Any other type (`String`): no chain to follow.
pub trait ViaNothing<E> {
    /// How to see an `E` as an error: it cannot be.
    fn __coalesce_source_of(&self) -> Option<::coalesce_runtime::SourceOf<E>>;
}

impl<E> ViaNothing<E> for Probe<E> {
    fn __coalesce_source_of(&self) -> Option<::coalesce_runtime::SourceOf<E>> {
        None
    }
}

/// Registers what the probe found (once per fn, from the expansion).
pub fn register_source<E: 'static>(source_of: Option<::coalesce_runtime::SourceOf<E>>) {
    if let Some(f) = source_of {
        ::coalesce_runtime::register_error_source(f);
    }
}

/// For the `Vec`-shaped single-key fns: an entry is always present after a
/// successful ordered batch, so `None` becomes [`Error::Missing`]. `S` is the
/// instance type of a method (for its coalescer's name), `()` for a free fn.
pub fn required<S: ?Sized, V, E>(
    result: Result<Option<V>, Error<E>>,
    name: Name,
) -> Result<V, Error<E>> {
    match result {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Error::Missing {
            name: Arc::from(name.resolve::<S>()),
        }),
        Err(e) => Err(e),
    }
}
