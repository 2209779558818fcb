//! Return types a service author writes: maps other than std's, a container of
//! the user's own that implements `BatchOutput`, and per-key write results in
//! such a map. Each caller gets its own entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use coalesce::{coalesce, BatchOutput, Delivery};

#[coalesce]
async fn index_map(ids: Vec<u64>) -> indexmap::IndexMap<u64, String> {
    ids.into_iter().map(|id| (id, format!("i{id}"))).collect()
}

#[coalesce]
async fn ahash_map(ids: Vec<u64>) -> ahash::AHashMap<u64, String> {
    ids.into_iter().map(|id| (id, format!("a{id}"))).collect()
}

#[coalesce]
async fn fx_map(ids: Vec<u64>) -> Result<rustc_hash::FxHashMap<u64, String>, std::io::Error> {
    Ok(ids.into_iter().map(|id| (id, format!("f{id}"))).collect())
}

#[coalesce]
async fn hashbrown_map(ids: Vec<u64>) -> hashbrown::HashMap<u64, String> {
    ids.into_iter().map(|id| (id, format!("h{id}"))).collect()
}

#[coalesce]
async fn index_per_key(ids: Vec<u64>) -> indexmap::IndexMap<u64, Result<String, String>> {
    ids.into_iter()
        .map(|id| match id {
            0 => (id, Err("zero".to_owned())),
            _ => (id, Ok(format!("p{id}"))),
        })
        .collect()
}

/// Rows as a database driver returns them: each carries its key.
struct Rows(Vec<(u64, String)>);

impl BatchOutput<u64> for Rows {
    type Value = String;
    type Error = std::convert::Infallible;
    fn into_delivery(self) -> Delivery<u64, String, Self::Error> {
        Delivery::Keyed(Box::new(self.0.into_iter().map(|(k, v)| (k, Ok(v)))))
    }
}

static ROWS_BATCHES: AtomicUsize = AtomicUsize::new(0);

#[coalesce(window = "5ms")]
async fn rows(ids: Vec<u64>) -> Rows {
    ROWS_BATCHES.fetch_add(1, Ordering::SeqCst);
    // Odd ids have no row.
    Rows(
        ids.into_iter()
            .filter(|id| id % 2 == 0)
            .map(|id| (id, format!("r{id}")))
            .collect(),
    )
}

#[coalesce]
async fn fallible_rows(ids: Vec<u64>) -> Result<Rows, std::io::Error> {
    if ids.contains(&13) {
        return Err(std::io::Error::other("unlucky"));
    }
    Ok(Rows(
        ids.into_iter().map(|id| (id, id.to_string())).collect(),
    ))
}

#[coalesce]
async fn save_fx(items: Vec<(u64, String)>) -> rustc_hash::FxHashMap<u64, Result<(), String>> {
    items
        .into_iter()
        .filter(|(_, value)| value.is_empty())
        .map(|(key, _)| (key, Err(format!("{key}: empty"))))
        .collect()
}

#[coalesce]
async fn save_index(
    items: Vec<(u64, String)>,
) -> Result<indexmap::IndexMap<u64, Result<(), String>>, String> {
    Ok(items
        .into_iter()
        .map(|(key, value)| {
            (
                key,
                if value.is_empty() {
                    Err("empty".into())
                } else {
                    Ok(())
                },
            )
        })
        .collect())
}

#[tokio::test]
async fn maps_other_than_std_answer_each_caller() {
    let (i, a, f, h) = tokio::join!(index_map(1), ahash_map(2), fx_map(3), hashbrown_map(4));
    assert_eq!(i.unwrap().as_deref(), Some("i1"));
    assert_eq!(a.unwrap().as_deref(), Some("a2"));
    assert_eq!(f.unwrap().as_deref(), Some("f3"));
    assert_eq!(h.unwrap().as_deref(), Some("h4"));
    let many: HashMap<u64, String> = index_map_many(vec![5, 6, 7]).await.unwrap();
    assert_eq!(many.len(), 3);
    assert_eq!(many[&6], "i6");
}

#[tokio::test]
async fn a_per_key_index_map_fails_only_its_key() {
    let (zero, one) = tokio::join!(index_per_key(0), index_per_key(1));
    assert!(matches!(zero, Err(coalesce::Error::Key { source: e, .. }) if *e == "zero"));
    assert_eq!(one.unwrap().as_deref(), Some("p1"));
}

#[tokio::test]
async fn a_container_of_ones_own_is_a_batch_result() {
    let before = ROWS_BATCHES.load(Ordering::SeqCst);
    let (two, three, four) = tokio::join!(rows(2), rows(3), rows(4));
    assert_eq!(two.unwrap().as_deref(), Some("r2"));
    assert_eq!(three.unwrap(), None, "a key with no row gets None");
    assert_eq!(four.unwrap().as_deref(), Some("r4"));
    assert_eq!(ROWS_BATCHES.load(Ordering::SeqCst) - before, 1);

    let (ok, unlucky) = tokio::join!(fallible_rows(1), fallible_rows(13));
    // Both were in the failed batch.
    assert!(matches!(ok, Err(coalesce::Error::Batch { .. })));
    assert!(
        matches!(unlucky, Err(coalesce::Error::Batch { source: e, .. }) if e.to_string() == "unlucky")
    );
    assert_eq!(fallible_rows(1).await.unwrap().as_deref(), Some("1"));
}

#[tokio::test]
async fn per_key_write_results_in_other_maps() {
    let (good, bad) = tokio::join!(save_fx(1, "x".into()), save_fx(2, String::new()));
    good.unwrap();
    assert!(matches!(bad, Err(coalesce::Error::Key { source: e, .. }) if *e == "2: empty"));
    let (good, bad) = tokio::join!(save_index(1, "x".into()), save_index(2, String::new()));
    good.unwrap();
    assert!(matches!(bad, Err(coalesce::Error::Key { source: e, .. }) if *e == "empty"));
}

#[derive(Debug, PartialEq)]
struct RowError(u64);

#[derive(Debug, PartialEq)]
enum DbError {
    Row(u64),
}

impl From<RowError> for DbError {
    fn from(error: RowError) -> Self {
        DbError::Row(error.0)
    }
}

/// A per-key error of its own type, converted into the batch error.
#[coalesce]
async fn checked_rows(ids: Vec<u64>) -> Result<HashMap<u64, Result<String, RowError>>, DbError> {
    Ok(ids
        .into_iter()
        .map(|id| match id {
            0 => (id, Err(RowError(id))),
            _ => (id, Ok(id.to_string())),
        })
        .collect())
}

#[tokio::test]
async fn a_per_key_error_converts_into_the_batch_error() {
    let (zero, one) = tokio::join!(checked_rows(0), checked_rows(1));
    assert!(matches!(zero, Err(coalesce::Error::Key { source, .. }) if *source == DbError::Row(0)));
    assert_eq!(one.unwrap().as_deref(), Some("1"));
}
