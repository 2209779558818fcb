//! Instances of coalesced methods, as users write them: nested objects at one
//! address, zero-sized instantiations, trait objects, clones per request through
//! axum's `State`, and coalescers whose names would collide (issue 9, section 1).

use coalesce::coalesce;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

/// A generic repository whose first field can hold another repository: `outer`
/// and `outer.first` sit at one address.
#[repr(C)]
#[derive(Clone)]
struct Repo<T> {
    first: T,
    label: String,
}

impl<T: Clone + Send + Sync + 'static> Repo<T> {
    #[coalesce(window = "5ms")]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, String> {
        tokio::task::yield_now().await;
        ids.into_iter()
            .map(|id| (id, format!("{}:{id}", self.label)))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_generic_impl_never_mixes_an_object_with_the_one_nested_in_it() {
    let outer = Repo {
        first: Repo {
            first: (),
            label: "inner".to_owned(),
        },
        label: "outer".to_owned(),
    };
    assert_eq!(
        &outer as *const _ as usize,
        &outer.first as *const _ as usize
    );
    let (a, b) = tokio::join!(outer.get(1), outer.first.get(1));
    assert_eq!(a.unwrap().as_deref(), Some("outer:1"));
    assert_eq!(b.unwrap().as_deref(), Some("inner:1"));
}

struct Prod;
struct Mock;

trait Env: Send + Sync + 'static {
    const NAME: &'static str;
}

impl Env for Prod {
    const NAME: &'static str = "prod";
}

impl Env for Mock {
    const NAME: &'static str = "mock";
}

/// A zero-sized client, one type per environment.
struct Api<E>(PhantomData<fn() -> E>);

impl<E> Clone for Api<E> {
    fn clone(&self) -> Self {
        Api(PhantomData)
    }
}

impl<E: Env> Api<E> {
    #[coalesce(window = "5ms")]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, &'static str> {
        ids.into_iter().map(|id| (id, E::NAME)).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn zero_sized_clients_of_two_instantiations_get_their_own_answers() {
    let (prod, mock) = (Api::<Prod>(PhantomData), Api::<Mock>(PhantomData));
    let (a, b) = tokio::join!(prod.get(2), mock.get(2));
    assert_eq!(a.unwrap(), Some("prod"));
    assert_eq!(b.unwrap(), Some("mock"));
}

/// Methods of a trait object: on `self: Arc<Self>` (a `&self` method of
/// `dyn Trait` cannot own a clone of its instance, and is a compile error).
trait Source: Send + Sync + 'static {
    fn label(&self) -> String;
}

impl dyn Source {
    #[coalesce(window = "5ms")]
    async fn fetch(self: Arc<Self>, ids: Vec<u64>) -> HashMap<u64, String> {
        ids.into_iter()
            .map(|id| (id, format!("{}:{id}", self.label())))
            .collect()
    }
}

#[derive(Clone)]
struct Named(&'static str);

impl Source for Named {
    fn label(&self) -> String {
        self.0.to_owned()
    }
}

impl Source for Repo<Named> {
    fn label(&self) -> String {
        format!("{}+{}", self.label, self.first.0)
    }
}

#[tokio::test(start_paused = true)]
async fn trait_objects_never_share_a_batch() {
    let outer: Arc<dyn Source> = Arc::new(Repo {
        first: Named("inner"),
        label: "outer".to_owned(),
    });
    let named: Arc<dyn Source> = Arc::new(Named("named"));
    let (a, b, c) = tokio::join!(
        outer.clone().fetch(1),
        named.clone().fetch(1),
        outer.clone().fetch(2)
    );
    assert_eq!(a.unwrap().as_deref(), Some("outer+inner:1"));
    assert_eq!(b.unwrap().as_deref(), Some("named:1"));
    assert_eq!(c.unwrap().as_deref(), Some("outer+inner:2"));
}

mod names {
    //! Two types with a method of one name in one module: each coalescer is
    //! named after its type.
    use super::*;

    #[derive(Clone)]
    pub struct Users;
    #[derive(Clone)]
    pub struct Orders;

    impl Users {
        #[coalesce]
        pub async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
            ids.into_iter().map(|id| (id, id)).collect()
        }
    }

    impl Orders {
        #[coalesce]
        pub async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
            ids.into_iter().map(|id| (id, id * 10)).collect()
        }
    }
}

#[tokio::test]
async fn two_types_methods_of_one_name_in_one_module_have_their_own_coalescers() {
    let (u, o) = tokio::join!(names::Users.get(3), names::Orders.get(3));
    assert_eq!((u.unwrap(), o.unwrap()), (Some(3), Some(30)));
    let users = coalesce::metrics::get("instances::names::Users::get").expect("Users::get");
    let orders = coalesce::metrics::get("instances::names::Orders::get").expect("Orders::get");
    assert_eq!((users.calls, orders.calls), (1, 1));
    assert_eq!((users.same_name, orders.same_name), (0, 0));
}

