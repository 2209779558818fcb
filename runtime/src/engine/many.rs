//! Many keys at once (`load_many`): each distinct key through the single-key
//! path, all concurrently, so that they join the shared batches like any other
//! call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::batch::{panic_message, UserPanic};
use crate::error::Error;

/// The distinct keys of `keys`, in the order of their first occurrence.
/// `Hash`, `Eq` and `Clone` of a key are user code: a panic is returned.
pub(crate) fn distinct<K: Hash + Eq + Clone>(
    keys: impl IntoIterator<Item = K>,
) -> Result<Vec<K>, UserPanic> {
    catching(|| {
        let keys = keys.into_iter();
        let mut seen = hashbrown::HashSet::with_capacity(keys.size_hint().0);
        let mut out = Vec::with_capacity(keys.size_hint().0);
        for k in keys {
            if !seen.contains(&k) {
                seen.insert(k.clone());
                out.push(k);
            }
        }
        out
    })
}

/// The keys in the order given, and the distinct ones (see [`distinct`]),
/// for [`load_ordered`].
pub(crate) fn ordered<K: Hash + Eq + Clone>(
    keys: impl IntoIterator<Item = K>,
) -> Result<(Vec<K>, Vec<K>), UserPanic> {
    let order: Vec<K> = catching(|| keys.into_iter().collect())?;
    let distinct = distinct(order.iter().cloned())?;
    Ok((order, distinct))
}

/// Runs `f`, returning a panic in it (user code) as a [`UserPanic`].
fn catching<T>(f: impl FnOnce() -> T) -> Result<T, UserPanic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| UserPanic(panic_message(&*p)))
}

/// The error of a panic in user code while many keys are loaded.
fn panicked<E>(name: &str, what: &str, p: UserPanic) -> Error<E> {
    Error::Panicked {
        name: name.into(),
        message: format!("{what} panicked: {}", p.0).into(),
    }
}

/// Each of the distinct `keys` (from [`distinct`], made before the future)
/// through `one` (a coalesced single-key call), concurrently: the entries
/// found, by key, or the first error (in key order). A panic in the keys'
/// `Hash`, `Eq` or `Clone` fails the whole call with [`Error::Panicked`],
/// naming `name`; it never reaches the caller.
pub(crate) async fn load<K, V, E, Fut>(
    name: &str,
    keys: Result<Vec<K>, UserPanic>,
    one: impl Fn(K) -> Fut,
) -> Result<HashMap<K, V>, Error<E>>
where
    K: Hash + Eq + Clone,
    Fut: Future<Output = Result<Option<V>, Error<E>>>,
{
    let keys = keys.map_err(|p| panicked(name, "`Hash`, `Eq` or `Clone` of a key", p))?;
    // The calls themselves, unwrapped (a wrapper per call would add its
    // state to each of them); the keys are matched back by position.
    let calls = catching(|| keys.iter().cloned().map(&one).collect::<Vec<_>>())
        .map_err(|p| panicked(name, "`Clone` of a key", p))?;
    let answers = futures_util::future::join_all(calls).await;
    catching(move || {
        let mut found = HashMap::with_capacity(answers.len());
        for (k, answer) in keys.into_iter().zip(answers) {
            if let Some(v) = answer? {
                found.insert(k, v);
            }
        }
        Ok(found)
    })
    .map_err(|p| panicked(name, "`Hash` or `Eq` of a key", p))?
}

/// As [`load`], with the entries in the order of `keys` (one per key given,
/// duplicates included, a clone of the value for a repeated key; `None` where
/// there is no entry).
pub(crate) async fn load_ordered<K, V, E, Fut>(
    name: &str,
    keys: Result<(Vec<K>, Vec<K>), UserPanic>,
    one: impl Fn(K) -> Fut,
) -> Result<Vec<Option<V>>, Error<E>>
where
    K: Hash + Eq + Clone,
    V: Clone,
    Fut: Future<Output = Result<Option<V>, Error<E>>>,
{
    let (order, keys) = keys.map_err(|p| panicked(name, "`Hash`, `Eq` or `Clone` of a key", p))?;
    let found = load(name, Ok(keys), one).await?;
    in_order(order, found)
        .map_err(|p| panicked(name, "`Hash`, `Eq` of a key or `Clone` of a value", p))
}

/// The entries of `found` in the order of `keys` (a clone for a repeated key).
pub(crate) fn in_order<K: Hash + Eq, V: Clone>(
    keys: Vec<K>,
    mut found: HashMap<K, V>,
) -> Result<Vec<Option<V>>, UserPanic> {
    catching(|| {
        let mut left: HashMap<&K, usize> = HashMap::new();
        for k in &keys {
            *left.entry(k).or_default() += 1;
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in &keys {
            let n = left.get_mut(k).map_or(0, |n| {
                *n -= 1;
                *n
            });
            out.push(if n == 0 {
                found.remove(k)
            } else {
                found.get(k).cloned()
            });
        }
        out
    })
}

/// Each distinct key of `keys` through `one` (a coalesced single-key call),
/// concurrently: the entries found, by key, or the first error. What
/// `#[coalesce]` expands `<fn>_many` to; `name` names the coalescer in the
/// error of a key whose `Hash`, `Eq` or `Clone` panics.
#[doc(hidden)]
pub async fn load_each<K, V, E, Fut>(
    name: &str,
    keys: Vec<K>,
    one: impl Fn(K) -> Fut,
) -> Result<HashMap<K, V>, Error<E>>
where
    K: Hash + Eq + Clone,
    Fut: Future<Output = Result<Option<V>, Error<E>>>,
{
    load(name, distinct(keys), one).await
}
