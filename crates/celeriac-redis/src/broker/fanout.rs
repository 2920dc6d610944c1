//! Fanout exchanges, as kombu does them on Redis: a message is `PUBLISH`ed on the
//! exchange's channel, and every subscriber gets it through a pattern subscription that a
//! background task restores (with back-off) after a lost pub/sub connection. Nothing is
//! stored: a subscriber that is not connected misses the message, as with kombu.

use std::time::Duration;

use futures::StreamExt;
use tracing::{info, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::Subscription;
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use super::{Inner, RedisBroker};

impl RedisBroker {
    /// `Broker::publish_fanout`: one `PUBLISH` on the exchange's channel.
    pub(super) async fn fanout_publish(
        &self,
        exchange: &str,
        message: Message,
    ) -> Result<(), PublishError> {
        let channel = self.inner.keys.fanout(
            self.inner.cfg.db,
            exchange,
            &message.properties.delivery_info.routing_key,
        );
        let body = envelope::encode(&message, &uuid::Uuid::new_v4().to_string());
        let published = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(body)
            .exec_async(&mut self.inner.conn())
            .await;
        published.map_err(|e| PublishError::new(message, self.inner.err("publish", e)))
    }

    /// `Broker::subscribe_fanout`: a pattern subscription kept alive by a task.
    pub(super) async fn fanout_subscribe(
        &self,
        exchange: &str,
    ) -> Result<Subscription, BrokerError> {
        let base = self.inner.keys.fanout(self.inner.cfg.db, exchange, "");
        let patterns = vec![base.clone(), format!("{base}/*")];
        // Subscribe once here so an unreachable server is reported to the caller.
        let first = subscribe_patterns(&self.inner, &patterns).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut stream = Some(first);
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let mut s = match stream.take() {
                    Some(s) => s,
                    None => match subscribe_patterns(&inner, &patterns).await {
                        Ok(s) => {
                            info!("fanout `{}`: subscription restored", patterns[0]);
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
                    let msg = tokio::select! {
                        _ = tx.closed() => return,
                        m = s.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    match envelope::decode(msg.get_payload_bytes()) {
                        Ok((message, _)) => {
                            if tx.send(message).is_err() {
                                return;
                            }
                        }
                        Err(e) => warn!(
                            "fanout `{}`: ignored an undecodable message: {e}",
                            msg.get_channel_name()
                        ),
                    }
                }
                warn!(
                    "fanout `{}`: pub/sub connection lost; resubscribing",
                    patterns[0]
                );
            }
        });
        Ok(Subscription::from_channel(rx))
    }
}

async fn subscribe_patterns(
    inner: &Inner,
    patterns: &[String],
) -> Result<redis::aio::PubSubStream, BrokerError> {
    let mut pubsub = inner
        .target
        .client()
        .get_async_pubsub()
        .await
        .map_err(|e| inner.err("subscribe", e))?;
    pubsub
        .psubscribe(patterns)
        .await
        .map_err(|e| inner.err("subscribe", e))?;
    Ok(pubsub.into_on_message())
}
