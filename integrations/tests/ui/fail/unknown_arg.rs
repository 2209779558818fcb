use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(window = "5ms", ttl = "60s")]
async fn load(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

#[tokio::main]
async fn main() {
    let _ = load(1).await;
}
