use coalesce::coalesce;
use std::cell::Cell;

#[derive(Debug)]
struct DbError {
    retries: Cell<u32>,
}

#[coalesce]
async fn load(ids: Vec<u64>) -> Result<Vec<String>, DbError> {
    if ids.is_empty() {
        return Err(DbError {
            retries: Cell::new(0),
        });
    }
    Ok(ids.iter().map(u64::to_string).collect())
}

fn main() {}
