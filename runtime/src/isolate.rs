//! Bisection of failed batches: one poisonous key fails only its own callers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::output::Delivery;

/// A batch run.
pub(crate) type RunFor<K, V, E> = Pin<Box<dyn Future<Output = Delivery<K, V, E>> + Send + 'static>>;

/// Starts one run of the batch function over the keys it is given.
pub(crate) type Factory<K, V, E> = Arc<dyn Fn(Vec<K>) -> RunFor<K, V, E> + Send + Sync + 'static>;

/// Runs `keys` through `factory`; if the whole batch fails and `depth` allows, splits
/// the keys in halves and retries each half (concurrently), recursively. Keys of a
/// part that still fails share that part's error as a per-key error.
pub(crate) fn run<K, V, E>(factory: Factory<K, V, E>, keys: Vec<K>, depth: u32) -> RunFor<K, V, E>
where
    K: Clone + Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    Box::pin(async move {
        let first = factory(keys.clone()).await;
        match first {
            Delivery::Failed(e) if depth > 0 && keys.len() > 1 => {
                drop(e);
                let mut left = keys;
                let right = left.split_off(left.len() / 2);
                let (a, b) = futures_util::future::join(
                    run(factory.clone(), left.clone(), depth - 1),
                    run(factory, right.clone(), depth - 1),
                )
                .await;
                // A streamed part is read whole here: its entries are merged
                // with the other part's.
                let (a, b) = (collected(a, &left).await, collected(b, &right).await);
                let mut entries = entries_of(a, left);
                entries.extend(entries_of(b, right));
                Delivery::Keyed(Box::new(entries.into_iter()))
            }
            Delivery::Failed(e) if depth > 0 => {
                // A single key: its error is its own.
                let e = Arc::new(e);
                Delivery::Keyed(Box::new(keys.into_iter().map(move |k| (k, Err(e.clone())))))
            }
            other => other,
        }
    })
}

/// A streamed delivery read to its end as entries by key; an `Err` item fails
/// the part's keys not yet delivered (the first entry of a key wins, so the
/// error entries listed after the delivered ones touch only the others).
async fn collected<K, V, E>(d: Delivery<K, V, E>, keys: &[K]) -> Delivery<K, V, E>
where
    K: Clone + Send + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    let Delivery::Streamed(mut stream) = d else {
        return d;
    };
    let mut entries = Vec::new();
    while let Some(item) = futures_util::StreamExt::next(&mut stream).await {
        match item {
            Ok((k, v)) => entries.push((k, Ok(v))),
            Err(e) => {
                let e = Arc::new(e);
                entries.extend(keys.iter().map(|k| (k.clone(), Err(e.clone()))));
                break;
            }
        }
    }
    Delivery::Keyed(Box::new(entries.into_iter()))
}

/// A part's delivery as entries by key, so that parts can be merged.
fn entries_of<K, V, E>(d: Delivery<K, V, E>, keys: Vec<K>) -> Vec<(K, Result<V, Arc<E>>)> {
    match d {
        Delivery::Keyed(entries) => entries.collect(),
        Delivery::Ordered(values) if values.len() == keys.len() => {
            keys.into_iter().zip(values.into_iter().map(Ok)).collect()
        }
        // A part of the wrong length: its keys get no entry (`None`, or
        // `Error::Missing` for an ordered shape), never a shifted value.
        Delivery::Ordered(_) => Vec::new(),
        Delivery::Failed(e) => {
            let e = Arc::new(e);
            keys.into_iter().map(|k| (k, Err(e.clone()))).collect()
        }
        // Read whole by `collected` before this.
        Delivery::Streamed(_) => Vec::new(),
    }
}
