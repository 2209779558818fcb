//! `<fn>_many`, `Core::load_many` and `dispatch_now`: many keys join the shared
//! batches like single-key calls (deduplicated against concurrent callers,
//! split at `max_batch`, counted), and a gathering batch can be sent at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use coalesce::{coalesce, Coalescer, Config, Core};

static FETCHED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[coalesce(window = "5ms", max_batch = 1000, name = "many.users")]
async fn user_names(ids: Vec<u64>) -> HashMap<u64, String> {
    FETCHED.lock().unwrap().extend(&ids);
    ids.into_iter()
        .filter(|id| id % 7 != 0)
        .map(|id| (id, format!("user {id}")))
        .collect()
}

#[tokio::test]
async fn many_keys_join_the_shared_batches_deduplicated_and_split() {
    // 5,000 ids with duplicates, next to single-key callers of ids in the
    // batch still gathering (the first two are full, and leave at once).
    let ids: Vec<u64> = (0..5000).map(|i| i % 2500 + 1).collect();
    let singles = futures::future::join_all((2402..=2411).map(user_names));
    let (many, singles) = tokio::join!(user_names_many(ids), singles);
    let many = many.unwrap();
    assert_eq!(many.len(), 2500 - 2500 / 7);
    assert_eq!(many[&1], "user 1");
    assert!(!many.contains_key(&7), "no entry: left out of the map");
    assert_eq!(singles[0].as_ref().unwrap().as_deref(), Some("user 2402"));
    let fetched = FETCHED.lock().unwrap().clone();
    let mut distinct = fetched.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(fetched.len(), distinct.len(), "a key fetched twice");
    assert_eq!(distinct.len(), 2500);
    let m = coalesce::metrics::get("many.users").unwrap();
    assert!(m.batch_size.max <= 1000);
    assert!(m.batches >= 3);
}

/// A `Vec`-shaped fn: an entry is required; a method with an extra parameter.
#[derive(Clone)]
struct Squares {
    offset: u64,
}

impl Squares {
    #[coalesce(window = "1ms")]
    async fn square(&self, keys: Vec<u64>, plus: u64) -> Vec<u64> {
        keys.iter().map(|k| k * k + plus + self.offset).collect()
    }
}

#[tokio::test]
async fn a_method_many_form_takes_its_extra_parameters() {
    let sq = Squares { offset: 1000 };
    let got = sq.square_many(vec![2, 3, 2], 1).await.unwrap();
    assert_eq!(got, HashMap::from([(2, 1005), (3, 1010)]));
}

#[tokio::test]
async fn the_engine_loads_many_in_order_and_dispatches_on_demand() {
    let core: Core<(), u32, u32> = Core::new(Config::new("many.core"));
    let got = core
        .load_many_ordered((), [3, 1, 3, 9], |_, keys: Vec<u32>| async move {
            keys.into_iter()
                .filter(|k| *k != 9)
                .map(|k| (k, k * 10))
                .collect::<HashMap<_, _>>()
        })
        .await
        .unwrap();
    assert_eq!(got, [Some(30), Some(10), Some(30), None]);
    assert_eq!(core.metrics().keys, 3);

    // An hour-long window, sent at once by `dispatch_now`.
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let c = Coalescer::new(
        Config::new("many.dispatch").window(Duration::from_secs(3600)),
        move |keys: Vec<u32>| {
            r.fetch_add(1, SeqCst);
            async move { keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>() }
        },
    );
    let mut pending = Box::pin(c.load_many([1, 2, 3]));
    assert!(futures::poll!(pending.as_mut()).is_pending());
    assert_eq!(c.dispatch_now(), 1);
    let got = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("dispatch_now did not send the batch")
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(runs.load(SeqCst), 1);
}

/// `group = tenant` with a bound per group: a flooding tenant is refused, a
/// quiet one is served.
#[coalesce(window = "50ms", max_pending_per_group = 2, group = tenant.clone())]
async fn tenant_rows(ids: Vec<u32>, tenant: String) -> HashMap<u32, String> {
    ids.into_iter()
        .map(|id| (id, format!("{tenant}/{id}")))
        .collect()
}

#[tokio::test]
async fn one_tenant_at_its_bound_never_rejects_another() {
    let mut noisy: Vec<_> = (0..2)
        .map(|id| Box::pin(tenant_rows(id, "noisy".to_owned())))
        .collect();
    for call in &mut noisy {
        assert!(futures::poll!(call.as_mut()).is_pending());
    }
    assert!(matches!(
        tenant_rows(5, "noisy".to_owned()).await,
        Err(coalesce::Error::GroupOverloaded { .. })
    ));
    assert_eq!(
        tenant_rows(5, "quiet".to_owned()).await.unwrap().as_deref(),
        Some("quiet/5")
    );
    for call in noisy {
        call.await.unwrap();
    }
}
