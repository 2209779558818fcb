use coalesce::coalesce;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

#[derive(Debug)]
struct DbError;
#[derive(Debug)]
struct RowError;

// A per-key error that is not the batch error and does not convert into it.
#[coalesce]
async fn per_key(ids: Vec<u64>) -> Result<HashMap<u64, Result<String, RowError>>, DbError> {
    Ok(ids.into_iter().map(|id| (id, Ok(id.to_string()))).collect())
}

#[derive(Clone, PartialEq, Eq)]
struct Tag(u8);

struct NotClone;

// Each type below is of several tokens and falls short of a bound: each is
// reported once, on the whole type (not again at the generated calls, their
// futures or their `.await`).

// A key type whose element is not `Hash`.
#[coalesce]
async fn tagged(ids: Vec<Option<Tag>>) -> HashMap<Option<Tag>, u8> {
    let _ = ids;
    HashMap::new()
}

// A value type whose element is not `Clone`.
#[coalesce]
async fn valued(ids: Vec<u64>) -> HashMap<u64, Option<NotClone>> {
    ids.into_iter().map(|id| (id, None)).collect()
}

// An error type that is neither `Send` nor `Sync` (two bounds, one report each).
#[coalesce]
async fn failing(ids: Vec<u64>) -> Result<HashMap<u64, u8>, Rc<str>> {
    Ok(ids.into_iter().map(|id| (id, 1)).collect())
}

// A parameter type whose element is not `Hash`.
#[coalesce]
async fn tagged_in(ids: Vec<u64>, tag: Option<Tag>) -> HashMap<u64, u8> {
    let _ = tag;
    ids.into_iter().map(|id| (id, 1)).collect()
}

// The key type of a write fn.
#[coalesce]
async fn save(items: Vec<(Option<Tag>, u8)>) {
    let _ = items;
}

#[derive(Clone)]
struct Repo;

impl Repo {
    // The key type of a method.
    #[coalesce]
    async fn get(&self, ids: Vec<Option<Tag>>) -> Vec<u8> {
        ids.iter().map(|_| 1).collect()
    }
}

// Not `async fn`, but a fn returning `impl Future`.
#[coalesce]
fn future(ids: Vec<u64>) -> impl Future<Output = HashMap<u64, u64>> {
    async move { ids.into_iter().map(|id| (id, id)).collect() }
}

fn main() {}
