use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(max_batch = 0, max_in_flight = -1, max_pending = "100")]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

fn main() {}
