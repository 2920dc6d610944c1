//! Declarations with exactly Celery's flags, so Python and Rust peers can declare the same
//! names (RabbitMQ refuses an inequivalent redeclaration with `PRECONDITION_FAILED` and
//! closes the channel):
//!
//! - a task queue: exchange `<q>` (direct, durable), queue `<q>` (durable, not exclusive,
//!   not auto-delete; `x-max-priority` / `x-queue-type` from the URL), bound with routing
//!   key `<q>`. A client declares the queue before its first publish to it, as Celery's
//!   does, so a task sent before any worker started is not dropped by the default exchange.
//! - Celery's remote-control entities (names ending in `.pidbox`) are not durable.
//!
//! Where an entity exists already with other flags or arguments (declared by a Python
//! peer with another `task_queue_max_priority`, say), the redeclaration is refused: it is
//! then used as it is, with one warning quoting RabbitMQ, which names the argument that
//! differs — not a crashed channel. Declarations are remembered per connection.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{ErrorKind, ExchangeKind};
use tracing::warn;

use celeriac_core::error::BrokerError;
use celeriac_core::routing::{ExchangeType, QueueSpec};

use super::{lock, Inner};
use crate::error;

/// Whether RabbitMQ answered `code` (a channel-level error).
fn is(e: &lapin::Error, code: AMQPSoftError) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(a) if *a.kind() == AMQPErrorKind::Soft(code))
}

/// Celery's remote-control exchanges and queues are transient; task ones are durable.
fn durable(name: &str) -> bool {
    !name.ends_with(".pidbox")
}

