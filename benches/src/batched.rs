//! `batched-fn` adapters. Its configuration is fixed per macro call site (one static
//! batcher, with its own OS thread, per site), so each (work, max batch) pair the
//! benchmarks use gets its own function.

use batched_fn::batched_fn;

use crate::{compute, Work, ROUND_TRIP};

macro_rules! sites {
    ($($name:ident: $size:literal, $sleep:literal;)*) => {
        $(
            async fn $name(key: u64) -> u64 {
                let f = batched_fn! {
                    handler = |batch: Vec<u64>| -> Vec<u64> {
                        if $sleep {
                            std::thread::sleep(ROUND_TRIP);
                        }
                        batch.into_iter().map(compute).collect()
                    };
                    config = {
                        max_batch_size: $size,
                        max_delay: 1,
                    };
                    context = {};
                };
                f(key).await.expect("batched-fn worker alive")
            }
        )*

        /// Calls `batched-fn`'s batcher for `work` and `max_batch` (1, 10, 100 or 1000).
        async fn dispatch(work: Work, max_batch: usize, key: u64) -> u64 {
            match (work == Work::RoundTrip, max_batch) {
                $( ($sleep, $size) => $name(key).await, )*
                _ => panic!("no batched-fn site for max_batch {max_batch}"),
            }
        }
    };
}

sites! {
    cpu_1: 1, false;
    cpu_10: 10, false;
    cpu_100: 100, false;
    cpu_1000: 1000, false;
    rt_1: 1, true;
    rt_10: 10, true;
    rt_100: 100, true;
    rt_1000: 1000, true;
}

/// A `batched-fn` batcher for one (work, max batch) pair.
#[derive(Clone, Copy, Debug)]
pub struct Handle {
    work: Work,
    max_batch: usize,
}

/// The batcher for `work` with batches of at most `max_batch` (1, 10, 100 or 1000).
pub fn handle(work: Work, max_batch: usize) -> Handle {
    Handle { work, max_batch }
}

impl Handle {
    /// Loads one key through the batcher.
    pub async fn call(&self, key: u64) -> u64 {
        dispatch(self.work, self.max_batch, key).await
    }
}
