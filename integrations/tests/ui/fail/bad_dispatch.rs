use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(dispatch = "eager", name = "")]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

fn main() {}
