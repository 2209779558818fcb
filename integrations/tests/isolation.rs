//! Test isolation with `coalesce::Scope`: each test observes its own batches,
//! whatever runs beside it, and runs a fn with settings of its own.

use std::collections::HashMap;
use std::time::Duration;

use coalesce::{coalesce, Scope};

#[coalesce(window = "5ms", name = "isolation.load")]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id * 10)).collect()
}

#[coalesce(window = "5ms", name = "isolation.only_in_scopes")]
async fn only_in_scopes(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

#[tokio::test]
async fn a_scope_counts_its_own_batches_while_others_call_the_same_fn() {
    // Traffic from outside the scope, on the same fn, all the while.
    let noise = tokio::spawn(async {
        for round in 0..20u64 {
            let _ = tokio::join!(load(round), load(round + 100));
        }
    });
    let scope = Scope::new();
    let values = scope
        .run(async {
            let (a, b, c) = tokio::join!(load(1), load(2), load(3));
            [a.unwrap(), b.unwrap(), c.unwrap()]
        })
        .await;
    assert_eq!(values, [Some(10), Some(20), Some(30)]);
    noise.await.unwrap();
    let mine = scope
        .metrics("isolation.load")
        .expect("the scope made a coalescer");
    assert_eq!((mine.calls, mine.keys, mine.batches), (3, 3, 1));
    // The process-wide coalescer saw the noise only.
    let global = coalesce::metrics::get("isolation.load").expect("the noise made one");
    assert_eq!(global.calls, 40);
}

#[tokio::test]
async fn two_scopes_run_one_fn_with_settings_of_their_own() {
    let one_per_batch = Scope::new().configure("isolation.only_in_scopes", |c| c.max_batch(1));
    let long_window = Scope::new().configure("isolation.only_in_scopes", |c| {
        c.window(Duration::from_millis(20))
    });
    let three = || async {
        let (a, b, c) = tokio::join!(only_in_scopes(1), only_in_scopes(2), only_in_scopes(3));
        (a.unwrap(), b.unwrap(), c.unwrap())
    };
    let (x, y) = tokio::join!(one_per_batch.run(three()), long_window.run(three()));
    assert_eq!(x, (Some(1), Some(2), Some(3)));
    assert_eq!(y, x);
    let first = one_per_batch.metrics("isolation.only_in_scopes").unwrap();
    let second = long_window.metrics("isolation.only_in_scopes").unwrap();
    assert_eq!((first.settings.max_batch, first.batches), (1, 3));
    assert_eq!(second.settings.window, Duration::from_millis(20));
    assert_eq!(second.batches, 1);
    // Neither is listed process-wide, nor counted there.
    assert!(coalesce::metrics::get("isolation.only_in_scopes").is_none());
}

#[tokio::test]
async fn a_task_spawned_in_the_scope_runs_in_it_when_wrapped() {
    let scope = Scope::new();
    let inner = scope.clone();
    scope
        .run(async move {
            let spawned = tokio::spawn(inner.run(async { load(7).await.unwrap() }));
            let here = load(8).await.unwrap();
            assert_eq!((spawned.await.unwrap(), here), (Some(70), Some(80)));
        })
        .await;
    assert_eq!(scope.metrics("isolation.load").unwrap().calls, 2);
}

static WRITES: std::sync::Mutex<Vec<(u64, String)>> = std::sync::Mutex::new(Vec::new());

#[coalesce(window = "5ms", name = "isolation.save")]
async fn save(items: Vec<(u64, String)>) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    WRITES.lock().unwrap().extend(items);
}

#[coalesce(window = "1ms", after_writes = save, name = "isolation.read")]
async fn read(ids: Vec<u64>) -> HashMap<u64, String> {
    let writes = WRITES.lock().unwrap();
    ids.into_iter()
        .filter_map(|id| writes.iter().rev().find(|(k, _)| *k == id).cloned())
        .collect()
}

#[tokio::test]
async fn writes_and_reads_after_them_stay_in_the_scope() {
    let scope = Scope::new();
    scope
        .run(async {
            let (saved, value) = tokio::join!(save(5, "five".into()), async {
                tokio::task::yield_now().await;
                read(5).await
            });
            saved.unwrap();
            assert_eq!(
                value.unwrap().as_deref(),
                Some("five"),
                "the read waited for the write"
            );
        })
        .await;
    let writes = scope.metrics("isolation.save").unwrap();
    assert_eq!((writes.calls, writes.batches), (1, 1));
    assert!(coalesce::metrics::get("isolation.save").is_none());
}

#[coalesce(window = "1ms", name = "isolation.inner")]
async fn inner(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id + 1)).collect()
}

/// A batch fn that calls another coalesced fn for each of its keys.
#[coalesce(window = "1ms", name = "isolation.outer")]
async fn outer(ids: Vec<u64>) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for id in ids {
        out.insert(id, inner(id).await.unwrap().unwrap_or(0));
    }
    out
}

/// A batch runs in its own task, which carries its callers' scope: a
/// coalesced fn that the batch fn calls goes to the scope's coalescer too,
/// not the process-wide one (it escaped to it, so a test's nested calls
/// mixed with its neighbours').
#[tokio::test]
async fn a_batch_fn_runs_in_its_callers_scope() {
    let scope = Scope::new();
    let values = scope
        .run(async {
            let (a, b) = tokio::join!(outer(1), outer(2));
            [a.unwrap(), b.unwrap()]
        })
        .await;
    assert_eq!(values, [Some(2), Some(3)]);
    let nested = scope
        .metrics("isolation.inner")
        .expect("the nested calls went to the scope's coalescer");
    assert_eq!(nested.calls, 2);
    assert!(coalesce::metrics::get("isolation.inner").is_none());
}

#[coalesce(window = "1ms", name = "isolation.reentrant_settings")]
async fn reentrant_settings(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

/// A scope's adjustment is user code: it may read the scope's metrics and
/// configure the scope while the scope makes a coalescer, without
/// deadlocking on the scope's own lists.
#[test]
fn a_scopes_adjustment_may_use_the_scope() {
    let scope = Scope::new();
    let inside = scope.clone();
    let scope = scope.configure("isolation.reentrant_settings", move |c| {
        let _ = inside.snapshot();
        let _ = inside.clone().configure("isolation.other", |c| c);
        c.max_batch(4)
    });
    // On a thread of its own: a deadlock blocks it, not the test.
    let (tx, rx) = std::sync::mpsc::channel();
    let run = scope.run(async { reentrant_settings(3).await.unwrap() });
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(run));
    });
    let value = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a deadlock: the scope made no coalescer");
    assert_eq!(value, Some(3));
    let m = scope
        .metrics("isolation.reentrant_settings")
        .expect("made in the scope");
    assert_eq!(m.settings.max_batch, 4);
}
