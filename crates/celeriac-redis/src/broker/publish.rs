//! Publishing: a message is routed (see `bindings`) and `LPUSH`ed in kombu's envelope to
//! the priority bucket of each target queue; a batch goes out in pipelines of
//! `PUBLISH_CHUNK` messages, and a failure reports exactly which messages were not sent.

use celeriac_core::broker::{PublishManyError, PublishOptions};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use super::{Inner, RedisBroker};
use crate::lock;

/// Most messages published in one pipeline by `publish_many`.
const PUBLISH_CHUNK: usize = 2_000;

impl Inner {
    /// Adds the LPUSHes for `message` to `pipe`.
    async fn push_into(
        &self,
        pipe: &mut redis::Pipeline,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let info = &message.properties.delivery_info;
        if info.routing_key.is_empty() && info.exchange.is_empty() {
            return Err(BrokerError::Operation {
                op: "publish",
                reason: "the message has no routing key (queue name)".into(),
            });
        }
        let queues = self.targets(&info.exchange, &info.routing_key).await?;
        if queues.is_empty() {
            return Err(BrokerError::Operation {
                op: "publish",
                reason: format!(
                    "no queue is bound to exchange `{}` with routing key `{}`",
                    info.exchange, info.routing_key
                ),
            });
        }
        let tag = uuid::Uuid::new_v4().to_string();
        let body = envelope::encode(message, &tag);
        for q in &queues {
            if info.exchange.is_empty() {
                self.declare_into(pipe, q);
            }
            pipe.cmd("LPUSH")
                .arg(self.keys.queue_for(q, message.priority()))
                .arg(&body)
                .ignore();
        }
        Ok(())
    }
}

impl RedisBroker {
    /// `Broker::publish`: one message, one pipeline.
    pub(super) async fn publish_one(
        &self,
        message: Message,
        _options: PublishOptions,
    ) -> Result<(), PublishError> {
        let mut pipe = redis::pipe();
        if let Err(e) = self.inner.push_into(&mut pipe, &message).await {
            return Err(PublishError::new(message, e));
        }
        match pipe.exec_async(&mut self.inner.conn()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The binding may not have been written: declare again next time.
                lock(&self.inner.declared).clear();
                Err(PublishError::new(message, self.inner.err("publish", e)))
            }
        }
    }

    /// `Broker::publish_many`: pipelines of `PUBLISH_CHUNK` messages.
    pub(super) async fn publish_chunks(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let mut iter = messages.into_iter().peekable();
        while iter.peek().is_some() {
            let chunk: Vec<(Message, PublishOptions)> = iter.by_ref().take(PUBLISH_CHUNK).collect();
            let mut pipe = redis::pipe();
            let mut failed = None;
            for (i, (m, _)) in chunk.iter().enumerate() {
                if let Err(e) = self.inner.push_into(&mut pipe, m).await {
                    failed = Some((i, e));
                    break;
                }
            }
            // Publish what was prepared before a failure, so "unpublished" stays exact.
            let (ok_until, error) = match failed {
                Some((i, e)) => (i, Some(e)),
                None => (chunk.len(), None),
            };
            if ok_until > 0 {
                if let Err(e) = pipe.exec_async(&mut self.inner.conn()).await {
                    lock(&self.inner.declared).clear();
                    let mut unpublished = chunk;
                    unpublished.extend(iter);
                    return Err(PublishManyError {
                        source: self.inner.err("publish", e),
                        unpublished,
                    });
                }
            }
            if let Some(source) = error {
                let mut unpublished: Vec<_> = chunk.into_iter().skip(ok_until).collect();
                unpublished.extend(iter);
                return Err(PublishManyError {
                    source,
                    unpublished,
                });
            }
        }
        Ok(())
    }
}
