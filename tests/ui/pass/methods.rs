use coalesce::coalesce;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Repo {
    prefix: String,
    batches: AtomicUsize,
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
}

#[tokio::main]
async fn main() {
    let repo = Repo {
        prefix: "user-".to_owned(),
        batches: AtomicUsize::new(0),
    };
    assert_eq!(repo.name(7).await.unwrap().as_deref(), Some("user-7"));
    assert_eq!(repo.lengths("four".to_owned()).await.unwrap(), 4);
    assert_eq!(repo.name_batch(vec![1, 2]).await.len(), 2);
    assert!(repo.batches.load(Ordering::Relaxed) >= 1);
}
