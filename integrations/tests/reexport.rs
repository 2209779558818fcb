//! A crate that re-exports the attribute names the path to `coalesce` with
//! `crate = "…"`, as serde's and tokio's attributes allow.

mod framework {
    pub use coalesce as engine;
}

use std::collections::HashMap;

#[framework::engine::coalesce(window = "1ms", crate = "crate::framework::engine")]
async fn doubled(ids: Vec<u64>) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.into_iter().map(|id| (id, id * 2)).collect())
}

#[tokio::test]
async fn the_attribute_works_through_a_re_export() {
    let (a, b) = tokio::join!(doubled(1), doubled(2));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(2), Some(4)));
    let err: Result<_, framework::engine::Error<String>> = doubled_many(vec![3]).await;
    assert_eq!(err.unwrap()[&3], 6);
}
