use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: &[u64]) -> HashMap<u64, String> {
    ids.iter().map(|id| (*id, id.to_string())).collect()
}

#[coalesce]
async fn nothing() -> HashMap<u64, String> {
    HashMap::new()
}

fn main() {}
