//! The shapes a batch function may return, and how each is handed to callers.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;

/// Entries by key; an error may be shared by several keys.
pub type Entries<K, V, E> = Box<dyn Iterator<Item = (K, Result<V, Arc<E>>)> + Send>;

/// Entries by key as they arrive (see [`Streamed`]).
pub type EntryStream<K, V, E> = Pin<Box<dyn Stream<Item = Result<(K, V), E>> + Send>>;

/// A batch function's result in the form the engine hands out: per key, not as one
/// shared map, so each caller reads (or takes) only its own entry.
///
/// More forms may come: a `match` on it needs a `_` arm.
#[non_exhaustive]
pub enum Delivery<K, V, E> {
    /// Entries by key, in any order. Keys the batch never asked for are ignored
    /// (and counted); keys with no entry resolve to `None`. An `Err` fails only the
    /// callers of its key (several keys may share one error).
    Keyed(Entries<K, V, E>),
    /// One value per key, in the order of the keys given to the batch function.
    Ordered(Vec<V>),
    /// The whole batch failed; every caller of the batch gets this error.
    Failed(E),
    /// Entries by key as they arrive: each caller is answered as soon as its
    /// key's entry comes (see [`Streamed`]).
    Streamed(EntryStream<K, V, E>),
}

impl<K: 'static, V: 'static> Delivery<K, V, Infallible> {
    /// The same delivery, typed for a batch function that may fail with `E`.
    pub fn widen<E: 'static>(self) -> Delivery<K, V, E> {
        match self {
            Delivery::Keyed(entries) => Delivery::Keyed(Box::new(
                entries.map(|(k, r)| (k, r.map_err(|never| match *never {}))),
            )),
            Delivery::Ordered(values) => Delivery::Ordered(values),
            Delivery::Failed(never) => match never {},
            Delivery::Streamed(stream) => {
                Delivery::Streamed(Box::pin(futures_util::StreamExt::map(stream, |r| {
                    r.map_err(|never| match never {})
                })))
            }
        }
    }
}

/// A value a batch function may return: turned into a [`Delivery`] once per batch.
///
/// Implemented for `HashMap<K, V>` and `BTreeMap<K, V>` (entries by key), `Vec<V>`
/// (one value per key, same order), [`Keyed`] (any map or iterator of `(K, V)`:
/// `IndexMap`, `AHashMap`, `FxHashMap`, `hashbrown::HashMap`, …), [`PerKey`] (one
/// `Result` per key) and `Result<T, E>` of any of these. Implement it for your own
/// container to return it from a batch function directly; its callers get
/// `Option<Self::Value>`:
///
/// ```
/// # use coalesce_runtime as coalesce;
/// use coalesce::{BatchOutput, Delivery};
///
/// /// Rows as the database returns them: each row carries its key.
/// pub struct Rows(Vec<(u64, String)>);
///
/// impl BatchOutput<u64> for Rows {
///     type Value = String;
///     type Error = std::convert::Infallible;
///     fn into_delivery(self) -> Delivery<u64, String, Self::Error> {
///         Delivery::Keyed(Box::new(self.0.into_iter().map(|(k, v)| (k, Ok(v)))))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a batch result for keys of type `{K}`",
    label = "a batch fn returns a map or a `Vec` of values, or a type implementing `coalesce::BatchOutput<{K}>`",
    note = "return `HashMap<K, V>` (any `…Map<K, V>`), `Vec<V>` with one value per key, \
            `HashMap<K, Result<V, E>>`, or `Result<_, E>` of one of these; or implement \
            `coalesce::BatchOutput<{K}>` for `{Self}`"
)]
pub trait BatchOutput<K> {
    /// The value each caller gets (in an `Option`: a key may be missing).
    type Value;
    /// The error a failed batch reports to its callers (`Infallible` if none).
    type Error;
    /// Whether the result is a stream of entries ([`Streamed`]): its calls
    /// always go through a shared batch, whose driver feeds each caller as its
    /// entry arrives. An output that may stream without saying so (such as
    /// [`Delivery`], or an impl that returns [`Delivery::Streamed`] with this
    /// left `false`) still works: a call that ran alone (adaptive dispatch on
    /// an idle road) reads the stream up to its own key, then drops it.
    const STREAMED: bool = false;
    /// Converts the batch result.
    fn into_delivery(self) -> Delivery<K, Self::Value, Self::Error>;
}

impl<K, V, S> BatchOutput<K> for HashMap<K, V, S>
where
    K: Send + 'static,
    V: Send + 'static,
    S: BuildHasher,
{
    type Value = V;
    type Error = Infallible;
    fn into_delivery(self) -> Delivery<K, V, Infallible> {
        Keyed(self).into_delivery()
    }
}

impl<K, V> BatchOutput<K> for BTreeMap<K, V>
where
    K: Send + 'static,
    V: Send + 'static,
{
    type Value = V;
    type Error = Infallible;
    fn into_delivery(self) -> Delivery<K, V, Infallible> {
        Keyed(self).into_delivery()
    }
}

