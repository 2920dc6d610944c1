//! Publishing: a message is routed (its routing key on the default exchange, else the
//! queues bound to the exchange) and inserted as one row per target queue, in kombu's
//! envelope; `publish_many` inserts `PUBLISH_CHUNK` messages per database operation and
//! reports exactly which messages were not published.

use std::sync::Arc;

use rusqlite::{params, Connection};

use celeriac_core::broker::{PublishManyError, PublishOptions};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use super::SqliteBroker;

/// Most rows inserted by one `publish_many` operation.
const PUBLISH_CHUNK: usize = 5_000;

/// Where a message goes: its routing key for the default exchange, else the queues bound
/// to the exchange with that key.
fn targets(conn: &Connection, message: &Message) -> rusqlite::Result<Vec<String>> {
    let info = &message.properties.delivery_info;
    if info.exchange.is_empty() {
        return Ok(vec![info.routing_key.clone()]);
    }
    let mut stmt =
        conn.prepare_cached("SELECT queue FROM bindings WHERE exchange = ?1 AND routing_key = ?2")?;
    let rows = stmt.query_map(params![info.exchange, info.routing_key], |r| r.get(0))?;
    rows.collect()
}

fn insert(
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

fn unroutable(message: &Message) -> BrokerError {
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
