use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(after_writes = "save_scores")]
async fn get_scores(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, 0)).collect()
}

fn main() {}
