//! A lone call: on an empty adaptive road a call takes a lane and runs the batch
//! of its one key in its own future, with no shared batch, waker or task (the
//! idle road's fast path).
//!
//! # Implementation details
//!
//! The run lives in a [`SoloCell`] that its group lists as a lane holder, so
//! that nothing else depends on the caller being polled: a batch that finds
//! every lane busy (when it opens, and when it is due) *promotes* the lone
//! calls holding them, moving each run into a task of its own ([`Promoted`]),
//! which finishes it and gives the lane back even if its caller is alive but
//! not polled. The task runs on the caller's runtime, with the caller's clock
//! (whoever promotes it): the run's resources and timeout are the caller's.
//!
//! ```text
//!  Starting ──run built──▶ Inline ──promoted──▶ Promoted ──run ends──▶ Finished
//!      │                     │  run ends: the caller finishes it itself
//!      └──── the caller left ┴──────────────────┬──▶ Cancelled
//!                            the promoted task was dropped (runtime gone) ──▶ Lost
//! ```
//!
//! - The lane is given back by whoever ends the run: the caller while the run
//!   is inline (done or cancelled), the promoted task after promotion.
//! - The caller alone counts itself out of `pending` (done, cancelled or lost).
//! - Lock order: the state lock, then a cell's lock. The caller holds the
//!   cell's lock while it polls the run; a promoter only *tries* the lock (if it
//!   is held, the caller is being polled right now, and it promotes itself after
//!   that poll, seeing the `promote` flag).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use std::hash::Hash;

use super::clock::{self, Clock, Sleep};
use super::deliver::{self, catching, drop_quietly, Lookup, Outcome};
use super::group::GroupKey;
use super::join::{self, Joint};
use super::read::Read;
use super::reentry;
use super::sync::{lock, try_lock, AtomicBool, Mutex};
use super::{Inner, Run, Source};
use crate::error::Error;
use crate::output::Delivery;

/// What a lone call and its group share.
pub(crate) struct SoloCell<K, V, E> {
    st: Mutex<Cell<K, V, E>>,
    /// Calls for the same key that wait on this run (see `join`).
    pub(crate) joint: Joint<K, V, E>,
    /// A batch waits for this lane: the run must not depend on its caller.
    promote: AtomicBool,
}

struct Cell<K, V, E> {
    state: State<K, V, E>,
    /// The caller's waker, for the promoted task to wake when the run ends.
    owner: Option<Waker>,
    /// The run's deadline on the real clock, if a timeout is set.
    deadline: Option<Instant>,
    /// See [`Solo::ancestry`].
    ancestry: Vec<u64>,
    /// The call's key, for the task the run is promoted to (see
    /// `poll_lone`); taken by that task.
    key: Option<K>,
    /// Where the caller runs: its runtime (none outside one) and its clock.
    /// A promoted run goes on there, timed by that clock, whoever promotes
    /// it (a call on another runtime, which may stop being driven, or whose
    /// paused clock would end the timeout early).
    home: Option<(Option<tokio::runtime::Handle>, Clock)>,
    /// When the run started, for its run time if it ends in a promoted task
    /// after its caller left.
    started: Instant,
}

impl<K, V, E> Drop for Cell<K, V, E> {
    /// Shared by a lone call, its promoted task and the calls that joined
    /// it: the run or its outcome (user types) are dropped here, quietly,
    /// whichever lets go last.
    fn drop(&mut self) {
        drop_quietly(std::mem::replace(&mut self.state, State::Lost));
    }
}

enum State<K, V, E> {
    Starting,
    Inline(Run<K, V, E>),
    Promoted {
        task: Option<Waker>,
    },
    Finished(Outcome<Delivery<K, V, E>>),
    /// Finished and settled already, by a promoted run that answered the
    /// calls that joined it.
    Settled(OneSettled<V, E>),
    Cancelled,
    Lost,
}

impl<K, V, E> SoloCell<K, V, E> {
    /// Takes a spare cell (see `Group::spare`) for a new lone call: only its
    /// group holds it. Its other fields are set when the run is stored.
    pub(crate) fn reuse(&self) {
        self.promote.store(false, Release);
    }

