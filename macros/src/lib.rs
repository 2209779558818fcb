//! The `#[coalesce]` attribute macro. Use it through the [`coalesce`] crate,
//! which re-exports it and documents it in full.
//!
//! [`coalesce`]: https://docs.rs/coalesce
//!
//! `#[coalesce(...)]` goes on an `async fn` that loads many keys at once, the
//! *batch* fn, and turns it into a single-key fn with the same name:
//!
//! ```ignore
//! #[coalesce(window = "5ms", max_batch = 1000)]
//! pub async fn load_users(ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError> {
//!     // one query for all ids
//! }
//!
//! // becomes
//! pub async fn load_users(id: u64) -> Result<Option<User>, coalesce::Error<DbError>>;
//! pub async fn load_users_batch(ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError>;
//! ```
//!
//! Concurrent calls of `load_users` are gathered for up to `window`, their keys
//! deduplicated and handed to one call of `load_users_batch`, and each caller
//! gets its own entry. The batch fn keeps the original body, visibility and docs.
//!
//! The batch fn may return a map by key — `HashMap<K, V>`, `BTreeMap<K, V>`,
//! `IndexMap`, any `…Map<K, V>` (a missing key gives `Ok(None)`) — or `Vec<V>`
//! with one value per key in order (gives `Ok(V)`), or a type of its own that
//! implements `coalesce::BatchOutput<K>`, each alone or inside `Result<_, E>`.
//! The single-key fn names its key in the singular (`ids` → `id`). Other
//! parameters are kept; only calls with equal values for them share a batch,
//! except those named in `context = ..` (a pool, a client). Methods take `&self`
//! (or `self: Arc<Self>`), and calls through different instances never share a
//! batch unless `instance = ..` says they do. In a trait impl, or for an
//! associated fn without `self`, mark the `impl` block `#[coalesce]` too (above
//! `#[async_trait]`): the trait gets the single-key method, and the coalesced
//! method with its companions goes to an inherent impl.
//!
//! A batch fn over `(key, value)` pairs that returns `()`, `Result<(), E>` or a
//! result per key is a *write* fn: `save(key, value)` resolves after the batch
//! carrying the write has committed, with one net write per key (`merge = path`
//! folds them; the last write wins without it).
//!
//! Arguments, all optional: `window = "5ms"` (ns, us, ms, s), `max_batch = N`,
//! `max_in_flight = N`, `max_pending = N`, `max_pending_per_group = N`,
//! `timeout = "2s"`, `isolate = N`, `group = <expr>` (evaluated on every call; may
//! use the parameters and `self`), `instance = <expr>` (what makes two instances
//! of a method's type one), `merge = path` (write fns), `after_writes = path`
//! (a read that waits for a write fn's pending writes to its key),
//! `context = pool` or `context = (pool, http)` (parameters that do not split
//! batches; the batch runs with the opening call's clone), `crate = "path"` (where
//! to find the `coalesce` crate when the attribute is re-exported),
//! `name = "users.load"` (for metrics; the default is `module::path::fn_name`, or
//! `<type of Self>::fn_name` for a method) and `dispatch = "window" | "adaptive" | "auto"`.
//! Every read fn also gets `<name>_many(keys, ..)`.
//!
//! Problems are compile errors on the offending tokens: a non-`async` fn, no
//! `Vec<K>` parameter, an unsupported return type, `&mut self`, a generic fn, a
//! borrowed parameter type, an unknown or malformed argument, `"5 parsecs"`.

mod args;
mod block;
mod error;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Turns an `async fn` over a `Vec<K>` of keys into a single-key `async fn`
/// whose concurrent calls are coalesced into one call of the original (kept as
/// `<name>_batch`), plus `<name>_many(keys)` for many keys at once; over a
/// `Vec<(K, V)>` of writes, into `name(key, value)`, answered after commit.
///
/// ```ignore
/// #[coalesce(window = "5ms", max_batch = 1000)]
/// async fn load_users(ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError> { /* one query */ }
///
/// #[coalesce(window = "20ms", merge = add)]
/// async fn record_visits(items: Vec<(u64, i64)>) -> Result<(), DbError> { /* one upsert */ }
/// ```
///
/// Arguments: `window`, `max_batch`, `max_in_flight`, `max_pending`,
/// `max_pending_per_group`, `timeout`, `isolate`, `group`, `instance`, `merge`,
/// `after_writes`, `name`, `dispatch` (see the module docs above, and the
/// `coalesce` crate's docs for each in full).
#[proc_macro_attribute]
pub fn coalesce(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::coalesce(args.into(), item.into()).into()
}
