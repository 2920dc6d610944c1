//! Consuming: `SCRIPT` (`lua/fetch.lua`) takes up to the free prefetch and records each
//! message in `unacked`/`unacked_index` (and this consumer's held set) in one atomic step;
//! only when every queue is empty does the consumer block in `BRPOP` (on a connection of
//! its own) and record what it popped afterwards, as kombu does. Fetches run on a task of
//! their own, so a consumer dropped mid-wait cannot lose a message popped as it closed.
//!
//! Nothing taken is lost to an error: the script takes nothing it cannot record and skips
//! a list it cannot read (reported once a minute, the other queues served); a `BRPOP`ped
//! message whose record cannot be written is retried, then run unrecorded; and after a
//! failed fetch, messages a fetch took whose reply was lost are put back
//! (`reclaim_orphans`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{debug, error, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::{Acker, ConsumeOptions, Consumer, Delivery};
use celeriac_core::emulation::{spawn_consumer, Fetch};
use celeriac_core::error::BrokerError;
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use super::{now_secs, Inner, RedisBroker};
use crate::keys::PRIORITY_STEPS;
use crate::lock;

/// Pops and records up to the free prefetch in one step.
pub(super) const SCRIPT: &str = include_str!("../lua/fetch.lua");

impl RedisBroker {
    /// `Broker::consume`: starts the sweep/keep-alive task (once) and a consumer.
    pub(super) async fn start_consumer(
        &self,
        options: ConsumeOptions,
    ) -> Result<Consumer, BrokerError> {
        // Registered before the first fetch, so a crash right after it is seen by others
        // (if Redis is down now, the maintenance task registers it when it is back).
        if let Err(e) = self.inner.beat().await {
            warn!("could not register this consumer yet ({e}); retrying in the background");
        }
        let consumer = spawn_consumer(
            Arc::new(Fetcher {
                inner: self.inner.clone(),
                state: Arc::new(FetchState::default()),
            }),
            options,
        )?;
        // Only once the options were accepted: a refused consume starts no sweep.
        self.inner.start_maintenance();
        Ok(consumer)
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
    /// A fetch failed: its reply may have been lost after Redis took messages, so look
    /// for them (`reclaim_orphans`) before the next.
    reclaim: AtomicBool,
    /// Lists the fetch script could not read (a key of another type), kept out of the
    /// blocking wait, and when each was last reported.
    unreadable: Mutex<HashMap<String, Instant>>,
}

/// How often an unreadable list is reported while it stays unreadable.
const REPORT_EVERY: Duration = Duration::from_secs(60);

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
                            // Reconnect on the next attempt, and look for what a fetch
                            // whose reply was lost took.
                            *state.conn.lock().await = None;
                            state.reclaim.store(true, Ordering::SeqCst);
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
        // From the current client: after a failover, the new primary's.
        let conn = inner
            .target
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| inner.err("consume", e))?;
        *guard = Some(conn);
    }
    let Some(conn) = guard.as_mut() else {
        return Err(BrokerError::Closed);
    };
    if state.reclaim.load(Ordering::SeqCst) {
        inner.reclaim_orphans().await?;
        state.reclaim.store(false, Ordering::SeqCst);
    }
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
    invocation.key(inner.held_key());
    for l in &lists {
        invocation.key(l);
    }
    let (flat, errors): (Vec<Vec<u8>>, Vec<String>) = invocation
        .arg(max)
        .arg(now_secs())
        .invoke_async(conn)
        .await
        .map_err(|e| inner.err("consume", e))?;
    let unreadable = note_errors(inner, state, &lists, &errors);
    if flat.is_empty() {
        // Nothing taken because the records could not be written: that is the error.
        if let Some(e) = errors.iter().find(|e| e.starts_with("recording ")) {
            return Err(script_error(inner, e));
        }
    }
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
        // Nothing waiting: block until something arrives or the polling interval ends,
        // on the lists that can be read.
        let readable: Vec<&String> = lists.iter().filter(|l| !unreadable.contains(*l)).collect();
        if readable.is_empty() {
            return Err(script_error(
                inner,
                errors.first().map_or("", String::as_str),
            ));
        }
        let got: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
            .arg(&readable)
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
    record_patiently(inner, &to_record).await;
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

/// Writes `unacked`/`unacked_index` entries, kombu's format, and the held-set entries.
async fn record(inner: &Inner, items: &[(String, String)]) -> Result<(), BrokerError> {
    if items.is_empty() {
        return Ok(());
    }
    let now = now_secs();
    let held = inner.held_key();
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
        pipe.cmd("SADD").arg(&held).arg(tag).ignore();
    }
    pipe.exec_async(&mut inner.conn())
        .await
        .map_err(|e| inner.err("consume", e))
}

/// Records messages already taken off their lists (by `BRPOP`, or adopted without a
/// tag), retrying for a while through a failover or an outage. They are in this process
/// alone now, so if the records cannot be written they are delivered all the same, with
/// a warning: run while this worker lives, rather than dropped.
async fn record_patiently(inner: &Inner, items: &[(String, String)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match record(inner, items).await {
            Ok(()) => return,
            Err(e) if backoff.fits_before(Some(deadline)) => {
                debug!(
                    "recording {} taken message(s) failed ({e}); retrying",
                    items.len()
                );
                backoff.wait().await;
            }
            Err(e) => {
                warn!(
                    "could not record {} message(s) taken from their queues in `unacked` ({e}); running them unrecorded: if this worker dies before they finish, they are lost",
                    items.len()
                );
                return;
            }
        }
    }
}

/// Logs the fetch script's errors (an unreadable list at most every [`REPORT_EVERY`]);
/// returns the lists it could not read.
fn note_errors(
    inner: &Inner,
    state: &FetchState,
    lists: &[String],
    errors: &[String],
) -> HashSet<String> {
    let mut unreadable = HashSet::new();
    let mut seen = lock(&state.unreadable);
    for e in errors {
        let Some(list) = lists.iter().find(|l| {
            e.strip_prefix(l.as_str())
                .is_some_and(|rest| rest.starts_with(": "))
        }) else {
            // Records that could not be written: the messages stayed in their lists.
            warn!("consuming stopped short: {e}; the messages stay queued");
            continue;
        };
        unreadable.insert(list.clone());
        let due = seen.get(list).is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if due {
            seen.insert(list.clone(), Instant::now());
            error!(
                "cannot consume from `{}`: {}; the other queues are served, this one is skipped until it is a list again",
                inner.keys.queue_of(list),
                &e[list.len() + 2..]
            );
        }
    }
    seen.retain(|l, _| unreadable.contains(l));
    unreadable
}

/// A fetch-script error text as a broker error of the right class.
fn script_error(inner: &Inner, text: &str) -> BrokerError {
    inner.target.check_text(text);
    if crate::error::names(text, crate::error::UNAVAILABLE) {
        BrokerError::Unavailable {
            url: inner.cfg.masked.clone(),
            reason: text.to_string(),
        }
    } else {
        BrokerError::Operation {
            op: "consume",
            reason: text.to_string(),
        }
    }
}
