//! `RedisBroker`: kombu's Redis transport — the same lists, envelopes, priority buckets,
//! bindings and `unacked` bookkeeping — so celeriac and Python Celery share queues.
//!
//! Connections: one multiplexed, auto-reconnecting connection for every non-blocking
//! command (publishes, acks, sweeps: concurrent callers are pipelined on it), plus one
//! dedicated connection per consumer for the blocking `BRPOP`.
//!
//! Consuming takes messages in one atomic Lua step that pops up to the free prefetch and
//! records each in `unacked`/`unacked_index` (kombu pops and records in two steps, and
//! loses the message if it dies in between); only when the queues are empty does the
//! consumer block in `BRPOP` for `polling_interval`. Both run on a task of their own, so a
//! consumer closed mid-wait cannot lose a message that was popped as it closed.
//!
//! While a process consumes, it also keeps the `unacked_index` score of every message it
//! holds fresh (so no sweep, ours or a Python worker's, restores a held ETA task or a long
//! late-ack task while its holder lives — Celery runs those twice), and sweeps messages
//! older than the visibility timeout back to their queues under kombu's `unacked_mutex`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script};
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use celeriac_core::broker::{
    Acker, Broker, Capabilities, ConsumeOptions, Consumer, Delivery, PublishManyError,
    PublishOptions, Subscription,
};
use celeriac_core::emulation::{spawn_consumer, Fetch};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;
use celeriac_core::url::EngineUrl;

use crate::coalesce::Coalesce;
use crate::config::RedisConfig;
use crate::error::{self, Error};
use crate::keys::{BrokerKeys, PRIORITY_STEPS};

/// Most messages published in one pipeline by `publish_many`.
const PUBLISH_CHUNK: usize = 2_000;
/// kombu's `unacked_mutex_expire`.
const SWEEP_LOCK_MS: u64 = 300_000;
/// Most stale entries one sweep restores.
const SWEEP_LIMIT: isize = 1_000;

/// The Redis broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// This broker, for work `abandon` (which only has `&self`) must spawn.
    me: Weak<Inner>,
    cfg: RedisConfig,
    client: redis::Client,
    conn: ConnectionManager,
    keys: BrokerKeys,
    fetch: Script,
    restore: Script,
    release: Script,
    /// Queues whose binding this process has declared.
    declared: Mutex<HashSet<String>>,
    /// Delivery tags this process holds unsettled.
    outstanding: Mutex<HashSet<String>>,
    maintenance_started: AtomicBool,
    /// Restores of dropped deliveries still running, for `flush`.
    restoring: tokio::sync::watch::Sender<usize>,
    /// Acks waiting to be written together.
    acks: Coalesce<PendingAck>,
}

/// An ack waiting to be written, and who waits for it.
type PendingAck = (
    String,
    tokio::sync::oneshot::Sender<Result<(), BrokerError>>,
);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Sections never unwind half-way; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

impl RedisBroker {
    /// Connects to the broker at `url`; fails with one clear line if it cannot.
    pub async fn connect(url: &EngineUrl) -> Result<Self, Error> {
        let cfg = RedisConfig::from_url(url)?;
        let (client, conn) = cfg.connect().await.map_err(|e| match e {
            Ok(reason) => Error::from(BrokerError::Connection {
                url: cfg.masked.clone(),
                reason,
            }),
            Err(url) => Error::from(url),
        })?;
        Ok(Self {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                keys: BrokerKeys::new(cfg.keyprefix.clone()),
                cfg,
                client,
                conn,
                fetch: Script::new(include_str!("lua/fetch.lua")),
                restore: Script::new(include_str!("lua/restore.lua")),
                release: Script::new(include_str!("lua/release_mutex.lua")),
                declared: Mutex::new(HashSet::new()),
                outstanding: Mutex::new(HashSet::new()),
                maintenance_started: AtomicBool::new(false),
                restoring: tokio::sync::watch::channel(0).0,
                acks: Coalesce::default(),
            }),
        })
    }

    /// The configuration read from the URL.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// Runs one visibility-timeout sweep now; returns how many messages it restored.
    pub async fn sweep(&self) -> Result<usize, BrokerError> {
        self.inner.sweep().await
    }
}

