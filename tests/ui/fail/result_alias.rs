use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>) -> std::io::Result<HashMap<u64, String>> {
    Ok(ids.into_iter().map(|id| (id, id.to_string())).collect())
}

fn main() {}
