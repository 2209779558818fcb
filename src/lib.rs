//! Request coalescing in one attribute.
//!
//! (crate docs are written in a later step)

pub use coalesce_macros::coalesce;
pub use coalesce_runtime::{metrics, BatchOutput, Coalescer, Config, Core, Dispatch, Error};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
