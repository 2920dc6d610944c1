//! Opening a file written by an older celeriac migrates it in place: a version-1 database
//! (before fanout) gains the broadcasts table, keeps its messages and results, and works.

use std::time::Duration;

use celeriac_core::{Broker, ConsumeOptions, PublishOptions, ResultBackend};
use celeriac_sqlite::{SqliteBackend, SqliteBroker, APPLICATION_ID, SCHEMA_VERSION};
use celeriac_testing::broker::message;
use celeriac_testing::services::ScratchDir;

const V1: &str = include_str!("../migrations/001_initial.sql");

/// A database as celeriac 0.1 with schema version 1 left it, with one waiting message
/// (envelope written by the current broker into a scratch file and copied over) and one
/// stored result.
async fn v1_database(dir: &ScratchDir) -> std::path::PathBuf {
    // A real envelope, as the broker writes it.
    let scratch = dir.path().join("scratch.sqlite");
    let broker = SqliteBroker::connect(&format!("sqlite://{}", scratch.display()))
        .await
        .unwrap();
    broker
        .publish(message("celery", 7, None), PublishOptions::default())
        .await
        .unwrap();
    drop(broker);
    let envelope: Vec<u8> = rusqlite::Connection::open(&scratch)
        .unwrap()
        .query_row("SELECT envelope FROM messages", [], |r| r.get(0))
        .unwrap();

    let path = dir.path().join("old.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(V1).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;"
    ))
    .unwrap();
    conn.execute(
        "INSERT INTO messages (queue, priority, visible_at, tag, envelope) VALUES ('celery', 0, 0, 'old-tag', ?1)",
        [envelope],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO results (task_id, status, meta) VALUES ('t-1', 'SUCCESS', ?1)",
        [br#"{"status": "SUCCESS", "result": 42, "traceback": null, "children": [], "date_done": "2026-01-01T00:00:00.000000", "task_id": "t-1"}"#.as_slice()],
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_version_1_database_is_migrated_and_keeps_its_data() {
    let dir = ScratchDir::new("celeriac-sqlite-migration");
    let path = v1_database(&dir).await;
    let url = format!("sqlite://{}", path.display());

    let broker = SqliteBroker::connect(&url).await.unwrap();
    let version: i32 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);

    // The old message is still there and is delivered.
    let mut consumer = broker
        .consume(ConsumeOptions::new(vec!["celery".into()], 1))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("the old message was delivered")
        .expect("a delivery")
        .unwrap();
    assert_eq!(got.message().headers["n"], 7);
    got.ack().await.unwrap();

    // The old result is still readable.
    let backend = SqliteBackend::connect(&url).await.unwrap();
    let meta = backend.get("t-1").await.unwrap().expect("the old result");
    assert_eq!(meta.result, 42);

    // What version 2 added works: fanout.
    let mut sub = broker.subscribe_fanout("celery.pidbox").await.unwrap();
    broker
        .publish_fanout("celery.pidbox", message("", 8, None))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the broadcast arrived")
        .expect("a message");
    assert_eq!(got.headers["n"], 8);
}