impl Inner {
    fn err(&self, op: &'static str, e: redis::RedisError) -> BrokerError {
        error::broker(&self.cfg.masked, op, e)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Queues a message for `exchange`/`routing_key` goes to: the routing key for the
    /// default exchange, else the queues bound to the exchange with that routing key.
    async fn targets(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.binding(exchange))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.err("publish", e))?;
        let mut queues: Vec<String> = members
            .iter()
            .filter_map(|m| BrokerKeys::parse_binding_member(m))
            .filter(|(rk, _)| *rk == routing_key)
            .map(|(_, q)| q.to_string())
            .collect();
        queues.dedup();
        Ok(queues)
    }

    /// Adds the binding `queue` ← exchange `queue` (Celery's default) to `pipe`, once per
    /// process, so Python producers that publish through the exchange find the queue.
    fn declare_into(&self, pipe: &mut redis::Pipeline, queue: &str) {
        if !lock(&self.declared).insert(queue.to_string()) {
            return;
        }
        let member = BrokerKeys::binding_member(queue, queue);
        pipe.cmd("SADD")
            .arg(self.keys.binding(queue))
            .arg(&member)
            .ignore();
        pipe.cmd("SADD")
            .arg(self.keys.binding_permanent(queue))
            .arg(&member)
            .ignore();
    }

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

    /// Acknowledges `tag`: removes it from `unacked_index` and `unacked` (kombu's
    /// `MULTI ZREM HDEL EXEC`). Acks that arrive while one is being written are written
    /// together — one `ZREM` and one `HDEL` for the lot — so a busy worker costs Redis four
    /// commands per batch instead of four per task.
    async fn ack_tag(&self, tag: &str) -> Result<(), BrokerError> {
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

    /// Puts the unacked message `tag` back on its queue: at the front (`front`, as kombu's
    /// restore does) or the back (reject with requeue), marked redelivered, same tag.
    async fn restore_tag(&self, tag: &str, front: bool) -> Result<bool, BrokerError> {
        lock(&self.outstanding).remove(tag);
        let mut conn = self.conn();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.unacked())
            .arg(tag)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("restore", e))?;
        let Some(raw) = raw else {
            // Settled meanwhile; drop a dangling index entry.
            let _: Result<(), _> = redis::cmd("ZREM")
                .arg(self.keys.unacked_index())
                .arg(tag)
                .query_async(&mut conn)
                .await;
            return Ok(false);
        };
        let Some((envelope, exchange, routing_key)) = parse_unacked(&raw) else {
            error!("unacked entry {tag} is not [envelope, exchange, routing_key]; deleting it");
            return self.ack_tag(tag).await.map(|()| false);
        };
        let mut envelope = envelope;
        mark_redelivered(&mut envelope);
        let priority = envelope
            .pointer("/properties/priority")
            .and_then(Value::as_f64)
            .map(|p| p.clamp(0.0, 9.0) as u8);
        let queue = self
            .targets(&exchange, &routing_key)
            .await?
            .into_iter()
            .next()
            .unwrap_or(routing_key);
        let restored: i64 = self
            .restore
            .key(self.keys.unacked())
            .key(self.keys.unacked_index())
            .key(self.keys.queue_for(&queue, priority))
            .arg(tag)
            .arg(&raw)
            .arg(envelope.to_string())
            .arg(if front { "R" } else { "L" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err("restore", e))?;
        Ok(restored == 1)
    }

    /// Restores every unacked message older than the visibility timeout, under kombu's
    /// sweep lock; messages this process holds are refreshed instead.
    async fn sweep(&self) -> Result<usize, BrokerError> {
        let mut conn = self.conn();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(self.keys.unacked_mutex())
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(SWEEP_LOCK_MS)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("sweep", e))?;
        if locked.is_none() {
            debug!(
                "visibility sweep skipped: another worker holds {}",
                self.keys.unacked_mutex()
            );
            return Ok(0);
        }
        let cutoff = now_secs() - self.cfg.visibility_timeout.as_secs_f64();
        let stale: Result<Vec<String>, _> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.unacked_index())
            .arg("-inf")
            .arg(cutoff)
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_LIMIT)
            .query_async(&mut conn)
            .await;
        let mut restored = 0;
        let result = match stale {
            Ok(tags) => {
                for tag in tags {
                    if lock(&self.outstanding).contains(&tag) {
                        continue;
                    }
                    match self.restore_tag(&tag, true).await {
                        Ok(true) => restored += 1,
                        Ok(false) => {}
                        Err(e) => warn!("could not restore unacked message {tag}: {e}"),
                    }
                }
                Ok(restored)
            }
            Err(e) => Err(self.err("sweep", e)),
        };
        let _: Result<i64, _> = self
            .release
            .key(self.keys.unacked_mutex())
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        if restored > 0 {
            info!(
                "restored {restored} unacknowledged message(s) older than the visibility timeout ({:?})",
                self.cfg.visibility_timeout
            );
        }
        result
    }

    /// Refreshes the `unacked_index` score of every message this process holds.
    async fn keep_alive(&self) -> Result<(), BrokerError> {
        let tags: Vec<String> = lock(&self.outstanding).iter().cloned().collect();
        if tags.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        for chunk in tags.chunks(1_000) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(self.keys.unacked_index()).arg("XX");
            for t in chunk {
                cmd.arg(now).arg(t);
            }
            cmd.exec_async(&mut self.conn())
                .await
                .map_err(|e| self.err("keep-alive", e))?;
        }
        Ok(())
    }

    /// Starts the sweep/keep-alive task once, when this process first consumes.
    fn start_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let tick = (self.cfg.visibility_timeout / 4)
            .min(self.cfg.restore_interval)
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(100));
        let sweep_every = self.cfg.restore_interval;
        tokio::spawn(async move {
            let mut last_sweep: Option<tokio::time::Instant> = None;
            let mut warned = false;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let mut result = inner.keep_alive().await;
                if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                    last_sweep = Some(tokio::time::Instant::now());
                    result = result.and(inner.sweep().await.map(|_| ()));
                }
                match result {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warn!("unacked maintenance failed ({e}); retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
                drop(inner);
                tokio::time::sleep(tick).await;
            }
        });
    }
}

