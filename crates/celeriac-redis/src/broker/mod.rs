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
//! It beats a liveness key of its own too, and restores the messages of celeriac
//! consumers that stopped beating (killed) within seconds (`liveness`).
//!
//! One file per operation, each beside the Lua script it runs (`src/lua/<file>.lua`):
//!
//! | file | what it does | script |
//! |---|---|---|
//! | `publish` | `LPUSH` to the priority buckets of the routed queues; batches in transactions, once | |
//! | `bindings` | kombu's exchange bindings: routing, and declaring a queue's binding | |
//! | `fetch` | the consumer: pop + record in one step, else `BRPOP` | `fetch.lua` |
//! | `ack` | the `Acker` deliveries settle through; coalesced acks | |
//! | `restore` | an unacked message back on its queue, redelivered | `restore.lua` |
//! | `sweep` | keep-alive of held messages, visibility sweep | `sweep_release_mutex.lua` |
//! | `liveness` | heartbeats; a dead consumer's messages restored within seconds | |
//! | `fanout` | fanout exchanges over pub/sub | |
//! | `beat` | beat's leader lease and run records; a run recorded and enqueued in one step | `beat_lease.lua`, `beat_send.lua`, `beat_release.lua` |
//! | `inspect` | depths, purge, the list of queues | |

mod ack;
mod beat;
mod bindings;
mod fanout;
mod fetch;
mod inspect;
mod liveness;
mod publish;
mod restore;
mod sweep;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use celeriac_core::broker::{
    Broker, Capabilities, ConsumeOptions, Consumer, PublishManyError, PublishOptions, Subscription,
};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::routing::{ExchangeType, QueueSpec};
use celeriac_core::url::EngineUrl;

use crate::coalesce::Coalesce;
use crate::config::RedisConfig;
use crate::error::{self, Error};
use crate::keys::BrokerKeys;
use crate::target::Target;

use ack::PendingAck;
pub use inspect::bucket_depths;

/// The Redis broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// This broker, for work methods that only have `&self` must spawn (the ack writer,
    /// the restore of an abandoned delivery).
    me: Weak<Inner>,
    cfg: RedisConfig,
    /// The server (for `sentinel://`, the current primary) every connection goes to.
    target: Target,
    keys: BrokerKeys,
    fetch: Script,
    restore: Script,
    release: Script,
    /// Queues whose binding this process has declared.
    declared: Mutex<HashSet<String>>,
    /// The types of the exchanges this process declared (kombu keeps them per process
    /// too); an exchange not here is direct.
    exchange_types: Mutex<std::collections::HashMap<String, ExchangeType>>,
    /// Delivery tags this process holds unsettled (removed once the settle is written).
    outstanding: Mutex<HashSet<String>>,
    /// This process's consumer id (see `liveness`).
    consumer: String,
    /// When this broker was made (Unix seconds), for the consumer registry.
    started: f64,
    /// Whether this consumer has beaten once (registered itself).
    registered: AtomicBool,
    maintenance_started: AtomicBool,
    /// Restores of dropped deliveries still running, for `flush`.
    restoring: tokio::sync::watch::Sender<usize>,
    /// Acks waiting to be written together.
    acks: Coalesce<PendingAck>,
    /// Batch chunks whose transaction may or may not have run (reply lost, Redis still
    /// unreachable): chunk identity → its marker key, looked up before a resend.
    in_doubt: Mutex<HashMap<String, String>>,
}

fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

impl RedisBroker {
    /// Connects to the broker at `url`; fails with one clear line if it cannot.
    pub async fn connect(url: &EngineUrl) -> Result<Self, Error> {
        let cfg = RedisConfig::from_url(url)?;
        let target = Target::connect(&cfg, |url, reason| {
            BrokerError::Connection { url, reason }.into()
        })
        .await?;
        Ok(Self {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                keys: BrokerKeys::new(cfg.keyprefix.clone()),
                cfg,
                target,
                fetch: Script::new(fetch::SCRIPT),
                restore: Script::new(restore::SCRIPT),
                release: Script::new(sweep::SCRIPT),
                declared: Mutex::new(HashSet::new()),
                exchange_types: Mutex::new(std::collections::HashMap::new()),
                outstanding: Mutex::new(HashSet::new()),
                consumer: uuid::Uuid::new_v4().simple().to_string(),
                started: now_secs(),
                registered: AtomicBool::new(false),
                maintenance_started: AtomicBool::new(false),
                restoring: tokio::sync::watch::channel(0).0,
                acks: Coalesce::default(),
                in_doubt: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration read from the URL.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }
}

impl Inner {
    fn err(&self, op: &'static str, e: redis::RedisError) -> BrokerError {
        self.target.check(&e);
        error::broker(&self.cfg.masked, op, e)
    }

    fn conn(&self) -> ConnectionManager {
        self.target.conn()
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn flush(&self) -> Result<(), BrokerError> {
        self.wait_for_restores().await
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
        c.topic = true;
        c.ordered_restore = true;
        c
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.declare_binding(queue).await
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.declare_spec(spec).await
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let spec = QueueSpec::new(queue)
            .exchange(exchange, ExchangeType::Direct)
            .routing_key(routing_key);
        self.declare_spec(&spec).await
    }

    async fn publish(&self, message: Message, options: PublishOptions) -> Result<(), PublishError> {
        self.publish_one(message, options).await
    }

    async fn publish_many(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        self.publish_chunks(messages).await
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        self.start_consumer(options).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.purge_buckets(queue).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        self.depth(queue).await
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        self.bound_queues().await
    }

    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        self.fanout_publish(exchange, message).await
    }

    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        self.fanout_subscribe(exchange).await
    }

    async fn beat_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, BrokerError> {
        self.lease(schedule, holder, ttl).await
    }

    async fn beat_release(&self, schedule: &str, holder: &str) -> Result<(), BrokerError> {
        self.release(schedule, holder).await
    }

    async fn beat_last_runs(
        &self,
        schedule: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, BrokerError> {
        self.last_runs(schedule).await
    }

    async fn beat_send(
        &self,
        run: &celeriac_core::beat::BeatRun,
        task: Option<(celeriac_core::protocol::TaskMessage, PublishOptions)>,
    ) -> Result<celeriac_core::beat::BeatSent, BrokerError> {
        self.send_run(run, task).await
    }
}
