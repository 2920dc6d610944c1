//! The conformance suites on memory://.

use std::sync::Arc;

use celeriac::core::memory::{MemoryBackend, MemoryBroker, PriorityOrder};
use celeriac::core::ResultBackend;
use celeriac_testing::{backend_conformance, broker_conformance, BrokerUnderTest};

mod memory_broker {
    use super::*;

    async fn factory() -> Option<BrokerUnderTest> {
        Some(BrokerUnderTest {
            broker: Arc::new(MemoryBroker::new(PriorityOrder::LowFirst)),
            prefix: "t-".into(),
            cleanup: None,
        })
    }

    broker_conformance!(factory);
}

mod memory_backend {
    use super::*;

    async fn factory() -> Option<(
        Arc<dyn ResultBackend>,
        Option<Box<dyn std::any::Any + Send>>,
    )> {
        Some((Arc::new(MemoryBackend::new()), None))
    }

    backend_conformance!(factory);
}

/// The capability-gated conformance checks run only where the engine claims the
/// capability, so the claims are pinned here: a claim dropped by mistake fails this test
/// instead of quietly turning checks into skips.
#[test]
fn memory_capabilities_are_the_documented_ones() {
    use celeriac::core::Broker;
    let c = MemoryBroker::new(PriorityOrder::LowFirst).capabilities();
    assert_eq!(
        (
            c.priorities,
            c.native_delay,
            c.fanout,
            c.durable,
            c.shared,
            c.topic
        ),
        (true, true, true, false, false, true),
        "(priorities, native_delay, fanout, durable, shared, topic) changed: {c:?}"
    );
}

/// Every engine's broker and backend can be shared across tasks and threads (checked at
/// compile time: a type that stops being `Send + Sync + 'static` fails the build).
#[test]
fn engines_are_send_sync_static() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<MemoryBroker>();
    assert_send_sync::<MemoryBackend>();
    assert_send_sync::<celeriac_sqlite::SqliteBroker>();
    assert_send_sync::<celeriac_sqlite::SqliteBackend>();
    assert_send_sync::<celeriac_redis::RedisBroker>();
    assert_send_sync::<celeriac_redis::RedisBackend>();
    assert_send_sync::<Arc<dyn celeriac::core::Broker>>();
    assert_send_sync::<Arc<dyn ResultBackend>>();
    assert_send_sync::<celeriac::App>();
    assert_send_sync::<celeriac::core::Delivery>();
}
