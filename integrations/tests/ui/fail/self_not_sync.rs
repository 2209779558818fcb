use coalesce::coalesce;
use std::cell::Cell;
use std::collections::HashMap;

struct Repo {
    hits: Cell<u64>,
}

impl Repo {
    #[coalesce]
    async fn load(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter()
            .map(|id| (id, id + self.hits.get()))
            .collect()
    }
}

fn main() {}
