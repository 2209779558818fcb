//! The `static` behind each `#[coalesce]` fn: one coalescer per instantiation
//! of a generic `impl` (fns with and without `self`, reads and writes, in and
//! out of a scope), first calls racing its creation, and an adjustment that
//! creates another instantiation's coalescer while its own is being made.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use coalesce::{coalesce, Scope};

trait Table: Send + Sync + 'static {
    const NAME: &'static str;
}

struct Users;
struct Orders;

impl Table for Users {
    const NAME: &'static str = "users";
}

impl Table for Orders {
    const NAME: &'static str = "orders";
}

/// A generic repository whose coalesced fns take no `self`: `T` appears in no
/// key, value or error type.
struct Repo<T>(PhantomData<fn() -> T>);

#[coalesce]
impl<T: Table> Repo<T> {
    #[coalesce(window = "20ms")]
    async fn load(ids: Vec<u64>) -> HashMap<u64, String> {
        ids.into_iter()
            .map(|id| (id, format!("{}:{id}", T::NAME)))
            .collect()
    }
}

static WRITTEN: Mutex<BTreeMap<(&'static str, u64), u64>> = Mutex::new(BTreeMap::new());

struct Store<T>(PhantomData<fn() -> T>);

#[coalesce]
impl<T: Table> Store<T> {
    #[coalesce(window = "20ms")]
    async fn save(items: Vec<(u64, u64)>) -> Result<(), std::io::Error> {
        let mut table = WRITTEN.lock().unwrap();
        for (id, v) in items {
            table.insert((T::NAME, id), v);
        }
        Ok(())
    }
}

/// Two instantiations' calls in one window never share a batch: each runs
/// its own batch fn (they shared one coalescer, keyed by the key, value and
/// error types only, and one caller got the other table's row).
#[tokio::test]
async fn instantiations_of_a_generic_impl_never_share_a_batch() {
    let (u, o) = tokio::join!(Repo::<Users>::load(1), Repo::<Orders>::load(1));
    assert_eq!(
        (u.unwrap().as_deref(), o.unwrap().as_deref()),
        (Some("users:1"), Some("orders:1"))
    );
    // Each named after its instantiation.
    for t in [
        std::any::type_name::<Repo<Users>>(),
        std::any::type_name::<Repo<Orders>>(),
    ] {
        let m = coalesce::metrics::get(&format!("{t}::load")).expect("named per instantiation");
        assert_eq!((m.calls, m.batches), (1, 1), "{m}");
    }
    let scope = Scope::new();
    let (u, o) = scope
        .run(async { tokio::join!(Repo::<Users>::load(2), Repo::<Orders>::load(2)) })
        .await;
    assert_eq!(
        (u.unwrap().as_deref(), o.unwrap().as_deref()),
        (Some("users:2"), Some("orders:2"))
    );
}

/// Writes too: two instantiations' writes of one key are two writes to two
/// tables (they were merged into one, last write wins, and one was lost).
#[tokio::test]
async fn writes_of_two_instantiations_are_not_merged() {
    let (a, b) = tokio::join!(Store::<Users>::save(7, 1), Store::<Orders>::save(7, 2));
    a.unwrap();
    b.unwrap();
    let table = WRITTEN.lock().unwrap().clone();
    assert_eq!(
        (table.get(&("users", 7)), table.get(&("orders", 7))),
        (Some(&1), Some(&2)),
        "table: {table:?}"
    );
}

/// A generic impl with `&self`.
struct Shelf<T>(PhantomData<fn() -> T>);

impl<T> Clone for Shelf<T> {
    fn clone(&self) -> Self {
        Shelf(PhantomData)
    }
}

static MADE: AtomicUsize = AtomicUsize::new(0);

impl<T: Table> Shelf<T> {
    #[coalesce(window = "1ms", name = "statics.race")]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, &'static str> {
        ids.into_iter().map(|id| (id, T::NAME)).collect()
    }
}

