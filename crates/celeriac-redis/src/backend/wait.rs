//! Reading and waiting: `get` reads a task's record; `wait_ready` waits for it by
//! pub/sub — one subscriber connection per backend, shared by every waiter, subscribed to
//! a task's channel while somebody waits for it, restored with back-off after a lost
//! connection (re-reading every awaited key) — falling back to polling the key while
//! pub/sub is unavailable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tracing::{info, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::error::BackendError;
use celeriac_core::TaskMeta;

use super::{Inner, RedisBackend};
use crate::lock;

/// What waiters on one task id share.
#[derive(Default)]
pub(super) struct Slot {
    notify: Notify,
    latest: Mutex<Option<TaskMeta>>,
    waiters: AtomicUsize,
}

impl RedisBackend {
    /// `ResultBackend::wait_ready`: the task's record once it is ready, or the latest one
    /// read when `timeout` ends.
    pub(super) async fn wait_until_ready(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let inner = &*self.inner;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = {
            let mut waiters = lock(&inner.waiters);
            let slot = waiters.entry(task_id.to_string()).or_default().clone();
            slot.waiters.fetch_add(1, Ordering::SeqCst);
            slot
        };
        let _guard = WaiterGuard {
            inner,
            task_id,
            slot: slot.clone(),
        };
        let key = inner.keys.task_meta(task_id);
        let subscribed = tokio::time::timeout_at(deadline, inner.subscribe(&key)).await;
        let mut latest = inner.get(task_id).await?;
        if latest.as_ref().is_some_and(|m| m.status.is_ready()) {
            return Ok(latest);
        }
        let pushed = matches!(subscribed, Ok(Ok(())));
        if !pushed {
            // No pub/sub (yet): fall back to reading the key, gently.
            warn!(
                "result backend {}: waiting for {task_id} by polling (pub/sub unavailable)",
                inner.cfg.masked
            );
        }
        let mut polls = Backoff::new(Duration::from_millis(50), Duration::from_millis(1000));
        loop {
            let notified = slot.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(meta) = lock(&slot.latest).clone() {
                latest = Some(meta);
            }
            if latest.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(latest);
            }
            let poll = tokio::time::sleep(if pushed { timeout } else { polls.peek() });
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(latest),
                _ = poll, if !pushed => {
                    latest = inner.get(task_id).await?.or(latest);
                    // Lengthened only after a poll ran, not when a notification cut it short.
                    polls.next_pause();
                }
            }
        }
    }
}

impl Inner {
    pub(super) async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.task_meta(task_id))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.err("get", e))?;
        raw.map(|r| {
            TaskMeta::from_json(&r).map_err(|e| BackendError::Corrupt {
                task_id: task_id.to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    fn deliver(&self, task_id: &str, meta: TaskMeta) {
        let slot = lock(&self.waiters).get(task_id).cloned();
        if let Some(slot) = slot {
            *lock(&slot.latest) = Some(meta);
            slot.notify.notify_waiters();
        }
    }

    /// Starts the shared subscriber once.
    fn start_subscriber(&self) {
        if self.subscriber_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.me.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.notified() => {}
                _ = subscriber(weak) => {}
            }
        });
    }

    /// Subscribes to `key`'s channel, waiting (bounded) for the subscriber to connect.
    async fn subscribe(&self, key: &str) -> Result<(), BackendError> {
        self.start_subscriber();
        let mut rx = self.sink.subscribe();
        let sink = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
            .await
            .map_err(|_| BackendError::Connection {
                url: self.cfg.masked.clone(),
                reason: "pub/sub connection not established within 10 s".into(),
            })?
            .map_err(|_| BackendError::Connection {
                url: self.cfg.masked.clone(),
                reason: "pub/sub subscriber stopped".into(),
            })?
            .clone();
        let Some(mut sink) = sink else {
            return Err(BackendError::Connection {
                url: self.cfg.masked.clone(),
                reason: "pub/sub connection lost".into(),
            });
        };
        sink.subscribe(key)
            .await
            .map_err(|e| self.err("subscribe", e))
    }
}

/// The shared pub/sub loop: connect, subscribe to every awaited key, re-read them, then
/// hand each published record to its waiters; on a lost connection, start over.
async fn subscriber(weak: Weak<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut outage = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // From the current client: after a failover, the new primary's.
        let connected = inner.target.client().get_async_pubsub().await;
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                inner.target.check(&e);
                if !outage {
                    warn!(
                        "result backend {}: pub/sub connection lost ({e}); reconnecting",
                        inner.cfg.masked
                    );
                    outage = true;
                }
                drop(inner);
                backoff.wait().await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let ids: Vec<String> = lock(&inner.waiters).keys().cloned().collect();
        let keys: Vec<String> = ids.iter().map(|id| inner.keys.task_meta(id)).collect();
        if !keys.is_empty() {
            if let Err(e) = sink.subscribe(&keys).await {
                warn!(
                    "result backend {}: re-subscribing failed ({e})",
                    inner.cfg.masked
                );
                drop(inner);
                // The current pause again, not doubled: only failed connects back off.
                tokio::time::sleep(backoff.peek()).await;
                continue;
            }
            // Records written while we were not subscribed.
            let raws: Result<Vec<Option<Vec<u8>>>, _> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut inner.conn())
                .await;
            if let Ok(raws) = raws {
                for (id, raw) in ids.iter().zip(raws) {
                    if let Some(meta) = raw.and_then(|r| TaskMeta::from_json(&r).ok()) {
                        inner.deliver(id, meta);
                    }
                }
            }
        }
        if outage {
            info!(
                "result backend {}: pub/sub connection restored",
                inner.cfg.masked
            );
            outage = false;
        }
        backoff.reset();
        inner.sink.send_replace(Some(sink));
        drop(inner);
        while let Some(msg) = stream.next().await {
            let Some(inner) = weak.upgrade() else { return };
            let channel = msg.get_channel_name().to_string();
            if let Some(id) = inner.keys.task_id_of(&channel) {
                if let Ok(meta) = TaskMeta::from_json(msg.get_payload_bytes()) {
                    inner.deliver(id, meta);
                }
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.sink.send_replace(None);
        if !outage {
            warn!(
                "result backend {}: pub/sub connection lost; reconnecting",
                inner.cfg.masked
            );
            outage = true;
        }
    }
}

/// Unregisters a waiter when its wait ends or is dropped; the last one unsubscribes.
struct WaiterGuard<'a> {
    inner: &'a Inner,
    task_id: &'a str,
    slot: Arc<Slot>,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if self.slot.waiters.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        {
            let mut waiters = lock(&self.inner.waiters);
            // A new waiter may have arrived meanwhile; keep its slot.
            if self.slot.waiters.load(Ordering::SeqCst) == 0 {
                waiters.remove(self.task_id);
            } else {
                return;
            }
        }
        let sink = self.inner.sink.borrow().clone();
        if let (Some(mut sink), Ok(rt)) = (sink, tokio::runtime::Handle::try_current()) {
            let key = self.inner.keys.task_meta(self.task_id);
            rt.spawn(async move {
                let _ = sink.unsubscribe(key).await;
            });
        }
    }
}
