//! Routing to two queues: image work goes to an `images` queue served by its own worker,
//! everything else to `celery`; a call can also pick its queue and priority itself.
//!
//! `cargo run -p celeriac-examples --example routing`

use std::time::Duration;

use celeriac::{App, TaskContext, TaskResult};

/// Reports which worker and queue ran it.
#[celeriac::task(name = "images.thumbnail")]
fn thumbnail(ctx: &TaskContext, path: String) -> TaskResult<String> {
    Ok(format!(
        "{path} thumbnailed by {} from queue `{}`",
        ctx.hostname(),
        ctx.delivery_info().routing_key
    ))
}

/// Reports which worker and queue ran it.
#[celeriac::task(name = "mail.send")]
async fn send_mail(ctx: &TaskContext, to: String) -> TaskResult<String> {
    Ok(format!(
        "mail to {to} sent by {} from queue `{}`",
        ctx.hostname(),
        ctx.delivery_info().routing_key
    ))
}

#[tokio::main]
async fn main() -> Result<(), celeriac::Error> {
    let app = App::builder()
        .broker_url("memory://routing-example")
        .task(thumbnail)
        .task(send_mail)
        .route("images.*", "images")
        .build()
        .await?;

    // Two workers, as two machines would run them: `worker -Q images` and `worker -Q celery`.
    let images = app
        .worker()
        .queues(["images"])
        .name("images@example")
        .concurrency(2)
        .build();
    let general = app
        .worker()
        .queues(["celery"])
        .name("general@example")
        .build();
    let (stop_images, stop_general) = (images.shutdown_handle(), general.shutdown_handle());
    let workers = [tokio::spawn(images.run()), tokio::spawn(general.run())];

    let wait = Duration::from_secs(5);
    println!(
        "{}",
        thumbnail::new("cat.png".into())
            .apply_async(&app)
            .await?
            .get::<String>(wait)
            .await?
    );
    println!(
        "{}",
        send_mail::new("ada@example.com".into())
            .apply_async(&app)
            .await?
            .get::<String>(wait)
            .await?
    );
    // The caller overrides the route for one call.
    let urgent = send_mail::new("ops@example.com".into())
        .queue("images")
        .priority(0);
    println!(
        "{}",
        urgent.apply_async(&app).await?.get::<String>(wait).await?
    );

    stop_images.warm();
    stop_general.warm();
    for w in workers {
        w.await.expect("worker task")?;
    }
    Ok(())
}
