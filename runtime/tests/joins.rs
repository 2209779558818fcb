//! Joining work already on its way: a call for a key that a running batch (or
//! a lone call's run) is fetching waits for that answer instead of fetching
//! the key again; a call for a key in a full batch not yet started joins it.
//! Deterministic under Tokio's paused clock.

mod common;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalesce_runtime::{Coalescer, Config, Dispatch, Error};
use futures::future::join_all;

/// Every batch the batch fn was given.
type Log = Arc<Mutex<Vec<Vec<u64>>>>;

/// A coalescer whose batch fn takes `run` per batch and logs its keys.
fn slow(config: Config, run: Duration) -> (Arc<Coalescer<u64, u64>>, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let c = Coalescer::new(config, move |keys: Vec<u64>| {
        l.lock().unwrap().push(keys.clone());
        async move {
            tokio::time::sleep(run).await;
            keys.into_iter()
                .map(|k| (k, k * 10))
                .collect::<HashMap<_, _>>()
        }
    });
    (Arc::new(c), log)
}

fn spawn_load(
    c: &Arc<Coalescer<u64, u64>>,
    key: u64,
) -> tokio::task::JoinHandle<Result<Option<u64>, Error>> {
    let c = c.clone();
    tokio::spawn(async move { c.load(key).await })
}

fn assert_idle(c: &Coalescer<u64, u64>) {
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

/// The case, in both dispatch modes: a second call 10 ms into a 100 ms
/// batch waits for that batch instead of running the batch fn again.
#[tokio::test(start_paused = true)]
async fn a_call_10ms_into_a_100ms_batch_waits_for_it() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let (c, log) = slow(
            Config::new("j.running")
                .dispatch(dispatch)
                .window(Duration::from_millis(1)),
            Duration::from_millis(100),
        );
        let first = spawn_load(&c, 7);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = spawn_load(&c, 7);
        assert_eq!(first.await.unwrap().unwrap(), Some(70));
        assert_eq!(second.await.unwrap().unwrap(), Some(70));
        assert_eq!(log.lock().unwrap().len(), 1, "{dispatch:?}: {log:?}");
        let m = c.metrics();
        assert_eq!(
            (m.calls, m.keys, m.dedup_hits, m.joined_running),
            (2, 1, 1, 1)
        );
        assert_idle(&c);
    }
}

/// `join_running(false)`: the second call sees a batch that started after it.
#[tokio::test(start_paused = true)]
async fn join_running_off_fetches_again() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let (c, log) = slow(
            Config::new("j.fresh")
                .dispatch(dispatch)
                .window(Duration::from_millis(1))
                .join_running(false),
            Duration::from_millis(100),
        );
        let first = spawn_load(&c, 7);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = spawn_load(&c, 7);
        assert_eq!(first.await.unwrap().unwrap(), Some(70));
        assert_eq!(second.await.unwrap().unwrap(), Some(70));
        assert_eq!(log.lock().unwrap().len(), 2, "{dispatch:?}");
        assert_eq!(c.metrics().joined_running, 0);
        assert!(!c.metrics().settings.join_running);
        assert_idle(&c);
    }
}

/// `max_batch = 2` and calls 1, 2, 1, 3: the second call for 1 joins the full
/// batch that has not started, which costs it nothing.
#[tokio::test(start_paused = true)]
async fn a_key_in_a_full_batch_not_yet_started_joins_it() {
    let (c, log) = slow(
        Config::new("j.full").max_batch(2).max_in_flight(1),
        Duration::from_millis(10),
    );
    let out = join_all([1, 2, 1, 3].map(|k| c.load(k))).await;
    let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(out, [Some(10), Some(20), Some(10), Some(30)]);
    let mut batches = log.lock().unwrap().clone();
    batches.iter_mut().for_each(|b| b.sort());
    assert_eq!(batches, [vec![1, 2], vec![3]]);
    let m = c.metrics();
    assert_eq!(
        (m.calls, m.keys, m.dedup_hits, m.joined_running),
        (4, 3, 1, 0)
    );
    assert_idle(&c);
}

