//! Request coalescing in one attribute.
//!
//! (crate docs are written in a later step)

pub use coalesce_macros::coalesce;
pub use coalesce_runtime::{
    configure, metrics, BatchOutput, Coalescer, Config, Core, Delivery, Dispatch, Error, PerKey,
};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
