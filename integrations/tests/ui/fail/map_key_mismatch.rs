use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>) -> HashMap<u32, String> {
    ids.into_iter()
        .map(|id| (id as u32, id.to_string()))
        .collect()
}

fn main() {}
