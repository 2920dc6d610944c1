//! A user's binary as the CLI tests see it: two tasks and `celeriac::cli::run`.

use celeriac::{TaskError, TaskResult};

/// Adds two numbers.
#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// Fails with a ValueError.
#[celeriac::task(name = "tasks.fail")]
fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::value_error(message))
}

fn main() {
    celeriac::cli::run(celeriac::App::builder().task(add).task(fail))
}
