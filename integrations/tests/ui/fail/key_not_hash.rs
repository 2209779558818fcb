use coalesce::coalesce;

#[derive(Clone, PartialEq, Eq)]
struct Key(u64);

#[coalesce]
async fn load(keys: Vec<Key>) -> Vec<u64> {
    keys.into_iter().map(|key| key.0).collect()
}

#[tokio::main]
async fn main() {
    let _ = load(Key(1)).await;
}
