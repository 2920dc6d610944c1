//! The `Broker` trait every engine implements, and the `Delivery`/`Consumer` types a worker
//! gets from it.
//!
//! The trait is small and AMQP-shaped, like kombu's channel: publish, consume with a
//! prefetch limit, ack/reject/restore one delivery, purge, queue depth. It is object-safe
//! (`Arc<dyn Broker>` is chosen from a URL at run time), so methods return boxed futures
//! through `async_trait`.
//!
//! A [`Delivery`] must be settled exactly once, and the type makes that hold: `ack`,
//! `reject` and `restore` consume it. One that is dropped unsettled (a worker task that was
//! aborted, a consumer that was closed) is handed back to the broker as if the connection
//! had closed: it returns to the front of its queue, marked redelivered.
//!
//! Task messages are published with [`Broker::publish_tasks`]. Engines that move bytes
//! encode them there (the default); a broker in the sender's own process (`memory://`)
//! keeps them as they are, and its deliveries carry the same [`TaskMessage`] by pointer
//! ([`Payload::Task`]): a task is a pointer move, not an encode and a decode. Such a
//! delivery still shows its wire form through [`Delivery::message`], encoded on first use.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::beat::{BeatRun, BeatSent};
use crate::error::{BrokerError, PublishError};
use crate::message::{DeliveryInfo, Message};
use crate::protocol::{DecodeError, TaskMessage};
use crate::routing::{ExchangeType, QueueSpec};

/// What an engine can do natively; the rest is emulated or unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Priorities 0..=9 are honoured.
    pub priorities: bool,
    /// `PublishOptions::deliver_at` holds a message in the broker until due.
    pub native_delay: bool,
    /// Fanout publish/subscribe (remote control, events).
    pub fanout: bool,
    /// Messages survive a restart of the process.
    pub durable: bool,
    /// Other processes can share the queues.
    pub shared: bool,
    /// Task queues bound to topic exchanges ([`QueueSpec`] with
    /// [`ExchangeType::Topic`]) route by pattern.
    pub topic: bool,
    /// A restored delivery is always the next one handed out. RabbitMQ puts a requeued
    /// message back in its place, but may hand out the one behind it first when the
    /// consumer's prefetch slot frees at the same moment (its channel and queue are
    /// separate processes), so it does not claim this.
    pub ordered_restore: bool,
}

/// Options for one publish.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Keep the message invisible until this time, on brokers with
    /// [`Capabilities::native_delay`]; others deliver it at once (the worker then holds
    /// it until its `eta`).
    pub deliver_at: Option<DateTime<Utc>>,
}

impl PublishOptions {
    /// Publish options that delay delivery until `at` where the broker can.
    pub fn deliver_at(at: Option<DateTime<Utc>>) -> Self {
        Self { deliver_at: at }
    }
}

/// What to consume and how many unsettled deliveries to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Queues to consume from, in order of preference.
    pub queues: Vec<String>,
    /// Most deliveries handed out and not yet settled (or released); 0 = no limit.
    pub prefetch: usize,
}

impl ConsumeOptions {
    /// Consume `queues` with a prefetch limit.
    pub fn new(queues: Vec<String>, prefetch: usize) -> Self {
        Self { queues, prefetch }
    }

    /// Refuses options no engine can consume with (no queues at all); checked once, by
    /// [`spawn_consumer`](crate::emulation::spawn_consumer), for every engine.
    pub fn check(&self) -> Result<(), BrokerError> {
        if self.queues.is_empty() {
            return Err(BrokerError::Operation {
                op: "consume",
                reason: "no queues given".into(),
            });
        }
        Ok(())
    }
}

