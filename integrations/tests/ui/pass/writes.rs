//! The write shapes: `()`, `Result<(), E>`, per-key maps (alone or inside a
//! `Result`), `merge`, extra parameters, and methods (`&self` with `instance`,
//! `self: Arc<Self>`).
#![deny(warnings)]

use coalesce::coalesce;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

fn add(total: &mut u64, n: u64) {
    *total += n;
}

#[derive(Debug)]
struct DbError;

/// Saves scores.
#[coalesce(window = "20ms", max_batch = 1000)]
async fn save_scores(items: Vec<(u64, u64)>) -> Result<(), DbError> {
    let _ = items;
    Ok(())
}

#[coalesce(merge = add)]
async fn count(items: Vec<(String, u64)>) {
    let _ = items;
}

#[coalesce]
async fn per_key(items: Vec<(u32, String)>, region: u8) -> HashMap<u32, Result<(), DbError>> {
    let _ = region;
    items.into_iter().map(|(k, _)| (k, Ok(()))).collect()
}

#[coalesce]
async fn per_key_in_result(
    items: Vec<(u32, Option<String>)>,
) -> Result<BTreeMap<u32, Result<(), DbError>>, DbError> {
    Ok(items.into_iter().map(|(k, _)| (k, Ok(()))).collect())
}

#[derive(Clone)]
struct Repo {
    schema: String,
}

impl Repo {
    #[coalesce(instance = self.schema, merge = add)]
    async fn bump(&self, items: Vec<(u32, u64)>) -> Result<(), DbError> {
        let _ = (items, &self.schema);
        Ok(())
    }

    #[coalesce]
    async fn put(self: Arc<Self>, items: Vec<(u32, u64)>) {
        let _ = items;
    }
}

#[tokio::main]
async fn main() {
    let _: Result<(), coalesce::Error<DbError>> = save_scores(1, 2).await;
    let _: Result<(), coalesce::Error> = count("visits".to_owned(), 1).await;
    let _: Result<(), coalesce::Error<DbError>> = per_key(1, "a".to_owned(), 3).await;
    let _: Result<(), coalesce::Error<DbError>> = per_key_in_result(1, None).await;
    let repo = Repo { schema: "s".to_owned() };
    let _: Result<(), coalesce::Error<DbError>> = repo.bump(1, 1).await;
    let _: Result<(), coalesce::Error> = Arc::new(repo).put(1, 1).await;
    save_scores_batch(vec![(1, 2)]).await.unwrap();
}

/// Reads what `save_scores` writes: waits for its pending writes first.
#[coalesce(after_writes = save_scores)]
async fn get_scores(ids: Vec<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, 0)).collect()
}

#[allow(dead_code)]
async fn reads() {
    let _: Result<Option<u64>, coalesce::Error> = get_scores(1).await;
}

/// Last write wins: `isolate` may re-send the halves of a failed batch.
#[coalesce(isolate = 3)]
async fn put_names(items: Vec<(u64, String)>) -> Result<(), DbError> {
    let _ = items;
    Ok(())
}

#[allow(dead_code)]
async fn puts() {
    let _: Result<(), coalesce::Error<DbError>> = put_names(1, "ada".to_owned()).await;
}