    pub(crate) fn new() -> Self {
        SoloCell {
            st: Mutex::new(Cell {
                state: State::Starting,
                owner: None,
                deadline: None,
                ancestry: Vec::new(),
                key: None,
                home: None,
                started: Instant::now(),
            }),
            joint: Joint::new(),
            promote: AtomicBool::new(false),
        }
    }
}

/// The group a lone call runs for: the caller's own value when its group
/// existed already (equal to the group's; no reference count to touch), else
/// the group's key.
pub(crate) enum SoloGroup<G> {
    Own(GroupKey<G>),
    Shared(StdArc<GroupKey<G>>),
}

impl<G> SoloGroup<G> {
    fn key(&self) -> &GroupKey<G> {
        match self {
            SoloGroup::Own(key) => key,
            SoloGroup::Shared(key) => key,
        }
    }
}

/// A call admitted alone: it holds a lane of its group.
pub(crate) struct Solo<G, K> {
    pub(crate) group: SoloGroup<G>,
    /// The address of the group's key `Arc`: the group exists while the call
    /// holds its lane, and is found by it.
    pub(crate) group_addr: usize,
    pub(crate) group_hash: u64,
    /// The address of its cell in its group's `solos` (which holds the cell):
    /// the caller takes an `Arc` of it only if its run is not done at once.
    pub(crate) cell: usize,
    pub(crate) key: K,
    pub(crate) key_hash: u64,
    /// The batches (by coalescer) the caller was inside when it was admitted:
    /// kept for a promoted run, which is polled outside the caller's frames.
    pub(crate) ancestry: Vec<u64>,
}

/// How a lone call ended.
pub(crate) enum Ended<G, K, V, E> {
    Done(Result<Option<V>, Error<E>>),
    /// Its promoted task was dropped: enqueue the key again, in this group.
    Lost(K, SoloGroup<G>),
}

/// The caller's side; dropping it before it has ended is a cancellation.
struct Owner<'a, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    inner: &'a StdArc<Inner<Read<G, K, V, E>>>,
    solo: &'a Solo<G, K>,
    /// Its cell, once its run is stored there (its first poll was pending).
    cell: Option<StdArc<SoloCell<K, V, E>>>,
    ended: bool,
    /// The caller gave its lane back and counted itself out of `pending`.
    left: bool,
}

