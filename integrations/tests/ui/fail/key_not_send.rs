use coalesce::coalesce;
use std::rc::Rc;

#[coalesce]
async fn load(keys: Vec<Rc<str>>) -> Vec<usize> {
    keys.iter().map(|key| key.len()).collect()
}

fn main() {}
