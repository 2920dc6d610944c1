//! Periodic tasks from code: the Celery tutorial's schedule (`tasks.taskA` every 20 s with
//! (5, 6), `tasks.taskB` every 200 s with (10, 20, 30), `tasks.add` every 10 s with
//! (1, 2)) registered with `AppBuilder::periodic`, in a binary with the whole command line.
//!
//! `cargo run -p celeriac-examples --example beat -- worker -B` — a worker that also sends
//! the schedule (start as many as you like: one leader sends each run);
//! `cargo run -p celeriac-examples --example beat -- beat --dry-run` — the next runs.
//! The same schedule as a file, for the stand-alone binary: `examples/beat.toml`.

use celeriac::beat::every;
use celeriac::{App, TaskResult};

/// The tutorial's task A.
#[celeriac::task(name = "tasks.taskA")]
async fn task_a(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// The tutorial's task B.
#[celeriac::task(name = "tasks.taskB")]
async fn task_b(x: i64, y: i64, z: i64) -> TaskResult<i64> {
    Ok(x + y + z)
}

/// Adds two numbers.
#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

/// A report at 07:30 on weekdays, Paris time: a crontab in a timezone.
#[celeriac::task(name = "tasks.report")]
async fn report() -> TaskResult<String> {
    Ok("report sent".into())
}

fn main() {
    celeriac::cli::run(
        App::builder()
            .task(task_a)
            .task(task_b)
            .task(add)
            .task(report)
            .periodic("taskA-every-20", task_a::new(5, 6), every(20))
            .periodic("taskB-every-200", task_b::new(10, 20, 30), every(200))
            .periodic("add-every-10", add::new(1, 2), every(10))
            .periodic(
                "weekday-report",
                report::new(),
                celeriac::beat::Schedule::cron_in("30 7 * * mon-fri", "Europe/Paris"),
            ),
    )
}
