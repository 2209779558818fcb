//! Request coalescing in one attribute: many concurrent single-key calls become one
//! batch call, and each caller gets its own entry.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//!
//! #[derive(Clone, Debug, PartialEq)]
//! struct User { id: u64, name: String }
//!
//! #[coalesce(window = "5ms", max_batch = 1000)]
//! async fn load_users(ids: Vec<u64>) -> Result<HashMap<u64, User>, std::io::Error> {
//!     // one query for all ids
//!     Ok(ids.into_iter().map(|id| (id, User { id, name: format!("user {id}") })).collect())
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), coalesce::Error<std::io::Error>> {
//! // Application code calls the single-key function; concurrent calls share a batch.
//! let (a, b) = tokio::join!(load_users(1), load_users(2));
//! assert_eq!(a?.unwrap().name, "user 1");
//! assert_eq!(b?.unwrap().name, "user 2");
//! // Code that already holds many keys calls the batch form directly.
//! assert_eq!(load_users_batch(vec![3, 4]).await.unwrap().len(), 2);
//! # Ok(()) }
//! ```
//!
//! The attribute rewrites the *batch* function (it takes a `Vec<K>`) into a
//! *single-key* `async fn` with the same name, visibility, docs and attributes, backed
//! by a `static` coalescer created on its first call. The original body stays
//! callable as `<name>_batch`.
//!
//! # Shapes
//!
//! | the batch fn returns | the single-key fn returns |
//! | --- | --- |
//! | `HashMap<K, V>` / `BTreeMap<K, V>` | `Result<Option<V>, Error>` |
//! | `Result<HashMap<K, V>, E>` (or `BTreeMap`) | `Result<Option<V>, Error<E>>` |
//! | `Vec<V>`, one per key, same order | `Result<V, Error>` |
//! | `Result<Vec<V>, E>` | `Result<V, Error<E>>` |
//! | `HashMap<K, Result<V, E>>`, or inside `Result<_, E>` | `Result<Option<V>, Error<E>>` |
//!
//! A map may leave keys out (those callers get `None`); entries for keys nobody asked
//! for are ignored and counted. An ordered `Vec` of the wrong length fails every
//! caller of the batch with [`Error::Shape`] rather than hand anyone a shifted value.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::BTreeMap;
//!
//! #[coalesce]
//! async fn squares(keys: Vec<u32>) -> BTreeMap<u32, u64> {
//!     keys.into_iter().filter(|k| k % 2 == 0).map(|k| (k, u64::from(k) * u64::from(k))).collect()
//! }
//!
//! #[coalesce(window = "1ms")]
//! async fn lengths(words: Vec<String>) -> Result<Vec<usize>, std::fmt::Error> {
//!     Ok(words.iter().map(String::len).collect())
//! }
//!
//! # #[tokio::main] async fn main() {
//! assert_eq!(squares(4).await.unwrap(), Some(16));
//! assert_eq!(squares(3).await.unwrap(), None); // no entry for an odd key
//! assert_eq!(lengths("four".to_owned()).await.unwrap(), 4);
//! # }
//! ```
//!
//! # One bad key need not fail the batch
//!
//! A map of `Result`s fails only the callers of the keys whose entry is an `Err`
//! ([`Error::Key`]). And `isolate = N` retries a batch that failed as a whole in
//! halves, down to N levels, so a poisonous key fails only its own callers.
//!
//! ```
//! use coalesce::{coalesce, Error};
//! use std::collections::HashMap;
//!
//! #[coalesce]
//! async fn parse(ids: Vec<u32>) -> HashMap<u32, Result<u64, String>> {
//!     ids.into_iter().map(|id| (id, if id == 7 { Err(format!("{id} is bad")) } else { Ok(u64::from(id)) })).collect()
//! }
//!
//! #[coalesce(isolate = 4)]
//! async fn strict(ids: Vec<u32>) -> Result<HashMap<u32, u32>, String> {
//!     // One bad id fails the whole query...
//!     if ids.contains(&7) { return Err("7 is bad".to_owned()); }
//!     Ok(ids.into_iter().map(|id| (id, id)).collect())
//! }
//!
//! # #[tokio::main] async fn main() {
//! let (a, b) = tokio::join!(parse(1), parse(7));
//! assert_eq!(a.unwrap(), Some(1));
//! assert!(matches!(b, Err(Error::Key { .. })));
//! // ...but with isolate, only the callers of 7 see it.
//! let (c, d) = tokio::join!(strict(3), strict(7));
//! assert_eq!(c.unwrap(), Some(3));
//! assert!(matches!(d, Err(Error::Key { .. })));
//! # }
//! ```
//!
//! # Methods and instances
//!
//! `#[coalesce]` works on `async fn m(&self, ids: Vec<K>)` in an `impl` block
//! (repositories, API clients). Each batch runs with a *clone* of the instance of
//! the call that opened it, so it owns what it reads and may outlive any caller:
//! the type must be `Clone` (cheap when its state is behind `Arc`s or pools, as a
//! `PgPool` or a `reqwest::Client` is), or the method takes `self: Arc<Self>` or
//! `self: &Arc<Self>`.
//!
//! Which calls count as one instance is yours to say:
//!
//! - by default, calls through **the same object** coalesce, and calls through
//!   different objects (or different types at one address) never share a batch;
//! - with `instance = <expr>`, calls whose expression is **equal** coalesce, whatever
//!   object they come through. Name what makes two instances different (a schema, a
//!   base URL, a credential): clones of one repository, cloned per request by
//!   axum's `State`, then share batches, and repositories over two schemas never do.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//! use std::sync::Arc;
//!
//! #[derive(Clone)]
//! struct UserRepo {
//!     schema: Arc<str>, // and a pool, cloned with the repo
//! }
//!
//! impl UserRepo {
//!     // Clones of one repo share batches; two schemas never do.
//!     #[coalesce(window = "2ms", instance = self.schema)]
//!     async fn user(&self, ids: Vec<u64>) -> HashMap<u64, String> {
//!         ids.into_iter().map(|id| (id, format!("{}.user {id}", self.schema))).collect()
//!     }
//! }
//!
//! # #[tokio::main] async fn main() {
//! let repo = UserRepo { schema: "tenant_a".into() };
//! let clone = repo.clone(); // another object, the same instance
//! let other = UserRepo { schema: "tenant_b".into() };
//! let (a, b, c) = tokio::join!(repo.user(1), clone.user(2), other.user(1));
//! assert_eq!(a.unwrap().unwrap(), "tenant_a.user 1");
//! assert_eq!(b.unwrap().unwrap(), "tenant_a.user 2");
//! assert_eq!(c.unwrap().unwrap(), "tenant_b.user 1");
//! # }
//! ```
//!
//! Without `instance`, the same three calls make three batches; the metrics show it
//! (`split_batches` close to `batches`, batch sizes of 1).
//!
//! # Extra parameters and groups
//!
//! Other parameters are kept on the single-key fn, and only calls with equal
//! arguments share a batch; `group = <expr>` adds a partition computed per call.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//!
//! #[derive(Clone)]
//! struct PriceClient { currency: &'static str }
//!
//! impl PriceClient {
//!     #[coalesce(window = "2ms", max_batch = 100, group = self.currency)]
//!     async fn prices(&self, symbols: Vec<String>, venue: u8) -> HashMap<String, String> {
//!         symbols.into_iter().map(|s| { let p = format!("{s}@{venue} in {}", self.currency); (s, p) }).collect()
//!     }
//! }
//!
//! # #[tokio::main] async fn main() {
//! let (usd, eur) = (PriceClient { currency: "USD" }, PriceClient { currency: "EUR" });
//! let (a, b) = tokio::join!(usd.prices("ACME".into(), 1), eur.prices("ACME".into(), 2));
//! assert_eq!(a.unwrap().unwrap(), "ACME@1 in USD");
//! assert_eq!(b.unwrap().unwrap(), "ACME@2 in EUR");
//! # }
//! ```
//!
//! Parameters named in `context = ..` do not split batches: a pool, a client. They
//! may be references; the batch runs with a clone of the value of the call that
//! opened it.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//!
//! #[derive(Clone)]
//! struct Pool { base: u64 }
//!
//! #[coalesce(window = "1ms", context = pool)]
//! async fn balance(accounts: Vec<u64>, pool: &Pool) -> HashMap<u64, u64> {
//!     accounts.into_iter().map(|a| (a, pool.base + a)).collect()
//! }
//!
//! # #[tokio::main] async fn main() {
//! let (one, other) = (Pool { base: 100 }, Pool { base: 100 });
//! let (a, b) = tokio::join!(balance(1, &one), balance(2, &other)); // one batch
//! assert_eq!((a.unwrap(), b.unwrap()), (Some(101), Some(102)));
//! # }
//! ```
//!
//! # Trait impls
//!
//! Mark the `impl` block `#[coalesce]` as well (above `#[async_trait]`, if used):
//! the trait impl gets the single-key method, which calls the coalesced method of an
//! inherent impl, where its companions (`_batch`, `_many`) live too. An associated
//! fn without `self` in a marked inherent impl works the same way.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//!
//! trait Names {
//!     async fn name(&self, id: u32) -> Result<Option<String>, coalesce::Error>;
//! }
//!
//! #[derive(Clone)]
//! struct Directory;
//!
//! #[coalesce]
//! impl Names for Directory {
//!     #[coalesce(window = "1ms")]
//!     async fn name(&self, ids: Vec<u32>) -> HashMap<u32, String> {
//!         ids.into_iter().map(|id| (id, format!("n{id}"))).collect()
//!     }
//! }
//!
//! async fn greet(names: &impl Names) -> String {
//!     names.name(7).await.unwrap().unwrap()
//! }
//! # #[tokio::main] async fn main() {
//! assert_eq!(greet(&Directory).await, "n7");
//! # }
//! ```
//!
//! # Many keys at once
//!
//! Every coalesced read fn also gets `<name>_many(keys, ..)`: each distinct key joins
//! the shared batches as a single-key call does (deduplicated against concurrent
//! callers, split at `max_batch`, counted), and the entries come back as a map.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//!
//! #[coalesce(max_batch = 2)]
//! async fn names(ids: Vec<u32>) -> HashMap<u32, String> {
//!     ids.into_iter().map(|id| (id, format!("n{id}"))).collect()
//! }
//!
//! # #[tokio::main] async fn main() {
//! let found = names_many(vec![1, 2, 3, 1]).await.unwrap();
//! assert_eq!(found.len(), 3);
//! assert_eq!(found[&3], "n3");
//! # }
//! ```
//!
//! # Streamed results
//!
//! A batch fn may return its rows as they arrive, `impl Stream<Item = Result<(K, V),
//! E>>` (sqlx's `fetch()`, a Redis pipeline, a server-streaming response): each
//! caller resolves as its own row comes (callers are woken in groups of 32, and
//! whenever the stream has nothing more ready), and the batch never holds all of
//! them. The first item for a key wins; keys never yielded get `None`; an `Err`
//! item, a panic, the `timeout` or the idle timeout fails only the keys not yet
//! delivered. See [`Streamed`] for every rule.
//!
//! ```
//! use coalesce::coalesce;
//! use futures::stream::{self, Stream, StreamExt};
//! use std::time::Duration;
//!
//! #[coalesce(window = "1ms")]
//! async fn slow_squares(ids: Vec<u64>) -> impl Stream<Item = Result<(u64, u64), std::io::Error>> {
//!     stream::iter(ids).then(|id| async move {
//!         tokio::time::sleep(Duration::from_millis(id)).await;
//!         Ok((id, id * id))
//!     })
//! }
//!
//! # #[tokio::main] async fn main() {
//! // 2 resolves when its row comes, long before 300's.
//! let (two, three_hundred) = tokio::join!(slow_squares(2), slow_squares(300));
//! assert_eq!((two.unwrap(), three_hundred.unwrap()), (Some(4), Some(90_000)));
//! # }
//! ```
//!
//! # Joining work already on its way
//!
//! A call for a key that a batch of its group is fetching right now (a running
//! batch, or a lone call's run) waits for that answer instead of fetching the key
//! again (Go's `singleflight`); a call for a key in a full batch that has not
//! started joins it. `join_running = false` turns the first off, for callers that
//! must see a write made after the running batch started.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::HashMap;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//!
//! static QUERIES: AtomicUsize = AtomicUsize::new(0);
//!
//! #[coalesce(window = "1ms")]
//! async fn price(ids: Vec<u32>) -> HashMap<u32, u64> {
//!     QUERIES.fetch_add(1, Ordering::Relaxed);
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     ids.into_iter().map(|id| (id, 42)).collect()
//! }
//!
//! # #[tokio::main] async fn main() {
//! let first = tokio::spawn(price(7));
//! tokio::time::sleep(Duration::from_millis(10)).await;
//! // 10 ms into the 100 ms batch: waits for it rather than query again.
//! assert_eq!(price(7).await.unwrap(), Some(42));
//! assert_eq!(first.await.unwrap().unwrap(), Some(42));
//! assert_eq!(QUERIES.load(Ordering::Relaxed), 1);
//! # }
//! ```
//!
//! # Writes
//!
//! A batch fn that takes `(key, value)` pairs and returns `()`, `Result<(), E>` or a
//! result per key (`HashMap<K, Result<(), E>>`, alone or inside `Result<_, E>`) is a
//! *write* coalescer: the single-key fn `name(key, value)` resolves after the batch
//! carrying its write has committed, the writes to one key fold into one entry (last
//! write wins, or `merge = path`), at most one write per key is in flight (so a key's
//! writes commit in call order), failures are shared and never retried, and a writer
//! that drops its future does not withdraw its write. `after_writes = path` on a read
//! fn makes a read of a key wait for the pending writes to it. See [`WriteCore`] for
//! the engine, [`flush_all`] and [`drain_all`] for shutdown.
//!
//! ```
//! use coalesce::coalesce;
//! use std::collections::{BTreeMap, HashMap};
//! use std::sync::Mutex;
//!
//! static VISITS: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());
//!
//! fn add(total: &mut u64, n: u64) {
//!     *total += n;
//! }
//!
//! #[coalesce(window = "20ms", merge = add)]
//! async fn record_visit(items: Vec<(u32, u64)>) -> Result<(), std::io::Error> {
//!     let mut table = VISITS.lock().unwrap(); // one upsert for the batch
//!     for (user, n) in items {
//!         *table.entry(user).or_default() += n;
//!     }
//!     Ok(())
//! }
//!
//! #[coalesce(window = "1ms", after_writes = record_visit)]
//! async fn visits(users: Vec<u32>) -> HashMap<u32, u64> {
//!     let table = VISITS.lock().unwrap();
//!     users.into_iter().filter_map(|u| table.get(&u).map(|n| (u, *n))).collect()
//! }
//!
//! # #[tokio::main] async fn main() {
//! let writes = (0..100).map(|i| record_visit(i % 4, 1));
//! let (written, read) = tokio::join!(futures::future::join_all(writes), visits(0));
//! assert!(written.iter().all(Result::is_ok));
//! assert_eq!(read.unwrap(), Some(25)); // waited for the 25 writes to user 0
//! assert_eq!(VISITS.lock().unwrap().len(), 4); // one row per user
//! # }
//! ```
//!
//! # Arguments
//!
//! | argument | default | meaning |
//! | --- | --- | --- |
//! | `window = "5ms"` | `5ms` | longest time a key waits for company (`ns`, `us`, `ms`, `s`) |
//! | `max_batch = N` | `1000` | a batch leaves at once with this many distinct keys; bigger bursts split |
//! | `max_in_flight = N` | unbounded | at most N batches of one group run at once |
//! | `max_pending = N` | unbounded | past N waiting calls, a call fails at once with [`Error::Overloaded`] |
//! | `max_pending_per_group = N` | unbounded | past N waiting calls of its group, a call fails at once with [`Error::GroupOverloaded`]; other groups are still served |
//! | `timeout = "2s"` | none | a batch running longer fails its callers with [`Error::Timeout`] |
//! | `isolate = N` | off | bisect a failed batch down to N levels (see above) |
//! | `group = <expr>` | none | extra partition, evaluated per call |
//! | `instance = <expr>` | the object | what makes two instances of a method's type one (see above) |
//! | `context = pool` | none | parameters that do not split batches (see above) |
//! | `crate = "path"` | `::coalesce` | where the expansion finds this crate, when a crate re-exports the attribute |
//! | `after_writes = path` | none | a read waits for the pending writes to its key (see [Writes](#writes)) |
//! | `join_running = false` | `true` | a call never waits for a running batch of its key (see [Joining work already on its way](#joining-work-already-on-its-way)) |
//! | `merge = path` | last write wins | how writes to one key fold (see [Writes](#writes)) |
//! | `name = "users.load"` | `module::path::fn_name`, for a method `<type of Self>::fn_name` | the name in metrics, spans and errors |
//! | `dispatch = "adaptive"` | `"window"` | `"window"`, `"adaptive"` or `"auto"`: see [Choosing a window](#choosing-a-window) |
//!
//! ```
//! use coalesce::{coalesce, Error};
//! use std::collections::HashMap;
//! use std::time::Duration;
//!
//! #[coalesce(
//!     window = "500us",
//!     max_batch = 64,
//!     max_in_flight = 4,
//!     max_pending = 10_000,
//!     timeout = "50ms",
//!     name = "docs.slow",
//!     dispatch = "adaptive"
//! )]
//! async fn slow(keys: Vec<u64>) -> HashMap<u64, u64> {
//!     if keys.contains(&0) {
//!         tokio::time::sleep(Duration::from_secs(10)).await;
//!     }
//!     keys.into_iter().map(|k| (k, k)).collect()
//! }
//!
//! # #[tokio::main] async fn main() {
//! assert_eq!(slow(7).await.unwrap(), Some(7));
//! assert!(matches!(slow(0).await, Err(Error::Timeout { .. })));
//! let m = coalesce::metrics::get("docs.slow").unwrap();
//! assert_eq!((m.calls, m.timeouts), (2, 1));
//! # }
//! ```
//!
//! Settings can be adjusted at run time, before the coalescer's first call, with
//! [`configure`]: `coalesce::configure("docs.slow", |c| c.window(Duration::from_millis(1)))`.
//!
//! # The same thing by hand
//!
//! The macro is sugar over the engine. This is what `#[coalesce(window = "2ms")]` on a
//! `HashMap`-returning `load_users` amounts to, written with [`Coalescer`]:
//!
//! ```
//! use coalesce::{Coalescer, Config};
//! use std::collections::HashMap;
//! use std::sync::LazyLock;
//! use std::time::Duration;
//!
//! async fn load_users_batch(ids: Vec<u64>) -> HashMap<u64, String> {
//!     ids.into_iter().map(|id| (id, format!("user {id}"))).collect()
//! }
//!
//! static USERS: LazyLock<Coalescer<u64, String>> = LazyLock::new(|| {
//!     Coalescer::new(Config::new("users.load").window(Duration::from_millis(2)), load_users_batch)
//! });
//!
//! async fn load_users(id: u64) -> Result<Option<String>, coalesce::Error> {
//!     USERS.load(id).await
//! }
//! # #[tokio::main] async fn main() { assert_eq!(load_users(5).await.unwrap().unwrap(), "user 5"); }
//! ```
//!
//! For batch functions that borrow (a method's `&self`), [`Core`] takes the batch
//! function with each call instead of storing it; that is what the macro expands to.
//!
//! # Choosing a window
//!
//! Coalescing trades a little latency per call for far fewer round trips. The seed
//! articles put it as the bus and the car: a bus (a fixed window) waits for
//! passengers and carries them all at once; a car leaves the moment you arrive.
//!
//! | mode | a lone call pays | under a burst | choose it when |
//! | --- | --- | --- | --- |
//! | `dispatch = "window"` | up to one `window` | batches as full as traffic allows within the window | the backend is the bottleneck (rate limits, per-request cost, connection pool), and a few ms per call are cheap |
//! | `dispatch = "adaptive"` | nothing: it leaves at once | a call that finds a free lane leaves with the calls made in the same instant; calls that arrive while every lane is busy gather and leave together when a lane frees | latency matters at low load, and load comes in bursts; set `max_in_flight` to what the backend serves at once |
//! | `dispatch = "auto"` | nothing: it leaves at once | adaptive, with the lanes and the window set by the coalescer from what it measures (arrival rate, the batch fn's fixed and per-key cost, its slowdown when batches run side by side); `window` and `max_in_flight` (32 when unset) are ceilings | you would rather not guess the backend's capacity; read what it chose in `metrics().tuned` |
//!
//! Read the metrics to tune it: `wait` is the time from a batch's first call to its
//! dispatch (what the window costs), `run` the batch function's own time. If `wait`
//! is close to `window` and batch sizes are small, traffic is light: shorten the
//! window or go adaptive. If batch sizes sit at `max_batch`, raise it (the backend
//! permitting) or accept more batches. If `run` grows with batch size faster than
//! linearly, lower `max_batch`. `max_in_flight` protects the backend; `max_pending`
//! bounds memory under a flood.
//!
//! Tokio's timer has millisecond granularity and rounds up, so a 1 ms window would
//! last about 2 ms. Every window and timeout on a real clock is therefore timed by
//! one process-wide thread (`coalesce-timer`), precise to some tens of
//! microseconds (`window = "250us"` lasts about 250 µs); under a paused Tokio clock
//! (`start_paused` tests) Tokio's timer times them, so they follow that clock.
//! Adaptive dispatch needs no timer at all for a call that finds a free lane.
//!
//! # Tests
//!
//! A [`Scope`] gives the calls made inside [`Scope::run`] coalescers of their own,
//! with settings of the test's own: a test counts its batches while others call the
//! same fn.
//!
//! ```
//! use coalesce::{coalesce, Scope};
//! use std::collections::HashMap;
//!
//! #[coalesce(name = "docs.scoped")]
//! async fn squares(keys: Vec<u64>) -> HashMap<u64, u64> {
//!     keys.into_iter().map(|k| (k, k * k)).collect()
//! }
//!
//! # #[tokio::main] async fn main() {
//! let scope = Scope::new().configure("docs.scoped", |c| c.max_batch(1));
//! let (a, b) = scope.run(async { tokio::join!(squares(2), squares(3)) }).await;
//! assert_eq!((a.unwrap(), b.unwrap()), (Some(4), Some(9)));
//! assert_eq!(scope.metrics("docs.scoped").unwrap().batches, 2);
//! assert!(coalesce::metrics::get("docs.scoped").is_none());
//! # }
//! ```
//!
//! # Metrics
//!
//! Every coalescer registers under its name: [`metrics::snapshot`] lists all of them
//! with calls, distinct keys, dedup hits, batches, the batch-size distribution, wait
//! and run time kept apart, errors by kind, overload rejections, cancellations, and
//! the in-flight and pending gauges. With the `metrics` feature (off by default) they
//! are also reported through the `metrics` crate facade (label `function`, with units
//! and HELP text), and with the default `tracing` feature every batch runs in a
//! `coalesce.batch` span at `DEBUG`, with `coalesce.*` fields and OpenTelemetry's
//! `otel.status_code` and `error.type`, that follows from its callers' spans.
//!
//! # Features
//!
//! - `tracing` (default): one span per batch, linked from its callers' spans.
//! - `metrics`: every coalescer reported through the [`metrics`](https://docs.rs/metrics)
//!   facade. A library built on `coalesce` should leave both to the application:
//!   `default-features = false`.
//! - `tower`: [`Coalescer`] is a `tower::Service<K>` whose `poll_ready` is pending
//!   while `max_pending` calls wait (woken when one is answered), so tower's
//!   `load_shed`, `timeout`, retry and rate-limit layers compose around it.
//! - `async-graphql`: [`Coalescer`] is an async-graphql `Loader`: each request's
//!   `DataLoader` hands its keys to one shared coalescer, whose batches serve every
//!   request in flight (async-graphql's `boxed-trait` feature is not supported).
//!
//! # Guarantees
//!
//! Every call completes with its own value, `None`, or an [`Error`]: never another
//! key's entry, and never a hang on a batch error, a panic, a timeout or a dropped
//! runtime. A caller that drops its future does not cancel the batch for the others.
//! Memory is bounded by `max_pending`. A static coalescer is not bound to the first
//! runtime that used it.
#![warn(missing_docs)]

pub use coalesce_macros::coalesce;
pub use coalesce_runtime::{
    configure, drain, drain_all, flush, flush_all, metrics, register_error_source, streamed,
    BatchOutput, Coalescer, Config, Configured, Core, Delivery, Dispatch, Drained, EntryStream,
    Error, Flushed, Keyed, PerKey, Scope, SourceOf, Streamed, StreamedResult, Unsure, WriteCore,
    WriteOutput,
};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
