//! `RedisBackend`: Celery's Redis result backend — `celery-task-meta-<id>` records with
//! an expiry, published on the channel of the same name — so Python's
//! `AsyncResult.get()` sees celeriac's results and the other way round.
//!
//! Writes are one Lua call each (never overwrite SUCCESS, `SETEX`, `PUBLISH`) on a
//! multiplexed connection, so concurrent writers are pipelined. Waiting is push-based:
//! one pub/sub connection per backend, shared by every waiter, subscribing to a task's
//! channel while somebody waits for it. After subscribing, a waiter reads the key once
//! (the record may already be there); after a lost pub/sub connection, the subscriber
//! reconnects with back-off, subscribes again and re-reads every awaited key, as Celery's
//! client does, so no result published during the outage is missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink};
use redis::Script;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use celeriac_core::error::BackendError;
use celeriac_core::url::EngineUrl;
use celeriac_core::{ResultBackend, TaskMeta};

use crate::config::RedisConfig;
use crate::error::{self, Error};
use crate::keys::ResultKeys;

/// The Redis result backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    me: Weak<Inner>,
    cfg: RedisConfig,
    client: redis::Client,
    conn: ConnectionManager,
    keys: ResultKeys,
    store: Script,
    /// Waiters by task id.
    waiters: Mutex<HashMap<String, Arc<Slot>>>,
    /// The live pub/sub sink; `None` while (re)connecting.
    sink: watch::Sender<Option<PubSubSink>>,
    subscriber_started: AtomicBool,
    shutdown: Arc<Notify>,
}

/// What waiters on one task id share.
#[derive(Default)]
struct Slot {
    notify: Notify,
    latest: Mutex<Option<TaskMeta>>,
    waiters: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Sections never unwind half-way; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}

impl RedisBackend {
    /// Connects to the backend at `url`.
    pub async fn connect(url: &EngineUrl) -> Result<Self, Error> {
        let cfg = RedisConfig::from_url(url)?;
        let (client, conn) = cfg.connect().await.map_err(|e| match e {
            Ok(reason) => Error::from(BackendError::Connection {
                url: cfg.masked.clone(),
                reason,
            }),
            Err(url) => Error::from(url),
        })?;
        let (sink, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                keys: ResultKeys::new(&cfg.keyprefix),
                cfg,
                client,
                conn,
                store: Script::new(include_str!("lua/store_result.lua")),
                waiters: Mutex::new(HashMap::new()),
                sink,
                subscriber_started: AtomicBool::new(false),
                shutdown: Arc::new(Notify::new()),
            }),
        })
    }

    /// The key a task's record is stored under (and published on).
    pub fn key_for(&self, task_id: &str) -> String {
        self.inner.keys.task_meta(task_id)
    }
}

impl Inner {
    fn err(&self, op: &'static str, e: redis::RedisError) -> BackendError {
        error::backend(&self.cfg.masked, op, e)
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.task_meta(task_id))
            .query_async(&mut self.conn.clone())
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
    let mut backoff = Duration::from_millis(100);
    let mut outage = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let connected = inner.client.get_async_pubsub().await;
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                if !outage {
                    warn!(
                        "result backend {}: pub/sub connection lost ({e}); reconnecting",
                        inner.cfg.masked
                    );
                    outage = true;
                }
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
                tokio::time::sleep(backoff).await;
                continue;
            }
            // Records written while we were not subscribed.
            let raws: Result<Vec<Option<Vec<u8>>>, _> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut inner.conn.clone())
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
        backoff = Duration::from_millis(100);
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

#[async_trait]
impl ResultBackend for RedisBackend {
    fn url(&self) -> String {
        self.inner.cfg.masked.clone()
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let ttl = expires.map_or(0, |d| d.as_secs_f64().ceil().max(1.0) as u64);
        let _stored: i64 = self
            .inner
            .store
            .key(self.inner.keys.task_meta(&meta.task_id))
            .arg(meta.to_json())
            .arg(ttl)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.err("store", e))?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.inner.get(task_id).await
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        redis::cmd("DEL")
            .arg(self.inner.keys.task_meta(task_id))
            .exec_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.err("forget", e))
    }

    async fn wait_ready(
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
        let mut pause = Duration::from_millis(50);
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
            let poll = tokio::time::sleep(if pushed { timeout } else { pause });
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(latest),
                _ = poll, if !pushed => {
                    latest = inner.get(task_id).await?.or(latest);
                    pause = (pause * 2).min(Duration::from_millis(1000));
                }
            }
        }
    }
}
