//! Routing as the Celery tutorials teach it, on every engine that can: queues bound to a
//! topic exchange with patterns (`images.#`, `docs.*`), a worker per queue, and tasks
//! reaching the worker whose binding their routing key matches — through the app's
//! `queue(QueueSpec)` and a routing key per call.

use celeriac::{App, ExchangeType, QueueSpec, Route};
use celeriac_testing::services::{self, RedisScope};
use serde_json::Value;

use crate::support::*;

/// Two workers on two queues of one topic exchange; a call with `images.png` runs on the
/// images worker, one with `docs.report.txt` on the docs worker (`docs.#`), and a task
/// routed to the images queue without a key goes with the queue's binding key.
async fn topic_routing_on(url: &str) -> (Vec<String>, [String; 3]) {
    let exchange = services::unique("media");
    let (images, docs) = (services::unique("images"), services::unique("docs"));
    let app: App = builder_on(url)
        .queue(
            QueueSpec::new(images.clone())
                .exchange(exchange.clone(), ExchangeType::Topic)
                .routing_key("images.#"),
        )
        .queue(
            QueueSpec::new(docs.clone())
                .exchange(exchange.clone(), ExchangeType::Topic)
                .routing_key("docs.#"),
        )
        .route_to("tasks.context", Route::queue(images.clone()))
        .build()
        .await
        .unwrap();
    let wi = start(&app, |b| b.queues([images.clone()]).name("images@routing"));
    let wd = start(&app, |b| b.queues([docs.clone()]).name("docs@routing"));
    let ran_on = |v: Value| v["hostname"].as_str().unwrap_or_default().to_string();
    let png = run(
        &app,
        context::new().set_option("routing_key", serde_json::json!("images.png")),
    )
    .await;
    let txt = run(
        &app,
        context::new()
            .set_option("exchange", serde_json::json!(exchange))
            .set_option("routing_key", serde_json::json!("docs.report.txt")),
    )
    .await;
    let plain = run(&app, context::new()).await;
    wi.warm().await;
    wd.warm().await;
    (
        vec![ran_on(png), ran_on(txt), ran_on(plain)],
        [exchange, images, docs],
    )
}

const WANT: [&str; 3] = ["images@routing", "docs@routing", "images@routing"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_on_memory() {
    assert_eq!(
        topic_routing_on(&format!("memory://{}", key())).await.0,
        WANT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_on_redis() {
    let Some(scope) = RedisScope::new("topic_routing_on_redis") else {
        return;
    };
    assert_eq!(topic_routing_on(&scope.url("")).await.0, WANT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_on_rabbitmq() {
    let Some(url) = services::require(
        "topic_routing_on_rabbitmq",
        "RabbitMQ",
        &services::amqp_url(),
        "start rabbitmq-server or set CELERIAC_TEST_AMQP_URL",
    ) else {
        return;
    };
    let (ran, [exchange, images, docs]) = topic_routing_on(&url).await;
    // What the test declared goes; the shared server keeps nothing.
    let b =
        celeriac_amqp::AmqpBroker::connect(&celeriac::core::url::EngineUrl::parse(&url).unwrap())
            .await
            .unwrap();
    for q in [&images, &docs] {
        b.delete_queue(q).await.unwrap();
    }
    b.delete_exchange(&exchange).await.unwrap();
    assert_eq!(ran, WANT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_on_sqlite() {
    let dir = celeriac_testing::services::ScratchDir::new("celeriac-routing");
    assert_eq!(
        topic_routing_on(&dir.sqlite_url("q.sqlite", "")).await.0,
        WANT
    );
}
