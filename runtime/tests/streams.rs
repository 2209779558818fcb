//! Streamed batches (`Streamed`): each caller resolves when its own entry
//! arrives, and the run never holds all entries. One test per semantic, under
//! Tokio's paused clock unless it needs real threads.

mod common;
use common::Touchy;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use coalesce_runtime::{streamed, Coalescer, Config, Dispatch, Error, Streamed};
use futures::stream::{self, Stream, StreamExt};
use tokio::time::Instant;

type Item = Result<(u64, u64), String>;

/// One scripted step: wait `ms`, then yield the item (or panic, for `None`).
#[derive(Clone)]
enum Step {
    After(u64, Item),
    PanicAfter(u64),
    Forever,
}

use Step::{After, Forever, PanicAfter};

/// A scripted stream that records its polls and its drop.
struct Probe {
    inner: Pin<Box<dyn Stream<Item = Item> + Send>>,
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Stream for Probe {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.polls.fetch_add(1, SeqCst);
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

/// What the tests look at: the keys each batch got, polls, drops.
#[derive(Clone, Default)]
struct Seen {
    batches: Arc<Mutex<Vec<Vec<u64>>>>,
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

fn scripted(steps: Vec<Step>, seen: &Seen) -> Probe {
    let s = stream::iter(steps).then(|step| async move {
        match step {
            After(ms, item) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some(item)
            }
            PanicAfter(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                panic!("the stream panicked")
            }
            Forever => std::future::pending().await,
        }
    });
    Probe {
        inner: Box::pin(s.filter_map(|x| async move { x })),
        polls: seen.polls.clone(),
        dropped: seen.dropped.clone(),
    }
}

/// A coalescer whose every batch streams `steps`.
fn coalescer(config: Config, steps: Vec<Step>) -> (Arc<Coalescer<u64, u64, String>>, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let c = Coalescer::new(config, move |keys: Vec<u64>| {
        s.batches.lock().unwrap().push(keys);
        let probe = scripted(steps.clone(), &s);
        async move { Streamed(probe) }
    });
    (Arc::new(c), seen)
}

fn ok(k: u64) -> Item {
    Ok((k, k * 10))
}

/// A load's result, and how long it took.
type Timed = (Result<Option<u64>, Error<String>>, Duration);

/// Spawns a load and records when it resolved.
fn timed(c: &Arc<Coalescer<u64, u64, String>>, key: u64) -> tokio::task::JoinHandle<Timed> {
    let c = c.clone();
    let t0 = Instant::now();
    tokio::spawn(async move {
        let r = c.load(key).await;
        (r, t0.elapsed())
    })
}

fn assert_idle(c: &Coalescer<u64, u64, String>) {
    let m = c.metrics();
    assert_eq!((m.pending, m.in_flight), (0, 0), "{m}");
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn each_caller_resolves_when_its_own_item_arrives() {
    for dispatch in [Dispatch::Window, Dispatch::Adaptive] {
        let (c, seen) = coalescer(
            Config::new("s.each").dispatch(dispatch).window(ms(1)),
            vec![After(10, ok(1)), After(40, ok(2)), After(50, ok(3))],
        );
        let calls = [timed(&c, 1), timed(&c, 2), timed(&c, 3)];
        let mut at = Vec::new();
        for (k, h) in (1..).zip(calls) {
            let (r, t) = h.await.unwrap();
            assert_eq!(r.unwrap(), Some(k * 10));
            at.push(t);
        }
        assert_eq!(seen.batches.lock().unwrap().len(), 1, "{dispatch:?}");
        // Each resolved as its item came (plus the window), not at the end.
        assert!(
            at[0] < ms(20) && at[1] < ms(60) && at[2] < ms(110),
            "{at:?}"
        );
        assert!(at[0] < at[1] && at[1] < at[2], "{at:?}");
        let m = c.metrics();
        // (The metric is on the real clock; this test's clock is paused.)
        assert_eq!(m.first_item.count, 1, "{m}");
        assert_idle(&c);
    }
}

/// A lone streamed call (adaptive, idle road) goes through a batch and is
/// answered as soon as its item comes, before the stream ends.
#[tokio::test(start_paused = true)]
async fn a_lone_streamed_call_resolves_at_its_item() {
    let (c, seen) = coalescer(
        Config::new("s.lone").dispatch(Dispatch::Adaptive),
        vec![After(5, ok(1)), Forever],
    );
    let (r, t) = timed(&c, 1).await.unwrap();
    assert_eq!(r.unwrap(), Some(10));
    assert!(t < ms(10), "{t:?}");
    // Every key delivered: the stream that never ends is dropped.
    assert!(seen.dropped.load(SeqCst));
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn the_first_item_wins_and_strangers_and_repeats_are_counted() {
    let (c, _) = coalescer(
        Config::new("s.first"),
        vec![
            After(1, Ok((99, 1))),
            After(1, ok(1)),
            After(1, Ok((1, 12345))),
            After(1, Ok((98, 1))),
            After(1, ok(2)),
        ],
    );
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(10), Some(20)));
    // Two strangers and a repeat of key 1.
    assert_eq!(c.metrics().unrequested_entries, 3, "{}", c.metrics());
    assert_idle(&c);
}

#[tokio::test(start_paused = true)]
async fn keys_never_yielded_get_none_when_the_stream_ends() {
    let (c, _) = coalescer(Config::new("s.none"), vec![After(1, ok(1))]);
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(10), None));
    assert_idle(&c);
}

