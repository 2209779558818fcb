use coalesce::coalesce;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Region {
    Eu,
    Us,
}

#[coalesce]
async fn load(
    region: Region,
    ids: Vec<u64>,
    mut table: String,
    tag: Arc<str>,
) -> HashMap<u64, String> {
    table.push('!');
    let region = match region {
        Region::Eu => "eu",
        Region::Us => "us",
    };
    ids.into_iter()
        .map(|id| (id, format!("{region}/{table}/{tag}/{id}")))
        .collect()
}

#[tokio::main]
async fn main() {
    let tag: Arc<str> = Arc::from("t");
    let got = load(Region::Eu, 1, "users".to_owned(), tag.clone()).await;
    assert_eq!(got.unwrap().as_deref(), Some("eu/users!/t/1"));
    let got = load(Region::Us, 2, "users".to_owned(), tag).await;
    assert_eq!(got.unwrap().as_deref(), Some("us/users!/t/2"));
}
