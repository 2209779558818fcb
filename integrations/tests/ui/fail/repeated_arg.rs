use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(window = "5ms", max_batch = 10, window = "10ms", max_batch = 20)]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

fn main() {}
