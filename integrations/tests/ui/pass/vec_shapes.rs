use coalesce::coalesce;

#[derive(Debug)]
struct ApiError;

#[coalesce(window = "1ms")]
async fn double(xs: Vec<u32>) -> Vec<u64> {
    xs.into_iter().map(|x| u64::from(x) * 2).collect()
}

#[coalesce(window = "1ms")]
async fn fallible_double(xs: Vec<u32>) -> Result<std::vec::Vec<u64>, ApiError> {
    if xs.contains(&0) {
        Err(ApiError)
    } else {
        Ok(double_batch(xs).await)
    }
}

#[tokio::main]
async fn main() {
    let doubled: Result<u64, coalesce::Error> = double(21).await;
    assert_eq!(doubled.unwrap(), 42);
    let doubled: Result<u64, coalesce::Error<ApiError>> = fallible_double(2).await;
    assert_eq!(doubled.unwrap(), 4);
    assert!(fallible_double(0).await.is_err());
}
