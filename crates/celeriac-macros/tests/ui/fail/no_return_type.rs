#[celeriac::task]
async fn fire_and_forget(x: i64) {
    let _ = x;
}

fn main() {}