/// An `Err` item fails only the keys not delivered yet; the stream is not
/// polled again.
#[tokio::test(start_paused = true)]
async fn an_error_mid_stream_fails_only_undelivered_keys() {
    let (c, seen) = coalescer(
        Config::new("s.err"),
        vec![
            After(1, ok(1)),
            After(1, Err("connection reset".into())),
            After(1, ok(2)),
        ],
    );
    let (a, b, d) = tokio::join!(c.load(1), c.load(2), c.load(3));
    assert_eq!(a.unwrap(), Some(10));
    for r in [b, d] {
        match r {
            Err(Error::Batch { source, .. }) => assert_eq!(*source, "connection reset"),
            other => panic!("{other:?}"),
        }
    }
    let polls = seen.polls.load(SeqCst);
    tokio::time::sleep(ms(50)).await;
    assert_eq!(seen.polls.load(SeqCst), polls, "polled after its error");
    assert!(seen.dropped.load(SeqCst));
    assert_eq!(c.metrics().batch_errors, 2, "{}", c.metrics());
    assert_idle(&c);
}

/// A panic mid-stream: the same, as `Error::Panicked`.
#[tokio::test(start_paused = true)]
async fn a_panic_mid_stream_fails_only_undelivered_keys() {
    let (c, seen) = coalescer(Config::new("s.panic"), vec![After(1, ok(1)), PanicAfter(1)]);
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert_eq!(a.unwrap(), Some(10));
    assert!(matches!(b, Err(Error::Panicked { .. })), "{b:?}");
    assert!(seen.dropped.load(SeqCst));
    assert_idle(&c);
}

/// A panic in the same poll as an item delivered before it: the delivered
/// caller is still woken with its value (the driver answers callers when its
/// poll returns, and when it unwinds).
#[tokio::test(start_paused = true)]
async fn a_panic_right_after_an_item_still_answers_that_items_caller() {
    let c = Arc::new(Coalescer::new(
        Config::new("s.panic_same_poll"),
        |mut keys: Vec<u64>| async move {
            keys.sort_unstable();
            Streamed(stream::iter(keys).map(|k| {
                assert!(k != 2, "the stream panicked");
                Ok::<_, String>((k, k * 10))
            }))
        },
    ));
    let (one, two) = (timed(&c, 1), timed(&c, 2));
    // A caller left unwoken would wait forever: bound it (the paused clock
    // jumps there at once).
    let both = tokio::time::timeout(Duration::from_secs(60), async {
        (one.await.unwrap().0, two.await.unwrap().0)
    });
    let (one, two) = both.await.expect("a delivered caller was never woken");
    assert_eq!(one.unwrap(), Some(10));
    assert!(matches!(two, Err(Error::Panicked { .. })), "{two:?}");
    assert_idle(&c);
}

/// `Result<stream, E>` with an `Err` fails the whole batch.
#[tokio::test(start_paused = true)]
async fn an_error_before_the_first_row_fails_the_batch() {
    let c = Coalescer::new(Config::new("s.outer"), |_keys: Vec<u64>| async move {
        streamed::<u64, u64, String, stream::Empty<Item>>(Err("no connection".into()))
    });
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert!(matches!(a, Err(Error::Batch { .. })) && matches!(b, Err(Error::Batch { .. })));
}

