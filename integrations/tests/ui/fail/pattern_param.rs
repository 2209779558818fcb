use coalesce::coalesce;
use std::collections::HashMap;

#[coalesce]
async fn load(ids: Vec<u64>, (table, schema): (String, String)) -> HashMap<u64, String> {
    ids.into_iter()
        .map(|id| (id, format!("{schema}.{table}{id}")))
        .collect()
}

fn main() {}
