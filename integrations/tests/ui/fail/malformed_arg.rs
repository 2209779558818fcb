use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(window "5ms")]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

#[coalesce(max_batch = 10 max_pending = 100)]
async fn load2(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

#[coalesce(group =)]
async fn load3(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

fn main() {}