/// A stream that has delivered every key but never ends is dropped at once
/// and frees its lane: the next batch (one lane) runs.
#[tokio::test(start_paused = true)]
async fn a_stream_that_never_ends_frees_its_lane_once_every_key_is_delivered() {
    let (c, seen) = coalescer(
        Config::new("s.forever").max_in_flight(1),
        vec![After(1, ok(1)), After(1, ok(2)), Forever],
    );
    assert_eq!(c.load(1).await.unwrap(), Some(10));
    assert!(seen.dropped.load(SeqCst));
    let second = tokio::time::timeout(ms(1000), c.load(2)).await;
    assert_eq!(second.unwrap().unwrap(), Some(20));
    assert_eq!(seen.batches.lock().unwrap().len(), 2);
    assert_idle(&c);
}

/// Many items nobody asked for come first (java-dataloader #273: a loader that
/// requested `keys.len()` items hung): the requested ones still arrive.
#[tokio::test(start_paused = true)]
async fn unrequested_items_first_do_not_starve_the_rest() {
    let mut steps: Vec<Step> = (1000..3000).map(|k| After(0, Ok((k, 0)))).collect();
    steps.push(After(1, ok(1)));
    steps.push(After(1, ok(2)));
    let (c, _) = coalescer(Config::new("s.starve"), steps);
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(10), Some(20)));
    assert_eq!(c.metrics().unrequested_entries, 2000);
    assert_idle(&c);
}

/// A stream that never yields times out; the timeout fails only keys not
/// delivered.
#[tokio::test(start_paused = true)]
async fn the_timeout_fails_only_undelivered_keys() {
    let (c, seen) = coalescer(
        Config::new("s.timeout").timeout(ms(100)),
        vec![After(10, ok(1)), Forever],
    );
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert_eq!(a.unwrap(), Some(10));
    assert!(matches!(b, Err(Error::Timeout { .. })), "{b:?}");
    assert!(seen.dropped.load(SeqCst));
    let (c, _) = coalescer(Config::new("s.silent").timeout(ms(100)), vec![Forever]);
    assert!(matches!(c.load(1).await, Err(Error::Timeout { .. })));
    assert_idle(&c);
}

/// The idle timeout bounds the gap between items (and before the first).
#[tokio::test(start_paused = true)]
async fn the_idle_timeout_bounds_the_gap_between_items() {
    let (c, seen) = coalescer(
        Config::new("s.idle").idle_timeout(ms(30)),
        vec![After(20, ok(1)), After(20, ok(2)), After(100, ok(3))],
    );
    let t0 = Instant::now();
    let (a, b, d) = tokio::join!(c.load(1), c.load(2), c.load(3));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(10), Some(20)));
    match d {
        Err(e @ Error::IdleTimeout { .. }) => {
            assert!(matches!(e, Error::IdleTimeout { after, .. } if after == ms(30)));
            // It names the setting to raise, not `timeout`.
            let shown = e.to_string();
            assert!(shown.contains("`idle_timeout`"), "{shown}");
            assert!(e.is_transient());
        }
        other => panic!("{other:?}"),
    }
    // Timed out 30 ms after the second item, not after 140 ms.
    assert!(t0.elapsed() < ms(90), "{:?}", t0.elapsed());
    assert!(seen.dropped.load(SeqCst));
    assert_idle(&c);
}

/// One caller leaves; the others are answered.
#[tokio::test(start_paused = true)]
async fn one_cancelled_caller_delays_nobody() {
    let (c, _) = coalescer(
        Config::new("s.cancel1"),
        vec![After(10, ok(1)), After(10, ok(2)), After(10, ok(3))],
    );
    let gone = timed(&c, 2);
    let keep = [timed(&c, 1), timed(&c, 3)];
    tokio::time::sleep(ms(8)).await;
    gone.abort();
    for (k, h) in [1u64, 3].into_iter().zip(keep) {
        assert_eq!(h.await.unwrap().0.unwrap(), Some(k * 10));
    }
    assert_eq!(c.metrics().cancelled_calls, 1);
    assert_idle(&c);
}

/// Every caller leaves mid-stream: the stream is dropped.
#[tokio::test(start_paused = true)]
async fn all_callers_cancelled_drops_the_stream() {
    let (c, seen) = coalescer(
        Config::new("s.cancelall"),
        vec![After(10, ok(1)), After(1000, ok(2))],
    );
    let a = timed(&c, 1);
    let b = timed(&c, 2);
    assert_eq!(a.await.unwrap().0.unwrap(), Some(10));
    tokio::time::sleep(ms(20)).await;
    assert!(!seen.dropped.load(SeqCst));
    b.abort();
    let _ = b.await;
    tokio::time::sleep(ms(1)).await;
    assert!(seen.dropped.load(SeqCst));
    assert_eq!(c.metrics().cancelled_batches, 1);
    assert_idle(&c);
}

