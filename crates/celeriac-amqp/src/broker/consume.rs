//! Consuming: one channel per consumer, one `basic.consume` per queue on it (as Celery's
//! worker does), deliveries handed out in arrival order and settled on the channel that
//! delivered them.
//!
//! **Prefetch.** `basic.qos` (channel-wide, `global`, as Celery sets it on RabbitMQ; per
//! consumer on quorum queues, which have no global QoS) holds the unacknowledged
//! deliveries to the prefetch. A delivery whose slot is released while it stays unsettled
//! (a held ETA task, `Delivery::release_prefetch`) still counts for RabbitMQ, so the limit
//! is raised by one for each such delivery and lowered again as they are settled — what
//! Celery's `qos.increment_eventually` does. The loop takes a slot before it waits for a
//! delivery, exactly as the emulated consumers of the other engines do.
//!
//! **Settling.** Ack is `basic.ack`; reject without requeue `basic.reject`; restore (and a
//! delivery dropped unsettled) `basic.reject` with requeue, which RabbitMQ puts back where
//! it was, marked redelivered. Reject *with* requeue goes to the back of the queue, as on
//! every celeriac engine: the message is published again (confirmed) with the header
//! `celeriac_requeued`, then the original acknowledged; a delivery carrying that header is
//! read as redelivered and the header is removed. (RabbitMQ's own requeue would put it
//! back in front, where a task that rejects itself would loop.)
//!
//! **Recovery.** When the channel or connection is lost the consumer reports the error,
//! waits (50 ms doubling to 2 s), connects again, and consumes again; RabbitMQ has put
//! back every message that was not acknowledged on the lost channel, marked redelivered,
//! and a late settle of one of them fails harmlessly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{SelectAll, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use serde_json::Value;
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::{debug, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::{Acker, ConsumeOptions, Consumer, Delivery};
use celeriac_core::error::BrokerError;
use celeriac_core::message::{DeliveryInfo, Message, Properties};

use super::{lock, Inner};
use crate::error;
use crate::table;

/// The header a message requeued to the back carries (see the module docs).
pub(crate) const REQUEUED: &str = "celeriac_requeued";

/// Settles sent without waiting (from `Drop`) and not yet answered; `flush` waits for them.
#[derive(Default)]
pub(crate) struct Pending {
    count: AtomicUsize,
    done: Notify,
}

impl Pending {
    fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn finish(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// Waits (up to 5 s) until none is pending.
    pub(crate) async fn wait(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.count.load(Ordering::SeqCst) > 0 {
            let notified = self.done.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
    }
}

/// Starts consuming `options.queues` on a channel of its own.
pub(crate) fn start(inner: Arc<Inner>, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
    options.check()?;
    for q in &options.queues {
        lock(&inner.known).insert(q.clone());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let feeder = tokio::spawn(feed(inner, options, tx));
    Ok(Consumer::from_feeder(rx, feeder))
}

type Tx = mpsc::UnboundedSender<Result<Delivery, BrokerError>>;

/// The consumer's loop: subscribe, pump deliveries, and after a loss subscribe again.
async fn feed(inner: Arc<Inner>, options: ConsumeOptions, tx: Tx) -> Vec<Delivery> {
    let slots = (options.prefetch > 0).then(|| Arc::new(Semaphore::new(options.prefetch)));
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        let sub = tokio::select! {
            _ = tx.closed() => return Vec::new(),
            s = Subscription::open(&inner, &options) => s,
        };
        let mut sub = match sub {
            Ok(s) => {
                backoff.reset();
                s
            }
            Err(e) => {
                if tx.send(Err(e)).is_err() {
                    return Vec::new();
                }
                tokio::select! {
                    _ = tx.closed() => return Vec::new(),
                    _ = backoff.wait() => {}
                }
                continue;
            }
        };
        match sub.pump(&slots, options.prefetch, &tx).await {
            Ended::Closed(held) => return sub.close(held).await,
            Ended::Lost(e) => {
                inner.drop_link().await;
                if tx.send(Err(e)).is_err() {
                    return Vec::new();
                }
                tokio::select! {
                    _ = tx.closed() => return Vec::new(),
                    _ = backoff.wait() => {}
                }
            }
        }
    }
}

/// Why pumping stopped.
enum Ended {
    /// The consumer was closed; what was taken and not handed out.
    Closed(Vec<Delivery>),
    /// The channel or connection was lost.
    Lost(BrokerError),
}

type Stream = SelectAll<
    futures::stream::BoxStream<'static, (Arc<str>, Result<lapin::message::Delivery, lapin::Error>)>,
>;

/// One channel consuming every queue of a consumer.
struct Subscription {
    acker: Arc<ChannelAcker>,
    stream: Stream,
    tags: Vec<String>,
    /// The prefetch count last set with `basic.qos`.
    qos: u16,
}

impl Subscription {
    async fn open(inner: &Arc<Inner>, options: &ConsumeOptions) -> Result<Self, BrokerError> {
        for q in &options.queues {
            inner.declare_for_consuming(q).await?;
        }
        let link = inner.link().await?;
        let channel = inner.channel(&link.conn).await?;
        let fail = |op: &'static str| {
            let url = inner.cfg.masked.clone();
            move |e: lapin::Error| error::broker(&url, op, &e)
        };
        let qos = u16::try_from(options.prefetch).unwrap_or(u16::MAX);
        if qos > 0 {
            channel
                .basic_qos(qos, qos_options(inner))
                .await
                .map_err(fail("basic.qos"))?;
        }
        let mut stream = SelectAll::new();
        let mut tags = Vec::new();
        for q in &options.queues {
            let tag = format!("celeriac-{}", uuid::Uuid::new_v4().simple());
            let consumer = channel
                .basic_consume(
                    q.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(fail("basic.consume"))?;
            let name: Arc<str> = Arc::from(q.as_str());
            stream.push(consumer.map(move |r| (name.clone(), r)).boxed());
            tags.push(tag);
        }
        Ok(Self {
            acker: Arc::new(ChannelAcker {
                inner: inner.clone(),
                channel,
                outstanding: Mutex::new(HashMap::new()),
            }),
            stream,
            tags,
            qos,
        })
    }

    /// Hands out deliveries until the consumer is closed or the channel is lost.
    async fn pump(&mut self, slots: &Option<Arc<Semaphore>>, prefetch: usize, tx: &Tx) -> Ended {
        loop {
            let slot = match slots {
                Some(s) => {
                    let permit = tokio::select! {
                        _ = tx.closed() => return Ended::Closed(Vec::new()),
                        p = s.clone().acquire_owned() => p,
                    };
                    match permit {
                        Ok(p) => Some(p),
                        Err(_) => return Ended::Closed(Vec::new()),
                    }
                }
                None => None,
            };
            if let Some(s) = slots {
                if let Err(e) = self.adjust_qos(s, prefetch).await {
                    return Ended::Lost(e);
                }
            }
            let next = tokio::select! {
                _ = tx.closed() => return Ended::Closed(Vec::new()),
                n = self.stream.next() => n,
            };
            let (queue, delivery) = match next {
                Some((q, Ok(d))) => (q, d),
                Some((q, Err(e))) => {
                    debug!("consumer of `{q}` lost: {e}");
                    return Ended::Lost(error::broker(&self.acker.inner.cfg.masked, "consume", &e));
                }
                None => {
                    return Ended::Lost(BrokerError::Connection {
                        url: self.acker.inner.cfg.masked.clone(),
                        reason: "RabbitMQ cancelled the consumer (was a queue deleted?)".into(),
                    })
                }
            };
            let mut d = self.acker.deliver(&queue, delivery);
            if let Some(slot) = slot {
                d.attach_prefetch(slot);
            }
            if let Err(mpsc::error::SendError(Ok(d))) = tx.send(Ok(d)) {
                return Ended::Closed(vec![d]);
            }
        }
    }

    /// Raises `basic.qos` by the deliveries that stay unsettled without a slot (held ETA
    /// tasks), and lowers it as they are settled. Called holding the slot for the next
    /// delivery.
    async fn adjust_qos(&mut self, slots: &Semaphore, prefetch: usize) -> Result<(), BrokerError> {
        let in_slots = prefetch.saturating_sub(slots.available_permits() + 1);
        let unsettled = lock(&self.acker.outstanding).len();
        let held = unsettled.saturating_sub(in_slots);
        let want = u16::try_from(prefetch + held).unwrap_or(u16::MAX);
        if want != self.qos {
            self.acker
                .channel
                .basic_qos(want, qos_options(&self.acker.inner))
                .await
                .map_err(|e| error::broker(&self.acker.inner.cfg.masked, "basic.qos", &e))?;
            debug!(
                "prefetch {} → {want} ({held} held without a slot)",
                self.qos
            );
            self.qos = want;
        }
        Ok(())
    }

    /// Stops the consumers; what RabbitMQ had already pushed to this channel is returned
    /// with `held` (the caller restores or drops them, which puts them back).
    async fn close(mut self, mut held: Vec<Delivery>) -> Vec<Delivery> {
        for tag in &self.tags {
            let _ = self
                .acker
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        // Deliveries already in flight arrive before the cancel-ok; take them.
        while let Ok(Some((q, Ok(d)))) =
            tokio::time::timeout(Duration::from_millis(50), self.stream.next()).await
        {
            held.push(self.acker.deliver(&q, d));
        }
        held
    }
}

fn qos_options(inner: &Inner) -> BasicQosOptions {
    BasicQosOptions {
        // Quorum queues have no global QoS (Celery switches to per-consumer too).
        global: inner.cfg.queue_type.is_none(),
    }
}

/// An unsettled delivery: the queue it came from, and the message.
type Held = (Arc<str>, Arc<Message>);

/// Settles the deliveries of one channel; closes the channel when the last delivery and
/// the subscription are gone.
struct ChannelAcker {
    inner: Arc<Inner>,
    channel: Channel,
    /// Unsettled deliveries: tag → (queue, message), for requeueing to the back.
    outstanding: Mutex<HashMap<u64, Held>>,
}

impl ChannelAcker {
    /// A core delivery for `d`, taken from `queue`.
    fn deliver(self: &Arc<Self>, queue: &Arc<str>, d: lapin::message::Delivery) -> Delivery {
        let (message, requeued) = message_of(&d);
        let message = Arc::new(message);
        lock(&self.outstanding).insert(d.delivery_tag, (queue.clone(), message.clone()));
        Delivery::new(
            message,
            queue.to_string(),
            d.redelivered || requeued,
            d.delivery_tag.to_string(),
            self.clone(),
        )
    }

    fn tag(tag: &str) -> Result<u64, BrokerError> {
        tag.parse().map_err(|_| BrokerError::Operation {
            op: "settle",
            reason: format!("`{tag}` is not an AMQP delivery tag"),
        })
    }

    fn fail(&self, op: &'static str) -> impl Fn(lapin::Error) -> BrokerError + '_ {
        move |e| error::broker(&self.inner.cfg.masked, op, &e)
    }

    async fn requeue_at_back(&self, tag: u64) -> Result<(), BrokerError> {
        let entry = lock(&self.outstanding).get(&tag).cloned();
        let Some((queue, message)) = entry else {
            return self.reject(tag, true).await;
        };
        let mut copy = (*message).clone();
        copy.headers.insert(REQUEUED.into(), Value::Bool(true));
        copy.properties.delivery_info = DeliveryInfo {
            exchange: String::new(),
            routing_key: queue.to_string(),
            redelivered: None,
        };
        match self.inner.publish_one(&copy).await {
            Ok(()) => {
                lock(&self.outstanding).remove(&tag);
                self.channel
                    .basic_ack(tag, BasicAckOptions::default())
                    .await
                    .map_err(self.fail("ack"))
            }
            Err(e) => {
                warn!("could not requeue a message at the back of `{queue}` ({e}); it goes back in front");
                self.reject(tag, true).await
            }
        }
    }

    async fn reject(&self, tag: u64, requeue: bool) -> Result<(), BrokerError> {
        lock(&self.outstanding).remove(&tag);
        self.channel
            .basic_reject(tag, BasicRejectOptions { requeue })
            .await
            .map_err(self.fail("reject"))
    }
}

#[async_trait]
impl Acker for ChannelAcker {
    async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        let tag = Self::tag(tag)?;
        lock(&self.outstanding).remove(&tag);
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(self.fail("ack"))
    }

    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        let tag = Self::tag(tag)?;
        if requeue {
            self.requeue_at_back(tag).await
        } else {
            ChannelAcker::reject(self, tag, false).await
        }
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        let tag = Self::tag(tag)?;
        ChannelAcker::reject(self, tag, true).await
    }

    fn abandon(&self, tag: &str) {
        let Ok(tag) = Self::tag(tag) else { return };
        lock(&self.outstanding).remove(&tag);
        let channel = self.channel.clone();
        let inner = self.inner.clone();
        inner.pending.start();
        let spawned = tokio::runtime::Handle::try_current().map(|rt| {
            rt.spawn(async move {
                // A lost channel has put it back already.
                let _ = channel
                    .basic_reject(tag, BasicRejectOptions { requeue: true })
                    .await;
                inner.pending.finish();
            })
        });
        if spawned.is_err() {
            // No runtime (dropped at exit): the channel closing puts it back.
            self.inner.pending.finish();
        }
    }
}

impl Drop for ChannelAcker {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = channel.close(200, "consumer closed".into()).await;
            });
        }
    }
}

/// The core message of an AMQP delivery, and whether it carries [`REQUEUED`] (removed).
pub(crate) fn message_of(d: &lapin::message::Delivery) -> (Message, bool) {
    let p = &d.properties;
    let mut headers = p
        .headers()
        .as_ref()
        .map(table::from_table)
        .unwrap_or_default();
    let requeued = headers.remove(REQUEUED).is_some();
    let text = |s: &Option<lapin::types::ShortString>| s.as_ref().map(|s| s.as_str().to_string());
    let properties = Properties {
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        delivery_mode: p.delivery_mode().unwrap_or(2),
        delivery_info: DeliveryInfo {
            exchange: d.exchange.as_str().to_string(),
            routing_key: d.routing_key.as_str().to_string(),
            redelivered: None,
        },
        priority: *p.priority(),
        expiration: text(p.expiration()),
        ..Properties::default()
    };
    let message = Message {
        headers,
        properties,
        content_type: text(p.content_type()).unwrap_or_default(),
        content_encoding: text(p.content_encoding()).unwrap_or_default(),
        body: bytes::Bytes::from(d.data.clone()),
    };
    (message, requeued)
}
