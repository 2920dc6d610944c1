//! The RabbitMQ broker: one AMQP connection per broker, shared by a publishing channel
//! (in confirm mode), a channel for declarations, and one channel per consumer.
//!
//! - `link`: the connection and its shared channels, made again after any loss.
//! - `declare`: queues, exchanges and bindings with exactly Celery's flags.
//! - `publish`: properties and headers as Celery sends them; confirms; unroutable
//!   messages refused and handed back.
//! - `consume`: `basic.consume` per queue on one channel, prefetch through `basic.qos`,
//!   acks on the delivering channel, recovery after a lost connection.
//! - `fanout`: broadcast exchanges (remote control).

mod consume;
mod declare;
mod fanout;
mod link;
mod publish;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use celeriac_core::broker::{
    Broker, Capabilities, ConsumeOptions, Consumer, PublishManyError, PublishOptions, Subscription,
};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::routing::QueueSpec;
use celeriac_core::url::EngineUrl;

use crate::config::AmqpConfig;
use crate::error::Error;
use fanout::Broadcast;

/// Locks a mutex of this crate's. Its sections never unwind half-way, so a poisoned lock
/// still holds consistent data and is taken as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A RabbitMQ broker (`amqp://`), compatible with Celery 5.7's py-amqp transport.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.cfg.masked)
            .finish_non_exhaustive()
    }
}

/// What every part of the broker shares.
pub(crate) struct Inner {
    pub(crate) cfg: AmqpConfig,
    /// The connection and its shared channels (`None` until first used or after a loss).
    link: tokio::sync::Mutex<Option<link::Link>>,
    /// Queues declared on the current connection (forgotten when it is made again).
    declared: Mutex<std::collections::HashSet<String>>,
    /// Exchanges known to exist on the current connection.
    exchanges: Mutex<std::collections::HashSet<String>>,
    /// Every queue this broker declared or consumed, for `queues()`.
    known: Mutex<BTreeSet<String>>,
    /// Queues bound with `bind_queue` (queue → exchange, routing key): consuming one binds
    /// it again after a reconnection instead of declaring it as a task queue.
    bound: Mutex<std::collections::HashMap<String, (String, String)>>,
    /// Settles sent from `Drop` (abandoned deliveries) and not yet answered.
    pending: consume::Pending,
}

impl AmqpBroker {
    /// Connects to the broker at `url` (`amqp://`, `pyamqp://`), declaring nothing yet.
    pub async fn connect(url: &EngineUrl) -> Result<Self, Error> {
        let cfg = AmqpConfig::from_url(url)?;
        let broker = Self::with_config(cfg);
        // Connect now, so a wrong address or login is reported at start.
        broker.inner.link().await?;
        Ok(broker)
    }

    /// A broker for `cfg`, connecting on first use.
    pub fn with_config(cfg: AmqpConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                link: tokio::sync::Mutex::new(None),
                declared: Mutex::new(Default::default()),
                exchanges: Mutex::new(Default::default()),
                known: Mutex::new(BTreeSet::new()),
                bound: Mutex::new(Default::default()),
                pending: consume::Pending::default(),
            }),
        }
    }

    /// The configuration read from the URL.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.cfg
    }

    /// What the broker's parts share (for the rpc:// backend, which uses its connection).
    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// Deletes queue `queue` (with its messages) and the exchange of the same name, if
    /// they exist: for tests and tools that clean up after themselves.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.inner.delete_queue(queue).await
    }

    /// Deletes exchange `name`: for tests and tools that clean up after themselves.
    pub async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.inner.delete_exchange(name).await
    }

    /// Deletes every queue this broker declared or consumed and every exchange it
    /// declared on its current connection, with their messages: for tests and tools that
    /// clean up after themselves.
    pub async fn delete_declared(&self) -> Result<(), BrokerError> {
        let queues: Vec<String> = lock(&self.inner.known).iter().cloned().collect();
        for q in queues {
            self.inner.delete_queue(&q).await?;
        }
        let exchanges: Vec<String> = lock(&self.inner.exchanges).iter().cloned().collect();
        for x in exchanges {
            self.inner.delete_exchange(&x).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn url(&self) -> String {
        self.inner.cfg.masked.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        // RabbitMQ serves higher priorities first (the opposite of Celery's Redis
        // emulation) and only on queues declared with `x-max-priority`: the core's
        // "lower number first" promise does not hold, so priorities are not claimed.
        c.priorities = false;
        // ETA tasks are held by the worker, as Celery does on classic queues.
        c.native_delay = false;
        c.fanout = true;
        c.durable = true;
        c.shared = true;
        c.topic = true;
        c
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.inner.declare_task_queue(queue).await
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.inner.declare_spec(spec).await
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.inner.bind(queue, exchange, routing_key).await
    }

    async fn publish(&self, message: Message, options: PublishOptions) -> Result<(), PublishError> {
        let _ = options;
        match self.inner.publish_one(&message).await {
            Ok(()) => Ok(()),
            Err(e) => Err(PublishError::new(message, e)),
        }
    }

    async fn publish_many(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        self.inner.publish_batch(messages).await
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        consume::start(self.inner.clone(), options)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.inner.purge(queue).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        self.inner.depth(queue).await
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        self.inner.pending.wait().await;
        Ok(())
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        Ok(lock(&self.inner.known).iter().cloned().collect())
    }

    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        match self
            .inner
            .fanout_publish(exchange, Broadcast::Fanout, &message)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(PublishError::new(message, e)),
        }
    }

    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        self.inner
            .clone()
            .fanout_subscribe(exchange, Broadcast::Fanout)
            .await
    }

    async fn publish_event(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        match self
            .inner
            .fanout_publish(exchange, Broadcast::Events, &message)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(PublishError::new(message, e)),
        }
    }

    async fn subscribe_events(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        self.inner
            .clone()
            .fanout_subscribe(exchange, Broadcast::Events)
            .await
    }
}
