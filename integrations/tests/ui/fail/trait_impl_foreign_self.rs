// A marked trait impl whose self type cannot have an inherent impl (where the
// companions go): a blanket impl, and std's `Arc`. One error each, on the type.
use coalesce::coalesce;
use std::collections::HashMap;
use std::sync::Arc;

pub trait Loader {
    async fn get(&self, id: u64) -> Result<Option<u64>, coalesce::Error>;
}

pub trait Backend: Clone + Send + Sync + 'static {}

#[coalesce]
impl<T: Backend> Loader for T {
    #[coalesce]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }
}

#[derive(Clone)]
pub struct Db;

#[coalesce]
impl Loader for Arc<Db> {
    #[coalesce]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id)).collect()
    }
}

fn main() {}
