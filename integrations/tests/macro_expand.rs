//! What `#[coalesce]` expands to, run: concurrent single-key calls become one call
//! of the batch fn, and each caller gets its own entry.

use coalesce::{coalesce, Error};
use futures::future::join_all;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Every batch the fns below ran, as the keys each was given.
static BATCHES: Mutex<Vec<(&str, Vec<u64>)>> = Mutex::new(Vec::new());

fn record(name: &'static str, keys: &[u64]) {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    BATCHES.lock().unwrap().push((name, keys));
}

/// The batches `name` ran, in order.
fn batches(name: &str) -> Vec<Vec<u64>> {
    BATCHES
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, keys)| keys.clone())
        .collect()
}

#[derive(Debug)]
struct DbError(&'static str);

/// Squares; 13 has no entry.
#[coalesce(window = "5ms")]
async fn square(ids: Vec<u64>) -> HashMap<u64, u64> {
    record("square", &ids);
    ids.into_iter()
        .filter(|id| *id != 13)
        .map(|id| (id, id * id))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_share_one_batch() {
    let calls = [1, 2, 3, 2, 13].map(square);
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, [Some(1), Some(4), Some(9), Some(4), None]);
    // Deduplicated, and all in one batch.
    assert_eq!(batches("square"), [vec![1, 2, 3, 13]]);
    // The batch form is still there, and runs no coalescer.
    assert_eq!(square_batch(vec![5]).await[&5], 25);
    assert_eq!(batches("square").len(), 2);
}

#[coalesce(window = "1ms", name = "tests.cubes")]
async fn cube(ids: Vec<u64>) -> BTreeMap<u64, u64> {
    ids.into_iter().map(|id| (id, id * id * id)).collect()
}

#[tokio::test(start_paused = true)]
async fn name_argument_names_the_metrics() {
    assert_eq!(cube(2).await.unwrap(), Some(8));
    let metrics = coalesce::metrics::get("tests.cubes").expect("registered under its name");
    assert_eq!(metrics.calls, 1);
    assert_eq!(metrics.batches, 1);
}

#[coalesce]
async fn default_name(ids: Vec<u64>) -> Vec<u64> {
    ids
}

#[tokio::test(start_paused = true)]
async fn default_name_is_module_path_and_fn() {
    assert_eq!(default_name(4).await.unwrap(), 4);
    let name = concat!(module_path!(), "::default_name");
    assert!(
        coalesce::metrics::get(name).is_some(),
        "no coalescer {name}"
    );
}

/// Fails the whole batch if it holds 0.
#[coalesce(window = "5ms")]
async fn fallible(ids: Vec<u64>) -> Result<Vec<String>, DbError> {
    record("fallible", &ids);
    if ids.contains(&0) {
        return Err(DbError("zero"));
    }
    Ok(ids.iter().map(u64::to_string).collect())
}

#[tokio::test(start_paused = true)]
async fn a_batch_error_reaches_every_caller_of_the_batch() {
    let (a, b) = tokio::join!(fallible(0), fallible(7));
    for result in [a, b] {
        match result {
            Err(error) => assert_eq!(error.batch_error().map(|e| e.0), Some("zero")),
            Ok(value) => panic!("expected the batch error, got {value:?}"),
        }
    }
    assert_eq!(fallible(8).await.unwrap(), "8");
}

/// One value too few: the `Vec` shape must have one per key.
#[coalesce(window = "5ms")]
async fn short(ids: Vec<u64>) -> Vec<u64> {
    ids.into_iter().skip(1).collect()
}

#[tokio::test(start_paused = true)]
async fn a_vec_of_the_wrong_length_is_an_error_not_a_wrong_answer() {
    let (a, b) = tokio::join!(short(1), short(2));
    assert!(matches!(a, Err(Error::Shape { .. })), "{a:?}");
    assert!(matches!(b, Err(Error::Shape { .. })), "{b:?}");
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Region {
    Eu,
    Us,
}

/// Extra parameters partition batches: only equal ones share.
#[coalesce(window = "5ms")]
async fn regional(region: Region, ids: Vec<u64>) -> HashMap<u64, String> {
    record(
        match region {
            Region::Eu => "regional.eu",
            Region::Us => "regional.us",
        },
        &ids,
    );
    ids.into_iter()
        .map(|id| (id, format!("{region:?}{id}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn extra_parameters_split_batches() {
    let (a, b, c) = tokio::join!(
        regional(Region::Eu, 1),
        regional(Region::Us, 2),
        regional(Region::Eu, 3),
    );
    assert_eq!(a.unwrap().as_deref(), Some("Eu1"));
    assert_eq!(b.unwrap().as_deref(), Some("Us2"));
    assert_eq!(c.unwrap().as_deref(), Some("Eu3"));
    assert_eq!(batches("regional.eu"), [vec![1, 3]]);
    assert_eq!(batches("regional.us"), [vec![2]]);
}

/// `group` partitions by an expression of the single-key fn's arguments, here of
/// the key (named `id`: the single-key fn names its key in the singular).
#[coalesce(window = "5ms", group = id % 2)]
async fn by_parity(ids: Vec<u64>) -> HashMap<u64, u64> {
    record("by_parity", &ids);
    ids.into_iter().map(|id| (id, id)).collect()
}

#[tokio::test(start_paused = true)]
async fn group_splits_batches() {
    let results = join_all([1, 2, 3, 4].map(by_parity)).await;
    assert!(results.iter().all(Result::is_ok));
    let mut seen = batches("by_parity");
    seen.sort();
    assert_eq!(seen, [vec![1, 3], vec![2, 4]]);
}

#[derive(Clone)]
struct Repo {
    offset: u64,
    batches: std::sync::Arc<AtomicUsize>,
}

impl Repo {
    fn new(offset: u64) -> Self {
        Repo {
            offset,
            batches: Default::default(),
        }
    }

    #[coalesce(window = "5ms")]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        ids.into_iter().map(|id| (id, id + self.offset)).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn methods_coalesce_per_instance() {
    let (a, b) = (Repo::new(100), Repo::new(200));
    let (a1, a2, b1) = tokio::join!(a.get(1), a.get(2), b.get(1));
    assert_eq!(
        (a1.unwrap(), a2.unwrap(), b1.unwrap()),
        (Some(101), Some(102), Some(201))
    );
    assert_eq!(a.batches.load(Ordering::SeqCst), 1);
    assert_eq!(b.batches.load(Ordering::SeqCst), 1);
}

#[coalesce]
async fn double(ids: Vec<u64>) -> Vec<u64> {
    ids.into_iter().map(|id| id * 2).collect()
}

#[tokio::test(start_paused = true)]
async fn a_coalesced_call_is_send() {
    // `tokio::spawn` needs a `Send + 'static` future.
    let task = tokio::spawn(double(6));
    assert_eq!(task.await.unwrap().unwrap(), 12);
}
