//! Memory proportional to what is pending now (issue 9, section 2): one big batch
//! does not make later batches reserve its size, and a flood of groups gives its
//! memory back. Measured with a counting allocator (this test binary's own), one
//! test at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use coalesce_runtime::{Config, Core};
use futures::future::join_all;

struct Counting;

static NET: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, and only adds the size to a counter; `System` upholds the
// `GlobalAlloc` contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        NET.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NET.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        NET.fetch_add(new as isize - layout.size() as isize, Relaxed);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn net() -> isize {
    NET.load(Relaxed)
}

/// The tests measure the whole process's allocations: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The batch function: each key's value is the key.
fn ident(_: &u64, keys: Vec<u64>) -> impl std::future::Future<Output = HashMap<u64, u64>> {
    async move { keys.into_iter().map(|k| (k, k)).collect() }
}

/// Admits 5,000 calls, each in a group of its own (a batch of one key each), and
/// returns the memory they hold while pending.
async fn held_by_5000_one_key_batches(core: &Core<u64, u64, u64>) -> isize {
    let before = net();
    let calls = join_all((0..5000u64).map(|g| core.load(g, g, ident)));
    tokio::pin!(calls);
    assert!(futures::poll!(calls.as_mut()).is_pending());
    let held = net() - before;
    for (g, r) in calls.await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), Some(g as u64));
    }
    held
}

/// 5,000 concurrent one-key batches in distinct groups hold as much memory after
/// one batch of 1,000 keys as before it (it used to make every later batch
/// reserve 1,000 slots: +7.5 MB became +369 MB).
#[test]
fn one_big_batch_does_not_make_later_batches_big() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = rt();
    rt.block_on(async {
        let core: Core<u64, u64, u64> =
            Core::new(Config::new("m.hint").window(Duration::from_millis(1)));
        let before = held_by_5000_one_key_batches(&core).await;
        // One batch of 1,000 keys in group 0.
        let big = join_all((0..1000u64).map(|k| core.load(0, k, ident))).await;
        assert!(big.into_iter().all(|r| r.is_ok()));
        assert_eq!(core.metrics().batch_size.max, 1000);
        let after = held_by_5000_one_key_batches(&core).await;
        eprintln!(
            "5,000 one-key batches hold {before} bytes before, {after} after a 1,000-key batch"
        );
        assert!(
            after <= before + before / 4,
            "{after} bytes after a big batch, {before} before"
        );
    });
}

/// A flood of 100,000 groups, then quiet: what the coalescer holds returns to
/// about what it held before the flood (the group table shrinks, idle groups go).
/// The runtime's own queues keep the capacity the first flood gave them, so the
/// second flood is the one measured.
#[test]
fn a_flood_of_groups_gives_its_memory_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = rt();
    rt.block_on(async {
        let core: Core<u64, u64, u64> =
            Core::new(Config::new("m.flood").window(Duration::from_millis(1)));
        let mut held = Vec::new();
        for _ in 0..2 {
            let before = net();
            let calls = join_all((0..100_000u64).map(|g| core.load(g, g, ident)));
            tokio::pin!(calls);
            assert!(futures::poll!(calls.as_mut()).is_pending());
            let peak = net() - before;
            drop(calls.await);
            let after = net() - before;
            eprintln!("100,000 groups: {peak} bytes at the peak, {after} after");
            assert!(peak > 10_000_000, "the flood held {peak} bytes");
            held.push(after);
        }
        assert!(
            held[1] < 64 * 1024,
            "{} bytes stayed after the second flood",
            held[1]
        );
        assert_eq!(core.metrics().pending, 0);
    });
}
