use coalesce::coalesce;

#[coalesce(window = "5ms")]
struct Users;

trait Load {
    #[coalesce]
    async fn load(&self, ids: Vec<u64>) -> Vec<u64>;
}

fn main() {}
