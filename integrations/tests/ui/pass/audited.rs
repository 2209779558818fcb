//! Code the expansion once broke (found by an audit of the macro), each in a
//! module of its own: user items that shadowed or out-resolved what the
//! expansion calls, parameter names it took twice, attributes it dropped or
//! put on the wrong fn, and `Self` in a value type.

mod blanket_trait_batch_method {
    // A trait in scope with a by-value method named like a method's batch fn
    // (`get_batch`), implemented for every type: the expansion's
    // `__coalesce_this.get_batch(keys)` (a method call on the owned `Self`) picks
    // the trait's method (found at the by-value step, before the inherent
    // `&self` one), E0061. `Self::get_batch(&__coalesce_this, ..)` would not.
    use coalesce::coalesce;
    use std::collections::HashMap;

    pub trait Batchy: Sized {
        fn get_batch(self) {}
    }
    impl<T> Batchy for T {}

    #[derive(Clone)]
    struct Repo;

    impl Repo {
        #[coalesce]
        async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
            ids.into_iter().map(|id| (id, id)).collect()
        }
    }

    pub async fn run() {
        assert_eq!(Repo.get(1).await.unwrap(), Some(1));
    }
}

mod blanket_trait_gate {
    // A user trait with a method named `gate`, implemented for every type and in
    // scope, makes every #[coalesce] fn of the module fail with E0034 (the
    // expansion's `(&&Gate::new()).gate()` autoref-specialization call is ambiguous).
    use coalesce::coalesce;
    use std::collections::HashMap;

    pub trait Gate {
        fn gate(&self) {}
    }
    impl<T: ?Sized> Gate for T {}

    #[coalesce]
    async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }

    pub async fn run() {
        assert_eq!(load(1).await.unwrap(), Some(1));
    }
}

mod blanket_trait_source_of {
    // A user trait with a method named `source_of`, implemented for every type and
    // in scope, makes every #[coalesce] fn with an error type fail with E0034
    // (the expansion's `(&&&Probe::new()).source_of()` call is ambiguous).
    use coalesce::coalesce;
    use std::collections::HashMap;

    pub trait SourceOf {
        fn source_of(&self) {}
    }
    impl<T: ?Sized> SourceOf for T {}

    #[coalesce]
    async fn load(ids: Vec<u64>) -> Result<HashMap<u64, u64>, std::io::Error> {
        Ok(ids.into_iter().map(|id| (id, id)).collect())
    }

    pub async fn run() {
        assert_eq!(load(1).await.unwrap(), Some(1));
    }
}

mod cfg_twice_write_in_marked_impl {
    // In a `#[coalesce]`-marked impl, `#[cfg]` on a method is not evaluated
    // before the block's expansion, and the write companions
    // `__coalesce_slot_save` / `__coalesce_settled_save` are emitted without the
    // method's `#[cfg]`: two cfg variants of a write method (README: "write the fn
    // twice, each under its own #[cfg]") define them twice (E0592), and a
    // cfg'd-out write method still emits them.
    use coalesce::coalesce;

    #[derive(Clone)]
    struct Repo;

    #[coalesce]
    impl Repo {
        #[cfg(all())]
        #[coalesce]
        async fn save(&self, items: Vec<(u64, u64)>) {
            let _ = items;
        }

        #[cfg(not(all()))]
        #[coalesce]
        async fn save(&self, items: Vec<(u64, u64)>, shard: u8) {
            let _ = (items, shard);
        }
    }

    pub async fn run() {
        Repo.save(1, 2).await.unwrap();
    }
}

mod deprecated {
    #![deny(deprecated)]
    // `#[deprecated]` below `#[coalesce]` marks the single-key fn; the generated
    // `load_many` calls it, so the crate itself gets a `deprecated` warning at the
    // user's fn (an error under `#![deny(warnings)]`).
    use coalesce::coalesce;
    use std::collections::HashMap;

    #[coalesce]
    #[deprecated = "use load_v2"]
    pub async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }

    #[derive(Clone)]
    pub struct Repo;
    impl Repo {
        #[coalesce]
        #[deprecated = "use get_v2"]
        pub async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
            ids.into_iter().map(|id| (id, id)).collect()
        }
    }

    pub async fn run() {}
}

mod instrument_above_in_marked_impl {
    // README: "attributes above #[coalesce] run first, on the batch fn as
    // written". True for a free fn or a method of an unmarked impl; in a
    // `#[coalesce]`-marked impl the block's expansion runs first and puts them
    // on the *single-key* fn, where `ids` is now `id`:
    // `#[tracing::instrument(skip(ids))]` then fails ("attempting to skip
    // non-existent parameter").
    use coalesce::coalesce;
    use std::collections::HashMap;

