//! Looking at and managing queues: purge (the unclaimed messages), depth (ready ones),
//! the list of queues, and declaring and binding queues (`queues` and `bindings` rows).

use rusqlite::{params, OptionalExtension};

use celeriac_core::error::BrokerError;
use celeriac_core::routing::{ExchangeType, QueueSpec};

use super::{err, SqliteBroker};
use crate::schema::now;

impl SqliteBroker {
    /// `Broker::declare_queue`: the queue and its default binding, once per process.
    pub(super) async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        if !self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_string())
        {
            return Ok(());
        }
        let q = queue.to_string();
        self.inner
            .db
            .call(true, move |c| {
                c.execute("INSERT OR IGNORE INTO queues (name) VALUES (?1)", params![q])?;
                c.execute(
                    "INSERT OR IGNORE INTO bindings (exchange, routing_key, queue) VALUES (?1, ?1, ?1)",
                    params![q],
                )
                .map(drop)
            })
            .await
            .map_err(err(&self.inner.db, "declare"))
    }

    /// `Broker::bind_queue`: the queue and its binding to `exchange` with `routing_key`.
    pub(super) async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let (q, ex, rk) = (
            queue.to_string(),
            exchange.to_string(),
            routing_key.to_string(),
        );
        self.inner
            .db
            .call(true, move |c| {
                c.execute("INSERT OR IGNORE INTO queues (name) VALUES (?1)", params![q])?;
                c.execute(
                    "INSERT OR IGNORE INTO bindings (exchange, routing_key, queue) VALUES (?1, ?2, ?3)",
                    params![ex, rk, q],
                )
                .map(drop)
            })
            .await
            .map_err(err(&self.inner.db, "bind"))
    }

    /// `Broker::declare`: the queue, its exchange's type (a direct exchange needs no
    /// row) and its binding. An exchange already declared with another type is refused.
    pub(super) async fn declare_spec(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        if spec.exchange_type == ExchangeType::Headers {
            return Err(BrokerError::Unsupported(
                "headers exchanges (RabbitMQ only, as with kombu's virtual transports)",
            ));
        }
        self.declare(&spec.name).await?;
        if spec.is_default() {
            return Ok(());
        }
        let (q, ex, key, kind) = (
            spec.name.clone(),
            spec.exchange.clone(),
            spec.routing_key.clone(),
            spec.exchange_type,
        );
        let clash = self
            .inner
            .db
            .call(true, move |c| {
                let known: Option<String> = c
                    .query_row(
                        "SELECT type FROM exchanges WHERE name = ?1",
                        params![ex],
                        |r| r.get(0),
                    )
                    .optional()?;
                let known = known.unwrap_or_else(|| "direct".into());
                let has_bindings: bool = c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM bindings WHERE exchange = ?1 AND queue != ?1)",
                    params![ex],
                    |r| r.get(0),
                )?;
                if known != kind.as_str() && (has_bindings || known != "direct") {
                    return Ok(Some(known));
                }
                if kind != ExchangeType::Direct {
                    c.execute(
                        "INSERT OR IGNORE INTO exchanges (name, type) VALUES (?1, ?2)",
                        params![ex, kind.as_str()],
                    )?;
                }
                c.execute(
                    "INSERT OR IGNORE INTO bindings (exchange, routing_key, queue) VALUES (?1, ?2, ?3)",
                    params![ex, key, q],
                )?;
                Ok(None)
            })
            .await
            .map_err(err(&self.inner.db, "declare"))?;
        match clash {
            None => Ok(()),
            Some(known) => Err(BrokerError::Operation {
                op: "declare",
                reason: format!(
                    "exchange `{}` is a {known} exchange, not {}",
                    spec.exchange,
                    spec.exchange_type.as_str()
                ),
            }),
        }
    }

    /// `Broker::purge`: deletes the messages of `queue` no consumer holds.
    pub(super) async fn purge_unclaimed(&self, queue: &str) -> Result<u64, BrokerError> {
        let q = queue.to_string();
        self.inner
            .db
            .call(true, move |c| {
                c.execute(
                    "DELETE FROM messages WHERE queue = ?1 AND claimed_by IS NULL",
                    params![q],
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(err(&self.inner.db, "purge"))
    }

    /// `Broker::queue_depth`: messages of `queue` ready now.
    pub(super) async fn depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let q = queue.to_string();
        self.inner
            .db
            .call(false, move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND claimed_by IS NULL AND visible_at <= ?2",
                    params![q, now()],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(err(&self.inner.db, "queue depth"))
    }

    /// `Broker::queues`: declared queues and queues holding messages.
    pub(super) async fn known_queues(&self) -> Result<Vec<String>, BrokerError> {
        self.inner
            .db
            .call(false, |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT name FROM queues UNION SELECT DISTINCT queue FROM messages ORDER BY 1",
                )?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .map_err(err(&self.inner.db, "list queues"))
    }
}
