//! The `rpc://` backend against a real RabbitMQ: a result stored by a worker for a
//! request's `reply_to` reaches the client that owns that reply queue, in Celery's
//! message format, and the latest state wins.

use std::time::Duration;

use celeriac_amqp::RpcBackend;
use celeriac_core::state::{ReplyTo, State, TaskMeta};
use celeriac_core::url::EngineUrl;
use celeriac_core::ResultBackend;
use celeriac_testing::services;
use serde_json::json;

async fn backend(test: &str, oid: &str) -> Option<RpcBackend> {
    let url = services::require(
        test,
        "RabbitMQ",
        &services::amqp_url(),
        "start rabbitmq-server or set CELERIAC_TEST_AMQP_URL",
    )?;
    Some(
        RpcBackend::connect(&EngineUrl::parse(&url).unwrap(), oid)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_reaches_the_client_that_sent_the_task() {
    let oid = uuid::Uuid::new_v4().to_string();
    let Some(client) = backend("a_result_reaches_the_client_that_sent_the_task", &oid).await else {
        return;
    };
    let worker = backend("worker side", "worker-oid-unused").await.unwrap();
    // The client declares its reply queue before it sends (Celery does on every send).
    client.before_send().await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let reply = ReplyTo {
        queue: oid.clone(),
        correlation_id: id.clone(),
    };
    let mut started = TaskMeta::new(&id, State::Started, json!({"pid": 1}));
    started.reply = Some(reply.clone());
    worker.store(&started, None).await.unwrap();
    let mut done = TaskMeta::success(&id, json!(5));
    done.reply = Some(reply);
    worker.store(&done, None).await.unwrap();
    let got = client
        .wait_ready(&id, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a result");
    assert_eq!(got.status, State::Success);
    assert_eq!(got.result, json!(5));
    assert_eq!(got.task_id, id);
    // A record without a reply address is sent nowhere (as Celery), and is no error.
    worker
        .store(&TaskMeta::success("no-reply", json!(1)), None)
        .await
        .unwrap();
    client.forget(&id).await.unwrap();
    assert!(client.get(&id).await.unwrap().is_none());
}
