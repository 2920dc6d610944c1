//! `SqliteBroker`: queues in a table, shared safely by every process on the machine.
//!
//! - **Publish** inserts a row (the message as kombu's JSON envelope, so it reads the same
//!   as on Redis); `deliver_at` sets `visible_at` (native delayed delivery).
//! - **Consume** claims up to the free prefetch in one `UPDATE … RETURNING` statement,
//!   ordered by priority (0 first) then arrival; the claim names this process's consumer
//!   id, so no two consumers ever get the same row.
//! - **Ack / reject** delete the row; **requeue** moves it to the back (a new id);
//!   **restore** releases the claim, keeping its place, marked redelivered. Each acts only
//!   while this consumer still holds the claim.
//! - **Dead consumers**: each consuming process beats every `heartbeat`; any live one
//!   releases the claims of consumers silent for `dead_after` (default 10 s), so a killed
//!   worker's `acks_late` tasks run again within seconds — a live worker's held messages
//!   are never taken from it, however long it holds them. A worker that was only stalled
//!   past `dead_after` notices at its next beat (a warning), and its late ack or restore
//!   of a released message changes nothing (`claim lost: …`).
//!
//! One file per operation:
//!
//! | file | what it does |
//! |---|---|
//! | `publish` | routing to the bound queues, inserting rows, `publish_many` in chunks |
//! | `fetch` | the consumer: look, then claim up to the free prefetch in one statement |
//! | `settle` | the `Acker` deliveries settle through: ack, reject, requeue, restore |
//! | `liveness` | consumer heartbeats, the sweep of dead consumers' claims, the task running both |
//! | `fanout` | fanout exchanges over the `broadcasts` table |
//! | `beat` | beat's leader lease and run records; a run recorded and inserted in one step |
//! | `inspect` | purge, depths, the list of queues, declaring and binding queues |

mod beat;
mod fanout;
mod fetch;
mod inspect;
mod liveness;
mod publish;
mod settle;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use celeriac_core::broker::{
    Broker, Capabilities, ConsumeOptions, Consumer, PublishManyError, PublishOptions, Subscription,
};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::routing::QueueSpec;

use crate::db::Db;
use crate::error::{DbError, Error};

/// The SQLite broker. Cheap to clone.
#[derive(Clone)]
pub struct SqliteBroker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    /// This process's consumer id, in `claimed_by` and `consumers`.
    consumer: String,
    /// When this consumer's last heartbeat was written (Unix seconds), once it beat.
    last_beat: Mutex<Option<f64>>,
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
                last_beat: Mutex::new(None),
                maintenance_started: AtomicBool::new(false),
                declared: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.db.cfg.path
    }
}

fn err<'a>(db: &'a Db, op: &'static str) -> impl Fn(DbError) -> BrokerError + 'a {
    move |e| e.broker(&db.name, op)
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
        c.topic = true;
        c.ordered_restore = true;
        c.fanout = true;
        c
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.declare(queue).await
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
        self.bind(queue, exchange, routing_key).await
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
        self.purge_unclaimed(queue).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        self.depth(queue).await
    }

    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        self.fanout_publish(exchange, message).await
    }

    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        self.fanout_subscribe(exchange).await
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        self.known_queues().await
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