/// One caller leaves, then the last one takes its item while the stream runs
/// on: nobody waits for the rest, so the stream is dropped and its lane freed
/// (the next call is not held up behind a stream that never ends), on every
/// dispatch mode.
#[tokio::test(start_paused = true)]
async fn the_last_caller_taking_its_item_after_a_cancel_stops_the_stream() {
    for (name, dispatch) in [
        ("s.lasttake.window", Dispatch::Window),
        ("s.lasttake.adaptive", Dispatch::Adaptive),
        ("s.lasttake.auto", Dispatch::Auto),
    ] {
        let (c, seen) = coalescer(
            Config::new(name).dispatch(dispatch).max_in_flight(1),
            vec![After(20, ok(1)), Forever],
        );
        let kept = timed(&c, 1);
        let gone = timed(&c, 2);
        tokio::time::sleep(ms(10)).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(kept.await.unwrap().0.unwrap(), Some(10), "{name}");
        tokio::time::sleep(ms(1)).await;
        assert!(seen.dropped.load(SeqCst), "{name}: the stream was kept");
        let m = c.metrics();
        assert_eq!((m.in_flight, m.cancelled_batches), (0, 1), "{name}: {m}");
        // The lane is free: a later call runs (its batch streams the same
        // script, whose first item is key 1).
        let later = tokio::time::timeout(ms(1000), c.load(1)).await;
        assert_eq!(later.expect(name).unwrap(), Some(10), "{name}");
        assert_idle(&c);
    }
}

/// Every caller takes its item: the run ends as delivered, not as cancelled.
#[tokio::test(start_paused = true)]
async fn a_stream_whose_every_key_is_taken_is_not_a_cancellation() {
    let (c, seen) = coalescer(
        Config::new("s.alltaken"),
        vec![After(5, ok(1)), After(5, ok(2)), Forever],
    );
    let (a, b) = tokio::join!(c.load(1), c.load(2));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(10), Some(20)));
    tokio::time::sleep(ms(1)).await;
    assert!(seen.dropped.load(SeqCst));
    let m = c.metrics();
    assert_eq!((m.cancelled_batches, m.batches), (0, 1), "{m}");
    assert_idle(&c);
}

/// Two callers of one key (deduplicated) are both fed from its one item.
#[tokio::test(start_paused = true)]
async fn two_deduplicated_callers_are_fed_from_one_item() {
    let (c, seen) = coalescer(Config::new("s.dedup"), vec![After(5, ok(7)), Forever]);
    let (a, b) = tokio::join!(c.load(7), c.load(7));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(70), Some(70)));
    assert_eq!(seen.batches.lock().unwrap().clone(), [vec![7]]);
    assert_eq!(c.metrics().dedup_hits, 1);
    assert_idle(&c);
}

/// A call for a key of a stream that is running joins it and is fed by its
/// item; a call for a key already delivered fetches it afresh.
#[tokio::test(start_paused = true)]
async fn a_call_joins_a_running_stream() {
    let (c, seen) = coalescer(
        Config::new("s.join"),
        vec![After(10, ok(1)), After(50, ok(2)), After(10, ok(9))],
    );
    let first = [timed(&c, 1), timed(&c, 2)];
    tokio::time::sleep(ms(30)).await;
    // Key 2 is on its way: joined. Key 1 was delivered: a new batch.
    let (late2, late1) = tokio::join!(c.load(2), c.load(1));
    assert_eq!((late2.unwrap(), late1.unwrap()), (Some(20), Some(10)));
    for h in first {
        assert!(h.await.unwrap().0.unwrap().is_some());
    }
    let batches = seen.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert_eq!(batches[1], [1]);
    assert_eq!(c.metrics().joined_running, 1);
    assert_idle(&c);
}

