use coalesce::coalesce;

fn add(total: &mut u64, n: &u64) {
    *total += *n;
}

#[coalesce(window = "20ms", merge = add)]
async fn record_visits(items: Vec<(u32, u64)>) -> Result<(), std::io::Error> {
    let _ = items;
    Ok(())
}

#[tokio::main]
async fn main() {
    let _ = record_visits(1, 1).await;
}
