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
    catch_unwind(AssertUnwindSafe(|| {
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
    }))
    .map_err(|p| UserPanic(panic_message(&*p)))
}

/// Runs `one` for every key concurrently; the entries found by key, or the
/// first error (in key order).
pub(crate) async fn by_key<K, V, E, Fut>(
    keys: Vec<K>,
    one: impl Fn(K) -> Fut,
) -> Result<HashMap<K, V>, Error<E>>
where
    K: Hash + Eq + Clone,
    Fut: Future<Output = Result<Option<V>, Error<E>>>,
{
    // The calls themselves, unwrapped (a wrapper per call would add its
    // state to each of them); the keys are matched back by position.
    let answers = futures_util::future::join_all(keys.iter().cloned().map(one)).await;
    let mut found = HashMap::with_capacity(answers.len());
    for (k, answer) in keys.into_iter().zip(answers) {
        if let Some(v) = answer? {
            found.insert(k, v);
        }
    }
    Ok(found)
}

/// The entries of `found` in the order of `keys` (a clone for a repeated key).
pub(crate) fn in_order<K: Hash + Eq, V: Clone>(
    keys: Vec<K>,
    mut found: HashMap<K, V>,
) -> Result<Vec<Option<V>>, UserPanic> {
    catch_unwind(AssertUnwindSafe(|| {
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
    }))
    .map_err(|p| UserPanic(panic_message(&*p)))
}

/// Each distinct key of `keys` through `one` (a coalesced single-key call),
/// concurrently: the entries found, by key, or the first error. What
/// `#[coalesce]` expands `<fn>_many` to; `name` names the coalescer in the
/// error of a key whose `Hash` or `Eq` panics.
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
    let keys = distinct(keys).map_err(|p| Error::Panicked {
        name: name.into(),
        message: format!("`Hash` or `Eq` of a key panicked: {}", p.0).into(),
    })?;
    by_key(keys, one).await
}
