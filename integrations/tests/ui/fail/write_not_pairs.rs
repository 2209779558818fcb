use coalesce::coalesce;

// A write batch fn (it returns whether the batch committed) must take pairs.
#[coalesce]
async fn save(ids: Vec<u64>) -> Result<(), std::io::Error> {
    let _ = ids;
    Ok(())
}

fn main() {}
