use coalesce::coalesce;

/// Rows as a driver returns them; `BatchOutput` is not implemented for it.
struct Rows(Vec<(u64, String)>);

#[coalesce]
async fn load(ids: Vec<u64>) -> Rows {
    Rows(ids.into_iter().map(|id| (id, id.to_string())).collect())
}

fn main() {}