/// The runtime running a streamed batch shuts down mid-stream: callers
/// elsewhere that got their item keep it; the others fetch again.
#[test]
fn runtime_shutdown_mid_stream() {
    let (c, seen) = {
        let steps = vec![After(5, ok(1)), After(200, ok(2))];
        let seen = Seen::default();
        let s = seen.clone();
        let c = Coalescer::new(Config::new("s.shutdown"), move |keys: Vec<u64>| {
            s.batches.lock().unwrap().push(keys);
            let probe = scripted(steps.clone(), &s);
            async move { Streamed(probe) }
        });
        (Arc::new(c), seen)
    };
    let driver_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let callers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The batch opens (and its driver runs) on `driver_rt`, from a call there,
    // before the other callers come (else one of theirs, on `callers_rt`,
    // could open it first).
    let c1 = c.clone();
    let opener = driver_rt.spawn(async move { c1.load(1).await });
    driver_rt.block_on(async {
        while c.metrics().pending < 1 {
            tokio::task::yield_now().await;
        }
    });
    let (a, b) = {
        let (c2, c3) = (c.clone(), c.clone());
        let a = callers_rt.spawn(async move { c2.load(1).await });
        let b = callers_rt.spawn(async move { c3.load(2).await });
        (a, b)
    };
    driver_rt.block_on(async {
        tokio::time::sleep(ms(50)).await;
    });
    drop(opener);
    driver_rt.shutdown_timeout(Duration::from_secs(1));
    let (a, b) = callers_rt.block_on(async {
        let a = tokio::time::timeout(Duration::from_secs(10), a).await;
        let b = tokio::time::timeout(Duration::from_secs(10), b).await;
        (a, b)
    });
    assert_eq!(a.unwrap().unwrap().unwrap(), Some(10));
    assert_eq!(b.unwrap().unwrap().unwrap(), Some(20));
    assert!(seen.batches.lock().unwrap().len() >= 2);
    let m = c.metrics();
    assert_eq!(m.pending, 0, "{m}");
}

/// An item whose key's `Eq` panics while it is matched to its callers fails
/// that key's callers (as the map shape does), not `Ok(None)`; the others get
/// their items.
#[tokio::test(start_paused = true)]
async fn an_item_whose_key_eq_panics_fails_that_keys_callers() {
    common::quiet();
    let c = Coalescer::new(Config::new("s.eq"), |keys: Vec<Touchy>| async move {
        Streamed(stream::iter(keys.into_iter().map(|k| {
            let v = k.0 * 10;
            Ok::<_, String>((k, v))
        })))
    });
    let (a, b, again) = tokio::join!(c.load(Touchy(15)), c.load(Touchy(1)), c.load(Touchy(15)));
    assert_eq!(b.unwrap(), Some(10));
    for r in [a, again] {
        assert!(
            matches!(&r, Err(Error::Panicked { message, .. }) if message.contains("`Eq`")),
            "{r:?}"
        );
    }
    let m = c.metrics();
    assert_eq!(
        (m.pending, m.in_flight, m.unrequested_entries),
        (0, 0, 0),
        "{m}"
    );
}

/// A batch fn whose output streams without saying so (`Delivery::Streamed`,
/// whose `BatchOutput` says `STREAMED = false`): on an idle adaptive road
/// its call runs alone, and the stream is read there up to the call's key
/// (it used to fail with an internal error).
#[tokio::test(start_paused = true)]
async fn a_stream_the_output_type_does_not_announce_is_read_on_the_lone_road() {
    use coalesce_runtime::Delivery;
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let c = Coalescer::new(
        Config::new("s.lone.delivery").dispatch(Dispatch::Adaptive),
        move |keys: Vec<u64>| {
            let seen = Seen {
                dropped: d.clone(),
                ..Seen::default()
            };
            let k = keys[0];
            // A stranger, then the key, then nothing more, ever: read up to
            // the key, then dropped.
            let probe = match k {
                4 => scripted(vec![After(1, ok(9)), After(1, ok(4)), Forever], &seen),
                5 => scripted(vec![After(1, ok(9))], &seen),
                _ => scripted(
                    vec![After(1, Err("down".to_owned())), After(1, ok(k))],
                    &seen,
                ),
            };
            async move { Delivery::<u64, u64, String>::Streamed(Box::pin(probe)) }
        },
    );
    assert_eq!(c.load(4).await.unwrap(), Some(40));
    assert!(
        dropped.load(SeqCst),
        "the stream was kept after the call's item"
    );
    assert_eq!(
        c.load(5).await.unwrap(),
        None,
        "the stream ended without the key"
    );
    let failed = c.load(6).await;
    assert!(
        matches!(&failed, Err(Error::Batch { source, .. }) if source.as_str() == "down"),
        "{failed:?}"
    );
    let m = c.metrics();
    assert_eq!(m.batches, 3, "{m}");
    assert_idle(&c);
}

