//! Publishing: a message is routed (its routing key on the default exchange, else the
//! queues bound to the exchange) and inserted as one row per target queue, in kombu's
//! envelope; `publish_many` inserts `PUBLISH_CHUNK` messages per database operation and
//! reports exactly which messages were not published.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use celeriac_core::broker::{PublishManyError, PublishOptions};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;
use celeriac_core::routing::ExchangeType;

use super::SqliteBroker;

/// Most rows inserted by one `publish_many` operation.
const PUBLISH_CHUNK: usize = 5_000;

/// Where a message goes: its routing key for the default exchange, else the queues bound
/// to the exchange with a binding key that matches it (equal for a direct exchange, by
/// pattern for a topic one, any for fanout).
fn targets(conn: &Connection, message: &Message) -> rusqlite::Result<Vec<String>> {
    let info = &message.properties.delivery_info;
    if info.exchange.is_empty() {
        return Ok(vec![info.routing_key.clone()]);
    }
    let kind: Option<String> = conn
        .prepare_cached("SELECT type FROM exchanges WHERE name = ?1")?
        .query_row(params![info.exchange], |r| r.get(0))
        .optional()?;
    match kind.as_deref().and_then(ExchangeType::parse) {
        Some(kind @ (ExchangeType::Topic | ExchangeType::Fanout)) => {
            let mut stmt =
                conn.prepare_cached("SELECT routing_key, queue FROM bindings WHERE exchange = ?1")?;
            let rows = stmt.query_map(params![info.exchange], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut queues = Vec::new();
            for row in rows {
                let (key, queue) = row?;
                if kind.matches(&key, &info.routing_key) && !queues.contains(&queue) {
                    queues.push(queue);
                }
            }
            Ok(queues)
        }
        _ => {
            let mut stmt = conn.prepare_cached(
                "SELECT queue FROM bindings WHERE exchange = ?1 AND routing_key = ?2",
            )?;
            let rows = stmt.query_map(params![info.exchange, info.routing_key], |r| r.get(0))?;
            rows.collect()
        }
    }
}

pub(super) fn insert(
    conn: &Connection,
    message: &Message,
    deliver_at: Option<f64>,
) -> rusqlite::Result<usize> {
    let queues = targets(conn, message)?;
    let visible_at = deliver_at.unwrap_or(0.0);
    let priority = i64::from(message.priority().unwrap_or(0).min(9));
    let mut stmt = conn.prepare_cached(
        "INSERT INTO messages (queue, priority, visible_at, tag, envelope) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for q in &queues {
        let tag = uuid::Uuid::new_v4().to_string();
        stmt.execute(params![
            q,
            priority,
            visible_at,
            tag,
            envelope::encode(message, &tag)
        ])?;
    }
    Ok(queues.len())
}

pub(super) fn unroutable(message: &Message) -> BrokerError {
    let info = &message.properties.delivery_info;
    BrokerError::Operation {
        op: "publish",
        reason: if info.exchange.is_empty() {
            "the message has no routing key (queue name)".into()
        } else {
            format!(
                "no queue is bound to exchange `{}` with routing key `{}`",
                info.exchange, info.routing_key
            )
        },
    }
}

impl SqliteBroker {
    /// `Broker::publish`: inserts a row per target queue; none is an error.
    pub(super) async fn publish_one(
        &self,
        message: Message,
        options: PublishOptions,
    ) -> Result<(), PublishError> {
        let deliver_at = options
            .deliver_at
            .map(|t| t.timestamp_micros() as f64 / 1e6);
        let db = &self.inner.db;
        let shared = Arc::new(message);
        let m = shared.clone();
        let result = db.call(true, move |c| insert(c, &m, deliver_at)).await;
        let message = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
        match result {
            Ok(0) => {
                let e = unroutable(&message);
                Err(PublishError::new(message, e))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(PublishError::new(message, e.broker(&db.name, "publish"))),
        }
    }

    /// `Broker::publish_many`: inserts `PUBLISH_CHUNK` messages per database operation.
    pub(super) async fn publish_chunks(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let db = &self.inner.db;
        let mut rest = messages;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(PUBLISH_CHUNK));
            let chunk = Arc::new(rest);
            let rows = chunk.clone();
            let result = db
                .call(true, move |c| {
                    for (i, (m, o)) in rows.iter().enumerate() {
                        let at = o.deliver_at.map(|t| t.timestamp_micros() as f64 / 1e6);
                        if insert(c, m, at)? == 0 {
                            return Ok(Some(i));
                        }
                    }
                    Ok(None)
                })
                .await;
            let chunk = Arc::try_unwrap(chunk).unwrap_or_else(|a| (*a).clone());
            match result {
                Ok(None) => rest = tail,
                Ok(Some(i)) => {
                    // The savepoint rolled nothing back: rows before `i` are in. Report
                    // the unroutable one and everything after it.
                    let source = unroutable(&chunk[i].0);
                    let mut unpublished: Vec<_> = chunk.into_iter().skip(i).collect();
                    unpublished.extend(tail);
                    return Err(PublishManyError {
                        source,
                        unpublished,
                    });
                }
                Err(e) => {
                    let mut unpublished = chunk;
                    unpublished.extend(tail);
                    return Err(PublishManyError {
                        source: e.broker(&db.name, "publish"),
                        unpublished,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use celeriac_core::Broker;
    use celeriac_testing::broker::message;
    use celeriac_testing::services::ScratchDir;

    use super::*;
    use crate::broker::settle::tests::sql;

    /// Sets the connection's `max_page_count` (a setting of the connection, not the file,
    /// so it is set on the broker's own), returning the limit now in force.
    async fn limit_pages(b: &SqliteBroker, pages: Option<i64>) -> i64 {
        sql(b, move |c| {
            let pages = match pages {
                Some(p) => p,
                None => c.query_row("PRAGMA page_count", [], |r| r.get(0))?,
            };
            c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
        })
        .await
    }

    /// A full disk (`SQLITE_FULL`, here from `max_page_count`) is `Unavailable`, so the
    /// worker and producer retry it; the failed publish hands its message back and writes
    /// nothing, and once there is room again the same message is published.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_full_disk_is_unavailable_and_the_message_is_handed_back() {
        let dir = ScratchDir::new("celeriac-sqlite-full");
        let broker = SqliteBroker::connect(&dir.sqlite_url("q.sqlite", ""))
            .await
            .unwrap();
        broker
            .publish(message("q", 1, None), PublishOptions::default())
            .await
            .unwrap();
        limit_pages(&broker, None).await;

        let mut big = message("q", 2, None);
        big.headers
            .insert("pad".into(), "x".repeat(256 * 1024).into());
        let e = broker
            .publish(big.clone(), PublishOptions::default())
            .await
            .expect_err("no room for 256 KiB");
        assert!(
            matches!(&e.source, BrokerError::Unavailable { reason, .. } if reason.contains("full"))
                && e.source.is_retryable(),
            "{e:?}"
        );
        assert_eq!(*e.message, big, "the message was handed back whole");
        assert_eq!(broker.queue_depth("q").await.unwrap(), 1, "nothing written");

        let batch = vec![(big.clone(), PublishOptions::default()); 2];
        let e = broker.publish_many(batch).await.expect_err("no room");
        assert!(e.source.is_retryable() && e.unpublished.len() == 2, "{e:?}");

        assert!(limit_pages(&broker, Some(1 << 20)).await >= 1 << 20);
        let (handed_back, options) = e.unpublished.into_iter().next().expect("two");
        broker
            .publish(handed_back, options)
            .await
            .expect("room again");
        assert_eq!(broker.queue_depth("q").await.unwrap(), 2);
    }
}