/// `[envelope, exchange, routing_key]` from an `unacked` value.
fn parse_unacked(raw: &str) -> Option<(Value, String, String)> {
    let Value::Array(mut parts) = serde_json::from_str::<Value>(raw).ok()? else {
        return None;
    };
    if parts.len() < 3 || !parts[0].is_object() {
        return None;
    }
    let routing_key = parts[2].as_str().unwrap_or_default().to_string();
    let exchange = parts[1].as_str().unwrap_or_default().to_string();
    Some((parts.swap_remove(0), exchange, routing_key))
}

/// kombu's restore marks: `headers.redelivered` and `properties.delivery_info.redelivered`.
fn mark_redelivered(envelope: &mut Value) {
    if let Some(h) = envelope.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(di) = envelope
        .pointer_mut("/properties/delivery_info")
        .and_then(Value::as_object_mut)
    {
        di.insert("redelivered".into(), Value::Bool(true));
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

/// The consumer side: fetches run on a task of their own and land in `buffer`, so the
/// `fetch` future can be dropped at any point without losing a popped message.
struct Fetcher {
    inner: Arc<Inner>,
    state: Arc<FetchState>,
}

#[derive(Default)]
struct FetchState {
    buffer: Mutex<VecDeque<Delivery>>,
    error: Mutex<Option<BrokerError>>,
    notify: Notify,
    in_flight: AtomicBool,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    rotate: AtomicUsize,
}

#[async_trait]
impl Fetch for Fetcher {
    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        loop {
            {
                let mut buf = lock(&self.state.buffer);
                if !buf.is_empty() {
                    let n = buf.len().min(max);
                    return Ok(buf.drain(..n).collect());
                }
            }
            if let Some(e) = lock(&self.state.error).take() {
                return Err(e);
            }
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.state.in_flight.swap(true, Ordering::SeqCst) {
                let (inner, state, queues) =
                    (self.inner.clone(), self.state.clone(), queues.to_vec());
                tokio::spawn(async move {
                    match fetch_once(&inner, &state, &queues, max).await {
                        Ok(ds) => lock(&state.buffer).extend(ds),
                        Err(e) => {
                            // Reconnect on the next attempt.
                            *state.conn.lock().await = None;
                            *lock(&state.error) = Some(e);
                        }
                    }
                    state.in_flight.store(false, Ordering::SeqCst);
                    state.notify.notify_waiters();
                });
            }
            notified.await;
        }
    }
}

async fn fetch_once(
    inner: &Arc<Inner>,
    state: &FetchState,
    queues: &[String],
    max: usize,
) -> Result<Vec<Delivery>, BrokerError> {
    let mut guard = state.conn.lock().await;
    if guard.is_none() {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(inner.cfg.polling_interval + Duration::from_secs(10)));
        let conn = inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| inner.err("consume", e))?;
        *guard = Some(conn);
    }
    let Some(conn) = guard.as_mut() else {
        return Err(BrokerError::Closed);
    };
    // Priority bucket first, then queue, starting from a rotating queue (kombu's
    // round-robin cycle).
    let start = state.rotate.fetch_add(1, Ordering::Relaxed);
    let mut lists = Vec::with_capacity(queues.len() * PRIORITY_STEPS.len());
    for step in PRIORITY_STEPS {
        for i in 0..queues.len() {
            lists.push(inner.keys.queue(&queues[(start + i) % queues.len()], step));
        }
    }
    let mut invocation = inner.fetch.key(inner.keys.unacked());
    invocation.key(inner.keys.unacked_index());
    for l in &lists {
        invocation.key(l);
    }
    let flat: Vec<Vec<u8>> = invocation
        .arg(max)
        .arg(now_secs())
        .invoke_async(conn)
        .await
        .map_err(|e| inner.err("consume", e))?;
    let mut popped: Vec<(String, Vec<u8>, bool)> = flat
        .chunks_exact(3)
        .map(|c| {
            (
                String::from_utf8_lossy(&c[0]).into_owned(),
                c[1].clone(),
                c[2] == b"1",
            )
        })
        .collect();
    if popped.is_empty() {
        // Nothing waiting: block until something arrives or the polling interval ends.
        let got: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
            .arg(&lists)
            .arg(inner.cfg.polling_interval.as_secs_f64())
            .query_async(conn)
            .await
            .map_err(|e| inner.err("consume", e))?;
        match got {
            None => return Ok(Vec::new()),
            // Popped outside the script: recorded below, as kombu does after BRPOP.
            Some((list, raw)) => popped.push((list, raw, false)),
        }
    }
    drop(guard);
    let mut out = Vec::with_capacity(popped.len());
    let mut to_record = Vec::new();
    for (list, raw, recorded) in popped {
        let queue = inner.keys.queue_of(&list).to_string();
        match envelope::decode(&raw) {
            Ok((message, tag)) => {
                let redelivered = message.headers.get("redelivered") == Some(&Value::Bool(true))
                    || message.properties.delivery_info.redelivered == Some(true);
                let tag = match tag.filter(|t| !t.is_empty()) {
                    Some(t) => {
                        if !recorded {
                            to_record.push(unacked_value(&raw, &message, &t));
                        }
                        t
                    }
                    None => {
                        // kombu would lose a message without a tag: adopt it under a new one.
                        let t = uuid::Uuid::new_v4().to_string();
                        warn!("message in queue `{queue}` had no delivery tag; recorded it as {t}");
                        let body = envelope::encode(&message, &t);
                        to_record.push(unacked_value(&body, &message, &t));
                        t
                    }
                };
                out.push((queue, tag, message, redelivered));
            }
            Err(e) => {
                error!(
                    "discarded an undecodable message from queue `{queue}`: {e}; it began {:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(120)])
                );
                // The script may have recorded it under a tag it could read: unrecord it,
                // or sweeps would restore it forever.
                if recorded {
                    if let Some(tag) = serde_json::from_slice::<Value>(&raw).ok().and_then(|v| {
                        v.pointer("/properties/delivery_tag")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    }) {
                        let _ = inner.ack_tag(&tag).await;
                    }
                }
            }
        }
    }
    record(inner, &to_record).await?;
    let acker: Arc<dyn Acker> = inner.clone();
    let mut outstanding = lock(&inner.outstanding);
    Ok(out
        .into_iter()
        .map(|(queue, tag, message, redelivered)| {
            outstanding.insert(tag.clone());
            Delivery::new(Arc::new(message), queue, redelivered, tag, acker.clone())
        })
        .collect())
}

