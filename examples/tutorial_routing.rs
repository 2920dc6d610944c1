//! The routing tutorial every Celery user meets, replayed: three queues, each with an
//! exchange and a routing key of its own name, two tasks routed to their queue, one left
//! to the default queue, and three workers that each serve one queue — each task runs
//! only on its worker.
//!
//! ```text
//! CELERY_QUEUES = (Queue('default',    Exchange('default'),    routing_key='default'),
//!                  Queue('for_task_A', Exchange('for_task_A'), routing_key='for_task_A'),
//!                  Queue('for_task_B', Exchange('for_task_B'), routing_key='for_task_B'))
//! CELERY_ROUTES = {'tasks.taskA': {'queue': 'for_task_A', 'routing_key': 'for_task_A'},
//!                  'tasks.taskB': {'queue': 'for_task_B', 'routing_key': 'for_task_B'}}
//! celery worker -n workerA.%h -Q for_task_A
//! celery worker -n workerB.%h -Q for_task_B
//! celery worker -n worker.%h  -Q celery
//! ```
//!
//! On RabbitMQ (`TUTORIAL_BROKER=amqp://guest:guest@127.0.0.1:5672//`, results over
//! rpc://) or Redis (`TUTORIAL_BROKER=redis://127.0.0.1:6379/0`); in memory by default:
//!
//! `TUTORIAL_BROKER=amqp://guest:guest@127.0.0.1:5672// cargo run -p celeriac-examples --example tutorial_routing`
//!
//! The queues, exchanges and bindings are declared with Celery's flags, so the same
//! settings in a Python client (the tutorial's `CELERY_QUEUES` and `CELERY_ROUTES`) send
//! to these workers, and Python workers started as above serve a celeriac client.

use std::time::Duration;

use celeriac::{App, Route, TaskContext, TaskResult};

/// Says which worker and queue ran it.
fn ran(ctx: &TaskContext, result: i64) -> String {
    format!(
        "{result} (worker {}, queue `{}`)",
        ctx.hostname(),
        ctx.delivery_info().routing_key
    )
}

#[celeriac::task(name = "tasks.taskA")]
async fn task_a(ctx: &TaskContext, x: i64, y: i64) -> TaskResult<String> {
    Ok(ran(ctx, x * y))
}

#[celeriac::task(name = "tasks.taskB")]
async fn task_b(ctx: &TaskContext, x: i64, y: i64, z: i64) -> TaskResult<String> {
    Ok(ran(ctx, x + y + z))
}

#[celeriac::task(name = "tasks.add")]
async fn add(ctx: &TaskContext, x: i64, y: i64) -> TaskResult<String> {
    Ok(ran(ctx, x + y))
}

/// Celery's `{'queue': q, 'routing_key': q}` route.
fn to(queue: &str) -> Route {
    Route {
        queue: queue.to_string(),
        routing_key: queue.to_string(),
        ..Route::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), celeriac::Error> {
    let broker =
        std::env::var("TUTORIAL_BROKER").unwrap_or_else(|_| "memory://tutorial".to_string());
    let app = App::builder()
        .broker_url(broker)
        .task(task_a)
        .task(task_b)
        .task(add)
        .route_to("tasks.taskA", to("for_task_A"))
        .route_to("tasks.taskB", to("for_task_B"))
        .build()
        .await?;

    let workers = [
        ("workerA.%h", "for_task_A"),
        ("workerB.%h", "for_task_B"),
        ("worker.%h", "celery"),
    ]
    .map(|(name, queue)| {
        app.worker()
            .name(name)
            .queues([queue])
            .concurrency(2)
            .build()
    });
    let stops: Vec<_> = workers.iter().map(|w| w.shutdown_handle()).collect();
    let running: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run())).collect();

    let wait = Duration::from_secs(10);
    let a = task_a::new(3, 4).apply_async(&app).await?;
    let b = task_b::new(1, 2, 3).apply_async(&app).await?;
    let c = add::new(2, 2).apply_async(&app).await?;
    let a = a.get::<String>(wait).await?;
    let b = b.get::<String>(wait).await?;
    let c = c.get::<String>(wait).await?;
    println!("tasks.taskA(3, 4)    = {a}");
    println!("tasks.taskB(1, 2, 3) = {b}");
    println!("tasks.add(2, 2)      = {c}");
    let checks = [
        (&a, "workerA.", "for_task_A"),
        (&b, "workerB.", "for_task_B"),
        (&c, "worker.", "celery"),
    ];
    for (line, worker, queue) in checks {
        let expected = format!("worker celery@{worker}");
        if !line.contains(&expected) || !line.contains(&format!("queue `{queue}`")) {
            eprintln!("error: `{line}` did not run on {worker}* from `{queue}`");
            std::process::exit(1);
        }
    }

    for s in &stops {
        s.warm();
    }
    for r in running {
        r.await.expect("worker task")?;
    }
    Ok(())
}
