//! Where drivers run: as a task on the Tokio runtime of the call that needs one,
//! or, outside any Tokio runtime (`futures::executor::block_on`, a plain thread),
//! on one process-wide thread, `coalesce-driver`, with a minimal executor.
//!
//! A driver is the only thing the engine ever spawns. It owns everything it
//! polls (`'static`), so it needs no caller to stay alive or to be polled.

use std::future::Future;
#[cfg(not(loom))]
use std::pin::Pin;

/// A driver, boxed for the fallback executor.
#[cfg(not(loom))]
type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs `fut` to completion in the background. If it cannot run at all (the
/// fallback thread could not be started), it is dropped at once, which every
/// driver treats as losing its runtime.
pub(crate) fn spawn<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(loom)]
    {
        let handle = loom::thread::spawn(move || loom::future::block_on(fut));
        DRIVERS.lock().unwrap().push(handle);
    }
    #[cfg(not(loom))]
    {
        // In the caller's `Scope`, if it runs in one.
        let fut = crate::scope::carried(fut);
        match tokio::runtime::Handle::try_current() {
            // Dropping the `JoinHandle` detaches the task.
            Ok(handle) => drop(handle.spawn(fut)),
            Err(_) => fallback::spawn(Box::pin(fut)),
        }
    }
}

/// Whether a Tokio runtime is current on this thread.
/// Spawns `fut` on the runtime of `home` (a handle taken where the work
/// began), or on the fallback thread without one: work promoted out of a
/// caller's future runs where that caller's runtime runs it (its resources,
/// its clock), not on whichever runtime happened to promote it.
pub(crate) fn spawn_home<F>(home: Option<tokio::runtime::Handle>, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(loom)]
    {
        drop(home);
        spawn(fut);
    }
    #[cfg(not(loom))]
    {
        let fut = crate::scope::carried(fut);
        match home {
            Some(handle) => drop(handle.spawn(fut)),
            None => fallback::spawn(Box::pin(fut)),
        }
    }
}

pub(crate) fn on_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

#[cfg(loom)]
loom::lazy_static! {
    /// The driver threads of the current loom execution, for `join_drivers`.
    static ref DRIVERS: loom::sync::Mutex<Vec<loom::thread::JoinHandle<()>>> =
        loom::sync::Mutex::new(Vec::new());
}

/// Waits for every driver thread of the current loom execution (and those they
/// start) to finish, so that a model can check the state they leave.
#[cfg(loom)]
pub fn join_drivers() {
    loop {
        let Some(handle) = DRIVERS.lock().unwrap().pop() else {
            return;
        };
        handle.join().unwrap();
    }
}

#[cfg(not(loom))]
mod fallback {
    //! A single-threaded executor for drivers started outside any Tokio runtime.
    //!
    //! Tasks are `Arc<Slot>`s; waking one queues it (once) on the channel the
    //! thread reads. The thread never exits; it sleeps while there is nothing to do.

    use std::sync::atomic::{AtomicBool, Ordering::AcqRel};
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Arc, Mutex, OnceLock, PoisonError};
    use std::task::{Context, Wake, Waker};

    use super::Task;

    struct Slot {
        task: Mutex<Option<Task>>,
        /// Queued on the channel and not yet polled: a wake then queues nothing.
        queued: AtomicBool,
        queue: Sender<Arc<Slot>>,
    }

    impl Wake for Slot {
        fn wake(self: Arc<Self>) {
            if !self.queued.swap(true, AcqRel) {
                let queue = self.queue.clone();
                // A send fails only if the thread is gone, and then nothing runs.
                let _ = queue.send(self);
            }
        }
    }

    fn queue() -> Option<&'static Mutex<Sender<Arc<Slot>>>> {
        static QUEUE: OnceLock<Option<Mutex<Sender<Arc<Slot>>>>> = OnceLock::new();
        QUEUE
            .get_or_init(|| {
                let (tx, rx) = channel::<Arc<Slot>>();
                let started = std::thread::Builder::new()
                    .name("coalesce-driver".to_owned())
                    .spawn(move || {
                        while let Ok(slot) = rx.recv() {
                            slot.queued
                                .store(false, std::sync::atomic::Ordering::Release);
                            let waker = Waker::from(slot.clone());
                            let mut cx = Context::from_waker(&waker);
                            let mut task = slot.task.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(fut) = task.as_mut() {
                                // Drivers catch the panics of user code themselves.
                                let done =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        fut.as_mut().poll(&mut cx).is_ready()
                                    }))
                                    .unwrap_or(true);
                                if done {
                                    let finished = task.take();
                                    drop(task);
                                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                                        move || drop(finished),
                                    ));
                                }
                            }
                        }
                    });
                started.ok().map(|_| Mutex::new(tx))
            })
            .as_ref()
    }

    pub(super) fn spawn(task: Task) {
        let Some(queue) = queue() else {
            // No thread: dropping the driver reports the loss to its callers.
            drop(task);
            return;
        };
        let tx = queue.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let slot = Arc::new(Slot {
            task: Mutex::new(Some(task)),
            queued: AtomicBool::new(false),
            queue: tx,
        });
        slot.wake();
    }
}
