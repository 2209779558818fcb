//! Calls that join a lone call's run already fetching their key
//! (`join_running`): Go's `singleflight` for the idle road.
//!
//! # Implementation details
//!
//! A lone call's key lives in its caller's future, out of reach of other calls.
//! Once its run is pending (the first poll did not finish it), the caller puts
//! a clone of the key and its hash in its cell's [`Joint`]; a call of the same
//! group whose key has that hash *attaches* (under the state lock) and has the
//! run promoted to a task of its own, so that it does not depend on the first
//! caller being polled. Whoever ends the run closes the joint and answers every
//! attached call: its own clone of the entry if its key is equal (`Eq` is
//! checked there, on the key that was fetched), or "enqueue again" if not (a
//! hash collision) or if the run was stopped or lost.
//!
//! The joint also keeps the open key's hash in an atomic, a hint read without
//! its lock: a call whose key has another hash (most calls) passes a running
//! lone call without taking its lock.
//!
//! Lock order: the state lock, then a cell's `st`, then its joint; a joiner's
//! own lock is taken alone.

use std::future::poll_fn;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc as StdArc;
use std::task::{Poll, Waker};

use super::batch::panic_message;
use super::deliver::drop_quietly;
use super::sync::{lock, AtomicU64, Mutex};
use crate::error::Error;

/// The part of a lone call's cell that other calls join.
pub(crate) struct Joint<K, V, E> {
    /// The hash of the open key (a hint: 0 when closed; checked again under
    /// the lock).
    hash: AtomicU64,
    st: Mutex<JointState<K, V, E>>,
}

struct JointState<K, V, E> {
    /// The key being fetched and its hash, while the run may be joined.
    key: Option<(u64, K)>,
    joiners: Vec<StdArc<Joiner<K, V, E>>>,
}

impl<K, V, E> Joint<K, V, E> {
    pub(crate) fn new() -> Self {
        Joint {
            hash: AtomicU64::new(0),
            st: Mutex::new(JointState {
                key: None,
                joiners: Vec::new(),
            }),
        }
    }
}

/// A call attached to a lone call's run.
pub(crate) struct Joiner<K, V, E> {
    /// The call's own key: compared with the fetched one when the run ends,
    /// and enqueued again if they differ.
    pub(crate) key: K,
    st: Mutex<JoinerState<V, E>>,
}

enum JoinerState<V, E> {
    Waiting(Option<Waker>),
    Answered(Result<Option<V>, Error<E>>),
    /// Not answered by that run: the call enqueues its key again.
    Retry,
    /// The caller left.
    Left,
    /// The caller took its answer.
    Taken,
}

/// How a joiner's wait ended.
pub(crate) enum Joined<V, E> {
    Answered(Result<Option<V>, Error<E>>),
    Retry,
}

/// Opens `joint` to calls for `key` (hash `hash`).
pub(crate) fn open<K, V, E>(joint: &Joint<K, V, E>, hash: u64, key: K) {
    let mut st = lock(&joint.st);
    let old = st.key.replace((hash, key));
    joint.hash.store(hash, Relaxed);
    drop(st);
    drop_quietly(old);
}

/// Closes `joint`: returns its joiners and its key, to be answered and dropped
/// outside every lock.
#[allow(clippy::type_complexity)]
pub(crate) fn close<K, V, E>(joint: &Joint<K, V, E>) -> (Vec<StdArc<Joiner<K, V, E>>>, Option<K>) {
    let mut j = lock(&joint.st);
    joint.hash.store(0, Relaxed);
    let joiners = std::mem::take(&mut j.joiners);
    let key = j.key.take().map(|(_, k)| k);
    (joiners, key)
}

/// Whether calls wait on `joint` (a run whose first caller left goes on for them).
pub(crate) fn has_joiners<K, V, E>(joint: &Joint<K, V, E>) -> bool {
    !lock(&joint.st).joiners.is_empty()
}

