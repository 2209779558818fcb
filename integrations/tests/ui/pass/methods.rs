use coalesce::coalesce;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

// A repository is cheap to clone: each batch runs with a clone of the instance
// of the call that opened it, so shared state sits behind `Arc`s.
#[derive(Clone)]
struct Repo {
    prefix: String,
    batches: Arc<AtomicUsize>,
}

impl Repo {
    #[coalesce(window = "1ms")]
    async fn name(&self, ids: Vec<u64>) -> HashMap<u64, String> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        ids.into_iter()
            .map(|id| (id, format!("{}{id}", self.prefix)))
            .collect()
    }

    #[coalesce]
    async fn lengths<'a>(self: &'a Self, words: Vec<String>) -> Vec<usize> {
        let _ = &self.prefix;
        words.iter().map(String::len).collect()
    }

    // Clones share batches when the instance is named by a value.
    #[coalesce(instance = self.prefix)]
    async fn shout(&self, ids: Vec<u64>) -> HashMap<u64, String> {
        ids.into_iter()
            .map(|id| (id, format!("{}{id}!", self.prefix)))
            .collect()
    }
}

// A type that is not `Clone` takes `self: Arc<Self>` or `self: &Arc<Self>`.
struct Service {
    base: u64,
}

impl Service {
    #[coalesce]
    async fn add(self: Arc<Self>, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id + self.base)).collect()
    }

    #[coalesce(instance = self.base)]
    async fn sub(self: &Arc<Self>, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, self.base - id)).collect()
    }
}

#[tokio::main]
async fn main() {
    let repo = Repo {
        prefix: "user-".to_owned(),
        batches: Arc::default(),
    };
    assert_eq!(repo.name(7).await.unwrap().as_deref(), Some("user-7"));
    assert_eq!(repo.lengths("four".to_owned()).await.unwrap(), 4);
    assert_eq!(repo.name_batch(vec![1, 2]).await.len(), 2);
    assert_eq!(repo.clone().shout(1).await.unwrap().as_deref(), Some("user-1!"));
    assert!(repo.batches.load(Ordering::Relaxed) >= 1);
    let service = Arc::new(Service { base: 100 });
    assert_eq!(service.clone().add(1).await.unwrap(), Some(101));
    assert_eq!(service.sub(1).await.unwrap(), Some(99));
}