/// Entries by key from any map or iterator of `(K, V)` pairs: `IndexMap`,
/// `AHashMap`, `FxHashMap`, any version of `hashbrown::HashMap`, or a `Vec<(K, V)>`
/// of rows that carry their key. `#[coalesce]` wraps a returned `…Map<K, V>` in it.
pub struct Keyed<I>(pub I);

impl<K, V, I> BatchOutput<K> for Keyed<I>
where
    I: IntoIterator<Item = (K, V)>,
    I::IntoIter: Send + 'static,
{
    type Value = V;
    type Error = Infallible;
    fn into_delivery(self) -> Delivery<K, V, Infallible> {
        Delivery::Keyed(Box::new(self.0.into_iter().map(|(k, v)| (k, Ok(v)))))
    }
}

impl<K, V> BatchOutput<K> for Vec<V> {
    type Value = V;
    type Error = Infallible;
    fn into_delivery(self) -> Delivery<K, V, Infallible> {
        Delivery::Ordered(self)
    }
}

impl<K, E, T> BatchOutput<K> for Result<T, E>
where
    K: 'static,
    E: 'static,
    T: BatchOutput<K, Error = Infallible>,
    T::Value: 'static,
{
    type Value = T::Value;
    type Error = E;
    fn into_delivery(self) -> Delivery<K, T::Value, E> {
        match self {
            Ok(out) => out.into_delivery().widen(),
            Err(e) => Delivery::Failed(e),
        }
    }
}

/// Entries streamed by key: a batch fn that returns its rows as they arrive
/// (`sqlx`'s `fetch`, a Redis pipeline, NDJSON or gRPC server streaming), so
/// that each caller resolves as its own row arrives and the batch never holds
/// all rows at once. Callers are woken in groups: once 32 are answered, and
/// whenever the driver stops reading (the stream has nothing more ready, or
/// 256 items were read in a row), so that a task awaiting thousands of callers
/// is scheduled once per group, not once per item.
///
/// - Items are `(key, value)` pairs: a positional stream could shift values
///   between callers. The first item for a key wins; later ones, and items
///   for keys nobody asked for, are ignored and counted
///   (`unrequested_entries`). Keys the stream never yields get `None` when it
///   ends.
/// - An `Err` item, a panic, the `timeout` or the idle timeout
///   ([`Config::idle_timeout`](crate::Config::idle_timeout)) fails only the
///   keys not yet delivered; delivered values stand, and the stream is not
///   polled again.
/// - The stream is dropped as soon as every key of the batch is delivered
///   (a stream that never ends frees its lane then), or every caller has left.
///
/// `#[coalesce]` wraps a returned `impl Stream<Item = Result<(K, V), E>>` (or
/// `Result<impl Stream<…>, E>`, whose `Err` fails the whole batch) in it; with
/// [`Coalescer`](crate::Coalescer) return `Streamed(stream)`, or
/// [`streamed`]`(result)`.
///
/// ```
/// # use coalesce_runtime as coalesce;
/// use coalesce::{Coalescer, Config, Streamed};
/// use futures_util::stream;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let squares = Coalescer::new(Config::new("squares.stream"), |keys: Vec<u64>| async move {
///     Streamed(stream::iter(keys.into_iter().map(|k| Ok::<_, std::io::Error>((k, k * k)))))
/// });
/// let (a, b) = tokio::join!(squares.load(3), squares.load(4));
/// assert_eq!((a.unwrap(), b.unwrap()), (Some(9), Some(16)));
/// # }
/// ```
pub struct Streamed<S>(pub S);

impl<K, V, E, S> BatchOutput<K> for Streamed<S>
where
    S: Stream<Item = Result<(K, V), E>> + Send + 'static,
{
    type Value = V;
    type Error = E;
    const STREAMED: bool = true;
    fn into_delivery(self) -> Delivery<K, V, E> {
        Delivery::Streamed(Box::pin(self.0))
    }
}

/// The delivery of a batch fn that returns `Result<S, E>` where `S` streams
/// `Result<(K, V), E>` items: an outer `Err` (before the first row) fails the
/// whole batch; an `Err` item fails only the keys not yet delivered.
pub fn streamed<K, V, E, S>(result: Result<S, E>) -> StreamedResult<S, E>
where
    S: Stream<Item = Result<(K, V), E>> + Send + 'static,
{
    StreamedResult(result)
}

/// A `Result` of a stream of entries: see [`streamed`].
pub struct StreamedResult<S, E>(pub Result<S, E>);

impl<K, V, E, S> BatchOutput<K> for StreamedResult<S, E>
where
    S: Stream<Item = Result<(K, V), E>> + Send + 'static,
{
    type Value = V;
    type Error = E;
    const STREAMED: bool = true;
    fn into_delivery(self) -> Delivery<K, V, E> {
        match self.0 {
            Ok(stream) => Delivery::Streamed(Box::pin(stream)),
            Err(e) => Delivery::Failed(e),
        }
    }
}