impl<G, K, V, E> Inner<Read<G, K, V, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Runs a lone call to its end.
    pub(crate) async fn run_alone<S: Source<G, K, V, E>>(
        self: &StdArc<Self>,
        solo: Solo<G, K>,
        src: &mut S,
    ) -> Ended<G, K, V, E> {
        let span = self.rec.solo_started();
        let started = Instant::now();
        let mut owner = Owner {
            inner: self,
            solo: &solo,
            cell: None,
            ended: false,
            left: false,
        };
        let depth = self.config.isolate;
        let built = catching(|| {
            let key = solo.key.clone();
            let run = if depth == 0 {
                src.run_one(&solo.group.key().group, key)
            } else {
                let maker = src.maker();
                // `isolate` needs the group's key shared (admission made it so).
                let group = match &solo.group {
                    SoloGroup::Shared(key) => key.clone(),
                    SoloGroup::Own(_) => unreachable_group(),
                };
                self.start_run(maker, group, vec![key], None)
            };
            crate::recorder::instrument(run, &span)
        });
        let outcome = match built {
            Err(message) => {
                owner.finish_inline();
                Some(Ran::Outcome(Outcome::Panicked(message)))
            }
            Ok(run) => {
                let deadline = self.config.timeout.map(|t| clock::after(started, t));
                let mut timer = deadline.map(|d| Sleep::until(Clock::detect(), d));
                // The first poll needs no cell: a run that is done at once (the
                // common lone call) never touches it. Pending, it moves into the
                // cell, where a batch waiting for its lane can promote it.
                let mut first = Some(run);
                poll_fn(|cx| match first.take() {
                    Some(run) => owner.poll_first(cx, run, started, deadline, &mut timer),
                    None => owner.poll_run(cx, &mut timer),
                })
                .await
            }
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                owner.ended = true;
                drop(owner);
                self.leave_alone(false);
                // The call's own key and group go back to be enqueued again.
                return Ended::Lost(solo.key, solo.group);
            }
        };
        owner.ended = true;
        let left = owner.left;
        let cell = owner.cell.take();
        drop(owner);
        if !left {
            self.leave_alone(false);
        }
        let one = match outcome {
            Ran::Outcome(outcome) => {
                let one = self.settle_one(outcome, &solo.key);
                // The run ended in the caller's own poll: it answers the calls
                // that joined it.
                if let Some(cell) = &cell {
                    let (joiners, key) = join::close(&cell.joint);
                    join::answer(joiners, &solo.key, &one.result, &self.name);
                    drop_quietly(key);
                }
                one
            }
            Ran::Settled(one) => one,
        };
        drop(cell);
        self.rec.batch_finished(
            &span,
            started.elapsed(),
            one.label,
            one.failed,
            one.unrequested,
        );
        if let Err(e) = &one.result {
            self.rec.failed(e);
        }
        // The call's key and group value are user types: a panic in their
        // `Drop` does not replace the answer.
        drop_quietly(solo);
        Ended::Done(one.result)
    }

    /// The entry of a lone call's one key in its run's outcome.
    fn settle_one(&self, outcome: Outcome<Delivery<K, V, E>>, key: &K) -> OneSettled<V, E> {
        let one = OneKey { key };
        let settled: deliver::Settled<Option<_>, E> =
            deliver::settle(outcome, &one, &self.hasher, &self.name, self.config.timeout);
        let label = deliver::label(settled.failure.as_ref());
        let failed = usize::from(settled.failure.is_some());
        let result = match settled.failure {
            Some(failure) => Err(failure),
            None => match settled.values {
                Some(entry) => entry.map(Some),
                None => Ok(None),
            },
        };
        OneSettled {
            result,
            label,
            failed,
            unrequested: settled.unrequested,
        }
    }

    /// Moves the lone calls' runs into tasks of their own (a batch waits for
    /// their lanes). Called with no lock held.
    pub(crate) fn promote(
        self: &StdArc<Self>,
        cells: Vec<StdArc<SoloCell<K, V, E>>>,
        group: &StdArc<GroupKey<G>>,
        hash: u64,
    ) {
        for cell in cells {
            cell.promote.store(true, Release);
            let Some(mut st) = try_lock(&cell.st) else {
                // Its caller is polling it now and will see the flag.
                continue;
            };
            if let State::Inline(_) = st.state {
                let State::Inline(run) =
                    std::mem::replace(&mut st.state, State::Promoted { task: None })
                else {
                    continue;
                };
                let (deadline, ancestry) = (st.deadline, st.ancestry.clone());
                drop(st);
                self.spawn_promoted(
                    cell,
                    run,
                    deadline,
                    ancestry,
                    StdArc::as_ptr(group) as usize,
                    hash,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_promoted(
        self: &StdArc<Self>,
        cell: StdArc<SoloCell<K, V, E>>,
        run: Run<K, V, E>,
        deadline: Option<Instant>,
        ancestry: Vec<u64>,
        group: usize,
        group_hash: u64,
    ) {
        let (key, home) = {
            let mut st = lock(&cell.st);
            (st.key.take(), st.home.take())
        };
        let (runtime, clock) =
            home.unwrap_or_else(|| (tokio::runtime::Handle::try_current().ok(), Clock::detect()));
        super::spawn::spawn_home(
            runtime,
            Promoted {
                inner: self.clone(),
                cell,
                run: Some(run),
                key,
                deadline,
                clock,
                timer: None,
                ancestry,
                group,
                group_hash,
                ended: false,
                joined: false,
            },
        );
    }
}

impl<G, K, V, E> Owner<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// The run's first poll, before it is in the cell.
    fn poll_first(
        &mut self,
        cx: &mut Context<'_>,
        mut run: Run<K, V, E>,
        started: Instant,
        deadline: Option<Instant>,
        timer: &mut Option<Sleep>,
    ) -> Poll<Option<Ran<K, V, E>>> {
        let polled = {
            let _frame = reentry::enter(self.inner.id, &self.solo.ancestry);
            catching(|| poll_lone(&mut run, cx, Some(&self.solo.key)))
        };
        let outcome = match polled {
            Ok(Poll::Ready(delivery)) => Outcome::Delivered(delivery),
            Err(message) => Outcome::Panicked(message),
            Ok(Poll::Pending) if timer.as_mut().is_some_and(|t| t.poll(cx).is_ready()) => {
                Outcome::TimedOut
            }
            Ok(Poll::Pending) => {
                let s = self.solo;
                let cell = self
                    .inner
                    .solo_cell(s.group_addr, s.group_hash, s.cell)
                    // Unreachable: the group lists the cell while the call holds
                    // its lane. A cell of its own still runs it (unpromotable).
                    .unwrap_or_else(|| StdArc::new(SoloCell::new()));
                let cell = &*self.cell.insert(cell);
                if self.inner.config.join_running {
                    // Other calls for this key may now wait for this run.
                    if let Ok(key) = catching(|| s.key.clone()) {
                        join::open(&cell.joint, s.key_hash, key);
                    }
                }
                let mut st = lock(&cell.st);
                // For a task this run may be promoted to: should the run
                // turn out to stream, it reads the stream for this key.
                let stale = std::mem::replace(&mut st.key, catching(|| s.key.clone()).ok());
                st.deadline = deadline;
                st.started = started;
                st.home = Some((tokio::runtime::Handle::try_current().ok(), Clock::detect()));
                st.ancestry.clone_from(&self.solo.ancestry);
                keep_waker(&mut st.owner, cx);
                if cell.promote.load(Acquire) {
                    // A batch waits for this lane already.
                    st.state = State::Promoted { task: None };
                    drop(st);
                    drop_quietly(stale);
                    self.inner.spawn_promoted(
                        cell.clone(),
                        run,
                        deadline,
                        self.solo.ancestry.clone(),
                        self.solo.group_addr,
                        self.solo.group_hash,
                    );
                } else {
                    st.state = State::Inline(run);
                    drop(st);
                    drop_quietly(stale);
                }
                return Poll::Pending;
            }
        };
        drop_quietly(run);
        self.finish_inline();
        Poll::Ready(Some(Ran::Outcome(outcome)))
    }

    /// Polls the run while it is inline; waits for it once promoted. `None`: the
    /// promoted task was lost.
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        timer: &mut Option<Sleep>,
    ) -> Poll<Option<Ran<K, V, E>>> {
        let Some(cell) = &self.cell else {
            return Poll::Ready(Some(Ran::Outcome(Outcome::Panicked(
                "internal: a lone call's run went missing".to_owned(),
            ))));
        };
        let mut st = lock(&cell.st);
        match &mut st.state {
            State::Inline(run) => {
                let polled = {
                    let _frame = reentry::enter(self.inner.id, &self.solo.ancestry);
                    catching(|| poll_lone(run, cx, Some(&self.solo.key)))
                };
                let outcome = match polled {
                    Ok(Poll::Ready(delivery)) => Outcome::Delivered(delivery),
                    Err(message) => Outcome::Panicked(message),
                    Ok(Poll::Pending) => {
                        if timer.as_mut().is_some_and(|t| t.poll(cx).is_ready()) {
                            Outcome::TimedOut
                        } else {
                            // Kept current while the run is pending, for the task
                            // it may be promoted to (a run done at its first poll
                            // never needs it).
                            keep_waker(&mut st.owner, cx);
                            if cell.promote.load(Acquire) {
                                let State::Inline(run) = std::mem::replace(
                                    &mut st.state,
                                    State::Promoted { task: None },
                                ) else {
                                    return Poll::Pending;
                                };
                                let (deadline, ancestry) = (st.deadline, st.ancestry.clone());
                                drop(st);
                                self.inner.spawn_promoted(
                                    cell.clone(),
                                    run,
                                    deadline,
                                    ancestry,
                                    self.solo.group_addr,
                                    self.solo.group_hash,
                                );
                            }
                            return Poll::Pending;
                        }
                    }
                };
                let run = std::mem::replace(&mut st.state, State::Cancelled);
                let (key, home) = (st.key.take(), st.home.take());
                drop(st);
                drop_quietly((run, key, home));
                self.finish_inline();
                Poll::Ready(Some(Ran::Outcome(outcome)))
            }
            State::Promoted { .. } => {
                keep_waker(&mut st.owner, cx);
                Poll::Pending
            }
            State::Finished(_) | State::Settled(_) => {
                match std::mem::replace(&mut st.state, State::Cancelled) {
                    State::Finished(outcome) => Poll::Ready(Some(Ran::Outcome(outcome))),
                    State::Settled(one) => Poll::Ready(Some(Ran::Settled(one))),
                    _ => Poll::Pending,
                }
            }
            State::Lost => Poll::Ready(None),
            // The caller polls only before it has ended, and only it cancels.
            State::Starting | State::Cancelled => {
                Poll::Ready(Some(Ran::Outcome(Outcome::Panicked(
                    "internal: a lone call polled in a state it cannot be in".to_owned(),
                ))))
            }
        }
    }

    /// The caller ended the run itself: give the lane back and count itself out
    /// of `pending`, under one lock.
    fn finish_inline(&mut self) {
        let s = self.solo;
        self.inner
            .release_solo_lane(s.group_addr, s.group_hash, s.cell, true);
        self.left = true;
    }
}

impl<G, K, V, E> Drop for Owner<'_, G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.inner.cancel_alone(self.solo, self.cell.as_ref());
    }
}

