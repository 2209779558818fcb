use coalesce::coalesce;
use std::collections::HashMap;
use std::future::Future;

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

// A key type of several tokens whose element is not `Hash`.
#[coalesce]
async fn tagged(ids: Vec<Option<Tag>>) -> HashMap<Option<Tag>, u8> {
    ids.into_iter().map(|id| (id, 1)).collect()
}


// Not `async fn`, but a fn returning `impl Future`.
#[coalesce]
fn future(ids: Vec<u64>) -> impl Future<Output = HashMap<u64, u64>> {
    async move { ids.into_iter().map(|id| (id, id)).collect() }
}

fn main() {}
