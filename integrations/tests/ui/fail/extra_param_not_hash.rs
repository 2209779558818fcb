use coalesce::coalesce;
use std::collections::HashMap;

#[derive(Clone)]
struct Options {
    verbose: bool,
}

#[coalesce]
async fn load(ids: Vec<u64>, options: Options) -> HashMap<u64, bool> {
    ids.into_iter().map(|id| (id, options.verbose)).collect()
}

#[coalesce]
async fn load_two(ids: Vec<u64>, region: String, options: Options) -> HashMap<u64, bool> {
    let _ = region;
    ids.into_iter().map(|id| (id, options.verbose)).collect()
}

fn main() {}
