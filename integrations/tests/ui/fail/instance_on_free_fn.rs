// `instance = ..` describes the object of a method; a fn with no `self` is
// told to use `group`.
use coalesce::coalesce;

#[coalesce(instance = 1u8)]
async fn load(ids: Vec<u64>) -> Vec<u64> { ids }

fn main() {}
