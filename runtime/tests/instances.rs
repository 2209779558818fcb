//! Instance identity through the public engine API (`Core::load_for`,
//! `Core::load_for_arc`, `Core::load_with`): no safe use can run one caller's
//! batch with another object, nor hand a value computed for one instance, type or
//! instantiation to a caller of another. Each case of issue 9, section 1.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use coalesce_runtime::{Config, Core};

/// What every batch below returns for a key: who computed it, from what.
type Seen = (String, u64);

fn config(name: &'static str) -> Config {
    Config::new(name).window(Duration::from_millis(5))
}

/// An object that answers with its own label; nests another at offset 0.
#[derive(Clone)]
struct Outer<T> {
    first: T,
    label: String,
}

#[derive(Clone)]
struct Leaf {
    label: String,
}

trait Labelled: Send + Sync + 'static {
    fn label(&self) -> String;
}

impl Labelled for Leaf {
    fn label(&self) -> String {
        self.label.clone()
    }
}

impl<T: Send + Sync + 'static> Labelled for Outer<T> {
    fn label(&self) -> String {
        self.label.clone()
    }
}

fn answer(who: &dyn Labelled, keys: Vec<u64>) -> HashMap<u64, Seen> {
    keys.into_iter().map(|k| (k, (who.label(), k))).collect()
}

/// `outer` and `outer.first` sit at one address; through `load_for` their calls
/// must not share a batch (the old `load_in` grouped by address alone).
#[tokio::test(start_paused = true)]
async fn objects_of_different_types_at_one_address_never_share_a_batch() {
    static CORE: LazyLock<Core<(), u64, Seen>> = LazyLock::new(|| Core::new(config("i.nested")));
    let outer = Outer {
        first: Leaf {
            label: "inner".to_owned(),
        },
        label: "outer".to_owned(),
    };
    assert_eq!(
        &outer as *const _ as usize, &outer.first as *const _ as usize,
        "the test needs the two objects at one address"
    );
    let (a, b) = tokio::join!(
        CORE.load_for(&outer, (), 1, |o: Outer<Leaf>, _, keys| async move {
            answer(&o, keys)
        }),
        CORE.load_for(&outer.first, (), 2, |l: Leaf, _, keys| async move {
            answer(&l, keys)
        }),
    );
    assert_eq!(a.unwrap(), Some(("outer".to_owned(), 1)));
    assert_eq!(b.unwrap(), Some(("inner".to_owned(), 2)));
    assert_eq!(CORE.metrics().batches, 2, "one batch per object");
}

/// Zero-sized instances of two instantiations share an address (and so did their
/// batches): `Api<Prod>` and `Api<Mock>` must each get their own answers.
#[tokio::test(start_paused = true)]
async fn zero_sized_instances_of_two_instantiations_never_share_a_batch() {
    struct Prod;
    struct Mock;
    trait Env: Send + Sync + 'static {
        const NAME: &'static str;
    }
    impl Env for Prod {
        const NAME: &'static str = "prod";
    }
    impl Env for Mock {
        const NAME: &'static str = "mock";
    }
    struct Api<E>(PhantomData<fn() -> E>);
    impl<E> Clone for Api<E> {
        fn clone(&self) -> Self {
            Api(PhantomData)
        }
    }
    async fn get<E: Env>(_: Api<E>, keys: Vec<u64>) -> HashMap<u64, Seen> {
        keys.into_iter()
            .map(|k| (k, (E::NAME.to_owned(), k)))
            .collect()
    }
    static CORE: LazyLock<Core<(), u64, Seen>> = LazyLock::new(|| Core::new(config("i.zst")));
    let (prod, mock) = (Api::<Prod>(PhantomData), Api::<Mock>(PhantomData));
    let (a, b) = tokio::join!(
        CORE.load_for(&prod, (), 2, |api, _, keys| get(api, keys)),
        CORE.load_for(&mock, (), 2, |api, _, keys| get(api, keys)),
    );
    assert_eq!(a.unwrap(), Some(("prod".to_owned(), 2)));
    assert_eq!(b.unwrap(), Some(("mock".to_owned(), 2)));
    assert_eq!(CORE.metrics().batches, 2);
}

