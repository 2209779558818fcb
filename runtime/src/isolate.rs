//! Bisection of failed batches: one poisonous key fails only its own callers.

use std::future::{poll_fn, Future};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::engine::clock::{self, Clock, Sleep};
use crate::engine::deliver::drop_quietly;
use crate::output::Delivery;

/// A batch run.
pub(crate) type RunFor<K, V, E> = Pin<Box<dyn Future<Output = Delivery<K, V, E>> + Send + 'static>>;

/// Starts one run of the batch function over the keys it is given.
pub(crate) type Factory<K, V, E> = Arc<dyn Fn(Vec<K>) -> RunFor<K, V, E> + Send + Sync + 'static>;

/// The idle timeout (`Config::idle_timeout`) of a batch whose halves stream:
/// how long a half may go without an item, and where a half that did says so
/// (the batch's keys it did not deliver then fail with the timeout, not
/// `None`).
#[derive(Clone)]
pub(crate) struct Idle {
    pub(crate) after: Duration,
    pub(crate) clock: Clock,
    pub(crate) timed_out: Arc<AtomicBool>,
}

/// Runs `keys` through `factory`; if the whole batch fails and `depth` allows, splits
/// the keys in halves and retries each half (concurrently), recursively. Keys of a
/// part that still fails share that part's error as a per-key error.
pub(crate) fn run<K, V, E>(
    factory: Factory<K, V, E>,
    keys: Vec<K>,
    depth: u32,
    idle: Option<Idle>,
) -> RunFor<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
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
                    run(factory.clone(), left.clone(), depth - 1, idle.clone()),
                    run(factory, right.clone(), depth - 1, idle.clone()),
                )
                .await;
                // A streamed part is read here, until each of its keys has an
                // entry: its entries are merged with the other part's.
                let (a, b) = futures_util::future::join(
                    collected(a, &left, idle.as_ref()),
                    collected(b, &right, idle.as_ref()),
                )
                .await;
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

/// A streamed delivery read as entries by key, until each of the part's
/// `keys` has one (a stream that goes on, or never ends, is dropped then, as
/// the batch's own reader does), the stream ends, or it goes `idle` for
/// longer than allowed; an `Err` item fails the part's keys not yet
/// delivered (the first entry of a key wins, so the error entries listed
/// after the delivered ones touch only the others).
async fn collected<K, V, E>(
    d: Delivery<K, V, E>,
    keys: &[K],
    idle: Option<&Idle>,
) -> Delivery<K, V, E>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    let Delivery::Streamed(mut stream) = d else {
        return d;
    };
    // Each of the part's keys, and whether it has had its entry (the keys
    // of a batch are distinct).
    let mut owed: std::collections::HashMap<&K, bool> = keys.iter().map(|k| (k, false)).collect();
    let mut left = owed.len();
    let mut entries = Vec::new();
    let mut last = Instant::now();
    let mut wait: Option<(Instant, Sleep)> = None;
    while left > 0 {
        let item = poll_fn(|cx| {
            if let Poll::Ready(item) = stream.as_mut().poll_next(cx) {
                return Poll::Ready(Some(item));
            }
            let Some(idle) = idle else {
                return Poll::Pending;
            };
            let deadline = clock::after(last, idle.after);
            if !matches!(&wait, Some((d, _)) if *d == deadline) {
                wait = Some((deadline, Sleep::until(idle.clock, deadline)));
            }
            match &mut wait {
                Some((_, sleep)) => sleep.poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await;
        match item {
            // The gap passed the idle timeout: the keys not delivered fail
            // with it.
            None => {
                if let Some(idle) = idle {
                    idle.timed_out.store(true, Relaxed);
                }
                break;
            }
            Some(None) => break,
            Some(Some(Ok((k, v)))) => {
                if idle.is_some() {
                    last = Instant::now();
                }
                if let Some(had) = owed.get_mut(&k) {
                    if !*had {
                        *had = true;
                        left -= 1;
                    }
                }
                entries.push((k, Ok(v)));
            }
            Some(Some(Err(e))) => {
                let e = Arc::new(e);
                entries.extend(keys.iter().map(|k| (k.clone(), Err(e.clone()))));
                break;
            }
        }
    }
    drop(owed);
    drop_quietly(stream);
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
