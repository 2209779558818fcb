//! A type-erased group key, for `group = <expr>` whose type the macro cannot name.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

trait DynKey: Any + Send + Sync {
    fn dyn_eq(&self, other: &dyn DynKey) -> bool;
    fn dyn_hash(&self, state: &mut dyn Hasher);
    fn as_any(&self) -> &dyn Any;
}

impl<T: Hash + Eq + Send + Sync + 'static> DynKey for T {
    fn dyn_eq(&self, other: &dyn DynKey) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn dyn_hash(&self, mut state: &mut dyn Hasher) {
        self.hash(&mut state);
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Any `Hash + Eq` value as a group key. Two `AnyKey`s are equal when they hold
/// values of the same type that compare equal, so groups of different types never
/// share a batch.
#[derive(Clone)]
pub struct AnyKey(Arc<dyn DynKey>);

impl AnyKey {
    /// Wraps `value`.
    pub fn new<T: Hash + Eq + Send + Sync + 'static>(value: T) -> Self {
        AnyKey(Arc::new(value))
    }
}

impl PartialEq for AnyKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.dyn_eq(&*other.0)
    }
}

impl Eq for AnyKey {}

impl Hash for AnyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_any().type_id().hash(state);
        self.0.dyn_hash(state);
    }
}

impl fmt::Debug for AnyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyKey(..)")
    }
}