#[tokio::test]
async fn two_coalescers_given_one_name_are_listed_apart_and_flagged() {
    let first = coalesce::Coalescer::new(
        coalesce::Config::new("instances.duplicate"),
        |ids: Vec<u64>| async move { ids },
    );
    let second = coalesce::Coalescer::new(
        coalesce::Config::new("instances.duplicate"),
        |ids: Vec<u64>| async move { ids.into_iter().map(|id| id + 1).collect::<Vec<_>>() },
    );
    assert_eq!(first.load(1).await.unwrap(), Some(1));
    assert_eq!(second.load(1).await.unwrap(), Some(2));
    assert_eq!(second.load(2).await.unwrap(), Some(3));
    let listed: Vec<_> = coalesce::metrics::snapshot()
        .into_iter()
        .filter(|m| m.name == "instances.duplicate")
        .collect();
    assert_eq!(listed.len(), 2, "listed apart, not merged");
    assert_eq!(
        listed
            .iter()
            .map(|m| (m.calls, m.same_name))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 1)]
    );
    assert!(listed[0]
        .to_string()
        .contains("one of 2 coalescers with this name"));
}

mod service {
    //! A repository cloned per request, as axum's `State` does, behind an HTTP
    //! server on 127.0.0.1.
    use super::*;
    use axum::extract::{Path, State};
    use axum::routing::get;
    use axum::Router;

    /// What a real repository holds: a handle to shared state, cloned cheaply.
    #[derive(Clone)]
    pub struct Repo {
        pub schema: Arc<str>,
        pub queries: Arc<AtomicUsize>,
    }

    impl Repo {
        pub fn new(schema: &str) -> Self {
            Repo {
                schema: schema.into(),
                queries: Arc::default(),
            }
        }

        /// Clones share batches: the instance is the schema.
        #[coalesce(window = "20ms", max_batch = 5000, instance = self.schema)]
        pub async fn user(&self, ids: Vec<u64>) -> HashMap<u64, String> {
            self.queries.fetch_add(1, SeqCst);
            ids.into_iter()
                .map(|id| (id, format!("{}.user{id}", self.schema)))
                .collect()
        }

        /// The default: calls through the same object coalesce, and each clone
        /// is an object of its own.
        #[coalesce(window = "20ms", max_batch = 5000)]
        pub async fn user_per_object(&self, ids: Vec<u64>) -> HashMap<u64, String> {
            self.queries.fetch_add(1, SeqCst);
            ids.into_iter()
                .map(|id| (id, format!("{}.user{id}", self.schema)))
                .collect()
        }
    }

    async fn user(State(repo): State<Repo>, Path(id): Path<u64>) -> String {
        repo.user(id).await.unwrap().unwrap_or_default()
    }

    async fn user_per_object(State(repo): State<Repo>, Path(id): Path<u64>) -> String {
        repo.user_per_object(id).await.unwrap().unwrap_or_default()
    }

    /// Serves `repo` on 127.0.0.1; returns the base URL.
    pub async fn serve(repo: Repo) -> String {
        let app = Router::new()
            .route("/user/{id}", get(user))
            .route("/per-object/{id}", get(user_per_object))
            .with_state(repo);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }
}

/// 2,000 concurrent requests to handlers that each get a clone of the repository
/// (`State<Repo>`): with `instance = self.schema` they share a handful of batches.
/// Two repositories over two schemas, served side by side, never mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_repository_in_axum_state_share_batches() {
    let (a, b) = (service::Repo::new("alpha"), service::Repo::new("beta"));
    let (base_a, base_b) = (
        service::serve(a.clone()).await,
        service::serve(b.clone()).await,
    );
    let client = reqwest::Client::new();
    let requests = (0..2000u64).map(|i| {
        let (client, base) = (client.clone(), if i % 2 == 0 { &base_a } else { &base_b });
        let url = format!("{base}/user/{i}");
        async move {
            (
                i,
                client.get(url).send().await.unwrap().text().await.unwrap(),
            )
        }
    });
    let answers = futures::future::join_all(requests).await;
    for (i, body) in answers {
        let schema = if i % 2 == 0 { "alpha" } else { "beta" };
        assert_eq!(body, format!("{schema}.user{i}"));
    }
    let (qa, qb) = (a.queries.load(SeqCst), b.queries.load(SeqCst));
    // 1,000 requests each, arriving over the time the client takes to send them:
    // a 20 ms window gathers them into a handful of batches, not 1,000.
    assert!(
        qa <= 50 && qb <= 50,
        "alpha {qa}, beta {qb} queries for 1,000 requests each"
    );
    eprintln!("2,000 requests through cloned repositories: alpha {qa} + beta {qb} queries");
}

/// Without `instance`, each clone is an instance of its own: every request makes
/// its own batch. That is visible in the metrics, not silent: nearly every batch
/// opens beside another group's, and batches hold one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_without_an_instance_argument_are_visible_as_split_batches() {
    let repo = service::Repo::new("gamma");
    let base = service::serve(repo.clone()).await;
    let client = reqwest::Client::new();
    let requests = (0..200u64).map(|i| {
        let (client, url) = (client.clone(), format!("{base}/per-object/{i}"));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    let answers = futures::future::join_all(requests).await;
    for (i, body) in answers.into_iter().enumerate() {
        assert_eq!(body, format!("gamma.user{i}"));
    }
    let m = coalesce::metrics::get("instances::service::Repo::user_per_object").expect("listed");
    assert_eq!(repo.queries.load(SeqCst) as u64, m.batches);
    assert_eq!(m.batch_size.max, 1, "{m}");
    assert!(
        m.split_batches * 2 >= m.batches,
        "most batches open beside another instance's: {m}"
    );
}
