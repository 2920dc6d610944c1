//! The `rpc://` result backend, Celery's: results travel back as messages, to the reply
//! queue of the client that sent the task.
//!
//! - **Worker side** ([`ResultBackend::store`]): each state the worker records (STARTED
//!   with `track_started`, RETRY, SUCCESS, FAILURE, REVOKED) is published to the default
//!   exchange with the request's `reply_to` as routing key and its `correlation_id`,
//!   transient (`delivery_mode` 1), `priority` 0, JSON body = the result record plus
//!   `task_id` — what Celery 5.7's worker sends. A request without `reply_to` gets
//!   nothing; the reply queue is not declared by the worker (a message for a queue that
//!   is gone is dropped, as with Celery).
//! - **Client side**: the reply queue is the app's oid (`App::reply_to`), declared before
//!   the first task is sent (durable, auto-delete, `x-expires` one day, as Celery declares
//!   it) and consumed without acknowledgement; the latest state of each task is kept in
//!   memory until it is read as ready or forgotten.
//!
//! As in Celery, results are only visible to the process that sent the task, and groups,
//! chords and saved groups need a key-value backend (redis://, sqlite://).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use tokio::sync::{oneshot, watch, Notify, OnceCell};
use tracing::{debug, warn};

use celeriac_core::backend::ResultBackend;
use celeriac_core::backoff::Backoff;
use celeriac_core::error::{BackendError, BrokerError};
use celeriac_core::state::TaskMeta;
use celeriac_core::url::EngineUrl;

use crate::broker::{AmqpBroker, Inner};
use crate::error::{self, Error};

/// How long an unused reply queue lives (`x-expires`), as Celery's default
/// `result_expires`.
const REPLY_QUEUE_EXPIRES_MS: i64 = 86_400_000;

/// Celery's `rpc://` result backend, over the RabbitMQ broker's server.
pub struct RpcBackend {
    inner: Arc<Inner>,
    /// This client's reply queue (its oid).
    queue: String,
    results: Arc<Results>,
    /// Set once the reply queue is declared and consumed.
    started: OnceCell<()>,
    /// Dropped with the backend: stops the consuming task.
    _stop: oneshot::Sender<()>,
    stop_rx: Mutex<Option<oneshot::Receiver<()>>>,
}

impl std::fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBackend")
            .field("broker", &self.inner.cfg.masked)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// The latest state of each task this client heard of, and whether the reply queue is
/// being consumed right now.
struct Results {
    latest: Mutex<HashMap<String, TaskMeta>>,
    changed: Notify,
    live: watch::Sender<bool>,
}

impl Default for Results {
    fn default() -> Self {
        Self {
            latest: Mutex::default(),
            changed: Notify::new(),
            live: watch::Sender::new(false),
        }
    }
}

impl RpcBackend {
    /// An rpc:// backend on the RabbitMQ at `broker_url`, receiving on the reply queue
    /// `reply_to` (the app's oid). Connects now; declares the queue before the first send.
    pub async fn connect(broker_url: &EngineUrl, reply_to: &str) -> Result<Self, Error> {
        let broker = AmqpBroker::connect(broker_url).await?;
        let (stop, stop_rx) = oneshot::channel();
        Ok(Self {
            inner: broker.inner(),
            queue: reply_to.to_string(),
            results: Arc::default(),
            started: OnceCell::new(),
            _stop: stop,
            stop_rx: Mutex::new(Some(stop_rx)),
        })
    }

    fn backend_err(&self, e: BrokerError) -> BackendError {
        match e {
            BrokerError::Connection { url, reason } => BackendError::Connection { url, reason },
            BrokerError::Unavailable { url, reason } => BackendError::Unavailable { url, reason },
            other => BackendError::Operation {
                op: "rpc",
                reason: other.to_string(),
            },
        }
    }

    /// Declares the reply queue and starts consuming it (once), and waits while it is
    /// being subscribed again after a lost connection: a result sent to a reply queue
    /// that does not exist is dropped by RabbitMQ.
    async fn ready(&self) -> Result<(), BackendError> {
        self.start().await?;
        let mut live = self.results.live.subscribe();
        let wait = self.inner.cfg.connect_timeout.max(Duration::from_secs(10));
        let became_live = tokio::time::timeout(wait, live.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok());
        match became_live {
            true => Ok(()),
            false => Err(BackendError::Connection {
                url: self.inner.cfg.masked.clone(),
                reason: format!(
                    "the rpc reply queue `{}` could not be consumed again within {wait:?}",
                    self.queue
                ),
            }),
        }
    }

