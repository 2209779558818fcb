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
//! pub async fn load_users(ids: u64) -> Result<Option<User>, coalesce::Error<DbError>>;
//! pub async fn load_users_batch(ids: Vec<u64>) -> Result<HashMap<u64, User>, DbError>;
//! ```
//!
//! Concurrent calls of `load_users` are gathered for up to `window`, their keys
//! deduplicated and handed to one call of `load_users_batch`, and each caller
//! gets its own entry. The batch fn keeps the original body, visibility and docs.
//!
//! The batch fn may return `HashMap<K, V>` or `BTreeMap<K, V>` (a missing key
//! gives `Ok(None)`) or `Vec<V>` with one value per key in order (gives `Ok(V)`),
//! each alone or inside `Result<_, E>`. Other parameters are kept; only calls
//! with equal values for them share a batch. Methods take `&self`, and calls
//! through different instances never share a batch.
//!
//! Arguments, all optional: `window = "5ms"` (ns, us, ms, s), `max_batch = N`,
//! `max_in_flight = N`, `max_pending = N`, `timeout = "2s"`, `group = <expr>`
//! (evaluated on every call; may use the parameters and `self`),
//! `name = "users.load"` (for metrics; the default is `module::path::fn_name`)
//! and `dispatch = "window" | "adaptive"`.
//!
//! Problems are compile errors on the offending tokens: a non-`async` fn, no
//! `Vec<K>` parameter, an unsupported return type, `&mut self`, a generic fn, a
//! borrowed parameter type, an unknown or malformed argument, `"5 parsecs"`.

mod args;
mod error;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Turns an `async fn` over a `Vec<K>` of keys into a single-key `async fn`
/// whose concurrent calls are coalesced into one call of the original. See the
/// crate docs.
#[proc_macro_attribute]
pub fn coalesce(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::coalesce(args.into(), item.into()).into()
}
