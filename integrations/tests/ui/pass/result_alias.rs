//! `Result` aliases that fix the error type: `io::Result<T>`, and a crate's own.
#![deny(warnings)]

use coalesce::coalesce;
use std::collections::HashMap;

mod db {
    #[derive(Debug)]
    pub struct Error;
    pub type Result<T> = std::result::Result<T, Error>;
}

#[coalesce]
async fn load(ids: Vec<u64>) -> std::io::Result<HashMap<u64, String>> {
    Ok(ids.into_iter().map(|id| (id, id.to_string())).collect())
}

#[coalesce]
async fn lengths(words: Vec<String>) -> db::Result<Vec<usize>> {
    Ok(words.iter().map(String::len).collect())
}

#[tokio::main]
async fn main() {
    let a: Result<Option<String>, coalesce::Error<std::io::Error>> = load(1).await;
    assert_eq!(a.unwrap().as_deref(), Some("1"));
    let b: Result<usize, coalesce::Error<db::Error>> = lengths("four".to_owned()).await;
    assert_eq!(b.unwrap(), 4);
}

#[coalesce]
async fn save(items: Vec<(u64, String)>) -> std::io::Result<()> {
    let _ = items;
    Ok(())
}

#[allow(dead_code)]
async fn saves() {
    let _: Result<(), coalesce::Error<std::io::Error>> = save(1, "a".to_owned()).await;
}

/// A map alias with its own hasher (as `FxHashMap` is).
type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

#[coalesce]
async fn fast(ids: Vec<u64>) -> FastMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

#[allow(dead_code)]
async fn fasts() {
    let _: Result<Option<u64>, coalesce::Error> = fast(1).await;
}