impl Inner {
    /// The arguments of the task queues this broker declares.
    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(p) = self.cfg.max_priority {
            args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(p)));
        }
        if let Some(t) = &self.cfg.queue_type {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from(t.as_str())),
            );
        }
        if let Some(n) = self.cfg.delivery_limit {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX)),
            );
        }
        args
    }

    /// Declares task queue `queue` as Celery does (see the module docs); once per
    /// connection.
    pub(crate) async fn declare_task_queue(&self, queue: &str) -> Result<(), BrokerError> {
        if lock(&self.declared).contains(queue) {
            return Ok(());
        }
        self.exchange(queue, ExchangeKind::Direct).await?;
        self.queue(queue, self.queue_arguments()).await?;
        self.bind_raw(queue, queue, queue).await?;
        lock(&self.declared).insert(queue.to_string());
        lock(&self.known).insert(queue.to_string());
        Ok(())
    }

    /// Declares `spec`: its exchange of its type, the queue, and the binding.
    pub(crate) async fn declare_spec(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        if spec.is_default() {
            return self.declare_task_queue(&spec.name).await;
        }
        let kind = match spec.exchange_type {
            ExchangeType::Direct => lapin::ExchangeKind::Direct,
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeType::Headers => lapin::ExchangeKind::Headers,
        };
        self.exchange(&spec.exchange, kind).await?;
        self.queue(&spec.name, self.queue_arguments()).await?;
        let link = self.link().await?;
        link.admin
            .queue_bind(
                spec.name.as_str().into(),
                spec.exchange.as_str().into(),
                spec.routing_key.as_str().into(),
                QueueBindOptions::default(),
                crate::table::to_table(&spec.binding_arguments),
            )
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "queue.bind", &e))?;
        lock(&self.declared).insert(spec.name.clone());
        lock(&self.known).insert(spec.name.clone());
        Ok(())
    }

    /// Declares `exchange` (direct) and `queue`, and binds them with `routing_key`.
    pub(crate) async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.exchange(exchange, ExchangeKind::Direct).await?;
        let args = if durable(queue) {
            self.queue_arguments()
        } else {
            FieldTable::default()
        };
        self.queue(queue, args).await?;
        self.bind_raw(queue, exchange, routing_key).await?;
        lock(&self.known).insert(queue.to_string());
        lock(&self.declared).insert(queue.to_string());
        lock(&self.bound).insert(
            queue.to_string(),
            (exchange.to_string(), routing_key.to_string()),
        );
        Ok(())
    }

    /// Makes sure a queue about to be consumed exists: declared (once per connection) as
    /// it was bound, or else as a task queue.
    pub(crate) async fn declare_for_consuming(&self, queue: &str) -> Result<(), BrokerError> {
        if lock(&self.declared).contains(queue) {
            return Ok(());
        }
        let bound = lock(&self.bound).get(queue).cloned();
        match bound {
            Some((exchange, key)) => self.bind(queue, &exchange, &key).await,
            None => self.declare_task_queue(queue).await,
        }
    }

    async fn bind_raw(&self, queue: &str, exchange: &str, key: &str) -> Result<(), BrokerError> {
        let link = self.link().await?;
        link.admin
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "queue.bind", &e))
    }

    /// Declares exchange `name` of `kind` with Celery's flags; uses it as it is when it
    /// exists with others.
    pub(crate) async fn exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), BrokerError> {
        if name.is_empty() || lock(&self.exchanges).contains(name) {
            return Ok(());
        }
        let link = self.link().await?;
        let options = ExchangeDeclareOptions {
            durable: durable(name),
            ..ExchangeDeclareOptions::default()
        };
        let declared = link
            .admin
            .exchange_declare(name.into(), kind.clone(), options, FieldTable::default())
            .await;
        match declared {
            Ok(()) => {}
            Err(e) if is(&e, AMQPSoftError::PRECONDITIONFAILED) => {
                warn!(
                    "exchange `{name}` exists with other flags, used as it is ({})",
                    error::describe(&e)
                );
                self.passive_exchange(name).await?;
            }
            Err(e) => return Err(error::broker(&self.cfg.masked, "exchange.declare", &e)),
        }
        lock(&self.exchanges).insert(name.to_string());
        Ok(())
    }

    /// Checks that exchange `name` exists (a passive declare), once per connection.
    pub(crate) async fn passive_exchange(&self, name: &str) -> Result<(), BrokerError> {
        if name.is_empty() || lock(&self.exchanges).contains(name) {
            return Ok(());
        }
        let link = self.link().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        link.admin
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "exchange.declare", &e))?;
        lock(&self.exchanges).insert(name.to_string());
        Ok(())
    }

    async fn queue(&self, name: &str, args: FieldTable) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let options = QueueDeclareOptions {
            durable: durable(name),
            auto_delete: !durable(name),
            ..QueueDeclareOptions::default()
        };
        match link.admin.queue_declare(name.into(), options, args).await {
            Ok(_) => Ok(()),
            Err(e) if is(&e, AMQPSoftError::PRECONDITIONFAILED) => {
                warn!(
                    "queue `{name}` exists with other arguments, used as it is ({})",
                    error::describe(&e)
                );
                self.passive_queue(name).await.map(|_| ())
            }
            Err(e) => Err(error::broker(&self.cfg.masked, "queue.declare", &e)),
        }
    }

    /// How many messages wait in `name`, `None` if there is no such queue.
    async fn passive_queue(&self, name: &str) -> Result<Option<u64>, BrokerError> {
        let link = self.link().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match link
            .admin
            .queue_declare(name.into(), options, FieldTable::default())
            .await
        {
            Ok(q) => Ok(Some(u64::from(q.message_count()))),
            Err(e) if is(&e, AMQPSoftError::NOTFOUND) => Ok(None),
            Err(e) => Err(error::broker(&self.cfg.masked, "queue.declare", &e)),
        }
    }

    /// Messages waiting in `queue` (0 if it does not exist).
    pub(crate) async fn depth(&self, queue: &str) -> Result<u64, BrokerError> {
        Ok(self.passive_queue(queue).await?.unwrap_or(0))
    }

    /// Deletes the waiting messages of `queue`; how many (0 if it does not exist).
    pub(crate) async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        if self.passive_queue(queue).await?.is_none() {
            return Ok(0);
        }
        let link = self.link().await?;
        link.admin
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .map(u64::from)
            .map_err(|e| error::broker(&self.cfg.masked, "queue.purge", &e))
    }

    /// Deletes exchange `name`.
    pub(crate) async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        let link = self.link().await?;
        link.admin
            .exchange_delete(name.into(), Default::default())
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "exchange.delete", &e))?;
        lock(&self.exchanges).remove(name);
        Ok(())
    }

    /// Deletes `queue` and the exchange of its name.
    pub(crate) async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let link = self.link().await?;
        link.admin
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "queue.delete", &e))?;
        let _ = link
            .admin
            .exchange_delete(queue.into(), Default::default())
            .await;
        lock(&self.declared).remove(queue);
        lock(&self.exchanges).remove(queue);
        lock(&self.known).remove(queue);
        Ok(())
    }
}