impl<G, K, V, E> Inner<Read<G, K, V, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A lone call counts itself out of `pending`.
    fn leave_alone(&self, cancelled: bool) {
        let mut state = lock(&self.state);
        state.pending -= 1;
        self.rec.counts(state.in_flight, state.pending);
        drop(state);
        if cancelled {
            self.rec.cancelled_call();
        }
        self.rec.publish();
    }

    /// The caller of a lone call left before it ended.
    fn cancel_alone(&self, solo: &Solo<G, K>, cell: Option<&StdArc<SoloCell<K, V, E>>>) {
        // A run never stored in the cell was the caller's own.
        let previous = match cell {
            Some(cell) => std::mem::replace(&mut lock(&cell.st).state, State::Cancelled),
            None => State::Starting,
        };
        let stopped = match &previous {
            State::Starting | State::Inline(_) => {
                // The run is the caller's: give its lane back here. Calls that
                // joined it enqueue their keys again.
                self.release_solo_lane(solo.group_addr, solo.group_hash, solo.cell, false);
                if let Some(cell) = cell {
                    let (joiners, key) = join::close(&cell.joint);
                    join::retry(joiners);
                    drop_quietly(key);
                }
                true
            }
            State::Promoted { task } => {
                // The task sees `Cancelled`, drops the run and gives the lane
                // back; or goes on for the calls that joined the run (then
                // it is not a cancelled batch, unless they leave too: the
                // task counts that).
                if let Some(task) = task {
                    task.wake_by_ref();
                }
                !cell.is_some_and(|c| join::has_joiners(&c.joint))
            }
            State::Finished(_) | State::Settled(_) | State::Cancelled | State::Lost => false,
        };
        if stopped {
            self.rec.cancelled_batch();
        }
        self.leave_alone(true);
        // The run's destructor is user code: outside every lock.
        drop_quietly(previous);
    }
}

