//! The engine behind `#[coalesce]`: a request coalescer, usable on its own.
//!
//! Many concurrent single-key loads become one batch call; each caller receives its
//! own key's entry. [`Coalescer`] stores its batch function; [`Core`] takes it with
//! each call, so that it may borrow (a method's `&self`). Both are configured with a
//! [`Config`], report into [`metrics`], and fail calls with a typed [`Error`].
//!
//! Most users want the `coalesce` crate and its attribute; this crate is what the
//! attribute expands to.
#![warn(missing_docs)]

mod anykey;
mod coalescer;
mod config;
mod core;
mod error;
mod isolate;
pub mod metrics;
mod output;
mod sync;
mod telemetry;
mod timer;

pub use crate::anykey::AnyKey;
pub use crate::coalescer::Coalescer;
pub use crate::config::{configure, Config, Dispatch};
pub use crate::core::Core;
pub use crate::error::Error;
pub use crate::output::{per_key, BatchOutput, Delivery, Entries, PerKey};

/// For the Vec-shaped single-key functions: an entry is always present after a
/// successful ordered batch, so `None` becomes [`Error::Missing`].
#[doc(hidden)]
pub fn required<V, E>(result: Result<Option<V>, Error<E>>, name: &str) -> Result<V, Error<E>> {
    match result {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Error::Missing {
            name: std::sync::Arc::from(name),
        }),
        Err(e) => Err(e),
    }
}
