use coalesce::coalesce;
use std::collections::HashMap;

#[async_trait::async_trait]
trait Prices {
    async fn price(&self, sku: String) -> Result<Option<u32>, coalesce::Error>;
}

#[derive(Clone)]
struct Catalog;

// `#[async_trait]` runs first and rewrites the `async fn` before #[coalesce] sees it.
#[async_trait::async_trait]
impl Prices for Catalog {
    #[coalesce]
    async fn price(&self, skus: Vec<String>) -> HashMap<String, u32> {
        skus.into_iter().map(|sku| (sku, 1)).collect()
    }
}

fn main() {}
