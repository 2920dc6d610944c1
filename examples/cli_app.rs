//! A user's binary with the whole celeriac command line: `worker`, `call`, `result`,
//! `purge`, `inspect queues`, with this binary's tasks registered.
//!
//! `cargo run -p celeriac-examples --example cli_app -- worker -Q celery -c 4`
//! `cargo run -p celeriac-examples --example cli_app -- --help`

use celeriac::{App, TaskError, TaskResult};

/// Adds two numbers.
#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// Divides, failing with ValueError on zero.
#[celeriac::task(name = "tasks.div")]
fn div(x: f64, y: f64) -> TaskResult<f64> {
    if y == 0.0 {
        return Err(TaskError::value_error("division by zero"));
    }
    Ok(x / y)
}

fn main() {
    celeriac::cli::run(App::builder().task(add).task(div))
}
