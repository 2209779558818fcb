use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>, fields: Vec<String>) -> HashMap<u64, String> {
    ids.into_iter().map(|id| (id, fields.join(","))).collect()
}

fn main() {}