    /// Declares the reply queue and starts consuming it, once.
    async fn start(&self) -> Result<(), BackendError> {
        self.started
            .get_or_try_init(|| async {
                let consumer = subscribe(&self.inner, &self.queue)
                    .await
                    .map_err(|e| self.backend_err(e))?;
                self.results.live.send_replace(true);
                let stop = self
                    .stop_rx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                tokio::spawn(receive(
                    self.inner.clone(),
                    self.queue.clone(),
                    self.results.clone(),
                    consumer,
                    stop,
                ));
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// Declares the reply queue as Celery does and consumes it without acks.
async fn subscribe(inner: &Inner, queue: &str) -> Result<lapin::Consumer, BrokerError> {
    let link = inner.link().await?;
    let channel = inner.channel(&link.conn).await?;
    let fail = |op: &'static str| move |e: lapin::Error| error::broker(&inner.cfg.masked, op, &e);
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(REPLY_QUEUE_EXPIRES_MS),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(fail("queue.declare"))?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(fail("basic.consume"))
}

/// Takes results off the reply queue until the backend is dropped; subscribes again
/// after a loss.
async fn receive(
    inner: Arc<Inner>,
    queue: String,
    results: Arc<Results>,
    first: lapin::Consumer,
    stop: Option<oneshot::Receiver<()>>,
) {
    let Some(mut stop) = stop else { return };
    let mut consumer = Some(first);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut c = match consumer.take() {
            Some(c) => c,
            None => {
                let again = tokio::select! {
                    _ = &mut stop => return,
                    c = subscribe(&inner, &queue) => c,
                };
                match again {
                    Ok(c) => {
                        backoff.reset();
                        results.live.send_replace(true);
                        c
                    }
                    Err(e) => {
                        debug!("rpc reply queue `{queue}`: {e}");
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = backoff.wait() => {}
                        }
                        continue;
                    }
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = &mut stop => return,
                n = c.next() => n,
            };
            match next {
                Some(Ok(d)) => {
                    let meta = match TaskMeta::from_json(&d.data) {
                        Ok(m) => m,
                        Err(e) => {
                            warn!("a message on the rpc reply queue `{queue}` is not a result record ({e}); dropped");
                            continue;
                        }
                    };
                    let id = d
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map_or_else(|| meta.task_id.clone(), |c| c.as_str().to_string());
                    results
                        .latest
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, meta);
                    results.changed.notify_waiters();
                }
                _ => break,
            }
        }
        results.live.send_replace(false);
        inner.drop_link().await;
        tokio::select! {
            _ = &mut stop => return,
            _ = backoff.wait() => {}
        }
    }
}

#[async_trait]
impl ResultBackend for RpcBackend {
    fn url(&self) -> String {
        "rpc://".to_string()
    }

    async fn before_send(&self) -> Result<(), BackendError> {
        self.ready().await
    }

    async fn store(&self, meta: &TaskMeta, _expires: Option<Duration>) -> Result<(), BackendError> {
        let Some(reply) = &meta.reply else {
            // As Celery: a request that names no reply queue gets no result message.
            return Ok(());
        };
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("utf-8"))
            .with_delivery_mode(1)
            .with_priority(0)
            .with_correlation_id(ShortString::from(reply.correlation_id.as_str()))
            .with_headers(FieldTable::default());
        let link = self.inner.link().await.map_err(|e| self.backend_err(e))?;
        let fail = |e: lapin::Error| {
            self.backend_err(error::broker(&self.inner.cfg.masked, "publish", &e))
        };
        let confirm = link
            .publish
            .basic_publish(
                "".into(),
                reply.queue.as_str().into(),
                BasicPublishOptions::default(),
                &meta.to_json(),
                props,
            )
            .await
            .map_err(fail)?;
        confirm.await.map(|_| ()).map_err(fail)
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.start().await?;
        Ok(self
            .results
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_id)
            .cloned())
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.results
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        Ok(())
    }

    async fn wait_ready(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        self.start().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.results.changed.notified();
            let latest = self.get(task_id).await?;
            if latest.as_ref().is_some_and(|m| m.status.is_ready()) {
                return Ok(latest);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(latest);
            }
        }
    }
}
