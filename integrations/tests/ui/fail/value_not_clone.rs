use coalesce::coalesce;
use std::collections::HashMap;

struct User {
    name: String,
}

#[coalesce]
async fn load(ids: Vec<u64>) -> HashMap<u64, User> {
    ids.into_iter()
        .map(|id| {
            (
                id,
                User {
                    name: id.to_string(),
                },
            )
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let _ = load(1).await.map(|user| user.map(|user| user.name));
}
