//! The broker conformance suite against a real RabbitMQ (`CELERIAC_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), each check under queue names of its own; what
//! a check declared is deleted when it ends. Plus the AMQP-specific checks: the capability
//! claims, and an entity declared by someone else with other arguments.

use std::sync::Arc;

use celeriac_amqp::AmqpBroker;
use celeriac_core::url::EngineUrl;
use celeriac_core::Broker;
use celeriac_testing::services;
use celeriac_testing::{broker_conformance, BrokerUnderTest};

/// Deletes what the broker declared when dropped (from a thread of its own: drop cannot
/// await).
struct Cleanup(AmqpBroker);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let broker = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let fresh = AmqpBroker::with_config(broker.config().clone());
                let names = broker.queues().await.unwrap_or_default();
                for q in names {
                    let _ = fresh.delete_queue(&q).await;
                }
                let _ = broker.delete_declared().await;
            });
        })
        .join();
    }
}

async fn connect(test: &str) -> Option<AmqpBroker> {
    let url = services::require(
        test,
        "RabbitMQ",
        &services::amqp_url(),
        "start rabbitmq-server or set CELERIAC_TEST_AMQP_URL",
    )?;
    let url = EngineUrl::parse(&url).unwrap();
    Some(AmqpBroker::connect(&url).await.unwrap())
}

mod amqp_broker {
    use super::*;

    async fn factory() -> Option<BrokerUnderTest> {
        let broker = connect("amqp broker conformance").await?;
        Some(BrokerUnderTest {
            broker: Arc::new(broker.clone()),
            prefix: format!("{}.", services::unique("celeriac-test")),
            cleanup: Some(Box::new(Cleanup(broker))),
        })
    }

    broker_conformance!(factory);
}

/// The capability-gated checks run only where claimed, so the claims are pinned here.
/// RabbitMQ serves higher priorities first (and only with `x-max-priority`), so the core's
/// lower-first promise is not claimed; ETA tasks are held by the worker, as Celery does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_the_documented_ones() {
    let Some(b) = connect("capabilities_are_the_documented_ones").await else {
        return;
    };
    let c = b.capabilities();
    assert_eq!(
        (
            c.priorities,
            c.native_delay,
            c.fanout,
            c.durable,
            c.shared,
            c.topic
        ),
        (false, false, true, true, true, true)
    );
}

/// A queue declared by another client with other arguments (a Python worker with
/// `task_queue_max_priority=10`, say) is used as it is: no crashed channel, messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_arguments_is_used_as_it_is() {
    let Some(plain) = connect("a_queue_declared_with_other_arguments_is_used_as_it_is").await
    else {
        return;
    };
    let queue = services::unique("celeriac-test-args");
    let url = format!("{}?max_priority=10", services::amqp_url());
    let prio = AmqpBroker::connect(&EngineUrl::parse(&url).unwrap())
        .await
        .unwrap();
    prio.declare_queue(&queue).await.unwrap();
    // The plain broker's declare differs (no x-max-priority): RabbitMQ refuses it.
    plain.declare_queue(&queue).await.unwrap();
    let m = celeriac_testing::broker::message(&queue, 1, None);
    plain
        .publish(m, Default::default())
        .await
        .expect("published to the existing queue");
    assert_eq!(plain.queue_depth(&queue).await.unwrap(), 1);
    let _cleanup = Cleanup(prio);
}

/// With `max_priority`, queues get `x-max-priority` and RabbitMQ serves **higher**
/// numbers first — the opposite of Celery's Redis transport (documented in
/// docs/engines.md); FIFO within a priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_priority_higher_numbers_come_first() {
    let Some(_probe) = connect("with_max_priority_higher_numbers_come_first").await else {
        return;
    };
    let url = format!("{}?max_priority=10", services::amqp_url());
    let b = AmqpBroker::connect(&EngineUrl::parse(&url).unwrap())
        .await
        .unwrap();
    let _cleanup = Cleanup(b.clone());
    let queue = services::unique("celeriac-test-prio");
    b.declare_queue(&queue).await.unwrap();
    for (n, p) in [(1, 1), (2, 9), (3, 5), (4, 9)] {
        b.publish(
            celeriac_testing::broker::message(&queue, n, Some(p)),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let mut c = b
        .consume(celeriac_core::broker::ConsumeOptions::new(
            vec![queue.clone()],
            1,
        ))
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = celeriac_testing::broker::next(&mut c).await;
        order.push(d.message().headers["n"].as_u64().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(order, [2, 4, 3, 1]);
}

/// A queue bound to a headers exchange gets the messages whose headers match the
/// binding's arguments (`x-match: all`), whatever their routing key; one that matches no
/// binding is returned and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchanges_route_by_message_headers() {
    use celeriac_core::message::DeliveryInfo;
    use celeriac_core::routing::{ExchangeType, QueueSpec};
    let Some(b) = connect("headers_exchanges_route_by_message_headers").await else {
        return;
    };
    let _cleanup = Cleanup(b.clone());
    let exchange = services::unique("celeriac-test-hdr");
    let queue = services::unique("celeriac-test-images");
    let args = serde_json::json!({"x-match": "all", "kind": "image", "size": 2});
    let serde_json::Value::Object(args) = args else {
        unreachable!()
    };
    b.declare(
        &QueueSpec::new(queue.clone())
            .exchange(exchange.clone(), ExchangeType::Headers)
            .binding_arguments(args),
    )
    .await
    .unwrap();
    let via = |n: u64, kind: &str| {
        let mut m = celeriac_testing::broker::message("unused", n, None);
        m.headers.insert("kind".into(), serde_json::json!(kind));
        m.headers.insert("size".into(), serde_json::json!(2));
        m.properties.delivery_info = DeliveryInfo {
            exchange: exchange.clone(),
            routing_key: "ignored".into(),
            redelivered: None,
        };
        m
    };
    b.publish(via(1, "image"), Default::default())
        .await
        .unwrap();
    let e = b
        .publish(via(2, "doc"), Default::default())
        .await
        .expect_err("headers that match no binding are refused");
    assert!(e.source.to_string().contains(&exchange), "{}", e.source);
    assert_eq!(b.queue_depth(&queue).await.unwrap(), 1);
    let mut c = b
        .consume(celeriac_core::broker::ConsumeOptions::new(
            vec![queue.clone()],
            1,
        ))
        .await
        .unwrap();
    let d = celeriac_testing::broker::next(&mut c).await;
    assert_eq!(d.message().headers["n"], serde_json::json!(1));
    d.ack().await.unwrap();
}
