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

/// A generic impl whose batch error type depends on the impl's parameter.
mod r_generic_source {
    use coalesce::coalesce;
    use std::collections::HashMap;
    use std::fmt;

    #[derive(Debug)]
    pub(crate) struct Root;
    impl fmt::Display for Root {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("root cause")
        }
    }
    impl std::error::Error for Root {}

    macro_rules! error_with_source {
        ($name:ident) => {
            #[derive(Debug)]
            pub(crate) struct $name(pub(crate) Root);
            impl fmt::Display for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(stringify!($name))
                }
            }
            impl std::error::Error for $name {
                fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                    Some(&self.0)
                }
            }
        };
    }
    error_with_source!(ErrA);
    error_with_source!(ErrB);

    pub(crate) trait Backend: Clone + Send + Sync + 'static {
        type Error: std::error::Error + Send + Sync + 'static;
        fn fail() -> Self::Error;
    }
    #[derive(Clone)]
    pub(crate) struct A;
    impl Backend for A {
        type Error = ErrA;
        fn fail() -> ErrA {
            ErrA(Root)
        }
    }
    #[derive(Clone)]
    pub(crate) struct B;
    impl Backend for B {
        type Error = ErrB;
        fn fail() -> ErrB {
            ErrB(Root)
        }
    }

    #[derive(Clone)]
    pub(crate) struct Repo<T>(pub(crate) T);

    impl<T: Backend> Repo<T> {
        #[coalesce]
        pub(crate) async fn get(&self, ids: Vec<u64>) -> Result<HashMap<u64, u64>, T::Error> {
            let _ = ids;
            Err(T::fail())
        }
    }
}

/// `coalesce::Error<E>::source()` goes on with the batch error's own causes
/// (README "Errors") -- for every instantiation of a generic impl.
#[tokio::test]
async fn generic_impl_error_sources_are_registered_per_instantiation() {
    use r_generic_source::{Repo, A, B};
    use std::error::Error as _;
    let a = Repo(A).get(1).await.unwrap_err();
    assert!(a.to_string().contains("ErrA"), "{a}");
    assert!(a.source().is_some(), "ErrA's cause is followed");
    let b = Repo(B).get(1).await.unwrap_err();
    assert!(b.to_string().contains("ErrB"), "{b}");
    // The registration was one `static Once` per fn: only the first
    // instantiation's error type (ErrA) was registered.
    assert!(b.source().is_some(), "ErrB's cause is followed");
}
