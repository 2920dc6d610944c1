//! Publishing: a message is routed (see `bindings`) and `LPUSH`ed in kombu's envelope to
//! the priority bucket of each target queue; a batch goes out in transactions
//! (`MULTI`/`EXEC`) of `PUBLISH_CHUNK` messages, a failure reports exactly which messages
//! were not sent, and a chunk whose reply was lost is not sent twice (a marker key in its
//! transaction says whether it landed).

use std::time::Duration;

use tracing::debug;

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::{PublishManyError, PublishOptions};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use super::{Inner, RedisBroker};
use crate::lock;

/// Most messages published in one pipeline by `publish_many`.
const PUBLISH_CHUNK: usize = 2_000;

/// A message no queue is bound to receive.
pub(super) fn unroutable(info: &celeriac_core::message::DeliveryInfo) -> BrokerError {
    BrokerError::Operation {
        op: "publish",
        reason: format!(
            "no queue is bound to exchange `{}` with routing key `{}`",
            info.exchange, info.routing_key
        ),
    }
}

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
            return Err(unroutable(info));
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

    /// `Broker::publish_many`: transactions of `PUBLISH_CHUNK` messages, each landing
    /// whole or not at all, and each exactly once (see [`Inner::exec_chunk`]).
    pub(super) async fn publish_chunks(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let mut iter = messages.into_iter().peekable();
        while iter.peek().is_some() {
            let chunk: Vec<(Message, PublishOptions)> = iter.by_ref().take(PUBLISH_CHUNK).collect();
            let identity = chunk_identity(&chunk);
            // Resent after a lost reply: it may have landed already.
            let doubt = lock(&self.inner.in_doubt).remove(&identity);
            if let Some(marker) = doubt {
                match self.inner.landed(&marker).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(source) => {
                        lock(&self.inner.in_doubt).insert(identity, marker);
                        let mut unpublished = chunk;
                        unpublished.extend(iter);
                        return Err(PublishManyError {
                            source,
                            unpublished,
                        });
                    }
                }
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
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
                if let Err(source) = self.inner.exec_chunk(pipe, identity).await {
                    lock(&self.inner.declared).clear();
                    let mut unpublished = chunk;
                    unpublished.extend(iter);
                    return Err(PublishManyError {
                        source,
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

impl Inner {
    /// Runs a chunk's transaction with a marker key in it. A connection that fails on the
    /// way leaves it unknown whether Redis ran it (the reply may be what was lost), so the
    /// marker is looked up: landed, it is a success; not landed, an error; unknown (Redis
    /// still unreachable), an error, with the marker kept under the chunk's `identity`
    /// so that the resend of the same chunk looks again first instead of publishing a
    /// second copy.
    async fn exec_chunk(
        &self,
        mut pipe: redis::Pipeline,
        identity: String,
    ) -> Result<(), BrokerError> {
        let marker = self.keys.sent(&uuid::Uuid::new_v4().simple().to_string());
        pipe.cmd("SET")
            .arg(&marker)
            .arg(1)
            .arg("EX")
            .arg(MARKER_TTL_SECS)
            .ignore();
        let error = match pipe.exec_async(&mut self.conn()).await {
            Ok(()) => return Ok(()),
            Err(e) => self.err("publish", e),
        };
        if !error.is_connection() {
            // Refused by the server (`EXECABORT`, `READONLY`, `OOM`): nothing ran.
            return Err(error);
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.landed(&marker).await {
                Ok(true) => {
                    debug!("a batch whose reply was lost had landed; not sending it again");
                    return Ok(());
                }
                Ok(false) => return Err(error),
                Err(_) if backoff.fits_before(Some(deadline)) => {
                    backoff.wait().await;
                }
                Err(_) => {
                    let mut doubt = lock(&self.in_doubt);
                    // Resends that never came (the caller gave up): forget them.
                    if doubt.len() >= 1_024 {
                        doubt.clear();
                    }
                    doubt.insert(identity, marker);
                    return Err(error);
                }
            }
        }
    }

    /// Whether a chunk's marker is there.
    async fn landed(&self, marker: &str) -> Result<bool, BrokerError> {
        redis::cmd("EXISTS")
            .arg(marker)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.err("publish", e))
    }
}

/// How long a batch's marker is kept: longer than any resend waits.
const MARKER_TTL_SECS: u64 = 3_600;

/// What identifies a chunk when it is sent again: its size and its first and last
/// messages' task ids (`publish_many` resends exactly the chunk that failed, first).
fn chunk_identity(chunk: &[(Message, PublishOptions)]) -> String {
    let id = |m: Option<&(Message, PublishOptions)>| {
        m.and_then(|(m, _)| m.headers.get("id"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    format!("{}:{}:{}", chunk.len(), id(chunk.first()), id(chunk.last()))
}
