use coalesce::coalesce;
use std::collections::HashMap;

#[derive(Clone)]
struct Client {
    tenant: u32,
}

fn shard_of(id: u64) -> u8 {
    (id % 4) as u8
}

#[coalesce(group = shard_of(id))]
async fn by_shard(id: Vec<u64>) -> HashMap<u64, u8> {
    id.into_iter().map(|id| (id, shard_of(id))).collect()
}

impl Client {
    #[coalesce(group = (self.tenant, region.len()))]
    async fn fetch(&self, ids: Vec<u64>, region: String) -> Vec<String> {
        ids.iter()
            .map(|id| format!("{}:{region}:{id}", self.tenant))
            .collect()
    }
}

#[tokio::main]
async fn main() {
    assert_eq!(by_shard(5).await.unwrap(), Some(1));
    let client = Client { tenant: 9 };
    assert_eq!(client.fetch(3, "eu".to_owned()).await.unwrap(), "9:eu:3");
}