/// The same, with the full batch queued behind a running one (`max_in_flight
/// = 1`), and with joining running batches off: a batch that has not started
/// is joined either way.
#[tokio::test(start_paused = true)]
async fn a_queued_full_batch_is_joined_even_with_join_running_off() {
    let (c, log) = slow(
        Config::new("j.queued")
            .max_batch(2)
            .max_in_flight(1)
            .join_running(false),
        Duration::from_millis(50),
    );
    let early = spawn_load(&c, 100);
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Batch 100 runs; 1 and 2 fill a batch that queues for the lane.
    let out = join_all([1, 2, 1, 2, 1].map(|k| c.load(k))).await;
    assert!(out.into_iter().all(|r| r.unwrap().is_some()));
    assert_eq!(early.await.unwrap().unwrap(), Some(1000));
    assert_eq!(log.lock().unwrap().len(), 2, "{log:?}");
    assert_eq!(c.metrics().dedup_hits, 3);
    assert_idle(&c);
}

/// Joiners of a running batch: many at once, one leaves, the batch's first
/// caller leaves; everyone left gets the value, and the batch is not stopped
/// while a joiner waits.
#[tokio::test(start_paused = true)]
async fn joiners_keep_a_running_batch_alive_after_its_first_caller_left() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let (c, log) = slow(
            Config::new("j.leave").dispatch(dispatch),
            Duration::from_millis(100),
        );
        let first = spawn_load(&c, 5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let joiners: Vec<_> = (0..50).map(|_| spawn_load(&c, 5)).collect();
        let leaver = spawn_load(&c, 5);
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        leaver.abort();
        for j in join_all(joiners).await {
            assert_eq!(j.unwrap().unwrap(), Some(50));
        }
        assert_eq!(log.lock().unwrap().len(), 1, "{dispatch:?}");
        let m = c.metrics();
        assert_eq!(m.joined_running, 51, "{dispatch:?} {m}");
        assert!(m.cancelled_calls >= 1, "{m}");
        assert_idle(&c);
    }
}

/// A failed run fails its joiners with the same error; a panic too.
#[tokio::test(start_paused = true)]
async fn joiners_get_the_runs_failure() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        for panics in [false, true] {
            let c = Arc::new(Coalescer::new(
                Config::new("j.fail").dispatch(dispatch),
                move |_keys: Vec<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if panics {
                        panic!("boom");
                    }
                    Err::<HashMap<u64, u64>, _>(std::io::Error::other("db down"))
                },
            ));
            let first = {
                let c = c.clone();
                tokio::spawn(async move { c.load(1).await })
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            let second = c.load(1).await;
            let first = first.await.unwrap();
            for r in [first, second] {
                match (panics, r) {
                    (false, Err(Error::Batch { .. })) | (true, Err(Error::Panicked { .. })) => {}
                    (_, other) => panic!("{dispatch:?} panics={panics}: {other:?}"),
                }
            }
            assert_eq!(c.metrics().batches, 1);
        }
    }
}

/// A call made inside a batch function never waits for a running batch (that
/// batch may be waiting for it): a batch fn that loads one of its own keys
/// through its own coalescer completes.
#[tokio::test(start_paused = true)]
async fn a_batch_fn_loading_its_own_key_does_not_wait_for_itself() {
    use std::sync::OnceLock;
    static C: OnceLock<Coalescer<u64, u64>> = OnceLock::new();
    let c = C.get_or_init(|| {
        Coalescer::new(
            Config::new("j.self").max_in_flight(4),
            |keys: Vec<u64>| async move {
                let mut out = HashMap::new();
                for k in keys {
                    let v = if k >= 100 {
                        // Its own key, through the coalescer: a new batch.
                        C.get().unwrap().load(k - 100).await.unwrap().unwrap_or(0) + 1
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        k
                    };
                    out.insert(k, v);
                }
                out
            },
        )
    });
    let out = tokio::time::timeout(Duration::from_secs(60), c.load(107)).await;
    assert_eq!(out.unwrap().unwrap(), Some(8));
}

