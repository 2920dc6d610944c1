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

#[tokio::test]
async fn engines_are_send_sync_static() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<MemoryBroker>();
    assert_send_sync::<MemoryBackend>();
    assert_send_sync::<Arc<dyn celeriac::core::Broker>>();
    assert_send_sync::<Arc<dyn ResultBackend>>();
    assert_send_sync::<celeriac::App>();
    assert_send_sync::<celeriac::core::Delivery>();
}
