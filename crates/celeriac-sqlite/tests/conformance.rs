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
