//! An error's chain names each cause once: `Display` carries the batch error's
//! message, `source()` goes on with that error's own source.

use std::error::Error as _;
use std::fmt;

use coalesce_runtime::{register_error_source, Coalescer, Config, Error};

mod common;

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

/// A panic says what panicked: the batch function, or the user code the
/// engine ran for the call (a key's `Clone` here, before any batch fn ran);
/// and a bound of zero calls is said as a bound, not as calls waiting.
#[tokio::test]
async fn a_panic_names_what_panicked() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    common::quiet();
    let c: Coalescer<u32, u32> = Coalescer::new(Config::new("errors.boom"), |_: Vec<u32>| async {
        if true {
            panic!("boom");
        }
        HashMap::new()
    });
    let shown = c.load(1).await.unwrap_err().to_string();
    assert!(
        shown.contains("the batch function panicked: boom"),
        "{shown}"
    );
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = ran.clone();
    let touchy = Coalescer::new(
        Config::new("errors.clone"),
        move |keys: Vec<common::Touchy>| {
            counted.fetch_add(1, SeqCst);
            async move { keys.into_iter().map(|k| (k.0, k.0)).collect::<Vec<_>>() }
        },
    );
    let shown = touchy
        .load(common::Touchy(13))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(ran.load(SeqCst), 0);
    assert!(shown.contains("`Clone`"), "{shown}");
    assert!(!shown.contains("batch function"), "{shown}");
    let none: Coalescer<u32, u32> = Coalescer::new(
        Config::new("errors.zero").max_pending(0),
        |_: Vec<u32>| async { HashMap::new() },
    );
    let shown = none.load(1).await.unwrap_err().to_string();
    assert!(shown.contains("its bound of 0 waiting calls"), "{shown}");
}