/// A lone call's run, moved into a task of its own.
struct Promoted<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    inner: StdArc<Inner<Read<G, K, V, E>>>,
    cell: StdArc<SoloCell<K, V, E>>,
    run: Option<Run<K, V, E>>,
    /// The call's key, should its run turn out to stream (see `poll_lone`);
    /// `None` if its `Clone` panicked.
    key: Option<K>,
    /// The run's timeout, on its caller's clock: its wait is made at the
    /// task's first poll, on the runtime that runs it.
    deadline: Option<Instant>,
    clock: Clock,
    timer: Option<Sleep>,
    ancestry: Vec<u64>,
    /// The address of its group's key (see `Solo::group_addr`).
    group: usize,
    group_hash: u64,
    ended: bool,
    /// Its caller left and it went on for the calls that joined it.
    joined: bool,
}

// No field is pinned: the run is boxed and pinned on its own.
impl<G, K, V, E> Unpin for Promoted<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
}

impl<G, K, V, E> Future for Promoted<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(());
        }
        {
            let mut st = lock(&this.cell.st);
            match &mut st.state {
                State::Promoted { task } => match task {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *task = Some(cx.waker().clone()),
                },
                // The caller left: the run goes on for the calls that joined
                // it; with none, it stops.
                State::Cancelled if join::has_joiners(&this.cell.joint) => this.joined = true,
                _ => {
                    drop(st);
                    this.end(None);
                    return Poll::Ready(());
                }
            }
        }
        if this.timer.is_none() {
            if let Some(deadline) = this.deadline {
                this.timer = Some(Sleep::until(this.clock, deadline));
            }
        }
        let Some(run) = this.run.as_mut() else {
            this.end(Some(Outcome::Panicked(
                "internal: a promoted run went missing".to_owned(),
            )));
            return Poll::Ready(());
        };
        let polled = {
            let _frame = reentry::enter(this.inner.id, &this.ancestry);
            catching(|| poll_lone(run, cx, this.key.as_ref()))
        };
        let outcome = match polled {
            Ok(Poll::Ready(delivery)) => Outcome::Delivered(delivery),
            Err(message) => Outcome::Panicked(message),
            Ok(Poll::Pending) => match this.timer.as_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Outcome::TimedOut,
                _ => return Poll::Pending,
            },
        };
        this.end(Some(outcome));
        Poll::Ready(())
    }
}

