//! The driver of a shared batch: a task that gathers (times the window, settles
//! same-instant calls), takes a lane or queues for one, runs the batch function
//! and delivers each slot's entry.
//!
//! # Implementation details
//!
//! A driver is spawned by the call that opens its batch and owns everything it
//! polls: the batch function (built from the opener's, `'static`), the running
//! future and the keys. No caller drives anything, so a caller that is
//! cancelled, or alive but never polled, delays nobody.
//!
//! The driver's own steps mirror the batch's phases:
//!
//! ```text
//!  Gather ──due, lane taken──▶ Run ──▶ Finished
//!    │  due, lanes busy        ▲
//!    └──────▶ Queued ──────────┘ lane handed over (or re-entrant: exempt)
//! ```
//!
//! Every way out gives the lane back if the batch holds one: done (after
//! delivery), abandoned (every caller left), and lost (the driver is dropped
//! unfinished, which is what a runtime shutting down does to its tasks; see
//! [`Driver::drop`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::batch::{Batch, Phase};
use super::clock::{self, Clock, Sleep};
use super::deliver::{catching, drop_quietly, Outcome};
use super::group::Group;
use super::mode::{Freeze, Mode, RunOf};
use super::policy::{self, Gather};
use super::reentry;
use super::sync::{lock, Arc};
use super::Inner;
use crate::recorder::BatchSpan;

/// A batch's driver task.
pub(crate) struct Driver<M: Mode> {
    inner: StdArc<Inner<M>>,
    batch: Arc<Batch<M>>,
    maker: M::Maker,
    clock: Clock,
    step: Step<M>,
}

/// The driver's step, each with its own data.
enum Step<M: Mode> {
    Gather {
        /// The window's wait, made at the first poll that needs it.
        window: Option<Sleep>,
        /// The window has elapsed.
        window_over: bool,
        /// Settling: calls admitted at the last yield, and yields so far.
        seen: Option<(u64, u32)>,
        /// The yield in progress.
        yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    },
    Queued,
    Run(Box<Running<M>>),
    Finished,
}

struct Running<M: Mode> {
    run: Option<RunOf<M::Output>>,
    frozen: M::Frozen,
    timeout: Option<Sleep>,
    started: Instant,
    span: BatchSpan,
    ancestry: Vec<u64>,
    /// The run ended before it started (the batch function panicked).
    early: Option<Outcome<M::Output>>,
    /// For the group's controller (`Dispatch::Auto`): distinct keys, lanes in
    /// use at the start (this one included), and the start on the driver's clock.
    tune: Option<(usize, usize, Instant)>,
}

impl<M: Mode> Driver<M> {
    pub(crate) fn new(
        inner: StdArc<Inner<M>>,
        batch: Arc<Batch<M>>,
        maker: M::Maker,
        clock: Clock,
    ) -> Self {
        Driver {
            inner,
            batch,
            maker,
            clock,
            step: Step::Gather {
                window: None,
                window_over: false,
                seen: None,
                yielding: None,
            },
        }
    }

