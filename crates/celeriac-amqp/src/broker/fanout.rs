//! Broadcast exchanges: fanout ones (remote control) and Celery's `celeryev` topic
//! exchange (events). A publish goes to the exchange, and each subscriber has an
//! exclusive, auto-delete queue bound to it (server-named for fanout; `celeryev.<uuid>`
//! with Celery's monitor arguments for events), consumed without acknowledgement on a
//! channel of its own; a lost subscription is made again (with back-off) while the
//! subscriber lives. As with any AMQP broadcast, a subscriber that is not bound when a
//! message is published misses it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use tokio::sync::mpsc;
use tracing::info;

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::Subscription;
use celeriac_core::error::BrokerError;
use celeriac_core::message::Message;

use super::consume::message_of;
use super::publish::properties;
use super::Inner;
use crate::error;

/// How a subscriber's queue is made and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broadcast {
    /// A fanout exchange; a server-named queue.
    Fanout,
    /// Celery's event exchange: topic, bound with `#`; queue `celeryev.<uuid>` with
    /// `x-message-ttl` 5 s and `x-expires` 60 s (Celery's `event_queue_ttl` and
    /// `event_queue_expires`).
    Events,
}

impl Broadcast {
    fn kind(self) -> ExchangeKind {
        match self {
            Broadcast::Fanout => ExchangeKind::Fanout,
            Broadcast::Events => ExchangeKind::Topic,
        }
    }
}

impl Inner {
    /// Publishes `message` to every queue bound to the broadcast exchange `exchange`,
    /// under the message's routing key.
    pub(crate) async fn fanout_publish(
        &self,
        exchange: &str,
        how: Broadcast,
        message: &Message,
    ) -> Result<(), BrokerError> {
        self.exchange(exchange, how.kind()).await?;
        let link = self.link().await?;
        let confirm = link
            .publish
            .basic_publish(
                exchange.into(),
                message.properties.delivery_info.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &message.body,
                properties(message),
            )
            .await
            .map_err(|e| error::broker(&self.cfg.masked, "publish", &e))?;
        confirm
            .await
            .map(|_| ())
            .map_err(|e| error::broker(&self.cfg.masked, "publish", &e))
    }

    /// Subscribes to the broadcast exchange `exchange`.
    pub(crate) async fn fanout_subscribe(
        self: Arc<Self>,
        exchange: &str,
        how: Broadcast,
    ) -> Result<Subscription, BrokerError> {
        let exchange = exchange.to_string();
        // Bound here, so the caller hears of an unreachable broker, and misses nothing
        // published after this returns.
        let first = self.bind_subscriber(&exchange, how).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut current = Some(first);
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let (channel, mut stream) = match current.take() {
                    Some(s) => s,
                    None => match self.bind_subscriber(&exchange, how).await {
                        Ok(s) => {
                            info!("fanout `{exchange}`: subscription restored");
                            backoff.reset();
                            s
                        }
                        Err(_) => {
                            tokio::select! {
                                _ = tx.closed() => return,
                                _ = backoff.wait() => {}
                            }
                            continue;
                        }
                    },
                };
                loop {
                    let next = tokio::select! {
                        _ = tx.closed() => {
                            let _ = channel.close(200, "unsubscribed".into()).await;
                            return;
                        }
                        n = stream.next() => n,
                    };
                    match next {
                        Some(Ok(d)) => {
                            if tx.send(message_of(&d).0).is_err() {
                                let _ = channel.close(200, "unsubscribed".into()).await;
                                return;
                            }
                        }
                        _ => break,
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = backoff.wait() => {}
                }
            }
        });
        Ok(Subscription::from_channel(rx))
    }

    /// A channel with an exclusive queue bound to `exchange`, and its consumer.
    async fn bind_subscriber(
        &self,
        exchange: &str,
        how: Broadcast,
    ) -> Result<(Channel, lapin::Consumer), BrokerError> {
        self.exchange(exchange, how.kind()).await?;
        let link = self.link().await?;
        let channel = self.channel(&link.conn).await?;
        let fail =
            |op: &'static str| move |e: lapin::Error| error::broker(&self.cfg.masked, op, &e);
        let (name, arguments, binding) = match how {
            Broadcast::Fanout => (String::new(), FieldTable::default(), ""),
            Broadcast::Events => {
                let mut args = FieldTable::default();
                args.insert("x-message-ttl".into(), AMQPValue::LongInt(5_000));
                args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
                (format!("celeryev.{}", uuid::Uuid::new_v4()), args, "#")
            }
        };
        let queue = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(fail("queue.declare"))?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(fail("queue.bind"))?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(fail("basic.consume"))?;
        Ok((channel, consumer))
    }
}
