use coalesce::coalesce;
use std::rc::Rc;

#[coalesce(window = "20ms")]
async fn save_names(items: Vec<(u64, Rc<str>)>) {
    let _ = items;
}

#[tokio::main]
async fn main() {
    let _ = save_names(1, Rc::from("ada")).await;
}
