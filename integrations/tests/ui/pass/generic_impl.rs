use coalesce::coalesce;
use std::collections::HashMap;
use std::marker::PhantomData;

struct Repo<T> {
    offset: u64,
    marker: PhantomData<fn() -> T>,
}

impl<T> Clone for Repo<T> {
    fn clone(&self) -> Self {
        Repo {
            offset: self.offset,
            marker: PhantomData,
        }
    }
}

impl<T: 'static> Repo<T> {
    // Every instantiation gets a coalescer of its own (named after it), so
    // instantiations never share a batch; and neither do instances.
    #[coalesce]
    async fn get(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id + self.offset)).collect()
    }
}

#[tokio::main]
async fn main() {
    let a: Repo<u8> = Repo {
        offset: 10,
        marker: PhantomData,
    };
    let b: Repo<String> = Repo {
        offset: 20,
        marker: PhantomData,
    };
    let (x, y) = tokio::join!(a.get(1), b.get(1));
    assert_eq!((x.unwrap(), y.unwrap()), (Some(11), Some(21)));
    let names: Vec<String> = coalesce::metrics::snapshot()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(names.iter().any(|n| n.ends_with("Repo<u8>::get")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("Repo<alloc::string::String>::get")), "{names:?}");
}
