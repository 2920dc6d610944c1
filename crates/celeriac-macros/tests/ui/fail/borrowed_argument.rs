#[celeriac::task]
async fn greet(name: &str) -> celeriac::TaskResult<String> {
    Ok(format!("hi {name}"))
}

fn main() {}
