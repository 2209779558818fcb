use coalesce::coalesce;
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
struct User {
    name: String,
}

#[derive(Debug)]
struct DbError;

#[coalesce]
async fn hash_map(ids: Vec<u64>) -> HashMap<u64, User> {
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

#[coalesce]
async fn btree_map(ids: Vec<u64>) -> std::collections::BTreeMap<u64, User> {
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

#[coalesce]
async fn fallible_map(ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError> {
    if ids.contains(&0) {
        return Err(DbError);
    }
    Ok(hash_map_batch(ids).await)
}

#[coalesce]
async fn fallible_btree(ids: Vec<String>) -> std::result::Result<BTreeMap<String, u8>, DbError> {
    Ok(ids.into_iter().map(|id| (id, 1)).collect())
}

#[coalesce]
async fn with_hasher(
    ids: Vec<u64>,
) -> HashMap<u64, u8, std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>> {
    ids.into_iter().map(|id| (id, 1)).collect()
}

#[tokio::main]
async fn main() {
    let user: Result<Option<User>, coalesce::Error> = hash_map(1).await;
    assert_eq!(user.unwrap().unwrap().name, "1");
    let user: Result<Option<User>, coalesce::Error> = btree_map(2).await;
    assert_eq!(user.unwrap().unwrap().name, "2");
    let user: Result<Option<User>, coalesce::Error<DbError>> = fallible_map(3).await;
    assert_eq!(user.unwrap().unwrap().name, "3");
    assert!(fallible_map(0).await.is_err());
    let n: Result<Option<u8>, coalesce::Error<DbError>> = fallible_btree("a".to_owned()).await;
    assert_eq!(n.unwrap(), Some(1));
    assert_eq!(with_hasher(5).await.unwrap(), Some(1));
    // The batch forms stay callable.
    assert_eq!(hash_map_batch(vec![1, 2]).await.len(), 2);
    assert_eq!(btree_map_batch(vec![1]).await.len(), 1);
    assert!(fallible_btree_batch(vec![]).await.unwrap().is_empty());
    assert_eq!(with_hasher_batch(vec![7]).await.len(), 1);
}
