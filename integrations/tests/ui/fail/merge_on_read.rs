use coalesce::coalesce;
use std::collections::HashMap;

fn add(total: &mut u64, n: u64) {
    *total += n;
}

#[coalesce(merge = add)]
async fn load(ids: Vec<u32>) -> HashMap<u32, u64> {
    ids.into_iter().map(|id| (id, 0)).collect()
}

fn main() {}