/// A message broker: named queues, publish, consume, acknowledge.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The broker URL with credentials masked, for logs and banners.
    fn url(&self) -> String;

    /// What this engine supports.
    fn capabilities(&self) -> Capabilities;

    /// Makes sure `queue` exists.
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let _ = queue;
        Ok(())
    }

    /// Binds `queue` to the direct exchange `exchange` with `routing_key`: messages
    /// published there go to the queue (kombu's `queue_bind`). `declare_queue` binds a
    /// queue to the exchange of its own name, as Celery declares its queues.
    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let _ = (queue, exchange, routing_key);
        Err(BrokerError::Unsupported("exchange bindings"))
    }

    /// Declares a queue with its exchange and binding (Celery's `task_queues` entry): the
    /// queue, the exchange of `spec.exchange_type`, and the binding with
    /// `spec.routing_key`. The default covers Celery's default shape and other direct
    /// bindings ([`declare_queue`](Self::declare_queue) +
    /// [`bind_queue`](Self::bind_queue)); engines with topic or fanout exchanges override
    /// it.
    async fn declare(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.declare_queue(&spec.name).await?;
        match spec.exchange_type {
            _ if spec.is_default() => Ok(()),
            ExchangeType::Direct => {
                self.bind_queue(&spec.name, &spec.exchange, &spec.routing_key)
                    .await
            }
            ExchangeType::Topic => Err(BrokerError::Unsupported("topic exchanges")),
            ExchangeType::Fanout => Err(BrokerError::Unsupported("fanout task queues")),
            ExchangeType::Headers => Err(BrokerError::Unsupported("headers exchanges")),
        }
    }

    /// Publishes one message to the queue its `delivery_info` routes to.
    async fn publish(&self, message: Message, options: PublishOptions) -> Result<(), PublishError>;

    /// Publishes many messages; engines that can pipeline override this.
    ///
    /// Stops at the first failure and hands back every message not published (the failed
    /// one first); the ones before it were published.
    async fn publish_many(
        &self,
        messages: Vec<(Message, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let mut iter = messages.into_iter();
        while let Some((m, o)) = iter.next() {
            if let Err(e) = self.publish(m, o.clone()).await {
                let mut unpublished = vec![(*e.message, o)];
                unpublished.extend(iter);
                return Err(PublishManyError {
                    source: e.source,
                    unpublished,
                });
            }
        }
        Ok(())
    }

    /// Publishes one task message: [`publish_tasks`](Self::publish_tasks) for a single one.
    /// Engines that move bytes keep the default (encode, then [`publish`](Self::publish));
    /// the error hands the message back, encoded.
    async fn publish_task(
        &self,
        task: TaskMessage,
        options: PublishOptions,
    ) -> Result<(), PublishError> {
        self.publish(task.encode(), options).await
    }

    /// Publishes task messages, in order; what [`crate::protocol`] built for each one.
    ///
    /// Engines that move bytes keep the default: encode each message and
    /// [`publish_many`](Self::publish_many). A broker living in the sender's process
    /// overrides it to queue the messages as they are ([`Payload::Task`]). On failure,
    /// every message not published is handed back, encoded.
    async fn publish_tasks(
        &self,
        tasks: Vec<(TaskMessage, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let messages = tasks.into_iter().map(|(t, o)| (t.encode(), o)).collect();
        self.publish_many(messages).await
    }

    /// Starts consuming; deliveries arrive on the returned [`Consumer`].
    async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError>;

    /// Deletes every waiting message in `queue`; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// How many messages wait in `queue` (not counting delivered, unsettled ones).
    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Waits until work the broker does in the background has reached it — above all the
    /// restores of deliveries dropped unsettled, which `Drop` cannot wait for. A worker
    /// calls this before it exits, so a cold shutdown's late-ack messages are back in their
    /// queues when the process ends.
    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The queues this broker knows of.
    async fn queues(&self) -> Result<Vec<String>, BrokerError>;

    /// Publishes `message` to every current subscriber of the fanout exchange `exchange`
    /// (remote control, events). Subscribers that are not listening miss it, as with AMQP
    /// fanout and Redis pub/sub.
    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        let _ = exchange;
        Err(PublishError::new(
            message,
            BrokerError::Unsupported("fanout exchanges"),
        ))
    }

    /// Subscribes to the fanout exchange `exchange`.
    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        let _ = exchange;
        Err(BrokerError::Unsupported("fanout exchanges"))
    }

    /// Publishes an event (Celery's `celeryev` exchange) under the message's routing key
    /// (`worker.heartbeat`, `task.multi`, …). On AMQP the exchange is a durable topic
    /// exchange, as Celery declares it; elsewhere it is a fanout exchange (on Redis kombu
    /// publishes on the channel `<exchange>/<routing key>`), which is the default here.
    async fn publish_event(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        self.publish_fanout(exchange, message).await
    }

    /// Subscribes to every event published on `exchange` (binding key `#`): on AMQP a
    /// queue of Celery's monitor shape (`celeryev.<uuid>`, exclusive, messages kept 5 s);
    /// elsewhere a fanout subscription, the default here.
    async fn subscribe_events(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        self.subscribe_fanout(exchange).await
    }

    /// Takes or renews beat's leader lease of `schedule` for `holder`, for `ttl`: its
    /// fencing token if `holder` holds the lease now (the token grows each time the lease
    /// changes hands), `None` if another holder's lease is live. See [`crate::beat`].
    async fn beat_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let _ = (schedule, holder, ttl);
        Err(NO_BEAT)
    }

    /// Gives the lease of `schedule` up if `holder` holds it (a beat that stops), so the
    /// next one takes over at once.
    async fn beat_release(&self, schedule: &str, holder: &str) -> Result<(), BrokerError> {
        let _ = (schedule, holder);
        Err(NO_BEAT)
    }

    /// The due time of the last recorded run of each entry of `schedule`.
    async fn beat_last_runs(
        &self,
        schedule: &str,
    ) -> Result<Vec<(String, DateTime<Utc>)>, BrokerError> {
        let _ = schedule;
        Err(NO_BEAT)
    }

    /// Records `run` (see [`crate::beat`] for the rule) and, when `task` is given,
    /// enqueues it in the same atomic step: either both happen or neither.
    async fn beat_send(
        &self,
        run: &BeatRun,
        task: Option<(TaskMessage, PublishOptions)>,
    ) -> Result<BeatSent, BrokerError> {
        let _ = (run, task);
        Err(NO_BEAT)
    }
}