/// One `Result` per key: a batch in which one bad key fails only its own callers.
///
/// Wrap a `HashMap<K, Result<V, E>>` (or any iterator of `(K, Result<V, E>)`) in it.
pub struct PerKey<I>(pub I);

impl<K, V, E, I> BatchOutput<K> for PerKey<I>
where
    I: IntoIterator<Item = (K, Result<V, E>)>,
    I::IntoIter: Send + 'static,
    E: 'static,
{
    type Value = V;
    type Error = E;
    fn into_delivery(self) -> Delivery<K, V, E> {
        Delivery::Keyed(Box::new(
            self.0.into_iter().map(|(k, r)| (k, r.map_err(Arc::new))),
        ))
    }
}

/// The delivery of a batch function that returns `Result<I, E>` where `I` holds one
/// `Result<V, E>` per key (`Result<HashMap<K, Result<V, E>>, E>`): an outer `Err`
/// fails the whole batch, an inner one only its key.
pub fn per_key<K, V, E, I>(result: Result<I, E>) -> Delivery<K, V, E>
where
    I: IntoIterator<Item = (K, Result<V, E>)>,
    I::IntoIter: Send + 'static,
    E: 'static,
{
    match result {
        Ok(entries) => PerKey(entries).into_delivery(),
        Err(e) => Delivery::Failed(e),
    }
}

impl<K, V, E> BatchOutput<K> for Delivery<K, V, E> {
    type Value = V;
    type Error = E;
    fn into_delivery(self) -> Delivery<K, V, E> {
        self
    }
}

/// What a write batch function may return: whether the batch committed, as a
/// whole or per key. Turned into a [`Delivery`] of `()` per key.
///
/// | the batch fn returns | its writers get |
/// | --- | --- |
/// | `()` | `Ok(())` once it returns |
/// | `Result<(), E>` | `Ok(())`, or every writer the `Err` |
/// | `HashMap<K, Result<(), E>>` / `BTreeMap` | each key its own `Result` |
/// | `Result<HashMap<K, Result<(), E>>, E>` / `BTreeMap` | both |
///
/// A per-key map lists the keys that failed, or every key: a key it leaves out
/// counts as committed. Entries for keys the batch did not write are ignored.
pub trait WriteOutput<K> {
    /// The batch's error (`Infallible` if none).
    type Error;
    /// Converts the batch result.
    fn into_delivery(self) -> Delivery<K, (), Self::Error>;
}

fn committed<K: 'static, E: 'static>() -> Delivery<K, (), E> {
    Delivery::Keyed(Box::new(std::iter::empty()))
}

impl<K: 'static> WriteOutput<K> for () {
    type Error = Infallible;
    fn into_delivery(self) -> Delivery<K, (), Infallible> {
        committed()
    }
}

impl<K: 'static, E: 'static> WriteOutput<K> for Result<(), E> {
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        match self {
            Ok(()) => committed(),
            Err(e) => Delivery::Failed(e),
        }
    }
}

impl<K, E, S> WriteOutput<K> for HashMap<K, Result<(), E>, S>
where
    K: Send + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher,
{
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        WriteOutput::<K>::into_delivery(Keyed(self))
    }
}

impl<K, E> WriteOutput<K> for BTreeMap<K, Result<(), E>>
where
    K: Send + 'static,
    E: Send + Sync + 'static,
{
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        WriteOutput::<K>::into_delivery(Keyed(self))
    }
}

impl<K, E, S> WriteOutput<K> for Result<HashMap<K, Result<(), E>, S>, E>
where
    K: Send + 'static,
    E: Send + Sync + 'static,
    S: BuildHasher,
{
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        match self {
            Ok(map) => WriteOutput::<K>::into_delivery(map),
            Err(e) => Delivery::Failed(e),
        }
    }
}

impl<K, E> WriteOutput<K> for Result<BTreeMap<K, Result<(), E>>, E>
where
    K: Send + 'static,
    E: Send + Sync + 'static,
{
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        match self {
            Ok(map) => WriteOutput::<K>::into_delivery(map),
            Err(e) => Delivery::Failed(e),
        }
    }
}

/// Per-key results from any map or iterator of `(K, Result<(), E>)`
/// (`IndexMap`, `FxHashMap`, …): `#[coalesce]` wraps a returned `…Map` in [`Keyed`].
impl<K, E, I> WriteOutput<K> for Keyed<I>
where
    I: IntoIterator<Item = (K, Result<(), E>)>,
    I::IntoIter: Send + 'static,
    E: Send + Sync + 'static,
{
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        Delivery::Keyed(Box::new(
            self.0.into_iter().map(|(k, r)| (k, r.map_err(Arc::new))),
        ))
    }
}

impl<K, E, I> WriteOutput<K> for Result<Keyed<I>, E>
where
    I: IntoIterator<Item = (K, Result<(), E>)>,
    I::IntoIter: Send + 'static,
    E: Send + Sync + 'static,
{
    type Error = E;
    fn into_delivery(self) -> Delivery<K, (), E> {
        match self {
            Ok(entries) => WriteOutput::<K>::into_delivery(entries),
            Err(e) => Delivery::Failed(e),
        }
    }
}
