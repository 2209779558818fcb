use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>, #[cfg(feature = "tenants")] tenant: String) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

fn main() {}
