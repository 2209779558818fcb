use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce(context = pool)]
async fn load(ids: Vec<u64>, pol: &String) -> HashMap<u64, String> {
    ids.into_iter().map(|id| (id, pol.clone())).collect()
}

#[coalesce(context = (buffer))]
async fn load_mut(ids: Vec<u64>, buffer: &mut Vec<u8>) -> HashMap<u64, usize> {
    ids.into_iter().map(|id| (id, buffer.len())).collect()
}

fn main() {}