/// Beat's lease and run records live in engines that can hold them for many processes
/// at once (Redis, SQLite, memory within one process); the others refuse.
const NO_BEAT: BrokerError = BrokerError::Unsupported("beat leases and run records");

/// Messages broadcast on a fanout exchange while subscribed. Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Message>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription fed by a channel; the feeding side stops when it is dropped.
    pub fn from_channel(rx: mpsc::UnboundedReceiver<Message>) -> Self {
        Self { rx }
    }

    /// The next broadcast message, or `None` when the subscription ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

/// A failed [`Broker::publish_many`]: why, and every message not published.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish {} message(s): {source}", unpublished.len())]
pub struct PublishManyError {
    /// What the broker reported.
    #[source]
    pub source: BrokerError,
    /// The messages not published, the failed one first.
    pub unpublished: Vec<(Message, PublishOptions)>,
}

/// How a broker settles its deliveries. Implemented by each engine; used only through
/// [`Delivery`].
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// The message was handled: forget it.
    async fn ack(&self, tag: &str) -> Result<(), BrokerError>;
    /// The message is refused: drop it, or put it back at the end of its queue.
    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError>;
    /// The message was not handled: put it back at the front of its queue, redelivered.
    async fn restore(&self, tag: &str) -> Result<(), BrokerError>;
    /// The delivery was dropped unsettled; return it as [`restore`](Self::restore) would,
    /// without waiting (called from `Drop`).
    fn abandon(&self, tag: &str);
}

/// What a delivery carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A message in its transport form (every engine that moves bytes).
    Wire(Arc<Message>),
    /// A task message passed by pointer, never encoded (a broker in the sender's process).
    Task(Arc<TaskMessage>),
}

impl Payload {
    /// The priority it was published with.
    pub fn priority(&self) -> Option<u8> {
        match self {
            Payload::Wire(m) => m.priority(),
            Payload::Task(t) => t.properties.priority,
        }
    }

    /// The exchange and routing key it was published with.
    pub fn delivery_info(&self) -> &DeliveryInfo {
        match self {
            Payload::Wire(m) => &m.properties.delivery_info,
            Payload::Task(t) => &t.properties.delivery_info,
        }
    }
}

/// One message handed to a consumer, to be settled exactly once.
pub struct Delivery {
    payload: Payload,
    /// The wire form of a [`Payload::Task`], made when first asked for.
    encoded: OnceLock<Arc<Message>>,
    queue: String,
    redelivered: bool,
    tag: String,
    acker: Arc<dyn Acker>,
    slot: Option<OwnedSemaphorePermit>,
    settled: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .field("redelivered", &self.redelivered)
            .field("payload", &self.payload)
            .finish()
    }
}

impl Delivery {
    /// A delivery settled through `acker` under `tag` (for engines).
    pub fn new(
        message: Arc<Message>,
        queue: String,
        redelivered: bool,
        tag: String,
        acker: Arc<dyn Acker>,
    ) -> Self {
        Self::from_payload(Payload::Wire(message), queue, redelivered, tag, acker)
    }

    /// A delivery of `payload` settled through `acker` under `tag` (for engines).
    pub fn from_payload(
        payload: Payload,
        queue: String,
        redelivered: bool,
        tag: String,
        acker: Arc<dyn Acker>,
    ) -> Self {
        Self {
            payload,
            encoded: OnceLock::new(),
            queue,
            redelivered,
            tag,
            acker,
            slot: None,
            settled: false,
        }
    }

