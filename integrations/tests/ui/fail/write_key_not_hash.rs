use coalesce::coalesce;

#[derive(Clone, PartialEq, Eq)]
struct PlayerId(u64);

#[coalesce(window = "20ms")]
async fn save_scores(items: Vec<(PlayerId, u64)>) -> Result<(), std::io::Error> {
    let _ = items;
    Ok(())
}

#[tokio::main]
async fn main() {
    let _ = save_scores(PlayerId(1), 10).await;
}
