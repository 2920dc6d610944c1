//! `SqliteBroker`: queues in a table, shared safely by every process on the machine.
//!
//! - **Publish** inserts a row (the message as kombu's JSON envelope, so it reads the same
//!   as on Redis); `deliver_at` sets `visible_at` (native delayed delivery).
//! - **Consume** claims up to the free prefetch in one `UPDATE … RETURNING` statement,
//!   ordered by priority (0 first) then arrival; the claim names this process's consumer
//!   id, so no two consumers ever get the same row.
//! - **Ack / reject** delete the row; **requeue** moves it to the back (a new id);
//!   **restore** releases the claim, keeping its place, marked redelivered.
//! - **Dead consumers**: each consuming process beats every `heartbeat`; any live one
//!   releases the claims of consumers silent for `dead_after` (default 10 s), so a killed
//!   worker's `acks_late` tasks run again within seconds — a live worker's held messages
//!   are never taken from it, however long it holds them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection};
use tracing::{info, warn};

use celeriac_core::broker::{
    Acker, Broker, Capabilities, ConsumeOptions, Consumer, Delivery, PublishManyError,
    PublishOptions, Subscription,
};
use celeriac_core::emulation::{spawn_consumer, Fetch};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use crate::db::Db;
use crate::error::{DbError, Error};
use crate::schema::now;

/// Most rows inserted by one `publish_many` operation.
const PUBLISH_CHUNK: usize = 5_000;

/// The SQLite broker. Cheap to clone.
#[derive(Clone)]
pub struct SqliteBroker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    /// This process's consumer id, in `claimed_by` and `consumers`.
    consumer: String,
    maintenance_started: AtomicBool,
    declared: Mutex<HashSet<String>>,
}

impl SqliteBroker {
    /// Opens the database named by `url` (creating it if needed).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let db = Db::open_url(url).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                consumer: uuid::Uuid::new_v4().to_string(),
                maintenance_started: AtomicBool::new(false),
                declared: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.db.cfg.path
    }

    /// Releases the claims of dead consumers now; returns how many messages went back.
    pub async fn sweep(&self) -> Result<usize, BrokerError> {
        self.inner.sweep().await
    }
}

fn err<'a>(db: &'a Db, op: &'static str) -> impl Fn(DbError) -> BrokerError + 'a {
    move |e| e.broker(&db.name, op)
}

/// Where a message goes: its routing key for the default exchange, else the queues bound
/// to the exchange with that key.
fn targets(conn: &Connection, message: &Message) -> rusqlite::Result<Vec<String>> {
    let info = &message.properties.delivery_info;
    if info.exchange.is_empty() {
        return Ok(vec![info.routing_key.clone()]);
    }
    let mut stmt =
        conn.prepare_cached("SELECT queue FROM bindings WHERE exchange = ?1 AND routing_key = ?2")?;
    let rows = stmt.query_map(params![info.exchange, info.routing_key], |r| r.get(0))?;
    rows.collect()
}

fn insert(
    conn: &Connection,
    message: &Message,
    deliver_at: Option<f64>,
) -> rusqlite::Result<usize> {
    let queues = targets(conn, message)?;
    let visible_at = deliver_at.unwrap_or(0.0);
    let priority = i64::from(message.priority().unwrap_or(0).min(9));
    let mut stmt = conn.prepare_cached(
        "INSERT INTO messages (queue, priority, visible_at, tag, envelope) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for q in &queues {
        let tag = uuid::Uuid::new_v4().to_string();
        stmt.execute(params![
            q,
            priority,
            visible_at,
            tag,
            envelope::encode(message, &tag)
        ])?;
    }
    Ok(queues.len())
}

fn unroutable(message: &Message) -> BrokerError {
    let info = &message.properties.delivery_info;
    BrokerError::Operation {
        op: "publish",
        reason: if info.exchange.is_empty() {
            "the message has no routing key (queue name)".into()
        } else {
            format!(
                "no queue is bound to exchange `{}` with routing key `{}`",
                info.exchange, info.routing_key
            )
        },
    }
}

