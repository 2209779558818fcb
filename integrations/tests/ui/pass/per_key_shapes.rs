use coalesce::{coalesce, Error};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, PartialEq)]
struct Bad(u32);

// One result per key: an `Err` entry fails only the callers of that key.
#[coalesce(window = "1ms")]
async fn parse(keys: Vec<u32>) -> HashMap<u32, Result<u64, Bad>> {
    keys.into_iter()
        .map(|k| (k, if k == 7 { Err(Bad(k)) } else { Ok(u64::from(k)) }))
        .collect()
}

// And inside an outer `Result`: an outer `Err` fails the whole batch.
#[coalesce(window = "1ms", isolate = 3)]
async fn checked(keys: Vec<u32>) -> Result<BTreeMap<u32, Result<u64, Bad>>, Bad> {
    if keys.contains(&0) {
        return Err(Bad(0));
    }
    Ok(keys.into_iter().map(|k| (k, Ok(u64::from(k)))).collect())
}

#[tokio::main]
async fn main() {
    let (a, b) = tokio::join!(parse(1), parse(7));
    assert_eq!(a.unwrap(), Some(1));
    assert!(matches!(b, Err(Error::Key { .. })));
    // With isolate, the key 0 that fails its batch fails alone.
    let (c, d) = tokio::join!(checked(0), checked(2));
    assert!(matches!(c, Err(Error::Key { .. })));
    assert_eq!(d.unwrap(), Some(2));
}