/// The same, when the lone run is promoted to a task of its own (a batch
/// waits for its lane and its caller is not polled): the task reads the
/// stream up to the call's key.
#[tokio::test(start_paused = true)]
async fn a_promoted_lone_run_reads_an_unannounced_stream() {
    use coalesce_runtime::Delivery;
    let c = Arc::new(Coalescer::new(
        Config::new("s.lone.promoted")
            .dispatch(Dispatch::Adaptive)
            .max_in_flight(1),
        move |keys: Vec<u64>| async move {
            tokio::time::sleep(ms(10)).await;
            let items = keys.into_iter().rev().map(|k| Ok::<_, String>((k, k * 10)));
            Delivery::<u64, u64, String>::Streamed(Box::pin(
                stream::iter(items).chain(stream::pending()),
            ))
        },
    ));
    let mut alone = Box::pin(c.load(1));
    assert!(futures::poll!(alone.as_mut()).is_pending());
    // A second call queues for the lane; the lone run moves to a task and
    // goes on without its caller being polled.
    let next = timed(&c, 2);
    let (second, _) = tokio::time::timeout(ms(1000), next)
        .await
        .expect("the queued call waited behind the promoted run")
        .unwrap();
    assert_eq!(second.unwrap(), Some(20));
    assert_eq!(alone.await.unwrap(), Some(10));
    assert_idle(&c);
}

/// With `isolate`, a batch that fails as a whole is split and its halves run
/// again. A half that streams is read until each of its keys has an item:
/// a stream that never ends after that is dropped, as an unsplit one is
/// (both callers used to hang).
#[tokio::test(start_paused = true)]
async fn split_halves_that_stream_are_read_until_their_keys_are_in() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let c = Coalescer::new(
        Config::new("s.isolate").isolate(2),
        move |keys: Vec<u64>| {
            let r = if keys.contains(&2) {
                Err("poison".to_owned())
            } else {
                let guard = Guard(d.clone());
                let items = stream::iter(keys.into_iter().map(|k| Ok((k, k * 10))));
                Ok(items.chain(stream::pending()).map(move |x| {
                    let _ = &guard;
                    x
                }))
            };
            async move { streamed(r) }
        },
    );
    let (a, b, d3) = tokio::time::timeout(ms(1000), async {
        tokio::join!(c.load(1), c.load(2), c.load(3))
    })
    .await
    .expect("a split batch's callers hung");
    assert_eq!((a.unwrap(), d3.unwrap()), (Some(10), Some(30)));
    assert!(
        matches!(&b, Err(Error::Key { source, .. }) if source.as_str() == "poison"),
        "{b:?}"
    );
    assert_eq!(
        dropped.load(SeqCst),
        2,
        "each streamed half's stream is dropped"
    );
    assert_idle(&c);
}

/// Counts its drops.
struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// The idle timeout bounds a split batch's streamed halves too: a half that
/// goes quiet fails its keys not delivered with `IdleTimeout`; its delivered key
/// and the other half's keys stand.
#[tokio::test(start_paused = true)]
async fn the_idle_timeout_bounds_split_halves_that_stream() {
    let c = Coalescer::new(
        Config::new("s.isolate.idle")
            .isolate(1)
            .idle_timeout(ms(50)),
        |keys: Vec<u64>| {
            let r = if keys.len() > 2 {
                Err("the whole batch fails".to_owned())
            } else if keys.contains(&1) {
                // Key 1 comes, key 2 never does: the half goes quiet.
                Ok(stream::iter([Ok((1, 10))]).chain(stream::pending()).boxed())
            } else {
                Ok(stream::iter(keys.into_iter().map(|k| Ok((k, k * 10)))).boxed())
            };
            async move { streamed(r) }
        },
    );
    let t0 = Instant::now();
    let (a, b, x, y) = tokio::time::timeout(ms(10_000), async {
        tokio::join!(c.load(1), c.load(2), c.load(3), c.load(4))
    })
    .await
    .expect("a quiet half held its callers past the idle timeout");
    assert_eq!(a.unwrap(), Some(10));
    assert!(
        matches!(b, Err(Error::IdleTimeout { after, .. }) if after == ms(50)),
        "{b:?}"
    );
    assert_eq!((x.unwrap(), y.unwrap()), (Some(30), Some(40)));
    assert!(t0.elapsed() < ms(1000), "{:?}", t0.elapsed());
    assert_idle(&c);
}
