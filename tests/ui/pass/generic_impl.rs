use coalesce::coalesce;
use std::collections::HashMap;
use std::marker::PhantomData;

struct Repo<T> {
    offset: u64,
    marker: PhantomData<T>,
}

impl<T: Sync> Repo<T> {
    // The types the coalescer holds do not mention `T`: one coalescer serves
    // every `Repo<T>`, and instances still never share a batch.
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
}
