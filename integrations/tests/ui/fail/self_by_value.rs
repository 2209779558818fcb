use coalesce::coalesce;
use std::collections::HashMap;
use std::sync::Arc;

struct Repo;

impl Repo {
    #[coalesce]
    async fn load(self, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }

    #[coalesce]
    async fn load_arc(self: Arc<Self>, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }
}

fn main() {}