/// Trait objects: two `Arc<dyn Labelled>` (of two types) never share a batch,
/// and each batch runs with its own caller's object.
#[tokio::test(start_paused = true)]
async fn trait_objects_behind_arcs_never_share_a_batch() {
    static CORE: LazyLock<Core<(), u64, Seen>> = LazyLock::new(|| Core::new(config("i.dyn")));
    let outer: Arc<dyn Labelled> = Arc::new(Outer {
        first: (),
        label: "outer".to_owned(),
    });
    let leaf: Arc<dyn Labelled> = Arc::new(Leaf {
        label: "leaf".to_owned(),
    });
    let twin = outer.clone();
    let calls = [(&outer, 1), (&leaf, 2), (&twin, 3)].map(|(this, key)| {
        CORE.load_for_arc(this, (), key, |o: Arc<dyn Labelled>, _, keys| async move {
            answer(&*o, keys)
        })
    });
    let [a, b, c] = calls;
    let (a, b, c) = tokio::join!(a, b, c);
    assert_eq!(a.unwrap(), Some(("outer".to_owned(), 1)));
    assert_eq!(b.unwrap(), Some(("leaf".to_owned(), 2)));
    assert_eq!(c.unwrap(), Some(("outer".to_owned(), 3)));
    assert_eq!(
        CORE.metrics().batches,
        2,
        "the two handles of one object share its batch"
    );
}

/// A batch outlives the caller that opened it: it runs with a clone of that
/// caller's object, never with a borrow. The opener is dropped mid-batch and its
/// object freed and replaced; the batch still reads its own, intact clone, and the
/// other caller gets exactly what that clone computes.
#[tokio::test(start_paused = true)]
async fn a_batch_reads_its_own_clone_after_its_opener_and_object_are_gone() {
    static CORE: LazyLock<Core<(), u64, Seen>> = LazyLock::new(|| Core::new(config("i.uaf")));
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[derive(Clone)]
    struct Repo {
        name: String,
    }
    async fn slow(repo: Repo, keys: Vec<u64>) -> HashMap<u64, Seen> {
        RUNS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Reads the repo after the opener is gone: it is this batch's own copy.
        keys.into_iter()
            .map(|k| (k, (repo.name.clone(), k)))
            .collect()
    }
    let repo = Box::new(Repo {
        name: "first".repeat(8),
    });
    let opener = {
        let fut = CORE.load_with(&*repo, (), 1, |r, _, keys| slow(r, keys));
        let mut fut = Box::pin(fut);
        // Admitted, batch open; then leave mid-batch.
        assert!(futures::poll!(fut.as_mut()).is_pending());
        fut
    };
    let other = Repo {
        name: "second".to_owned(),
    };
    // Joins the opener's batch (same group: `load_with` names instances by
    // group, here `()`), through another object.
    let joined = tokio::spawn(async move {
        let r = CORE
            .load_with(&other, (), 2, |r, _, keys| slow(r, keys))
            .await;
        (r, other.name)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(opener);
    // Free the opener's object and reuse its memory.
    drop(repo);
    let reused = Box::new(Repo {
        name: "garbage!".repeat(8),
    });
    let (r, _) = joined.await.unwrap();
    assert_eq!(r.unwrap(), Some(("first".repeat(8), 2)));
    assert_eq!(RUNS.load(SeqCst), 1, "the batch ran once, for the joiner");
    drop(reused);
}

/// The same, through `load_for`: the joiner borrows the same object, and the
/// batch still holds its own clone.
#[tokio::test(start_paused = true)]
async fn load_for_callers_of_one_object_share_a_batch_that_owns_a_clone() {
    static CORE: LazyLock<Core<(), u64, Seen>> = LazyLock::new(|| Core::new(config("i.same")));
    let repo = Leaf {
        label: "repo".to_owned(),
    };
    let calls = (0..10u64).map(|k| {
        CORE.load_for(
            &repo,
            (),
            k,
            |l: Leaf, _, keys| async move { answer(&l, keys) },
        )
    });
    for (k, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), Some(("repo".to_owned(), k as u64)));
    }
    assert_eq!(CORE.metrics().batches, 1);
}