    /// Gathering: decides when the batch is due.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Step::Gather {
                window,
                window_over,
                seen,
                yielding,
            } = &mut self.step
            else {
                return Poll::Ready(());
            };
            if let Some(y) = yielding {
                if y.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *yielding = None;
            }
            let mut st = lock(&self.batch.st);
            match st.phase {
                Phase::Gathering => {}
                // Every caller left: nothing to run.
                Phase::Abandoned | Phase::Lost | Phase::Done { .. } => {
                    drop(st);
                    self.step = Step::Finished;
                    return Poll::Ready(());
                }
                Phase::Queued | Phase::Leaving | Phase::Running => {
                    drop(st);
                    self.step = Step::Queued;
                    return Poll::Ready(());
                }
            }
            register(&mut st.driver, cx.waker());
            let decision = policy::gather(policy::Gathering {
                full: st.full,
                kicked: st.kicked,
                settle: st.settle,
                admitted: st.admitted,
                seen: *seen,
                window_over: *window_over,
            });
            let admitted = st.admitted;
            let opened = st.opened;
            let length = st.window;
            drop(st);
            match decision {
                Gather::Due => {
                    self.dispatch();
                    return Poll::Ready(());
                }
                Gather::Yield => {
                    let rounds = seen.map_or(0, |(_, r)| r);
                    *seen = Some((admitted, rounds + 1));
                    // Runs after every task runnable now (the calls made in the
                    // same instant), then wakes this one.
                    let mut y: Pin<Box<dyn Future<Output = ()> + Send>> =
                        Box::pin(tokio::task::yield_now());
                    if y.as_mut().poll(cx).is_pending() {
                        *yielding = Some(y);
                        return Poll::Pending;
                    }
                }
                Gather::Wait => {
                    let window = window.get_or_insert_with(|| {
                        Sleep::until(self.clock, clock::after(opened, length))
                    });
                    match window.poll(cx) {
                        Poll::Ready(()) => *window_over = true,
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    /// The batch is due: take a lane and start, or queue for one.
    fn dispatch(&mut self) {
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        if !matches!(st.phase, Phase::Gathering) {
            drop(st);
            drop(guard);
            self.step = Step::Queued;
            return;
        }
        let group = group_of(&mut state.groups, &self.batch);
        let road = group.road(inner.lanes);
        if policy::may_take_lane(road, st.exempt) {
            group.lanes_used += 1;
            state.in_flight += 1;
            st.phase = Phase::Leaving;
            drop(st);
            inner.rec.counts(state.in_flight, state.pending);
            drop(guard);
            inner.rec.publish();
            self.start();
        } else {
            st.phase = Phase::Queued;
            let full = st.full;
            drop(st);
            if let Some(t) = group.tune.as_mut() {
                if full {
                    t.backlogged();
                } else {
                    t.waited();
                }
            }
            group.queue.push_back(self.batch.clone());
            let solos = group.solos.clone();
            drop(guard);
            self.step = Step::Queued;
            if !solos.is_empty() {
                // The lanes may be held by lone calls whose callers are not being
                // polled: their runs must go on without them.
                M::promote(&self.inner, solos, &self.batch);
            }
        }
    }

    /// Queued: waits for a lane.
    fn poll_queued(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.batch.st);
        match st.phase {
            Phase::Leaving => {
                drop(st);
                self.start();
                Poll::Ready(())
            }
            Phase::Queued if st.exempt => {
                drop(st);
                self.take_lane_exempt();
                Poll::Ready(())
            }
            Phase::Queued | Phase::Gathering => {
                register(&mut st.driver, cx.waker());
                Poll::Pending
            }
            // Running: unreachable (only this driver starts the batch). The
            // others: nothing left to do.
            Phase::Running | Phase::Abandoned | Phase::Lost | Phase::Done { .. } => {
                drop(st);
                self.step = Step::Finished;
                Poll::Ready(())
            }
        }
    }

    /// A queued batch became re-entrant: it leaves the queue and takes a lane
    /// past the limit (its own coalescer's running batch waits for it).
    fn take_lane_exempt(&mut self) {
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        if !matches!(st.phase, Phase::Queued) {
            return;
        }
        let group = group_of(&mut state.groups, &self.batch);
        group.queue.retain(|b| !Arc::ptr_eq(b, &self.batch));
        group.lanes_used += 1;
        state.in_flight += 1;
        st.phase = Phase::Leaving;
        drop(st);
        inner.rec.counts(state.in_flight, state.pending);
        drop(guard);
        inner.rec.publish();
        self.start();
    }

    /// Leaving -> Running: closes the batch, takes its contents and starts the run.
    fn start(&mut self) {
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        if !matches!(st.phase, Phase::Leaving) {
            drop(st);
            drop(guard);
            self.step = Step::Finished;
            return;
        }
        let group = group_of(&mut state.groups, &self.batch);
        if group.close(&self.batch) {
            state.gathering -= 1;
        }
        group.hint = M::live_keys(&st.entries).max(1);
        let tune = group.tune.as_mut().map(|t| {
            let now = self.clock.now();
            t.started(now, st.admitted, group.lanes_used, group.queue.len());
            (M::live_keys(&st.entries), group.lanes_used, now)
        });
        st.phase = Phase::Running;
        let Freeze {
            mut frozen,
            counts,
            callers,
        } = M::freeze(inner, &self.batch, &mut st, group);
        let ancestry = st.ancestry.clone();
        let wait = st.opened.elapsed();
        drop(st);
        drop(guard);
        let span = inner.rec.batch_started(counts, wait, callers);
        let started = Instant::now();
        let made = {
            let _frame = reentry::enter(inner.id, &ancestry);
            catching(|| {
                M::make(
                    &self.inner,
                    &self.batch,
                    &self.maker,
                    &self.batch.group,
                    &mut frozen,
                )
            })
        };
        let (run, early) = match made {
            Ok(run) => (Some(crate::recorder::instrument(run, &span)), None),
            Err(message) => (None, Some(Outcome::Panicked(message))),
        };
        let timeout = inner
            .config
            .timeout
            .map(|t| Sleep::until(self.clock, clock::after(started, t)));
        self.step = Step::Run(Box::new(Running {
            run,
            frozen,
            timeout,
            started,
            span,
            ancestry,
            early,
            tune,
        }));
    }

    /// Running: polls the batch future, enforcing the timeout.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Step::Run(running) = &mut self.step else {
            return Poll::Ready(());
        };
        if let Some(outcome) = running.early.take() {
            self.complete(outcome);
            return Poll::Ready(());
        }
        {
            let mut st = lock(&self.batch.st);
            if M::ABANDONS && matches!(st.phase, Phase::Abandoned) {
                // Every caller left: stop the run (a read nobody waits for).
                drop(st);
                self.stop_abandoned();
                return Poll::Ready(());
            }
            register(&mut st.driver, cx.waker());
        }
        let Some(run) = running.run.as_mut() else {
            self.complete(Outcome::Panicked(
                "internal: the run went missing".to_owned(),
            ));
            return Poll::Ready(());
        };
        let polled = {
            let _frame = reentry::enter(self.inner.id, &running.ancestry);
            catching(|| run.as_mut().poll(cx))
        };
        let outcome = match polled {
            Ok(Poll::Ready(output)) => Outcome::Delivered(output),
            Err(message) => Outcome::Panicked(message),
            Ok(Poll::Pending) => match running.timeout.as_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Outcome::TimedOut,
                _ => return Poll::Pending,
            },
        };
        self.complete(outcome);
        Poll::Ready(())
    }

    /// Every caller left while the batch ran: drop the run, give the lane back.
    fn stop_abandoned(&mut self) {
        let step = std::mem::replace(&mut self.step, Step::Finished);
        let started = match &step {
            Step::Run(r) => Some(r.started),
            _ => None,
        };
        drop_quietly(step);
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let (wake, garbage) =
            inner.release_lane(&mut guard, &self.batch.group, self.batch.group_hash);
        inner.rec.counts(guard.in_flight, guard.pending);
        drop(guard);
        if let Some(started) = started {
            inner.rec.run_time(started.elapsed());
        }
        inner.rec.publish();
        if let Some(w) = wake {
            w.wake();
        }
        drop(garbage);
    }

    /// The run ended: the mode hands out its outcome; the lane goes back.
    fn complete(&mut self, outcome: Outcome<M::Output>) {
        let Step::Run(running) = std::mem::replace(&mut self.step, Step::Finished) else {
            return;
        };
        let Running {
            run,
            frozen,
            timeout,
            started,
            span,
            tune,
            ..
        } = *running;
        drop_quietly(run);
        drop(timeout);
        let run_time = started.elapsed();
        let tuned_run = tune
            .map(|(size, used, at)| (size, used, self.clock.now().saturating_duration_since(at)));
        let inner = &*self.inner;
        let completed = M::complete(inner, &self.batch, frozen, outcome);
        let mut guard = lock(&inner.state);
        let mut tuned = None;
        let (wake, garbage) = inner.release_lane_with(
            &mut guard,
            StdArc::as_ptr(&self.batch.group) as usize,
            self.batch.group_hash,
            |g| {
                if let (Some(t), Some((size, used, run))) = (g.tune.as_mut(), tuned_run) {
                    if t.finished(size, used, run) {
                        tuned = Some(t.view());
                    }
                }
            },
        );
        if let Some(view) = tuned {
            inner.rec.tuned(view);
        }
        inner.rec.counts(guard.in_flight, guard.pending);
        drop(guard);
        inner.rec.publish();
        if completed.ran {
            inner.rec.batch_finished(
                &span,
                run_time,
                completed.label,
                completed.failed,
                completed.unrequested,
            );
        }
        for batch in completed.respawn {
            super::spawn::spawn(Driver::new(
                self.inner.clone(),
                batch,
                self.maker.clone(),
                self.clock,
            ));
        }
        for w in completed.wakers {
            w.wake();
        }
        if let Some(w) = wake {
            w.wake();
        }
        drop(garbage);
    }
}

