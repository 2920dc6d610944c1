#[celeriac::task]
async fn echo<T: serde::Serialize>(value: T) -> celeriac::TaskResult<T> {
    Ok(value)
}

fn main() {}