impl Inner {
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let (id, host) = (self.consumer.clone(), hostname());
        let pid = std::process::id();
        self.db
            .call(true, move |c| {
                let t = now();
                c.execute(
                    "INSERT INTO consumers (id, pid, hostname, started, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                    params![id, pid, host, t],
                )
                .map(drop)
            })
            .await
            .map_err(err(&self.db, "heartbeat"))
    }

    async fn sweep(&self) -> Result<usize, BrokerError> {
        let dead_after = self.db.cfg.dead_after.as_secs_f64();
        let restored = self
            .db
            .call(true, move |c| {
                let cutoff = now() - dead_after;
                c.execute(
                    "DELETE FROM consumers WHERE last_seen < ?1",
                    params![cutoff],
                )?;
                c.execute(
                    "UPDATE messages SET claimed_by = NULL, claimed_at = NULL, redelivered = 1
                     WHERE claimed_by IS NOT NULL AND claimed_by NOT IN (SELECT id FROM consumers)",
                    [],
                )
            })
            .await
            .map_err(err(&self.db, "sweep"))?;
        if restored > 0 {
            info!(
                "{}: returned {restored} message(s) of dead consumers to their queues",
                self.db.name
            );
        }
        Ok(restored)
    }

    /// Heartbeats and sweeps while this broker lives, from the first `consume` on.
    fn start_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let every = self.db.cfg.heartbeat;
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let result = match inner.heartbeat().await {
                    Ok(()) => inner.sweep().await.map(drop),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warn!("{}: heartbeat failed ({e}); retrying", inner.db.name);
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }

    async fn settle(&self, tag: &str, how: Settle) -> Result<(), BrokerError> {
        let tag = tag.to_string();
        self.db
            .call(true, move |c| settle(c, &tag, how))
            .await
            .map_err(err(&self.db, "settle"))
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Delete,
    Back,
    Front,
}

fn settle(c: &Connection, tag: &str, how: Settle) -> rusqlite::Result<()> {
    match how {
        Settle::Delete => c.execute("DELETE FROM messages WHERE tag = ?1", params![tag]),
        Settle::Back => c.execute(
            "UPDATE messages SET id = (SELECT MAX(id) + 1 FROM messages), claimed_by = NULL, claimed_at = NULL,
             redelivered = 1 WHERE tag = ?1",
            params![tag],
        ),
        Settle::Front => c.execute(
            "UPDATE messages SET claimed_by = NULL, claimed_at = NULL, redelivered = 1 WHERE tag = ?1",
            params![tag],
        ),
    }
    .map(drop)
}

fn hostname() -> String {
    ::hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[async_trait]
impl Acker for Inner {
    async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag, Settle::Delete).await
    }

    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        self.settle(
            tag,
            if requeue {
                Settle::Back
            } else {
                Settle::Delete
            },
        )
        .await
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag, Settle::Front).await
    }

    fn abandon(&self, tag: &str) {
        let tag = tag.to_string();
        self.db.spawn_write(move |c| settle(c, &tag, Settle::Front));
    }
}

struct Fetcher {
    inner: Arc<Inner>,
}

type Claimed = (i64, i64, String, String, bool, Vec<u8>);

