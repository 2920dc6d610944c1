//! Settling deliveries: the [`Acker`] every `Delivery` calls (reject with requeue,
//! restore and abandon hand the message to `restore`), and acks — kombu's
//! `MULTI ZREM HDEL EXEC` on `unacked_index`/`unacked` — written by one coalescing writer,
//! so acks that arrive while one is being written go out together.

use async_trait::async_trait;
use tracing::warn;

use celeriac_core::broker::Acker;
use celeriac_core::error::BrokerError;

use super::Inner;
use crate::lock;

/// An ack waiting to be written, and who waits for it.
pub(super) type PendingAck = (
    String,
    tokio::sync::oneshot::Sender<Result<(), BrokerError>>,
);

impl Inner {
    /// Acknowledges `tag`: removes it from `unacked_index` and `unacked` (kombu's
    /// `MULTI ZREM HDEL EXEC`). Acks that arrive while one is being written are written
    /// together — one `ZREM` and one `HDEL` for the lot — so a busy worker costs Redis four
    /// commands per batch instead of four per task.
    pub(super) async fn ack_tag(&self, tag: &str) -> Result<(), BrokerError> {
        lock(&self.outstanding).remove(tag);
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.acks.push((tag.to_string(), tx)) {
            match self.me.upgrade() {
                Some(me) => {
                    tokio::spawn(async move { me.write_acks().await });
                }
                None => self.acks.not_started(),
            }
        }
        rx.await.unwrap_or(Err(BrokerError::Closed))
    }

    /// Writes waiting acks in batches until none wait.
    async fn write_acks(&self) {
        while let Some(batch) = self.acks.next_batch() {
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                let chunk: Vec<_> = batch.by_ref().take(1_000).collect();
                let tags: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
                let result = redis::pipe()
                    .atomic()
                    .cmd("ZREM")
                    .arg(self.keys.unacked_index())
                    .arg(&tags)
                    .ignore()
                    .cmd("HDEL")
                    .arg(self.keys.unacked())
                    .arg(&tags)
                    .ignore()
                    .exec_async(&mut self.conn())
                    .await
                    .map_err(|e| self.err("ack", e));
                for (_, tx) in chunk {
                    let _ = tx.send(result.clone());
                }
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
            self.restore_tag(tag, false).await.map(|_| ())
        } else {
            self.ack_tag(tag).await
        }
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        self.restore_tag(tag, true).await.map(|_| ())
    }

    fn abandon(&self, tag: &str) {
        lock(&self.outstanding).remove(tag);
        // Called from Drop: the restore runs on a task of its own.
        let (Ok(rt), Some(me)) = (tokio::runtime::Handle::try_current(), self.me.upgrade()) else {
            warn!("delivery {tag} dropped while the broker shuts down; the visibility sweep will restore it");
            return;
        };
        let tag = tag.to_string();
        me.restoring.send_modify(|n| *n += 1);
        rt.spawn(async move {
            if let Err(e) = me.restore_tag(&tag, true).await {
                warn!("could not return dropped delivery {tag} to its queue ({e}); the visibility sweep will");
            }
            me.restoring.send_modify(|n| *n -= 1);
        });
    }
}
