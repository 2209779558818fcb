use coalesce::coalesce;
use std::collections::HashMap;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Repo;

impl Repo {
    #[coalesce]
    async fn load(&self, ids: Vec<u64>) -> HashMap<u64, Self> {
        ids.into_iter().map(|id| (id, Repo)).collect()
    }
}

fn main() {}
