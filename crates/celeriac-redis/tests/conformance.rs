//! The broker and backend conformance suites against a real Redis (each test under a key
//! prefix of its own), plus kombu-format checks of what lands in Redis.

use std::sync::Arc;

use celeriac_core::url::EngineUrl;
use celeriac_core::ResultBackend;
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_testing::services;
use celeriac_testing::{backend_conformance, broker_conformance, BrokerUnderTest};

mod redis_broker {
    use super::*;

    async fn factory() -> Option<BrokerUnderTest> {
        let scope = services::RedisScope::new("redis broker conformance")?;
        let url = EngineUrl::parse(&scope.url("")).unwrap();
        let broker = RedisBroker::connect(&url).await.unwrap();
        Some(BrokerUnderTest {
            broker: Arc::new(broker),
            prefix: String::new(),
            cleanup: Some(Box::new(scope)),
        })
    }

    broker_conformance!(factory);
}

mod redis_backend {
    use super::*;

    async fn factory() -> Option<(
        Arc<dyn ResultBackend>,
        Option<Box<dyn std::any::Any + Send>>,
    )> {
        let scope = services::RedisScope::new("redis backend conformance")?;
        let url = EngineUrl::parse(&scope.url("")).unwrap();
        let backend = RedisBackend::connect(&url).await.unwrap();
        Some((Arc::new(backend), Some(Box::new(scope))))
    }

    backend_conformance!(factory);
}

/// The capability-gated conformance checks run only where the engine claims the
/// capability, so the claims are pinned here: a claim dropped by mistake fails this test
/// instead of quietly turning checks into skips. Redis has no native delay, by design:
/// kombu's Redis transport has none, so a worker holds ETA tasks itself (and keeps them
/// alive in `unacked_index`) — `delayed_delivery_waits_until_due` is skipped, visibly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_the_documented_ones() {
    use celeriac_core::Broker;
    let Some(scope) = services::RedisScope::new("capabilities_are_the_documented_ones") else {
        return;
    };
    let url = EngineUrl::parse(&scope.url("")).unwrap();
    let c = RedisBroker::connect(&url).await.unwrap().capabilities();
    assert_eq!(
        (
            c.priorities,
            c.native_delay,
            c.fanout,
            c.durable,
            c.shared,
            c.topic
        ),
        (true, false, true, true, true, true),
        "(priorities, native_delay, fanout, durable, shared, topic) changed: {c:?}"
    );
}

/// Result records stored at the same moment are written together (one script call per
/// batch); each caller still learns its own outcome: a key holding another type fails its
/// own record only, and every other record of the batch lands, published as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_result_writes_fail_only_the_bad_record() {
    use celeriac_core::{State, TaskMeta};
    use serde_json::json;

    let Some(scope) = services::RedisScope::new("batched_result_writes_fail_only_the_bad_record")
    else {
        return;
    };
    let url = EngineUrl::parse(&scope.url("")).unwrap();
    let backend = Arc::new(RedisBackend::connect(&url).await.unwrap());
    let mut conn = redis::Client::open(format!("{}/0", scope.base))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // A key of the wrong type where one record must go.
    let _: () = redis::cmd("LPUSH")
        .arg(backend.key_for("bad"))
        .arg("not a record")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = (0..300)
        .map(|i| {
            if i == 150 {
                "bad".into()
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    let writes = ids.iter().map(|id| {
        let backend = backend.clone();
        let meta = TaskMeta::new(id.clone(), State::Success, json!(id));
        async move { backend.store(&meta, None).await }
    });
    let outcomes = futures::future::join_all(writes).await;
    for (id, outcome) in ids.iter().zip(&outcomes) {
        if id == "bad" {
            let e = outcome.as_ref().expect_err("the bad key must fail");
            assert!(e.to_string().contains("WRONGTYPE"), "{e}");
            assert!(!e.is_retryable());
        } else {
            outcome.as_ref().unwrap_or_else(|e| panic!("{id}: {e}"));
            let got = backend.get(id).await.unwrap().expect("stored");
            assert_eq!(got.result, json!(id));
        }
    }
}
