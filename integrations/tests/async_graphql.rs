//! `Coalescer` as an async-graphql `Loader` (the `async-graphql` feature), in a
//! real schema: each request has its own `DataLoader`, as async-graphql intends,
//! and their loads share the coalescer's batches across requests — which
//! async-graphql's own `DataLoader` cannot do.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Request, Schema};
use coalesce::{Coalescer, Config};

type Users = Coalescer<u64, String, String>;

static BATCHES: Mutex<Vec<Vec<u64>>> = Mutex::new(Vec::new());

fn users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        Coalescer::new(
            Config::new("graphql.users").window(Duration::from_millis(20)),
            |ids: Vec<u64>| async move {
                let mut sorted = ids.clone();
                sorted.sort();
                BATCHES.lock().unwrap().push(sorted);
                Ok::<_, String>(
                    ids.into_iter()
                        .filter(|id| *id != 0)
                        .map(|id| (id, format!("user{id}")))
                        .collect::<HashMap<_, _>>(),
                )
            },
        )
    })
}

struct Query;

#[Object]
impl Query {
    async fn user(&self, ctx: &Context<'_>, id: u64) -> async_graphql::Result<Option<String>> {
        let loader = ctx.data_unchecked::<DataLoader<Users>>();
        Ok(loader.load_one(id).await?)
    }
}

/// A request as a server builds it: with a `DataLoader` of its own.
fn request(query: &str) -> Request {
    Request::new(query).data(DataLoader::new(users().clone(), tokio::spawn))
}

#[tokio::test]
async fn the_data_loaders_of_concurrent_requests_share_one_batch() {
    let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
    let (first, second) = tokio::join!(
        schema.execute(request("{ a: user(id: 1) b: user(id: 2) }")),
        schema.execute(request(
            "{ b: user(id: 2) c: user(id: 3) none: user(id: 0) }"
        )),
    );
    assert!(
        first.errors.is_empty() && second.errors.is_empty(),
        "{first:?} {second:?}"
    );
    assert_eq!(first.data.to_string(), r#"{a: "user1", b: "user2"}"#);
    assert_eq!(
        second.data.to_string(),
        r#"{b: "user2", c: "user3", none: null}"#
    );
    // Both requests' keys went out in one batch, key 2 once.
    assert_eq!(*BATCHES.lock().unwrap(), [vec![0, 1, 2, 3]]);
    assert_eq!(users().metrics().batches, 1);
}
