use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>, label: impl std::fmt::Display) -> HashMap<u64, String> {
    ids.into_iter()
        .map(|id| (id, format!("{label}{id}")))
        .collect()
}

fn main() {}
