use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(isolate = 0)]
async fn load(ids: Vec<u64>) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.into_iter().map(|id| (id, id)).collect())
}

fn main() {}