#[async_trait]
impl Fetch for Fetcher {
    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let db = &self.inner.db;
        loop {
            let changed = db.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Look before taking the write lock: idle consumers of several processes would
            // otherwise queue for it on every commit any of them makes.
            let qs = queues.to_vec();
            let (ready, next_due) = db
                .call(false, move |c| peek(c, &qs))
                .await
                .map_err(err(db, "consume"))?;
            let mut rows = Vec::new();
            if ready {
                let (qs, consumer) = (queues.to_vec(), self.inner.consumer.clone());
                rows = db
                    .call(true, move |c| claim(c, &qs, max, &consumer))
                    .await
                    .map_err(err(db, "consume"))?;
            }
            if !rows.is_empty() {
                // RETURNING does not keep the ORDER BY of the subquery.
                rows.sort_by_key(|r| (r.1, r.0));
                let acker: Arc<dyn Acker> = self.inner.clone();
                let mut out = Vec::with_capacity(rows.len());
                for (_, _, queue, tag, redelivered, raw) in rows {
                    match envelope::decode(&raw) {
                        Ok((message, _)) => out.push(Delivery::new(
                            Arc::new(message),
                            queue,
                            redelivered,
                            tag,
                            acker.clone(),
                        )),
                        Err(e) => {
                            tracing::error!(
                                "{}: discarded an undecodable message from `{queue}`: {e}",
                                db.name
                            );
                            let _ = self.inner.settle(&tag, Settle::Delete).await;
                        }
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            let mut wait = db.cfg.poll_interval;
            if let Some(due) = next_due {
                wait = wait.min(Duration::from_secs_f64((due - now()).max(0.0)));
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn placeholders(n: usize, first: usize) -> String {
    (0..n)
        .map(|i| format!("?{}", i + first))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a message of `queues` is ready now, and when the next delayed one is due.
fn peek(c: &Connection, queues: &[String]) -> rusqlite::Result<(bool, Option<f64>)> {
    let t = now();
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE claimed_by IS NULL AND visible_at <= ?1 AND queue IN ({0})),
                (SELECT MIN(visible_at) FROM messages WHERE claimed_by IS NULL AND visible_at > ?1 AND queue IN ({0}))",
        placeholders(queues.len(), 2)
    );
    let mut args: Vec<rusqlite::types::Value> = vec![t.into()];
    args.extend(queues.iter().map(|q| q.clone().into()));
    c.prepare_cached(&sql)?
        .query_row(params_from_iter(args.iter()), |r| {
            Ok((r.get::<_, bool>(0)?, r.get(1)?))
        })
}

/// Claims up to `max` visible messages of `queues` for `consumer`, in one statement.
fn claim(
    c: &Connection,
    queues: &[String],
    max: usize,
    consumer: &str,
) -> rusqlite::Result<Vec<Claimed>> {
    // Placeholders are numbered: an anonymous `?` takes the number after the largest seen
    // so far in the text, and would collide with `?3`.
    let sql = format!(
        "UPDATE messages SET claimed_by = ?1, claimed_at = ?2
         WHERE id IN (SELECT id FROM messages INDEXED BY messages_ready
                      WHERE claimed_by IS NULL AND visible_at <= ?2 AND queue IN ({})
                      ORDER BY priority, id LIMIT ?3)
         RETURNING id, priority, queue, tag, redelivered, envelope",
        placeholders(queues.len(), 4)
    );
    let mut args: Vec<rusqlite::types::Value> = vec![
        consumer.to_string().into(),
        now().into(),
        (max as i64).into(),
    ];
    args.extend(queues.iter().map(|q| q.clone().into()));
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, i64>(4)? != 0,
            r.get(5)?,
        ))
    })?;
    rows.collect()
}

#[async_trait]
impl Broker for SqliteBroker {
    async fn flush(&self) -> Result<(), BrokerError> {
        // The database thread runs jobs in order: once this no-op is through, every
        // restore queued before it (by dropped deliveries) is committed.
        self.inner
            .db
            .call(true, |_| Ok(()))
            .await
            .map_err(|e| e.broker(&self.inner.db.name, "flush"))
    }

    fn url(&self) -> String {
        self.inner.db.name.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.priorities = true;
        c.native_delay = true;
        c.durable = true;
        c.shared = true;
        c.fanout = true;
        c
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        if !self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_string())
        {
            return Ok(());
        }
        let q = queue.to_string();
        self.inner
            .db
            .call(true, move |c| {
                c.execute("INSERT OR IGNORE INTO queues (name) VALUES (?1)", params![q])?;
                c.execute(
                    "INSERT OR IGNORE INTO bindings (exchange, routing_key, queue) VALUES (?1, ?1, ?1)",
                    params![q],
                )
                .map(drop)
            })
            .await
            .map_err(err(&self.inner.db, "declare"))
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let (q, ex, rk) = (
            queue.to_string(),
            exchange.to_string(),
            routing_key.to_string(),
        );
        self.inner
            .db
            .call(true, move |c| {
                c.execute("INSERT OR IGNORE INTO queues (name) VALUES (?1)", params![q])?;
                c.execute(
                    "INSERT OR IGNORE INTO bindings (exchange, routing_key, queue) VALUES (?1, ?2, ?3)",
                    params![ex, rk, q],
                )
                .map(drop)
            })
            .await
            .map_err(err(&self.inner.db, "bind"))
    }