impl<G, K, V, E> Promoted<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Ends the run: hands the outcome to the caller (if it is still there),
    /// gives the lane back. `None`: stopped (cancelled) or lost.
    fn end(&mut self, outcome: Option<Outcome<Delivery<K, V, E>>>) {
        self.ended = true;
        let run = self.run.take();
        drop_quietly((run, self.key.take()));
        // The calls that joined the run are answered here, whether or not its
        // first caller is polled (or still there).
        let (joiners, key) = join::close(&self.cell.joint);
        let joined = self.joined;
        let mut outcome = outcome;
        let mut settled = None;
        if !joiners.is_empty() {
            match (outcome.take(), &key) {
                (Some(o), Some(key)) => {
                    let one = self.inner.settle_one(o, key);
                    join::answer(joiners, key, &one.result, &self.inner.name);
                    settled = Some(one);
                }
                (o, _) => {
                    outcome = o;
                    join::retry(joiners);
                }
            }
        }
        drop_quietly(key);
        let mut st = lock(&self.cell.st);
        let owner = st.owner.take();
        let leftover = match (&st.state, outcome, settled) {
            (State::Promoted { .. }, Some(outcome), _) => {
                std::mem::replace(&mut st.state, State::Finished(outcome))
            }
            (State::Promoted { .. }, None, Some(one)) => {
                std::mem::replace(&mut st.state, State::Settled(one))
            }
            (State::Promoted { .. }, None, None) => std::mem::replace(&mut st.state, State::Lost),
            (state, outcome, settled) => {
                let stopped = matches!(state, State::Cancelled) && settled.is_none() && joined;
                let started = st.started;
                drop(st);
                if let Some(one) = &settled {
                    // It ran to its end for the calls that joined it, its caller
                    // gone: its run counts as any other's.
                    self.inner.rec.run_time(started.elapsed());
                    self.inner.rec.unrequested(one.unrequested);
                }
                if stopped {
                    // Its caller left while calls had joined it, and they
                    // left too: the run stopped for nobody.
                    self.inner.rec.cancelled_batch();
                }
                drop_quietly((outcome, settled));
                self.inner.release_solo_lane(
                    self.group,
                    self.group_hash,
                    addr_of(&self.cell),
                    false,
                );
                return;
            }
        };
        drop(st);
        drop_quietly(leftover);
        self.inner
            .release_solo_lane(self.group, self.group_hash, addr_of(&self.cell), false);
        if let Some(w) = owner {
            w.wake();
        }
    }
}

impl<G, K, V, E> Drop for Promoted<G, K, V, E>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if !self.ended {
            // The runtime running this task went away.
            self.end(None);
        }
    }
}

impl<G, K, V, E> Inner<Read<G, K, V, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Gives a lone call's lane back and takes it off its group's list (keeping
    /// its cell as the group's spare); `leave`: the caller also counts itself
    /// out of `pending`, under the same lock.
    fn release_solo_lane(&self, group: usize, hash: u64, cell: usize, leave: bool) {
        let mut state = lock(&self.state);
        let (wake, garbage) = self.release_lane_with(&mut state, group, hash, |g| {
            if let Some(i) = g.solos.iter().position(|c| addr_of(c) == cell) {
                let cell = g.solos.swap_remove(i);
                if g.spare.is_none() {
                    g.spare = Some(cell);
                }
            }
        });
        if leave {
            state.pending -= 1;
        }
        self.rec.counts(state.in_flight, state.pending);
        drop(state);
        self.rec.publish();
        if let Some(w) = wake {
            w.wake();
        }
        drop(garbage);
    }
}

