use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>, table: &str) -> HashMap<u64, String> {
    ids.into_iter()
        .map(|id| (id, format!("{table}{id}")))
        .collect()
}

#[coalesce]
async fn load_cow(ids: Vec<u64>, table: std::borrow::Cow<'_, str>) -> HashMap<u64, String> {
    ids.into_iter()
        .map(|id| (id, format!("{table}{id}")))
        .collect()
}

fn main() {}
