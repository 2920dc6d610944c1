//! `RedisBackend`: Celery's Redis result backend — `celery-task-meta-<id>` records with
//! an expiry, published on the channel of the same name — so Python's
//! `AsyncResult.get()` sees celeriac's results and the other way round.
//!
//! Writes never overwrite SUCCESS and are `SETEX` + `PUBLISH`, in one Lua call; records
//! stored while a call is on its way are written together by the next call, so a busy
//! worker costs Redis one script call per batch instead of one per task. Waiting is push-based:
//! one pub/sub connection per backend, shared by every waiter, subscribing to a task's
//! channel while somebody waits for it. After subscribing, a waiter reads the key once
//! (the record may already be there); after a lost pub/sub connection, the subscriber
//! reconnects with back-off, subscribes again and re-reads every awaited key, as Celery's
//! client does, so no result published during the outage is missed.
//!
//! Chords use Celery 5.7's keys and algorithm (`celery-taskset-meta-<gid>.j/.s/.t/.d/.c`,
//! one atomic script per part that also elects the worker firing the body, a claim
//! extended before publishing and released by a cleanup script), so a chord whose parts
//! run on a mix of Celery and celeriac workers fires its body exactly once.

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

use celeriac_core::backend::{decode_saved_group, group_record};
use celeriac_core::backoff::Backoff;
use celeriac_core::error::BackendError;
use celeriac_core::url::EngineUrl;
use celeriac_core::{ChordEnd, ChordJoin, ChordPart, ResultBackend, State, TaskMeta};
use serde_json::{json, Value};

use crate::coalesce::Coalesce;
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
    chord_part: Script,
    chord_extend: Script,
    chord_cleanup: Script,
    /// Records waiting to be written together.
    stores: Coalesce<PendingStore>,
    /// Waiters by task id.
    waiters: Mutex<HashMap<String, Arc<Slot>>>,
    /// The live pub/sub sink; `None` while (re)connecting.
    sink: watch::Sender<Option<PubSubSink>>,
    subscriber_started: AtomicBool,
    shutdown: Arc<Notify>,
}

/// A record waiting to be written: key, JSON, TTL in seconds (0: none), and who waits.
struct PendingStore {
    key: String,
    json: Vec<u8>,
    ttl: u64,
    done: tokio::sync::oneshot::Sender<Result<(), BackendError>>,
}

