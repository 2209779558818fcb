//! `?` carries a coalesced fn's error into `anyhow::Error` and
//! `Box<dyn Error + Send + Sync>` whatever the batch error type is, and the
//! chain names each cause once.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;

use coalesce::coalesce;

#[derive(Debug)]
struct QueryFailed(std::io::Error);

impl fmt::Display for QueryFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("query failed")
    }
}

impl StdError for QueryFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

#[coalesce(name = "errors.typed")]
async fn typed(ids: Vec<u32>) -> Result<HashMap<u32, u32>, QueryFailed> {
    let _ = ids;
    Err(QueryFailed(std::io::Error::other("connection reset")))
}

#[coalesce(name = "errors.anyhow")]
async fn with_anyhow(ids: Vec<u32>) -> anyhow::Result<HashMap<u32, u32>> {
    let _ = ids;
    Err(anyhow::anyhow!("relation does not exist").context("loading users"))
}

#[coalesce(name = "errors.boxed")]
async fn boxed(ids: Vec<u32>) -> Result<HashMap<u32, u32>, Box<dyn StdError + Send + Sync>> {
    let _ = ids;
    Err("boxed failure".into())
}

#[coalesce(name = "errors.string")]
async fn stringly(ids: Vec<u32>) -> Result<HashMap<u32, u32>, String> {
    let _ = ids;
    Err("string failure".to_owned())
}

async fn handler() -> anyhow::Result<()> {
    typed(1).await?;
    Ok(())
}

async fn anyhow_handler() -> anyhow::Result<()> {
    with_anyhow(1).await?;
    Ok(())
}

async fn boxed_handler() -> Result<(), Box<dyn StdError + Send + Sync>> {
    boxed(1).await?;
    Ok(())
}

async fn string_handler() -> anyhow::Result<()> {
    stringly(1).await?;
    Ok(())
}

#[tokio::test]
async fn question_mark_carries_every_batch_error_type_with_its_chain() {
    let e = handler().await.unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "batch function `errors.typed` failed: query failed: connection reset"
    );
    let e = anyhow_handler().await.unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "batch function `errors.anyhow` failed: loading users: relation does not exist"
    );
    let e = boxed_handler().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "batch function `errors.boxed` failed: boxed failure"
    );
    assert!(e.source().is_none());
    let e = string_handler().await.unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "batch function `errors.string` failed: string failure"
    );
}