    // The free fn: fine.
    #[tracing::instrument(skip(ids))]
    #[coalesce]
    async fn free(ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }

    pub trait Loader {
        async fn get(&self, id: u64) -> Result<Option<u64>, coalesce::Error>;
    }

    #[derive(Clone, Debug)]
    struct Repo;

    #[coalesce]
    impl Loader for Repo {
        #[tracing::instrument(skip(self, ids))]
        #[coalesce]
        async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
            ids.into_iter().map(|id| (id, id)).collect()
        }
    }

    pub async fn run() {
        assert_eq!(free(1).await.unwrap(), Some(1));
        assert_eq!(Repo.get(1).await.unwrap(), Some(1));
    }
}

mod marked_impl_lint_attrs {
    #![deny(non_snake_case)]
    // Lint attributes on a marked trait impl (`#[allow(non_snake_case)]`) are not
    // carried to the inherent impl that receives the coalesced method and its
    // companions (only `#[cfg]` is), so the lint fires there.
    use coalesce::coalesce;
    use std::collections::HashMap;

    pub trait Loader {
        async fn get(&self, id: u64) -> Result<Option<u64>, coalesce::Error>;
    }

    #[derive(Clone)]
    struct Repo;

    #[coalesce]
    #[allow(non_snake_case)]
    impl Loader for Repo {
        #[coalesce]
        async fn get(&self, IDs: Vec<u64>) -> HashMap<u64, u64> {
            IDs.into_iter().map(|id| (id, id)).collect()
        }
    }

    pub async fn run() {
        assert_eq!(Repo.get(1).await.unwrap(), Some(1));
    }
}

mod mut_self_arc {
    #![deny(unused_mut)]
    // `mut self: Arc<Self>` is accepted, but the `mut` is kept on the generated
    // single-key fn and `_many` (which only pass `self` on): unused_mut warnings
    // in generated code, errors under `#![deny(warnings)]`.
    use coalesce::coalesce;
    use std::collections::HashMap;
    use std::sync::Arc;

    pub struct Repo;
    impl Repo {
        #[coalesce]
        pub async fn get(mut self: Arc<Self>, ids: Vec<u64>) -> HashMap<u64, u64> {
            let _ = Arc::get_mut(&mut self);
            ids.into_iter().map(|id| (id, id)).collect()
        }
    }

    pub async fn run() {
        assert_eq!(Arc::new(Repo).get(1).await.unwrap(), Some(1));
    }
}

mod param_named_like_fn {
    // A parameter with the fn's own name: the generated `score_many` calls
    // `score(k, score.clone())`, where `score` is the parameter (E0618
    // "expected function, found `u64`").
    use coalesce::coalesce;
    use std::collections::HashMap;

    #[coalesce]
    async fn score(ids: Vec<u64>, score: u64) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id * score)).collect()
    }

    pub async fn run() {
        assert_eq!(score(2, 3).await.unwrap(), Some(6));
    }
}

mod self_in_value_type {
    // `Self` in the value type is rejected "because a static cannot refer to
    // Self", but the static (`Slot`) is type-erased and names no user type: the
    // same fn with `Repo` written out compiles, and so do generic-impl key types
    // (`Vec<T>` of `impl<T> Gen<T>`), which a `static` cannot name either.
    use coalesce::coalesce;
    use std::collections::HashMap;

    #[derive(Clone, Debug, PartialEq)]
    struct Repo(u64);

    impl Repo {
        #[coalesce]
        async fn load(&self, ids: Vec<u64>) -> HashMap<u64, Self> {
            ids.into_iter().map(|id| (id, Repo(id))).collect()
        }
    }

    pub async fn run() {
        assert_eq!(Repo(0).load(1).await.unwrap(), Some(Repo(1)));
    }
}

mod write_param_names_taken {
    // The single-key write fn names its pair `key`/`value`, or `write_key` /
    // `write_value` when those are taken, without checking the fallback names:
    // duplicate parameter names (E0415).
    use coalesce::coalesce;

    #[coalesce]
    async fn save(items: Vec<(u64, u64)>, key: u8, write_key: u8) {
        let _ = (items, key, write_key);
    }

    pub async fn run() {
        save(1, 2, 3, 4).await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    blanket_trait_batch_method::run().await;
    blanket_trait_gate::run().await;
    blanket_trait_source_of::run().await;
    cfg_twice_write_in_marked_impl::run().await;
    deprecated::run().await;
    instrument_above_in_marked_impl::run().await;
    marked_impl_lint_attrs::run().await;
    mut_self_arc::run().await;
    param_named_like_fn::run().await;
    self_in_value_type::run().await;
    write_param_names_taken::run().await;
}