/// A key every caller of which left before its batch ran was not fetched: a
/// later call for it fetches it instead of waiting for that run.
#[tokio::test(start_paused = true)]
async fn a_key_abandoned_before_the_run_is_not_joined() {
    let (c, log) = slow(Config::new("j.abandoned"), Duration::from_millis(100));
    let keep = spawn_load(&c, 1);
    let gone = spawn_load(&c, 2);
    tokio::task::yield_now().await;
    gone.abort();
    // The window (5 ms) passes: the batch runs with key 1 only.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(c.load(2).await.unwrap(), Some(20));
    assert_eq!(keep.await.unwrap().unwrap(), Some(10));
    let batches = log.lock().unwrap().clone();
    assert_eq!(batches, [vec![1], vec![2]]);
    assert_idle(&c);
}

/// A key whose hash equals a running lone call's but which is not equal to
/// it: the call waits for that run, then fetches its own key.
#[tokio::test(start_paused = true)]
async fn a_hash_collision_with_a_lone_run_fetches_its_own_key() {
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Colliding(u64);
    impl Hash for Colliding {
        fn hash<H: Hasher>(&self, h: &mut H) {
            0u8.hash(h);
        }
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let c = Arc::new(Coalescer::new(
        Config::new("j.collide").dispatch(Dispatch::Adaptive),
        move |keys: Vec<Colliding>| {
            r.fetch_add(1, SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                keys.into_iter()
                    .map(|k| (k.clone(), k.0))
                    .collect::<HashMap<_, _>>()
            }
        },
    ));
    let first = {
        let c = c.clone();
        tokio::spawn(async move { c.load(Colliding(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.load(Colliding(2)).await.unwrap(), Some(2));
    assert_eq!(first.await.unwrap().unwrap(), Some(1));
    assert_eq!(runs.load(SeqCst), 2);
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0));
}

/// A lone call whose caller is alive but never polled again: a call that
/// joined its run is answered all the same (the run moves to a task).
#[tokio::test(start_paused = true)]
async fn a_joiner_is_not_stalled_by_a_lone_caller_that_is_not_polled() {
    let (c, log) = slow(
        Config::new("j.unpolled").dispatch(Dispatch::Adaptive),
        Duration::from_millis(30),
    );
    let mut first = Box::pin(c.load(3));
    // One poll: the run starts and is pending; then the caller is never polled.
    assert!(futures::poll!(first.as_mut()).is_pending());
    let second = tokio::time::timeout(Duration::from_secs(5), c.load(3)).await;
    assert_eq!(second.unwrap().unwrap(), Some(30));
    assert_eq!(log.lock().unwrap().len(), 1);
    // The first caller reads its own answer when it is polled at last.
    assert_eq!(first.await.unwrap(), Some(30));
    assert_idle(&c);
}

/// A lone caller that leaves after another call joined its run: the run goes
/// on for the joiner (it was moved to a task when the joiner came).
#[tokio::test(start_paused = true)]
async fn a_lone_run_goes_on_for_its_joiner_after_its_caller_left() {
    let (c, log) = slow(
        Config::new("j.cancelled").dispatch(Dispatch::Adaptive),
        Duration::from_millis(30),
    );
    let mut first = Box::pin(c.load(4));
    assert!(futures::poll!(first.as_mut()).is_pending());
    let mut second = Box::pin(c.load(4));
    assert!(futures::poll!(second.as_mut()).is_pending());
    assert_eq!(c.metrics().joined_running, 1);
    drop(first);
    assert_eq!(second.await.unwrap(), Some(40));
    // The run was promoted when the second call joined: it went on for it.
    // (Had it stayed inline, the second call would have fetched again.)
    assert_eq!(log.lock().unwrap().len(), 1);
    // It ran for the joiner: not a cancelled batch (it was counted as one),
    // and its run time is counted (it was not).
    let m = c.metrics();
    assert_eq!((m.cancelled_batches, m.run.count), (0, 1), "{m}");
    assert_idle(&c);
}

/// The lone caller leaves, then its joiner: both calls are cancelled, and the
/// run, already under way for the joiner, ends as it would have: not a
/// cancelled batch, and counted once.
#[tokio::test(start_paused = true)]
async fn a_lone_run_left_by_its_caller_and_its_joiner_ends_once() {
    let (c, log) = slow(
        Config::new("j.cancelled.both").dispatch(Dispatch::Adaptive),
        Duration::from_millis(30),
    );
    let mut first = Box::pin(c.load(4));
    assert!(futures::poll!(first.as_mut()).is_pending());
    let mut second = Box::pin(c.load(4));
    assert!(futures::poll!(second.as_mut()).is_pending());
    drop(first);
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(second);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.lock().unwrap().len(), 1);
    let m = c.metrics();
    assert_eq!(
        (m.cancelled_batches, m.cancelled_calls, m.batches),
        (0, 2, 1),
        "{m}"
    );
    assert_idle(&c);
}

/// Many tasks on a multi-threaded runtime, overlapping bursts over a few hot
/// keys: every call gets its own key's value, nothing is left pending, and
/// calls = keys + dedup hits.
#[test]
fn overlapping_bursts_on_many_threads_get_their_own_values() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let c = Arc::new(Coalescer::new(
            Config::new("j.mt")
                .dispatch(dispatch)
                .window(Duration::from_micros(200))
                .max_batch(16)
                .max_in_flight(3),
            |keys: Vec<u64>| async move {
                tokio::time::sleep(Duration::from_micros(300)).await;
                keys.into_iter()
                    .map(|k| (k, k * 3))
                    .collect::<HashMap<_, _>>()
            },
        ));
        rt.block_on(async {
            let tasks: Vec<_> = (0..4000u64)
                .map(|i| {
                    let c = c.clone();
                    tokio::spawn(async move {
                        if i % 50 == 0 {
                            tokio::time::sleep(Duration::from_micros(100)).await;
                        }
                        let key = if i % 3 == 0 { i % 5 } else { i };
                        (key, c.load(key).await)
                    })
                })
                .collect();
            for t in join_all(tasks).await {
                let (k, r) = t.unwrap();
                assert_eq!(r.unwrap(), Some(k * 3));
            }
        });
        let m = c.metrics();
        assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
        assert_eq!(m.calls, 4000);
        assert_eq!(m.calls, m.keys + m.dedup_hits, "{m}");
    }
}

