//! `max_pending_per_group`: one group (tenant) at its bound never makes
//! another group's calls `Overloaded`; places are given back as calls end.

use std::collections::HashMap;
use std::time::Duration;

use coalesce_runtime::{Config, Core, Error, WriteCore};

fn config(name: &'static str) -> Config {
    Config::new(name)
        .window(Duration::from_millis(50))
        .max_pending(100)
        .max_pending_per_group(4)
}

#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_never_rejects_a_quiet_one() {
    let core: Core<&'static str, u32, u32> = Core::new(config("fair.reads"));
    let batch = |_: &&'static str, keys: Vec<u32>| async move {
        keys.into_iter().map(|k| (k, k)).collect::<HashMap<_, _>>()
    };
    // The noisy tenant fills its four places...
    let mut noisy: Vec<_> = (0..4)
        .map(|k| Box::pin(core.load("noisy", k, batch)))
        .collect();
    for call in &mut noisy {
        assert!(futures::poll!(call.as_mut()).is_pending());
    }
    // ...its fifth call is refused at once...
    assert!(matches!(
        core.load("noisy", 99, batch).await,
        Err(Error::GroupOverloaded {
            max_pending_per_group: 4,
            ..
        })
    ));
    // ...and the quiet tenant is served.
    assert_eq!(core.load("quiet", 7, batch).await.unwrap(), Some(7));
    for (k, call) in noisy.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), Some(k as u32));
    }
    // Places come back as calls end, cancelled ones included.
    let mut gone = Box::pin(core.load("noisy", 1, batch));
    assert!(futures::poll!(gone.as_mut()).is_pending());
    drop(gone);
    let again = futures::future::join_all((0..4).map(|k| core.load("noisy", k, batch))).await;
    assert!(again.iter().all(Result::is_ok));
    assert_eq!(core.metrics().overloaded, 1);
}

#[tokio::test(start_paused = true)]
async fn writers_hold_their_groups_place_until_their_write_is_answered() {
    let core: WriteCore<&'static str, u32, u32> = WriteCore::new(config("fair.writes"));
    let ok = |_: &&'static str, _: Vec<(u32, u32)>| async {};
    let mut noisy: Vec<_> = (0..4)
        .map(|i| Box::pin(core.save("noisy", i % 2, i, ok)))
        .collect();
    for w in &mut noisy {
        assert!(futures::poll!(w.as_mut()).is_pending());
    }
    // Four writers (two keys): the group is full, whatever the keys.
    assert!(matches!(
        core.save("noisy", 0, 9, ok).await,
        Err(Error::GroupOverloaded { .. })
    ));
    core.save("quiet", 0, 1, ok).await.unwrap();
    // A writer that leaves keeps its place until its write is answered.
    noisy.pop();
    for w in noisy {
        w.await.unwrap();
    }
    let again = futures::future::join_all((0..4).map(|i| core.save("noisy", i, i, ok))).await;
    assert!(again.iter().all(Result::is_ok));
}
