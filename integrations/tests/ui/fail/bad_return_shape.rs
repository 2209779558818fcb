use coalesce::coalesce;

#[coalesce]
async fn load(ids: Vec<u64>) -> Option<Vec<String>> {
    Some(ids.iter().map(u64::to_string).collect())
}

#[coalesce]
async fn load_into_result(ids: Vec<u64>) -> Result<String, std::io::Error> {
    Ok(format!("{ids:?}"))
}

#[coalesce]
async fn no_return(ids: Vec<u64>) {
    let _ = ids;
}

fn main() {}
