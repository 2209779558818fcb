//! A library-like module with every lint on: the expansion adds no warnings.
#![deny(warnings, missing_docs, unused, unused_qualifications, unused_results)]
#![deny(rust_2018_idioms, unreachable_pub, trivial_casts, unused_lifetimes)]

use coalesce::coalesce;
use std::collections::HashMap;

/// Users.
pub mod users {
    use super::*;

    /// A user.
    #[derive(Clone, Debug)]
    pub struct User {
        /// Their name.
        pub name: String,
    }

    /// Why a load failed.
    #[derive(Debug)]
    pub struct DbError;

    /// Loads users by id.
    #[coalesce(window = "1ms", max_batch = 100)]
    pub async fn load_users(ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError> {
        Ok(ids
            .into_iter()
            .map(|id| {
                (
                    id,
                    User {
                        name: id.to_string(),
                    },
                )
            })
            .collect())
    }

    /// Names, one per id.
    #[coalesce]
    pub async fn names(mut ids: Vec<u64>, suffix: String) -> Vec<String> {
        ids.sort_unstable();
        ids.iter().map(|id| format!("{id}{suffix}")).collect()
    }

    /// A repository.
    #[derive(Clone, Debug, Default)]
    pub struct Repo;

    impl Repo {
        /// Loads by id through the repository.
        #[coalesce(group = 1u8)]
        pub async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
            ids.into_iter().map(|id| (id, id)).collect()
        }
    }
}

#[tokio::main]
async fn main() {
    let user = users::load_users(1).await.unwrap().unwrap();
    assert_eq!(user.name, "1");
    assert_eq!(users::names(2, "x".to_owned()).await.unwrap(), "2x");
    assert_eq!(users::Repo.get(3).await.unwrap(), Some(3));
}
