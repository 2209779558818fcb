//! Paths the `#[coalesce]` expansion names. Not public API: hidden from docs and
//! kept off the crate root so that it never shows up in "did you mean" hints.

pub use ::coalesce_runtime::{
    per_key, required, AnyKey, BatchOutput, Config, Core, Dispatch, Error, PerKey,
};
pub use ::std::sync::LazyLock;
pub use ::std::time::Duration;

use ::core::any::Any;
use ::core::future::Future;
use ::core::hash::Hash;
use ::core::marker::PhantomData;
use ::std::boxed::Box;
use ::std::sync::OnceLock;
use ::std::vec::Vec;

/// The `static` behind one `#[coalesce]` fn: its [`Core`], created on first use.
///
/// The core is stored type-erased so that the `static` itself puts no bounds on
/// `G`, `K`, `V`, `E` and is always `Sync`. Every bound is then checked at one
/// place, the call of [`load`] or [`load_in`] whose type arguments the expansion
/// writes with the user's own type tokens: a key that is not `Hash` gives one
/// error, on the key type in the user's signature, not several in generated code.
pub struct Slot<G, K, V, E> {
    core: OnceLock<Box<dyn Any + Send + Sync>>,
    types: PhantomData<Types<G, K, V, E>>,
}

/// Marks a [`Slot`]'s types without owning them: `Send`, `Sync` and `'static`
/// whatever they are.
type Types<G, K, V, E> = fn() -> (G, K, V, E);

impl<G, K, V, E> Slot<G, K, V, E> {
    /// An empty slot, for the initializer of the `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Slot {
            core: OnceLock::new(),
            types: PhantomData,
        }
    }
}

impl<G, K, V, E> Slot<G, K, V, E>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn core(&'static self, config: fn() -> Config) -> &'static Core<G, K, V, E> {
        self.core
            .get_or_init(|| Box::new(Core::<G, K, V, E>::new(config())))
            .downcast_ref()
            // Only this impl fills the slot, always with this type.
            .unwrap_or_else(|| unreachable!("a coalesce slot holds a core of another type"))
    }
}

/// The body of a `#[coalesce]` free fn: one call of [`Core::load`] on the slot's core.
#[inline]
pub fn load<G, K, V, E, F, Fut>(
    slot: &'static Slot<G, K, V, E>,
    config: fn() -> Config,
    group: G,
    key: K,
    batch: F,
) -> impl Future<Output = Result<Option<V>, Error<E>>>
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: BatchOutput<K, V, Error = E>,
{
    slot.core(config).load(group, key, batch)
}

/// The body of a `#[coalesce]` method: one call of [`Core::load_in`] on the slot's core.
#[inline]
pub fn load_in<'a, G, K, V, E, S, F, Fut>(
    slot: &'static Slot<G, K, V, E>,
    config: fn() -> Config,
    this: &'a S,
    group: G,
    key: K,
    batch: F,
) -> impl Future<Output = Result<Option<V>, Error<E>>> + 'a
where
    G: Hash + Eq + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
    S: ?Sized + Sync,
    F: Fn(&'a S, Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'a,
    Fut::Output: BatchOutput<K, V, Error = E>,
{
    slot.core(config).load_in(this, group, key, batch)
}
