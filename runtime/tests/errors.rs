//! An error's chain names each cause once: `Display` carries the batch error's
//! message, `source()` goes on with that error's own source.

use std::error::Error as _;
use std::fmt;

use coalesce_runtime::{register_error_source, Coalescer, Config, Error};

#[derive(Debug)]
struct QueryFailed(std::io::Error);

impl fmt::Display for QueryFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("query failed")
    }
}

impl std::error::Error for QueryFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn the_chain_names_each_cause_once() {
    // The engine API learns how to see the error as a `std::error::Error`
    // (`#[coalesce]` registers this itself).
    register_error_source::<QueryFailed>(|e| Some(e));
    let c: Coalescer<u32, u32, QueryFailed> =
        Coalescer::new(Config::new("errors.chain"), |_keys: Vec<u32>| async {
            Err::<Vec<u32>, _>(QueryFailed(std::io::Error::other("connection reset")))
        });
    let err = c.load(1).await.unwrap_err();
    let mut chain = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    assert_eq!(
        chain,
        [
            "batch function `errors.chain` failed: query failed",
            "connection reset"
        ]
    );
    assert!(matches!(&err, Error::Batch { .. }));
    assert_eq!(err.batch_error().unwrap().to_string(), "query failed");
}