/// Attaches a call for `key` (hash `hash`) to `joint` if its run fetches a key
/// of that hash; gives the key back if not. Under the state lock.
pub(crate) fn attach<K, V, E>(
    joint: &Joint<K, V, E>,
    hash: u64,
    key: K,
) -> Result<StdArc<Joiner<K, V, E>>, K> {
    // The hint is only ever written under the lock: a stale read either
    // skips a run that just opened (the call fetches itself) or takes the
    // lock for nothing.
    if joint.hash.load(Relaxed) != hash {
        return Err(key);
    }
    let mut j = lock(&joint.st);
    if !matches!(&j.key, Some((h, _)) if *h == hash) {
        return Err(key);
    }
    let joiner = StdArc::new(Joiner {
        key,
        st: Mutex::new(JoinerState::Waiting(None)),
    });
    j.joiners.push(joiner.clone());
    Ok(joiner)
}

/// Answers the calls attached to a run of `key` that ended with `result`:
/// each equal key gets its own clone; a key that is not equal enqueues again.
/// User code (`Eq`, `Clone`) runs here, outside every lock; a panic in it fails
/// that joiner alone.
pub(crate) fn answer<K: Eq, V: Clone, E>(
    joiners: Vec<StdArc<Joiner<K, V, E>>>,
    key: &K,
    result: &Result<Option<V>, Error<E>>,
    name: &StdArc<str>,
) {
    for joiner in joiners {
        let state = match catch_unwind(AssertUnwindSafe(|| joiner.key == *key)) {
            Ok(true) => match result {
                Ok(None) => JoinerState::Answered(Ok(None)),
                Err(e) => JoinerState::Answered(Err(e.clone())),
                Ok(Some(v)) => match catch_unwind(AssertUnwindSafe(|| v.clone())) {
                    Ok(v) => JoinerState::Answered(Ok(Some(v))),
                    Err(p) => JoinerState::Answered(Err(Error::panicked(
                        name,
                        "`Clone` of the value",
                        &*p,
                    ))),
                },
            },
            Ok(false) => JoinerState::Retry,
            Err(p) => JoinerState::Answered(Err(Error::Panicked {
                name: name.clone(),
                message: format!("`Eq` of the key panicked: {}", panic_message(&*p)).into(),
            })),
        };
        settle(&joiner, state);
        // A joiner that left holds its key only here now: its `Drop` (user
        // code) runs quietly, not in the answering call.
        drop_quietly(joiner);
    }
}

/// Sends every joiner back to enqueue its key (the run was stopped or lost).
pub(crate) fn retry<K, V, E>(joiners: Vec<StdArc<Joiner<K, V, E>>>) {
    for joiner in joiners {
        settle(&joiner, JoinerState::Retry);
        drop_quietly(joiner);
    }
}

fn settle<K, V, E>(joiner: &Joiner<K, V, E>, state: JoinerState<V, E>) {
    let mut st = lock(&joiner.st);
    match &mut *st {
        JoinerState::Waiting(waker) => {
            let waker = waker.take();
            *st = state;
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
        }
        // The caller left: its entry is dropped unread, outside the lock.
        _ => {
            drop(st);
            drop_quietly(state);
        }
    }
}

impl<K, V, E> Joiner<K, V, E> {
    /// Waits for the run's answer.
    pub(crate) async fn wait(&self) -> Joined<V, E> {
        poll_fn(|cx| {
            let mut st = lock(&self.st);
            match &mut *st {
                JoinerState::Waiting(waker) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
                JoinerState::Retry => {
                    *st = JoinerState::Taken;
                    Poll::Ready(Joined::Retry)
                }
                JoinerState::Answered(_) => {
                    let JoinerState::Answered(result) =
                        std::mem::replace(&mut *st, JoinerState::Taken)
                    else {
                        return Poll::Pending;
                    };
                    Poll::Ready(Joined::Answered(result))
                }
                JoinerState::Left | JoinerState::Taken => Poll::Ready(Joined::Retry),
            }
        })
        .await
    }

    /// The caller left before its answer; an answer that came meanwhile is
    /// returned, to be dropped outside every lock.
    pub(crate) fn leave(&self) -> Option<Result<Option<V>, Error<E>>> {
        let mut st = lock(&self.st);
        match std::mem::replace(&mut *st, JoinerState::Left) {
            JoinerState::Answered(result) => Some(result),
            _ => None,
        }
    }
}