/// Polls a lone call's run. A batch fn whose output streams without saying
/// so (a [`BatchOutput`](crate::BatchOutput) whose `STREAMED` is false that
/// returns [`Delivery::Streamed`]) ran alone: its stream is read here, up to
/// the call's own key, by a run that takes the first one's place, so that
/// the lane, the timeout and promotion hold as for any run.
fn poll_lone<K, V, E>(
    run: &mut Run<K, V, E>,
    cx: &mut Context<'_>,
    key: Option<&K>,
) -> Poll<Delivery<K, V, E>>
where
    K: Eq + Clone + Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    loop {
        match run.as_mut().poll(cx) {
            Poll::Ready(Delivery::Streamed(stream)) => {
                let Some(key) = key else {
                    drop_quietly(stream);
                    panic!("`Clone` of the key panicked before its stream could be read");
                };
                *run = Box::pin(read_one(stream, key.clone()));
            }
            other => return other,
        }
    }
}

/// Reads `stream` to the first item for `key` (see `poll_lone`): that item,
/// or no entry if the stream ends without one; an `Err` item fails the call.
/// Items for other keys are dropped as they come, and the stream as soon as
/// the call's item is read.
async fn read_one<K, V, E>(
    mut stream: crate::output::EntryStream<K, V, E>,
    key: K,
) -> Delivery<K, V, E>
where
    K: Eq + Send + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
{
    let found = loop {
        match futures_util::StreamExt::next(&mut stream).await {
            Some(Ok((k, v))) if k == key => {
                break Delivery::Keyed(Box::new(std::iter::once((k, Ok(v)))))
            }
            Some(Ok(other)) => drop_quietly(other),
            Some(Err(e)) => break Delivery::Failed(e),
            None => break Delivery::Keyed(Box::new(std::iter::empty())),
        }
    };
    drop_quietly((stream, key));
    found
}

/// Unreachable: a lone call of a coalescer with `isolate` always holds its
/// group's key shared (see `admit`). Fails the call rather than panic.
fn unreachable_group<G>() -> StdArc<GroupKey<G>> {
    panic!("internal: a lone call with isolate lacks its group's key")
}

/// A cell's address, which names it in its group's `solos`.
fn addr_of<K, V, E>(cell: &StdArc<SoloCell<K, V, E>>) -> usize {
    StdArc::as_ptr(cell) as usize
}

impl<G, K, V, E> Inner<Read<G, K, V, E>>
where
    G: Hash + Eq + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// The cell at `addr` in a group's `solos`.
    fn solo_cell(&self, group: usize, hash: u64, addr: usize) -> Option<StdArc<SoloCell<K, V, E>>> {
        let mut state = lock(&self.state);
        let g = state.groups.by_addr(hash, group)?;
        g.solos.iter().find(|c| addr_of(c) == addr).cloned()
    }
}

/// Stores the waker of `cx` in `slot` unless the one there wakes the same task.
fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// How a lone call's run ended, as its caller sees it.
enum Ran<K, V, E> {
    Outcome(Outcome<Delivery<K, V, E>>),
    /// Settled by the promoted task (which answered the calls that joined).
    Settled(OneSettled<V, E>),
}

/// A lone call's entry, and what telemetry records of its run.
pub(crate) struct OneSettled<V, E> {
    result: Result<Option<V>, Error<E>>,
    label: &'static str,
    failed: usize,
    unrequested: u64,
}

/// The one key of a lone call, for the delivery path.
struct OneKey<'a, K> {
    key: &'a K,
}

impl<K: Eq> Lookup<K> for OneKey<'_, K> {
    // One key: compared with `Eq` alone, no hash needed.
    fn slot_of(&self, key: &K, _: &super::DefaultHashBuilder) -> Result<Option<u32>, u32> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| key == self.key)) {
            Ok(same) => Ok(same.then_some(0)),
            Err(_) => Err(0),
        }
    }
    fn dispatched(&self) -> usize {
        1
    }
    fn slot_at(&self, _: usize) -> u32 {
        0
    }
    fn slots(&self) -> usize {
        1
    }
}
