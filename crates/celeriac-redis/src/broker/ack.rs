//! Settling deliveries: the [`Acker`] every `Delivery` calls (reject with requeue,
//! restore and abandon hand the message to `restore`), and acks — kombu's
//! `MULTI ZREM HDEL EXEC` on `unacked_index`/`unacked`, plus an `SREM` from this consumer's
//! held set (see `liveness`) — written by one coalescing writer,
//! so acks that arrive while one is being written go out together, and retried through a
//! failover or an outage.

use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::Acker;
use celeriac_core::error::BrokerError;

use super::Inner;
use crate::lock;

/// How long an ack is retried while Redis is unreachable or unavailable.
const ACK_PATIENCE: Duration = Duration::from_secs(60);

/// An ack waiting to be written, and who waits for it.
pub(super) type PendingAck = (
    String,
    tokio::sync::oneshot::Sender<Result<(), BrokerError>>,
);

impl Inner {
    /// Acknowledges `tag`: removes it from `unacked_index` and `unacked` (kombu's
    /// `MULTI ZREM HDEL EXEC`) and from this consumer's held set. Acks that arrive while one is being written are written
    /// together — one `ZREM` and one `HDEL` for the lot — so a busy worker costs Redis four
    /// commands per batch instead of four per task.
    pub(super) async fn ack_tag(&self, tag: &str) -> Result<(), BrokerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.acks.push((tag.to_string(), tx)) {
            match self.me.upgrade() {
                Some(me) => {
                    tokio::spawn(async move { me.write_acks().await });
                }
                None => self.acks.not_started(),
            }
        }
        let result = rx.await.unwrap_or(Err(BrokerError::Closed));
        // Only now: until the ack is written, the tag is this process's (a reclaim of
        // orphans must not take it for one).
        lock(&self.outstanding).remove(tag);
        result
    }

    /// Writes waiting acks in batches until none wait.
    async fn write_acks(&self) {
        while let Some(batch) = self.acks.next_batch() {
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                let chunk: Vec<_> = batch.by_ref().take(1_000).collect();
                let tags: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
                let result = self.remove_unacked(&tags).await;
                for (_, tx) in chunk {
                    let _ = tx.send(result.clone());
                }
            }
        }
    }
}

impl Inner {
    /// kombu's ack for `tags`, retried with back-off for up to [`ACK_PATIENCE`] while
    /// Redis is unreachable or unavailable (a failover, a restart): an ack that is given
    /// up leaves the message in `unacked`, and the visibility sweep runs it a second time.
    /// The ack is idempotent, so a retry after a lost reply does no harm.
    async fn remove_unacked(&self, tags: &[&str]) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + ACK_PATIENCE;
        let held = self.held_key();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let result = redis::pipe()
                .atomic()
                .cmd("ZREM")
                .arg(self.keys.unacked_index())
                .arg(tags)
                .ignore()
                .cmd("HDEL")
                .arg(self.keys.unacked())
                .arg(tags)
                .ignore()
                .cmd("SREM")
                .arg(&held)
                .arg(tags)
                .ignore()
                .exec_async(&mut self.conn())
                .await
                .map_err(|e| self.err("ack", e));
            match result {
                Err(e) if e.is_retryable() && backoff.fits_before(Some(deadline)) => {
                    debug!("ack of {} message(s) failed ({e}); retrying", tags.len());
                    backoff.wait().await;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl Acker for Inner {
    async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.ack_tag(tag).await
    }

    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        if requeue {
            self.restore_tag(tag, false, &self.held_key())
                .await
                .map(|_| ())
        } else {
            self.ack_tag(tag).await
        }
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        self.restore_tag(tag, true, &self.held_key())
            .await
            .map(|_| ())
    }

    fn abandon(&self, tag: &str) {
        // Called from Drop: the restore runs on a task of its own.
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me.upgrade()) else {
            lock(&self.outstanding).remove(tag);
            warn!("delivery {tag} dropped while the broker shuts down; the visibility sweep will restore it");
            return;
        };
        let tag = tag.to_string();
        me.restoring.send_modify(|n| *n += 1);
        rt.spawn(async move {
            if let Err(e) = me.restore_tag(&tag, true, &me.held_key()).await {
                warn!("could not return dropped delivery {tag} to its queue ({e}); the visibility sweep will");
            }
            me.restoring.send_modify(|n| *n -= 1);
        });
    }
}
