//! The floor of a hand-rolled coalescer: a `Mutex<Vec<(key, oneshot::Sender)>>`
//! flushed by a spawned task when its window elapses or it holds `max_batch` keys.
//!
//! It has none of the guarantees of `coalesce` (no deduplication, no typed errors,
//! no metrics, a spawned task per batch, a caller dropped mid-batch is simply not
//! answered); it is here to show what the scheduler and the timer cost on their own,
//! so that the engine's overhead can be read against it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{compute, Work, ROUND_TRIP};

type Queue = Vec<(u64, oneshot::Sender<u64>)>;

/// A bare coalescer of the benchmark workloads.
pub struct Bare {
    work: Work,
    max_batch: usize,
    window: Duration,
    queue: Mutex<Queue>,
}

impl Bare {
    /// A bare coalescer doing `work`, with batches of at most `max_batch` keys.
    pub fn new(work: Work, max_batch: usize, window: Duration) -> Arc<Self> {
        Arc::new(Bare {
            work,
            max_batch: max_batch.max(1),
            window,
            queue: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> Queue {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn run(work: Work, batch: Queue) {
        if work == Work::RoundTrip {
            tokio::time::sleep(ROUND_TRIP).await;
        }
        for (key, tx) in batch {
            let _ = tx.send(compute(key));
        }
    }

    /// Loads one key.
    pub async fn load(self: &Arc<Self>, key: u64) -> u64 {
        let (tx, rx) = oneshot::channel();
        let (first, full) = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.push((key, tx));
            if q.len() >= self.max_batch {
                (false, Some(std::mem::take(&mut *q)))
            } else {
                (q.len() == 1, None)
            }
        };
        if let Some(batch) = full {
            tokio::spawn(Self::run(self.work, batch));
        } else if first {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.window).await;
                let batch = this.take();
                Self::run(this.work, batch).await;
            });
        }
        rx.await.expect("the bare coalescer answers every key")
    }
}
