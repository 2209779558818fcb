use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load<'a>(names: Vec<&'a str>) -> HashMap<&'a str, u64> {
    names.into_iter().map(|name| (name, 1)).collect()
}

fn main() {}