    /// The message in its transport form (for a [`Payload::Task`], encoded on first call).
    pub fn message(&self) -> &Message {
        match &self.payload {
            Payload::Wire(m) => m,
            Payload::Task(t) => self.encoded.get_or_init(|| Arc::new(t.encode())),
        }
    }

    /// The size of the message body as it came over the wire, in bytes; `None` for a
    /// task handed over in-process (no wire form).
    pub fn wire_size(&self) -> Option<usize> {
        match &self.payload {
            Payload::Wire(m) => Some(m.body.len()),
            Payload::Task(_) => None,
        }
    }

    /// The task message: decoded from the transport form, or the one that was published,
    /// by pointer.
    pub fn task_message(&self) -> Result<Arc<TaskMessage>, DecodeError> {
        match &self.payload {
            Payload::Wire(m) => TaskMessage::decode(m).map(Arc::new),
            Payload::Task(t) => Ok(t.clone()),
        }
    }

    /// The queue it was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether it was delivered before and not acknowledged.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The broker's delivery tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Acknowledges: the broker forgets the message.
    pub async fn ack(mut self) -> Result<(), BrokerError> {
        // The prefetch slot is released when `self` drops, after the broker settled the
        // message: a consumer waiting for the slot then sees the queue as it now is.
        self.settled = true;
        self.acker.ack(&self.tag).await
    }

    /// Rejects: drops the message, or with `requeue` puts it at the end of its queue.
    pub async fn reject(mut self, requeue: bool) -> Result<(), BrokerError> {
        // The prefetch slot is released when `self` drops, after the broker settled the
        // message: a consumer waiting for the slot then sees the queue as it now is.
        self.settled = true;
        self.acker.reject(&self.tag, requeue).await
    }

    /// Returns the message unhandled to the front of its queue, marked redelivered.
    pub async fn restore(mut self) -> Result<(), BrokerError> {
        // The prefetch slot is released when `self` drops, after the broker settled the
        // message: a consumer waiting for the slot then sees the queue as it now is.
        self.settled = true;
        self.acker.restore(&self.tag).await
    }

    /// Stops counting this delivery against the consumer's prefetch limit (a worker
    /// holding an ETA task does this, so waiting tasks do not block new ones).
    pub fn release_prefetch(&mut self) {
        self.slot = None;
    }

    /// Counts this delivery against a prefetch limit until it is settled or released.
    pub fn attach_prefetch(&mut self, slot: OwnedSemaphorePermit) {
        self.slot = Some(slot);
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.acker.abandon(&self.tag);
        }
    }
}

/// A running consumption: deliveries in the order the broker hands them out.
///
/// [`next`](Consumer::next) is cancel-safe (it can sit in a `select!`). Dropping the
/// consumer stops fetching; deliveries it had fetched but not yet handed out are restored.
pub struct Consumer {
    rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
    /// The task feeding `rx`; it ends when `rx` closes, handing back what it held.
    feeder: Option<tokio::task::JoinHandle<Vec<Delivery>>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer fed by a channel; the feeding side stops when the receiver is dropped
    /// (`UnboundedSender::closed`).
    pub fn from_channel(rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>) -> Self {
        Self { rx, feeder: None }
    }

    /// A consumer fed by a channel from `feeder`, which, once the channel closes, returns
    /// the deliveries it held and could not send (so [`close`](Self::close) counts them).
    pub fn from_feeder(
        rx: mpsc::UnboundedReceiver<Result<Delivery, BrokerError>>,
        feeder: tokio::task::JoinHandle<Vec<Delivery>>,
    ) -> Self {
        Self {
            rx,
            feeder: Some(feeder),
        }
    }

    /// The next delivery, an error from the broker, or `None` when consumption ended.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        self.rx.recv().await
    }

    /// A delivery (or error) that has already arrived, without waiting; `None` if there is
    /// none right now. Lets a consumer take a whole batch per wake-up.
    pub fn try_next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        self.rx.try_recv().ok()
    }

    /// Stops consuming and returns every delivery fetched but not yet handed out —
    /// including any the feeding task held at that moment — so the caller can restore
    /// them explicitly (dropping them restores them too).
    pub async fn close(mut self) -> Vec<Delivery> {
        self.rx.close();
        let mut left = Vec::new();
        if let Some(feeder) = self.feeder.take() {
            if let Ok(held) = feeder.await {
                left.extend(held);
            }
        }
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item {
                left.push(d);
            }
        }
        left
    }
}

impl futures::Stream for Consumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
