use coalesce::coalesce;
use std::collections::HashMap;
use std::hash::Hash;

#[coalesce]
async fn load<K: Hash + Eq + Clone>(keys: Vec<K>) -> HashMap<K, u64> {
    keys.into_iter().map(|key| (key, 1)).collect()
}

#[coalesce]
async fn chunk<const N: usize>(keys: Vec<u64>) -> Vec<[u64; N]> {
    keys.into_iter().map(|key| [key; N]).collect()
}

fn main() {}
