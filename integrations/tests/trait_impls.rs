//! `#[coalesce]` on an impl block: coalesced methods of a trait impl (native
//! `async fn` in traits and `#[async_trait]`), and associated fns without `self`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use coalesce::coalesce;

/// A repository trait as a service declares it: the single-key method only.
trait UserRepo {
    async fn name(&self, id: u64) -> Result<Option<String>, coalesce::Error<String>>;
}

#[derive(Clone, Default)]
struct MemRepo {
    batches: Arc<AtomicUsize>,
}

#[coalesce]
impl UserRepo for MemRepo {
    /// One lookup for every concurrent caller.
    #[coalesce(window = "5ms")]
    async fn name(&self, ids: Vec<u64>) -> Result<HashMap<u64, String>, String> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        Ok(ids
            .into_iter()
            .filter(|id| *id != 0)
            .map(|id| (id, format!("user{id}")))
            .collect())
    }
}

async fn names_through_the_trait<R: UserRepo>(repo: &R) -> Vec<Option<String>> {
    let (a, b, c) = tokio::join!(repo.name(1), repo.name(2), repo.name(0));
    vec![a.unwrap(), b.unwrap(), c.unwrap()]
}

#[tokio::test]
async fn a_trait_impl_method_is_coalesced_and_keeps_its_companions() {
    let repo = MemRepo::default();
    let names = names_through_the_trait(&repo).await;
    assert_eq!(names, [Some("user1".into()), Some("user2".into()), None]);
    assert_eq!(repo.batches.load(Ordering::SeqCst), 1);
    // The companions live in an inherent impl of the same type.
    let many = repo.name_many(vec![3, 4]).await.unwrap();
    assert_eq!(many.len(), 2);
    let raw = repo.name_batch(vec![5]).await.unwrap();
    assert_eq!(raw[&5], "user5");
}

/// The same with `#[async_trait]`, used as a trait object.
#[async_trait::async_trait]
trait Prices: Send + Sync {
    async fn price(&self, sku: String) -> Result<Option<u32>, coalesce::Error>;
}

#[derive(Clone, Default)]
struct Catalog {
    batches: Arc<AtomicUsize>,
}

#[coalesce]
#[async_trait::async_trait]
impl Prices for Catalog {
    #[coalesce(window = "5ms")]
    async fn price(&self, skus: Vec<String>) -> HashMap<String, u32> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        skus.into_iter()
            .map(|sku| {
                let price = sku.len() as u32;
                (sku, price)
            })
            .collect()
    }
}

#[tokio::test]
async fn an_async_trait_object_is_coalesced() {
    let catalog = Catalog::default();
    let prices: Arc<dyn Prices> = Arc::new(catalog.clone());
    let (a, b) = tokio::join!(prices.price("ab".into()), prices.price("abcd".into()));
    assert_eq!(a.unwrap(), Some(2));
    assert_eq!(b.unwrap(), Some(4));
    assert_eq!(catalog.batches.load(Ordering::SeqCst), 1);
}

static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

struct Codes;

#[coalesce]
impl Codes {
    fn prefix() -> &'static str {
        "code-"
    }

    /// An associated fn without `self`; its body uses `Self`.
    #[coalesce(window = "5ms")]
    pub async fn code(ids: Vec<u32>) -> HashMap<u32, String> {
        LOOKUPS.fetch_add(1, Ordering::SeqCst);
        ids.into_iter()
            .map(|id| (id, format!("{}{id}", Self::prefix())))
            .collect()
    }
}

#[tokio::test]
async fn an_associated_fn_without_self_is_coalesced_in_a_marked_impl() {
    let before = LOOKUPS.load(Ordering::SeqCst);
    let (a, b) = tokio::join!(Codes::code(1), Codes::code(2));
    assert_eq!(a.unwrap().as_deref(), Some("code-1"));
    assert_eq!(b.unwrap().as_deref(), Some("code-2"));
    assert_eq!(LOOKUPS.load(Ordering::SeqCst) - before, 1);
    let many = Codes::code_many(vec![7]).await.unwrap();
    assert_eq!(many[&7], "code-7");
}