/// 32 threads, each on a runtime of its own, race the first calls of two
/// instantiations: every call gets its own instantiation's answer, and one
/// coalescer per instantiation is kept (a racing first call may make one
/// more, which is dropped: the adjustment ran at least once per coalescer).
#[test]
fn first_calls_racing_the_creation_keep_one_coalescer_per_instantiation() {
    coalesce::configure("statics.race", |c| {
        MADE.fetch_add(1, SeqCst);
        c
    });
    let barrier = Arc::new(Barrier::new(32));
    let (tx, rx) = mpsc::channel();
    for i in 0..32u64 {
        let barrier = barrier.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            barrier.wait();
            let r = rt.block_on(async {
                if i % 2 == 0 {
                    Shelf::<Users>(PhantomData).get(i).await.unwrap()
                } else {
                    Shelf::<Orders>(PhantomData).get(i).await.unwrap()
                }
            });
            let want = if i % 2 == 0 { "users" } else { "orders" };
            let _ = tx.send(r == Some(want));
        });
    }
    drop(tx);
    for _ in 0..32 {
        let ok = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a racing first call hung");
        assert!(ok, "a call got another instantiation's answer");
    }
    assert!(MADE.load(SeqCst) >= 2);
    let named: Vec<_> = coalesce::metrics::snapshot()
        .into_iter()
        .filter(|m| m.name == "statics.race")
        .collect();
    assert_eq!(named.len(), 2);
    assert_eq!(named.iter().map(|m| m.calls).sum::<u64>(), 32);
}

static REENTERED: AtomicUsize = AtomicUsize::new(0);

struct Rack<T>(PhantomData<fn() -> T>);

impl<T> Clone for Rack<T> {
    fn clone(&self) -> Self {
        Rack(PhantomData)
    }
}

impl<T: Table> Rack<T> {
    #[coalesce(window = "1ms")]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, &'static str> {
        ids.into_iter().map(|id| (id, T::NAME)).collect()
    }
}

/// An adjustment may create coalescers (`configure` says so), even of the
/// same `static`: making `Rack<Users>`'s coalescer runs an adjustment that
/// calls `Rack<Orders>`'s fn (it deadlocked: the slot made its first core
/// inside a `OnceLock` initializer, which the adjustment re-entered).
#[test]
fn an_adjustment_may_create_a_coalescer_of_the_same_static() {
    let name = format!("{}::get", std::any::type_name::<Rack<Users>>());
    coalesce::configure(&name, |c| {
        if REENTERED.fetch_add(1, SeqCst) == 0 {
            use futures::FutureExt as _;
            let _ = Rack::<Orders>(PhantomData).get(1).now_or_never();
        }
        c
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let users = rt.block_on(Rack::<Users>(PhantomData).get(1));
        let orders = rt.block_on(Rack::<Orders>(PhantomData).get(1));
        let _ = tx.send((users.unwrap(), orders.unwrap()));
    });
    let answers = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a deadlock: the adjustment re-entered the slot");
    assert_eq!(answers, (Some("users"), Some("orders")));
}

mod dyn_source {
    use coalesce::coalesce;
    pub(crate) trait Src {}
    #[coalesce]
    impl dyn Src {
        #[coalesce]
        pub(crate) async fn assoc_dyn(ids: Vec<u64>) -> Vec<u64> {
            ids
        }
    }
}

/// An associated fn of `impl dyn Src` is named `…::dyn Src::assoc_dyn` (the
/// space was dropped: `dynSrc`).
#[tokio::test]
async fn an_impl_of_a_trait_object_keeps_its_name() {
    assert_eq!(<dyn dyn_source::Src>::assoc_dyn(1).await.unwrap(), 1);
    let name =
        format!("{}::dyn Src::assoc_dyn", module_path!()).replace("statics", "statics::dyn_source");
    assert!(
        coalesce::metrics::get(&name).is_some(),
        "{:?}",
        coalesce::metrics::snapshot()
            .into_iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
    );
}
