use coalesce::coalesce;

struct Blob(Vec<u8>); // not Clone

#[coalesce(isolate = 2)]
async fn put_blobs(items: Vec<(u64, Blob)>) -> Result<(), std::io::Error> {
    let _ = items.into_iter().map(|(_, b)| b.0.len());
    Ok(())
}

#[tokio::main]
async fn main() {
    let _ = put_blobs(1, Blob(vec![])).await;
}