/// Most records written by one script call.
const STORE_BATCH: usize = 500;

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
        let (client, conn) = cfg
            .connect(|url, reason| BackendError::Connection { url, reason }.into())
            .await?;
        let (sink, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                keys: ResultKeys::new(&cfg.keyprefix),
                cfg,
                client,
                conn,
                store: Script::new(include_str!("lua/store_result.lua")),
                chord_part: Script::new(include_str!("lua/chord_part.lua")),
                chord_extend: Script::new(include_str!("lua/chord_claim_extend.lua")),
                chord_cleanup: Script::new(include_str!("lua/chord_cleanup.lua")),
                stores: Coalesce::default(),
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
    /// Queues a record for the writer task (started if none runs) and waits until the
    /// batch holding it is written.
    async fn store(&self, key: String, json: Vec<u8>, ttl: u64) -> Result<(), BackendError> {
        let (done, written) = tokio::sync::oneshot::channel();
        let start_writer = self.stores.push(PendingStore {
            key,
            json,
            ttl,
            done,
        });
        if start_writer {
            match self.me.upgrade() {
                Some(me) => {
                    tokio::spawn(async move { me.write_stores().await });
                }
                None => self.stores.not_started(),
            }
        }
        written.await.unwrap_or_else(|_| {
            Err(BackendError::Operation {
                op: "store",
                reason: "the backend was closed".into(),
            })
        })
    }

    /// Writes waiting records in batches until none wait.
    async fn write_stores(&self) {
        while let Some(batch) = self.stores.next_batch() {
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                let chunk: Vec<PendingStore> = batch.by_ref().take(STORE_BATCH).collect();
                let mut call = self.store.prepare_invoke();
                for p in &chunk {
                    call.key(&p.key).arg(&p.json).arg(p.ttl);
                }
                let result: Result<Vec<String>, BackendError> = call
                    .invoke_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| self.err("store", e));
                match result {
                    Ok(replies) => {
                        let mut replies = replies.into_iter();
                        for p in chunk {
                            let outcome = match replies.next() {
                                Some(r) if r.starts_with("ERR ") => Err(BackendError::Operation {
                                    op: "store",
                                    reason: format!("{} ({})", &r[4..], self.cfg.masked),
                                }),
                                Some(_) => Ok(()),
                                None => Err(BackendError::Operation {
                                    op: "store",
                                    reason: format!(
                                        "no reply for this record ({})",
                                        self.cfg.masked
                                    ),
                                }),
                            };
                            let _ = p.done.send(outcome);
                        }
                    }
                    Err(e) => {
                        for p in chunk {
                            let _ = p.done.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

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
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
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

/// Chord join data expiry (Celery: `result_chord_expires`, default `result_expires`, 1 day).
const CHORD_EXPIRES: u64 = 86_400;
/// The first claim on firing a body: Celery's `max(5, 2 × result_chord_join_timeout)`.
const CHORD_CLAIM_TTL: u64 = 6;
/// The claim while publishing the body: Celery's estimate of its publish retry budget
/// with default settings (observed: 21 s).
const CHORD_PUBLISH_TTL: u64 = 21;
/// How long a fired chord stays marked done: Celery's `max(2 × claim TTL, 300)`.
const CHORD_DONE_TTL: u64 = 300;

/// A part as stored in `.j`: `[1, tid, state, result]`.
fn decode_part(group_id: &str, raw: &[u8], score: f64) -> Option<ChordPart> {
    let v = celeriac_core::protocol::json::parse_lenient(raw).ok()?;
    let task_id = v.get(1)?.as_str()?.to_string();
    let state = State::parse(v.get(2)?.as_str()?);
    Some(ChordPart {
        group_id: group_id.to_string(),
        task_id,
        group_index: (score.is_finite() && score >= 0.0).then_some(score as u64),
        state,
        result: v.get(3).cloned().unwrap_or(Value::Null),
    })
}

#[async_trait]
impl ResultBackend for RedisBackend {
    fn url(&self) -> String {
        self.inner.cfg.masked.clone()
    }

    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let ttl = expires.map_or(0, |d| d.as_secs_f64().ceil().max(1.0) as u64);
        self.inner
            .store(
                self.inner.keys.task_meta(&meta.task_id),
                meta.to_json(),
                ttl,
            )
            .await
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

    async fn chord_start(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let keys = &self.inner.keys;
        redis::pipe()
            .cmd("DEL")
            .arg(keys.group(group_id, ".c"))
            .ignore()
            .cmd("SET")
            .arg(keys.group(group_id, ".s"))
            .arg(size)
            .arg("EX")
            .arg(CHORD_EXPIRES)
            .ignore()
            .exec_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.err("chord start", e))
    }

    async fn chord_part(&self, part: &ChordPart) -> Result<ChordJoin, BackendError> {
        let inner = &*self.inner;
        let gid = &part.group_id;
        let k = |suffix: &str| inner.keys.group(gid, suffix);
        let score = part
            .group_index
            .map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let encoded = json!([1, part.task_id, part.state.as_str(), part.result]).to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (count, adjust, size, claimed): (i64, Option<i64>, Option<i64>, i64) = inner
            .chord_part
            .key(k(".j"))
            .key(k(".t"))
            .key(k(".s"))
            .key(k(".d"))
            .key(k(""))
            .key(k(".c"))
            .arg(&part.task_id)
            .arg(encoded)
            .arg("1")
            .arg(score)
            .arg(CHORD_EXPIRES)
            .arg(CHORD_EXPIRES)
            .arg(CHORD_CLAIM_TTL)
            .arg(&token)
            .invoke_async(&mut inner.conn.clone())
            .await
            .map_err(|e| inner.err("chord part", e))?;
        if count == -1 {
            return Ok(ChordJoin::Done);
        }
        let Some(size) = size else {
            return Ok(ChordJoin::Waiting);
        };
        if claimed != 1 || count != size + adjust.unwrap_or(0) {
            return Ok(ChordJoin::Waiting);
        }
        let raw: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(k(".j"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut inner.conn.clone())
            .await
            .map_err(|e| inner.err("chord join", e))?;
        let mut parts = Vec::with_capacity(raw.len());
        for (value, score) in raw {
            parts.push(
                decode_part(gid, &value, score).ok_or_else(|| BackendError::Corrupt {
                    task_id: gid.clone(),
                    reason: format!(
                        "chord part is not [1, id, state, result]: {}",
                        String::from_utf8_lossy(&value)
                    ),
                })?,
            );
        }
        let held: i64 = inner
            .chord_extend
            .key(k(".c"))
            .key(k(".s"))
            .arg(&token)
            .arg(CHORD_PUBLISH_TTL)
            .invoke_async(&mut inner.conn.clone())
            .await
            .map_err(|e| inner.err("chord claim", e))?;
        if held != 1 {
            warn!("chord {gid}: the claim to fire its body passed to another worker");
            return Ok(ChordJoin::Waiting);
        }
        Ok(ChordJoin::Complete {
            parts,
            claim: token,
        })
    }

    async fn chord_finish(
        &self,
        group_id: &str,
        claim: &str,
        end: ChordEnd,
    ) -> Result<(), BackendError> {
        let inner = &*self.inner;
        let k = |suffix: &str| inner.keys.group(group_id, suffix);
        match end {
            ChordEnd::Fired => {
                let cleaned: i64 = inner
                    .chord_cleanup
                    .key(k(".c"))
                    .key(k(".j"))
                    .key(k(".t"))
                    .key(k(".s"))
                    .key(k(".d"))
                    .arg(claim)
                    .arg(CHORD_DONE_TTL)
                    .invoke_async(&mut inner.conn.clone())
                    .await
                    .map_err(|e| inner.err("chord cleanup", e))?;
                if cleaned != 1 {
                    warn!(
                        "chord {group_id}: claim lost before cleanup; its data is left to expire"
                    );
                }
                Ok(())
            }
            ChordEnd::Failed => redis::cmd("DEL")
                .arg(k(".s"))
                .exec_async(&mut inner.conn.clone())
                .await
                .map_err(|e| inner.err("chord finish", e)),
        }
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError> {
        let key = self.inner.keys.group(group_id, "");
        let record = group_record::encode(group_id, task_ids).to_string();
        redis::pipe()
            .atomic()
            .cmd("SETEX")
            .arg(&key)
            .arg(CHORD_EXPIRES)
            .arg(&record)
            .ignore()
            .cmd("PUBLISH")
            .arg(&key)
            .arg(&record)
            .ignore()
            .exec_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.err("save group", e))
    }

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.inner.keys.group(group_id, ""))
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.err("restore group", e))?;
        raw.map(|r| decode_saved_group(group_id, &r)).transpose()
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        redis::cmd("DEL")
            .arg(self.inner.keys.group(group_id, ""))
            .exec_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| self.inner.err("forget group", e))
    }
}
