//! `#[coalesce]` on write batch fns: the shapes (free fns, `&self` methods with
//! `instance`, extra parameters, per-key results), `merge`, and what the
//! generated single-key fn returns.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use coalesce::coalesce;
use futures::future::join_all;

static VISITS: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());
static VISIT_BATCHES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn add(total: &mut u64, n: u64) {
    *total += n;
}

/// Counts visits: concurrent calls fold into one row per user.
#[coalesce(window = "20ms", max_batch = 1000, merge = add)]
async fn record_visits(items: Vec<(u32, u64)>) -> Result<(), std::io::Error> {
    VISIT_BATCHES.lock().unwrap().push(items.len());
    let mut table = VISITS.lock().unwrap();
    for (user, n) in items {
        *table.entry(user).or_default() += n;
    }
    Ok(())
}

#[tokio::test]
async fn a_merged_write_fn_sends_one_row_per_key() {
    let calls = (0..1000u32).map(|i| record_visits(i % 10, 1));
    for r in join_all(calls).await {
        r.unwrap();
    }
    // Users 0..10 are this test's (others write other users).
    let table: BTreeMap<u32, u64> = VISITS
        .lock()
        .unwrap()
        .range(0..10)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(table.len(), 10);
    assert!(table.values().all(|&n| n == 100));
    let batches = VISIT_BATCHES.lock().unwrap().clone();
    assert!(batches.iter().all(|&n| n <= 11), "{batches:?}");
    assert!(batches.len() < 1000);
    // The batch form stays callable.
    record_visits_batch(vec![(99, 1)]).await.unwrap();
}

/// Last write wins, with an extra parameter (calls share a batch only with
/// equal tenants) and a per-key result.
#[coalesce(window = "10ms")]
async fn set_last_seen(items: Vec<(u32, u64)>, tenant: String) -> HashMap<u32, Result<(), String>> {
    items
        .into_iter()
        .filter(|(user, _)| *user == 13)
        .map(|(user, _)| (user, Err(format!("user {user} of {tenant} is frozen"))))
        .collect()
}

#[tokio::test]
async fn per_key_results_fail_only_their_key() {
    let (a, b, c) = tokio::join!(
        set_last_seen(1, 10, "acme".to_owned()),
        set_last_seen(13, 10, "acme".to_owned()),
        set_last_seen(13, 10, "globex".to_owned()),
    );
    a.unwrap();
    match (b, c) {
        (
            Err(coalesce::Error::Key { source: b, .. }),
            Err(coalesce::Error::Key { source: c, .. }),
        ) => {
            assert_eq!(*b, "user 13 of acme is frozen");
            assert_eq!(*c, "user 13 of globex is frozen");
        }
        other => panic!("{other:?}"),
    }
}

/// A repository cloned per request: `instance` makes the clones one.
#[derive(Clone)]
struct Scores {
    table: Arc<Mutex<HashMap<String, i64>>>,
    statements: Arc<Mutex<usize>>,
    schema: &'static str,
}

impl Scores {
    #[coalesce(window = "10ms", instance = self.schema)]
    async fn save(&self, items: Vec<(String, i64)>) -> Result<(), String> {
        *self.statements.lock().unwrap() += 1;
        let mut table = self.table.lock().unwrap();
        for (k, v) in items {
            table.insert(format!("{}.{k}", self.schema), v);
        }
        Ok(())
    }
}

#[tokio::test]
async fn clones_of_one_repository_share_write_batches() {
    let repo = Scores {
        table: Arc::default(),
        statements: Arc::default(),
        schema: "live",
    };
    let calls = (0..200i64).map(|i| {
        let per_request = repo.clone();
        async move { per_request.save(format!("p{}", i % 20), i).await }
    });
    for r in join_all(calls).await {
        r.unwrap();
    }
    let table = repo.table.lock().unwrap().clone();
    assert_eq!(table.len(), 20);
    // Last write wins: call order is kept per key.
    assert_eq!(table["live.p0"], 180);
    assert!(*repo.statements.lock().unwrap() < 200);
}

/// Reads the visit counts; declared to follow `record_visits`, so a read of a
/// key waits for the writes to that key accepted before it.
#[coalesce(window = "1ms", after_writes = record_visits)]
async fn get_visits(users: Vec<u32>) -> HashMap<u32, u64> {
    let table = VISITS.lock().unwrap();
    users
        .into_iter()
        .filter_map(|u| table.get(&u).map(|n| (u, *n)))
        .collect()
}

#[tokio::test]
async fn a_read_after_writes_sees_every_write_accepted_before_it() {
    let mut writes: Vec<_> = (0..100).map(|_| Box::pin(record_visits(500, 1))).collect();
    for w in &mut writes {
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    // The writes gather for 20 ms; the read's own window is 1 ms.
    let (read, written) = tokio::join!(get_visits(500), join_all(writes));
    assert!(written.iter().all(Result::is_ok));
    assert_eq!(read.unwrap(), Some(100));
}

impl Scores {
    #[coalesce(window = "1ms", instance = self.schema, after_writes = Self::save)]
    async fn get(&self, keys: Vec<String>) -> HashMap<String, i64> {
        let table = self.table.lock().unwrap();
        keys.into_iter()
            .filter_map(|k| table.get(&format!("{}.{k}", self.schema)).map(|v| (k, *v)))
            .collect()
    }
}

#[tokio::test]
async fn a_read_method_follows_the_write_method_it_names() {
    let repo = Scores {
        table: Arc::default(),
        statements: Arc::default(),
        schema: "ryw",
    };
    let mut write = Box::pin(repo.save("k".to_owned(), 7));
    assert!(futures::poll!(write.as_mut()).is_pending());
    let (read, written) = tokio::join!(repo.get("k".to_owned()), write);
    written.unwrap();
    assert_eq!(read.unwrap(), Some(7));
}

static SLOW_ROWS: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());

/// An hour-long window: only a flush sends it.
#[coalesce(window = "3600s", name = "writes.flush_one")]
async fn slow_save(items: Vec<(u32, u32)>) {
    SLOW_ROWS.lock().unwrap().extend(items);
}

#[tokio::test]
async fn one_write_fn_is_flushed_by_its_name() {
    let writers: Vec<_> = (0..3).map(|k| tokio::spawn(slow_save(k, k))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let flushed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        coalesce::flush("writes.flush_one"),
    )
    .await
    .expect("the flush waited out the window");
    assert_eq!((flushed.keys, flushed.failed), (3, 0));
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(SLOW_ROWS.lock().unwrap().len(), 3);
}

/// A write fn whose batch never ends: `drain(name, deadline)` fails what is
/// left of it, by its name.
#[coalesce(window = "1ms", name = "writes.drain_one")]
async fn stuck_save(items: Vec<(u32, u32)>) {
    let _ = items;
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn one_write_fn_is_drained_by_its_name() {
    let writer = tokio::spawn(stuck_save(1, 1));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let drained = coalesce::drain("writes.drain_one", std::time::Duration::from_millis(50)).await;
    assert_eq!((drained.dropped, drained.unsure), (0, 1), "{drained:?}");
    assert!(matches!(
        writer.await.unwrap(),
        Err(coalesce::Error::MaybeCommitted { .. })
    ));
}
