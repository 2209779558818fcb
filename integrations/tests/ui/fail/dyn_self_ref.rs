use coalesce::coalesce;
use std::collections::HashMap;

trait Source: Send + Sync {
    fn label(&self) -> String;
}

// A `&self` method of a trait object cannot own a clone of its instance:
// `self: Arc<Self>` can.
impl dyn Source {
    #[coalesce]
    async fn fetch(&self, ids: Vec<u64>) -> HashMap<u64, String> {
        ids.into_iter().map(|id| (id, self.label())).collect()
    }
}

fn main() {}
