//! The broker and backend conformance suites on a fresh SQLite file per test.

use std::sync::Arc;

use celeriac_core::ResultBackend;
use celeriac_sqlite::{SqliteBackend, SqliteBroker};
use celeriac_testing::services::ScratchDir;
use celeriac_testing::{backend_conformance, broker_conformance, BrokerUnderTest};

mod sqlite_broker {
    use super::*;

    async fn factory() -> Option<BrokerUnderTest> {
        let dir = ScratchDir::new("celeriac-sqlite-test");
        let broker = SqliteBroker::connect(&dir.sqlite_url("q.sqlite", ""))
            .await
            .unwrap();
        Some(BrokerUnderTest {
            broker: Arc::new(broker),
            prefix: String::new(),
            cleanup: Some(Box::new(dir)),
        })
    }

    broker_conformance!(factory);
}

mod sqlite_backend {
    use super::*;

    async fn factory() -> Option<(
        Arc<dyn ResultBackend>,
        Option<Box<dyn std::any::Any + Send>>,
    )> {
        let dir = ScratchDir::new("celeriac-sqlite-test");
        let backend = SqliteBackend::connect(&dir.sqlite_url("r.sqlite", ""))
            .await
            .unwrap();
        Some((Arc::new(backend), Some(Box::new(dir))))
    }

    backend_conformance!(factory);
}

/// The capability-gated conformance checks run only where the engine claims the
/// capability, so the claims are pinned here: a claim dropped by mistake fails this test
/// instead of quietly turning checks into skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_the_documented_ones() {
    use celeriac_core::Broker;
    let dir = ScratchDir::new("celeriac-sqlite-test");
    let c = SqliteBroker::connect(&dir.sqlite_url("q.sqlite", ""))
        .await
        .unwrap()
        .capabilities();
    assert_eq!(
        (
            c.priorities,
            c.native_delay,
            c.fanout,
            c.durable,
            c.shared,
            c.topic
        ),
        (true, true, true, true, true, true),
        "(priorities, native_delay, fanout, durable, shared, topic) changed: {c:?}"
    );
}