/// A key whose `Drop` panics for the instance a call was made with (its
/// clones drop quietly): user code.
#[derive(Debug)]
struct Fragile {
    id: u64,
    bomb: bool,
}

impl Clone for Fragile {
    fn clone(&self) -> Self {
        Fragile {
            id: self.id,
            bomb: false,
        }
    }
}

impl Hash for Fragile {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.id.hash(h);
    }
}

impl PartialEq for Fragile {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Fragile {}

impl Drop for Fragile {
    fn drop(&mut self) {
        if self.bomb && !std::thread::panicking() {
            panic!("provoked: Drop of a joiner's key");
        }
    }
}

/// A call joins a lone run and leaves; its key is then dropped by whoever
/// answers the run's joiners (the run's task). A panic in that `Drop` stays
/// there: the run still ends, its caller is answered and its lane given back
/// (the task used to unwind before it gave the lane back, stalling the road).
#[tokio::test(start_paused = true)]
async fn a_joiners_key_whose_drop_panics_stalls_nobody() {
    common::quiet();
    let c = Arc::new(Coalescer::new(
        Config::new("j.fragile")
            .dispatch(Dispatch::Adaptive)
            .max_in_flight(1),
        |keys: Vec<Fragile>| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            keys.iter()
                .map(|k| (k.clone(), k.id * 10))
                .collect::<HashMap<_, _>>()
        },
    ));
    let mut first = Box::pin(c.load(Fragile { id: 4, bomb: false }));
    assert!(futures::poll!(first.as_mut()).is_pending());
    let mut joiner = Box::pin(c.load(Fragile { id: 4, bomb: true }));
    assert!(futures::poll!(joiner.as_mut()).is_pending());
    assert_eq!(c.metrics().joined_running, 1);
    // The joiner leaves; a panic from its own key here is its own call's.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(joiner)));
    let answered = tokio::time::timeout(Duration::from_secs(5), first).await;
    assert_eq!(
        answered.expect("the lone caller stalled").unwrap(),
        Some(40)
    );
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        c.load(Fragile { id: 5, bomb: false }),
    )
    .await;
    assert_eq!(
        next.expect("the lane was never given back").unwrap(),
        Some(50)
    );
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}
