use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
fn load(ids: Vec<u64>) -> HashMap<u64, String> {
    ids.into_iter().map(|id| (id, id.to_string())).collect()
}

#[tokio::main]
async fn main() {
    let _ = load(1).await;
}