    async fn publish(&self, message: Message, options: PublishOptions) -> Result<(), PublishError> {
        let deliver_at = options
            .deliver_at
            .map(|t| t.timestamp_micros() as f64 / 1e6);
        let db = &self.inner.db;
        let shared = Arc::new(message);
        let m = shared.clone();
        let result = db.call(true, move |c| insert(c, &m, deliver_at)).await;
        let message = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
        match result {
            Ok(0) => {
                let e = unroutable(&message);
                Err(PublishError::new(message, e))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(PublishError::new(message, e.broker(&db.name, "publish"))),
        }
    }

    async fn publish_many(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let db = &self.inner.db;
        let mut rest = messages;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(PUBLISH_CHUNK));
            let chunk = Arc::new(rest);
            let rows = chunk.clone();
            let result = db
                .call(true, move |c| {
                    for (i, (m, o)) in rows.iter().enumerate() {
                        let at = o.deliver_at.map(|t| t.timestamp_micros() as f64 / 1e6);
                        if insert(c, m, at)? == 0 {
                            return Ok(Some(i));
                        }
                    }
                    Ok(None)
                })
                .await;
            let chunk = Arc::try_unwrap(chunk).unwrap_or_else(|a| (*a).clone());
            match result {
                Ok(None) => rest = tail,
                Ok(Some(i)) => {
                    // The savepoint rolled nothing back: rows before `i` are in. Report
                    // the unroutable one and everything after it.
                    let source = unroutable(&chunk[i].0);
                    let mut unpublished: Vec<_> = chunk.into_iter().skip(i).collect();
                    unpublished.extend(tail);
                    return Err(PublishManyError {
                        source,
                        unpublished,
                    });
                }
                Err(e) => {
                    let mut unpublished = chunk;
                    unpublished.extend(tail);
                    return Err(PublishManyError {
                        source: e.broker(&db.name, "publish"),
                        unpublished,
                    });
                }
            }
        }
        Ok(())
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        // Refused options start no heartbeat or maintenance (spawn_consumer checks again).
        options.check()?;
        self.inner.heartbeat().await?;
        self.inner.start_maintenance();
        spawn_consumer(
            Arc::new(Fetcher {
                inner: self.inner.clone(),
            }),
            options,
        )
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let q = queue.to_string();
        self.inner
            .db
            .call(true, move |c| {
                c.execute(
                    "DELETE FROM messages WHERE queue = ?1 AND claimed_by IS NULL",
                    params![q],
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(err(&self.inner.db, "purge"))
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let q = queue.to_string();
        self.inner
            .db
            .call(false, move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM messages WHERE queue = ?1 AND claimed_by IS NULL AND visible_at <= ?2",
                    params![q, now()],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(err(&self.inner.db, "queue depth"))
    }

    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        let (ex, body) = (
            exchange.to_string(),
            envelope::encode(&message, &uuid::Uuid::new_v4().to_string()),
        );
        let db = &self.inner.db;
        db.call(true, move |c| {
            let t = now();
            c.execute(
                "INSERT INTO broadcasts (exchange, envelope, created) VALUES (?1, ?2, ?3)",
                params![ex, body, t],
            )?;
            // Broadcasts are for whoever listens now: keep a minute of them.
            c.execute(
                "DELETE FROM broadcasts WHERE created < ?1",
                params![t - 60.0],
            )
            .map(drop)
        })
        .await
        .map_err(|e| PublishError::new(message, e.broker(&db.name, "publish")))
    }

    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        let db = self.inner.db.clone();
        let ex = exchange.to_string();
        let start: i64 = db
            .call(false, |c| {
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM broadcasts", [], |r| {
                    r.get(0)
                })
            })
            .await
            .map_err(err(&db, "subscribe"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut last = start;
            loop {
                let changed = db.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let ex2 = ex.clone();
                let rows: Result<Vec<(i64, Vec<u8>)>, _> = db
                    .call(false, move |c| {
                        let mut stmt = c.prepare_cached(
                            "SELECT id, envelope FROM broadcasts WHERE exchange = ?1 AND id > ?2 ORDER BY id",
                        )?;
                        let rows = stmt.query_map(params![ex2, last], |r| Ok((r.get(0)?, r.get(1)?)))?;
                        rows.collect()
                    })
                    .await;
                for (id, raw) in rows.unwrap_or_default() {
                    last = id;
                    if let Ok((message, _)) = envelope::decode(&raw) {
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = &mut changed => {}
                    _ = tokio::time::sleep(db.cfg.poll_interval) => {}
                }
            }
        });
        Ok(Subscription::from_channel(rx))
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        self.inner
            .db
            .call(false, |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT name FROM queues UNION SELECT DISTINCT queue FROM messages ORDER BY 1",
                )?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .map_err(err(&self.inner.db, "list queues"))
    }
}
