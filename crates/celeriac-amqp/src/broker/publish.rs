//! Publishing, as Celery's py-amqp transport does it: the message's exchange and routing
//! key as given (the default exchange `""` with the queue name for a task, after declaring
//! that queue once per connection), the protocol v2 headers as the AMQP header table,
//! and the properties Celery sets (`content_type`, `content_encoding`, `delivery_mode`,
//! `priority`, `correlation_id`, `reply_to`, `expiration`).
//!
//! Publisher confirms are on unless the URL says `confirm_publish=false`: a publish
//! returns once RabbitMQ has taken the message (and, for a persistent message on a durable
//! queue, written it). Every publish is `mandatory`, so a message no queue is bound for
//! comes back (`basic.return`) and is refused with an error naming its exchange and
//! routing key — never dropped silently. A batch to the default exchange is pipelined:
//! all published, then the confirms awaited in order.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};

use celeriac_core::broker::{PublishManyError, PublishOptions};
use celeriac_core::error::BrokerError;
use celeriac_core::message::Message;

use super::link::Link;
use super::Inner;
use crate::error;
use crate::table;

/// The AMQP properties of `m`, as Celery sets them.
pub(crate) fn properties(m: &Message) -> BasicProperties {
    let p = &m.properties;
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from(m.content_type.as_str()))
        .with_content_encoding(ShortString::from(m.content_encoding.as_str()))
        .with_delivery_mode(p.delivery_mode)
        .with_headers(table::to_table(&m.headers));
    if let Some(prio) = p.priority {
        props = props.with_priority(prio);
    }
    if let Some(id) = &p.correlation_id {
        props = props.with_correlation_id(ShortString::from(id.as_str()));
    }
    if let Some(to) = &p.reply_to {
        props = props.with_reply_to(ShortString::from(to.as_str()));
    }
    if let Some(exp) = &p.expiration {
        props = props.with_expiration(ShortString::from(exp.as_str()));
    }
    props
}

impl Inner {
    /// Makes sure `m` can be routed: the queue of a default-exchange message is declared,
    /// a named exchange must exist.
    async fn prepare(&self, m: &Message) -> Result<(), BrokerError> {
        let info = &m.properties.delivery_info;
        if info.exchange.is_empty() {
            if info.routing_key.is_empty() {
                return Err(BrokerError::Operation {
                    op: "publish",
                    reason: "no exchange and no routing key: the message has nowhere to go".into(),
                });
            }
            self.declare_task_queue(&info.routing_key).await
        } else {
            self.passive_exchange(&info.exchange)
                .await
                .map_err(|e| match e {
                    BrokerError::Operation { reason, .. } => BrokerError::Operation {
                        op: "publish",
                        reason: format!(
                            "exchange `{}` cannot take messages: {reason}",
                            info.exchange
                        ),
                    },
                    other => other,
                })
        }
    }

    /// Sends `m` on the publishing channel of `link`; the confirm is awaited by the
    /// caller.
    async fn send(&self, link: &Link, m: &Message) -> Result<lapin::PublisherConfirm, BrokerError> {
        let info = &m.properties.delivery_info;
        let sent = link
            .publish
            .basic_publish(
                info.exchange.as_str().into(),
                info.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &m.body,
                properties(m),
            )
            .await;
        match sent {
            Ok(c) => Ok(c),
            Err(e) => {
                self.drop_link().await;
                Err(error::broker(&self.cfg.masked, "publish", &e))
            }
        }
    }

    /// What RabbitMQ's confirm of `m` says.
    async fn confirmed(&self, m: &Message, c: lapin::PublisherConfirm) -> Result<(), BrokerError> {
        let info = &m.properties.delivery_info;
        let unroutable = || {
            BrokerError::Operation {
            op: "publish",
            reason: format!(
                "no queue is bound to exchange `{}` with routing key `{}`: the message was returned",
                info.exchange, info.routing_key
            ),
        }
        };
        match c.await {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(unroutable()),
            Ok(Confirmation::Nack(Some(_))) => Err(unroutable()),
            Ok(Confirmation::Nack(None)) => Err(BrokerError::Unavailable {
                url: self.cfg.masked.clone(),
                reason: "RabbitMQ did not take the message (basic.nack)".into(),
            }),
            Err(e) => {
                self.drop_link().await;
                Err(error::broker(&self.cfg.masked, "publish", &e))
            }
        }
    }

    /// Publishes one message and waits for its confirm.
    pub(crate) async fn publish_one(&self, m: &Message) -> Result<(), BrokerError> {
        self.prepare(m).await?;
        let link = self.link().await?;
        let c = self.send(&link, m).await?;
        self.confirmed(m, c).await
    }

    /// Publishes a batch. To the default exchange (tasks), pipelined: every message sent,
    /// then the confirms awaited in order; messages to named exchanges one at a time. On
    /// failure, the failed message and every one after it not confirmed are handed back.
    pub(crate) async fn publish_batch(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let all_default = messages
            .iter()
            .all(|(m, _)| m.properties.delivery_info.exchange.is_empty());
        if !all_default {
            let mut iter = messages.into_iter();
            while let Some((m, o)) = iter.next() {
                if let Err(e) = self.publish_one(&m).await {
                    let mut unpublished = vec![(m, o)];
                    unpublished.extend(iter);
                    return Err(PublishManyError {
                        source: e,
                        unpublished,
                    });
                }
            }
            return Ok(());
        }
        for chunk_start in (0..messages.len()).step_by(1_000) {
            let end = (chunk_start + 1_000).min(messages.len());
            let chunk = &messages[chunk_start..end];
            let mut confirms = Vec::with_capacity(chunk.len());
            let mut failure = None;
            // One link for the chunk: sends after a failure are not tried.
            let mut link = None;
            for (i, (m, _)) in chunk.iter().enumerate() {
                let sent = match self.prepare(m).await {
                    Ok(()) => match &link {
                        Some(l) => self.send(l, m).await,
                        None => match self.link().await {
                            Ok(l) => self.send(link.insert(l), m).await,
                            Err(e) => Err(e),
                        },
                    },
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(c) => confirms.push(c),
                    Err(e) => {
                        failure = Some((chunk_start + i, e));
                        break;
                    }
                }
            }
            let sent = chunk_start + confirms.len();
            // Await every confirm sent; the first refusal decides what is handed back.
            let mut refused: Option<(usize, BrokerError)> = None;
            let mut not_confirmed = Vec::new();
            for (i, c) in confirms.into_iter().enumerate() {
                let at = chunk_start + i;
                if let Err(e) = self.confirmed(&messages[at].0, c).await {
                    not_confirmed.push(at);
                    if refused.is_none() {
                        refused = Some((at, e));
                    }
                }
            }
            let first = match (refused, failure) {
                (Some(r), _) => Some(r),
                (None, f) => f,
            };
            if let Some((at, source)) = first {
                // Handed back: the failed one, those after it that were not confirmed,
                // and everything not sent.
                let keep: std::collections::HashSet<usize> = not_confirmed.into_iter().collect();
                let unpublished = messages
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| *i == at || (*i > at && (keep.contains(i) || *i >= sent)))
                    .map(|(_, mo)| mo)
                    .collect();
                return Err(PublishManyError {
                    source,
                    unpublished,
                });
            }
        }
        Ok(())
    }
}
