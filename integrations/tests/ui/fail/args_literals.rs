// Values that are not plain literals: a typed integer (its suffix would be
// dropped), a suffixed string, a constant where a literal goes, and a
// `context` parameter named twice. Each is reported on its own tokens.
use coalesce::coalesce;

const MAX: usize = 10;

#[coalesce(max_batch = 1000u8)]
async fn typed(ids: Vec<u64>) -> Vec<u64> { ids }

#[coalesce(window = "5ms"suffix)]
async fn suffixed(ids: Vec<u64>) -> Vec<u64> { ids }

#[coalesce(max_batch = MAX)]
async fn constant(ids: Vec<u64>) -> Vec<u64> { ids }

#[coalesce(context = (pool, pool))]
async fn twice(ids: Vec<u64>, pool: &str) -> Vec<u64> { let _ = pool; ids }

fn main() {}
