use coalesce::coalesce;
use std::collections::HashMap;

trait Prices {
    async fn price(&self, sku: String) -> Result<Option<u32>, coalesce::Error>;
}

#[derive(Clone)]
struct Catalog;

// The impl block is not marked `#[coalesce]`.
impl Prices for Catalog {
    #[coalesce]
    async fn price(&self, skus: Vec<String>) -> HashMap<String, u32> {
        skus.into_iter().map(|sku| (sku, 1)).collect()
    }
}

fn main() {}
