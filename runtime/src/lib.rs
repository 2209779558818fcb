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

mod coalescer;
mod config;
mod engine;
mod error;
#[cfg(feature = "async-graphql")]
mod graphql;
mod isolate;
pub mod metrics;
mod output;
mod recorder;
#[doc(hidden)]
pub mod scope;
#[cfg(feature = "tower")]
mod service;
mod timer;

pub use crate::coalescer::Coalescer;
pub use crate::config::{configure, Config, Configured, Dispatch};
#[doc(hidden)]
pub use crate::engine::many::load_each;
pub use crate::engine::write::{drain, drain_all, flush, flush_all, Drained, Flushed, WriteCore};
pub use crate::engine::Core;
pub use crate::error::{register_error_source, Error, SourceOf, Unsure};
pub use crate::output::{
    per_key, streamed, BatchOutput, Delivery, Entries, EntryStream, Keyed, PerKey, Streamed,
    StreamedResult, WriteOutput,
};
pub use crate::scope::Scope;

/// Loom models only: waits for the driver threads the engine started.
#[cfg(loom)]
#[doc(hidden)]
pub use crate::engine::spawn::join_drivers;
