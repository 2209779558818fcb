use coalesce::coalesce;
use std::collections::HashMap;

struct Repo {
    calls: usize,
}

impl Repo {
    #[coalesce]
    async fn load(&mut self, ids: Vec<u64>) -> HashMap<u64, u64> {
        self.calls += 1;
        ids.into_iter().map(|id| (id, id)).collect()
    }
}

#[tokio::main]
async fn main() {
    let mut repo = Repo { calls: 0 };
    let _ = repo.load(1).await;
}