/// An `unacked` entry: (tag, `[envelope, exchange, routing_key]`).
fn unacked_value(envelope: &[u8], message: &Message, tag: &str) -> (String, String) {
    let info = &message.properties.delivery_info;
    let value = format!(
        "[{}, {}, {}]",
        String::from_utf8_lossy(envelope),
        Value::String(info.exchange.clone()),
        Value::String(info.routing_key.clone())
    );
    (tag.to_string(), value)
}

/// Writes `unacked`/`unacked_index` entries, kombu's format.
async fn record(inner: &Inner, items: &[(String, String)]) -> Result<(), BrokerError> {
    if items.is_empty() {
        return Ok(());
    }
    let now = now_secs();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (tag, value) in items {
        pipe.cmd("ZADD")
            .arg(inner.keys.unacked_index())
            .arg(now)
            .arg(tag)
            .ignore();
        pipe.cmd("HSET")
            .arg(inner.keys.unacked())
            .arg(tag)
            .arg(value)
            .ignore();
    }
    pipe.exec_async(&mut inner.conn())
        .await
        .map_err(|e| inner.err("consume", e))
}

#[async_trait]
impl Broker for RedisBroker {
    async fn flush(&self) -> Result<(), BrokerError> {
        let mut rx = self.inner.restoring.subscribe();
        // Bounded: a restore that cannot reach Redis is left to the visibility sweep.
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n == 0)).await;
        Ok(())
    }

    fn url(&self) -> String {
        self.inner.cfg.masked.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.priorities = true;
        c.durable = true;
        c.shared = true;
        c.fanout = true;
        c
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        self.inner.declare_into(&mut pipe, queue);
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("declare", e))
    }

    async fn publish(
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

    async fn publish_many(
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

    async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        self.inner.start_maintenance();
        spawn_consumer(
            Arc::new(Fetcher {
                inner: self.inner.clone(),
                state: Arc::new(FetchState::default()),
            }),
            options,
        )
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in self.inner.keys.queue_buckets(queue) {
            pipe.cmd("LLEN").arg(&key);
        }
        for key in self.inner.keys.queue_buckets(queue) {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("purge", e))?;
        Ok(counts.iter().sum())
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for key in self.inner.keys.queue_buckets(queue) {
            pipe.cmd("LLEN").arg(&key);
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("queue depth", e))?;
        Ok(counts.iter().sum())
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.inner.conn();
        let mut sets: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.inner.keys.binding_pattern())
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.inner.err("list queues", e))?;
            sets.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut names: HashSet<String> = lock(&self.inner.declared).iter().cloned().collect();
        for set in sets {
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&set)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.inner.err("list queues", e))?;
            for m in members {
                if let Some((_, q)) = BrokerKeys::parse_binding_member(&m) {
                    // Remote-control and event queues are kombu's, not task queues.
                    if !(q.ends_with(".pidbox") || q.starts_with("celeryev.")) {
                        names.insert(q.to_string());
                    }
                }
            }
        }
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        Ok(names)
    }

    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
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

    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        let base = self.inner.keys.fanout(self.inner.cfg.db, exchange, "");
        let patterns = vec![base.clone(), format!("{base}/*")];
        // Subscribe once here so an unreachable server is reported to the caller.
        let first = subscribe_patterns(&self.inner, &patterns).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut stream = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut s = match stream.take() {
                    Some(s) => s,
                    None => match subscribe_patterns(&inner, &patterns).await {
                        Ok(s) => {
                            info!("fanout `{}`: subscription restored", patterns[0]);
                            backoff = Duration::from_millis(100);
                            s
                        }
                        Err(_) => {
                            tokio::select! {
                                _ = tx.closed() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
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
        .client
        .get_async_pubsub()
        .await
        .map_err(|e| inner.err("subscribe", e))?;
    pubsub
        .psubscribe(patterns)
        .await
        .map_err(|e| inner.err("subscribe", e))?;
    Ok(pubsub.into_on_message())
}

/// Counts of what one queue holds, by priority bucket (for diagnostics and tests).
pub async fn bucket_depths(
    broker: &RedisBroker,
    queue: &str,
) -> Result<HashMap<u8, u64>, BrokerError> {
    let mut out = HashMap::new();
    let mut conn = broker.inner.conn();
    for step in PRIORITY_STEPS {
        let n: u64 = redis::cmd("LLEN")
            .arg(broker.inner.keys.queue(queue, step))
            .query_async(&mut conn)
            .await
            .map_err(|e| broker.inner.err("queue depth", e))?;
        out.insert(step, n);
    }
    Ok(out)
}