// The driver never pins its fields (the run is boxed and pinned on its own), so
// moving it is harmless whatever the mode's types are.
impl<M: Mode> Unpin for Driver<M> {}

impl<M: Mode> Future for Driver<M> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let progressed = match &this.step {
                Step::Gather { .. } => this.poll_gather(cx),
                Step::Queued => this.poll_queued(cx),
                Step::Run(_) => this.poll_run(cx),
                Step::Finished => return Poll::Ready(()),
            };
            if progressed.is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<M: Mode> Drop for Driver<M> {
    /// Dropped before its batch is over: the runtime running it shut down (or
    /// it could not be started, or it failed itself). The batch is lost; the
    /// mode ends its callers' wait. The batch's phase, not the driver's step,
    /// decides: whatever went wrong, no caller is left waiting.
    fn drop(&mut self) {
        let step = std::mem::replace(&mut self.step, Step::Finished);
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut st = lock(&self.batch.st);
        let mut held_lane = false;
        let mut lost = None;
        let mut leftover = None;
        let step_was_run = matches!(step, Step::Run(_));
        if matches!(st.phase, Phase::Abandoned) && step_was_run {
            // Every caller left a running batch and left its lane to this
            // driver, which is dropped before it could give it back.
            held_lane = true;
        } else if !st.phase.is_over() {
            held_lane = st.phase.holds_lane();
            if st.phase.is_before_run() {
                if let Some(group) = state
                    .groups
                    .by_key(self.batch.group_hash, &self.batch.group)
                {
                    if group.withdraw(&self.batch) {
                        state.gathering -= 1;
                    }
                }
            }
            let frozen = match step {
                Step::Run(running) => {
                    let Running { run, frozen, .. } = *running;
                    leftover = Some(run);
                    Some(frozen)
                }
                _ => None,
            };
            lost = Some(M::lose(inner, &self.batch, &mut st, frozen, state));
            st.phase = Phase::Lost;
        }
        drop(st);
        let (wake, garbage) = if held_lane {
            inner.release_lane(state, &self.batch.group, self.batch.group_hash)
        } else {
            (None, None)
        };
        inner.rec.counts(state.in_flight, state.pending);
        drop(guard);
        if held_lane || lost.is_some() {
            let uncounted = lost.as_ref().map_or(0, |l| l.uncounted_calls);
            inner.rec.lost_batch(uncounted);
        }
        inner.rec.publish();
        for w in lost.map(|l| l.wakers).unwrap_or_default() {
            w.wake();
        }
        if let Some(w) = wake {
            w.wake();
        }
        drop(garbage);
        drop_quietly(leftover);
    }
}

/// The group of `batch`, which exists while the batch is before `Done` (it is
/// open, queued or holds a lane) except for a full batch not yet dispatched,
/// whose idle group may have been retired meanwhile: it is then made again.
fn group_of<'a, M: Mode>(
    groups: &'a mut super::group::Groups<M>,
    batch: &Batch<M>,
) -> &'a mut Group<M> {
    groups.by_key_or_insert(batch.group_hash, &batch.group)
}

/// Stores `waker` unless the stored one wakes the same task.
pub(crate) fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}
