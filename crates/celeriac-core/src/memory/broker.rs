//! The in-process broker: queues of payloads behind one mutex, a timer heap for delayed
//! messages, and a `Notify` that wakes waiting consumers.
//!
//! One mutex is enough: every critical section is a few pointer moves and never awaits.
//! Task messages published with `publish_tasks` are queued as they are
//! ([`Payload::Task`]) and never encoded: the worker gets the very message the client
//! built. Messages published in their wire form stay in it.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{
    Acker, Broker, Capabilities, ConsumeOptions, Consumer, Delivery, Payload, PublishManyError,
    PublishOptions, Subscription,
};
use crate::emulation::{spawn_consumer, Fetch};
use crate::error::{BrokerError, PublishError};
use crate::message::{DeliveryInfo, Message};
use crate::protocol::TaskMessage;
use crate::routing::{ExchangeType, QueueSpec};
use crate::url::{EngineUrl, UrlError};

/// Which end of the 0–9 priority range is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorityOrder {
    /// 0 first, as Celery on Redis (the default).
    #[default]
    LowFirst,
    /// 9 first, as AMQP priority queues.
    HighFirst,
}

/// The `memory://` broker. Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    order: PriorityOrder,
    state: Mutex<State>,
    notify: Notify,
    fanout: Mutex<HashMap<String, Vec<tokio::sync::mpsc::UnboundedSender<Message>>>>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// Direct-exchange bindings: (exchange, routing key) → queues.
    bindings: HashMap<(String, String), Vec<String>>,
    /// Topic and fanout exchanges: their type and (binding key, queue) bindings.
    patterns: HashMap<String, (ExchangeType, Vec<(String, String)>)>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    unacked: HashMap<u64, Unacked>,
    next_tag: u64,
    next_seq: u64,
    rotate: usize,
    /// Beat's leases and run records, under the same lock as the queues: a run is
    /// recorded and enqueued in one step.
    beat: crate::beat::LeaseTable,
}

#[derive(Default)]
struct Queue {
    levels: [VecDeque<Entry>; 10],
}

impl Queue {
    fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }
}

#[derive(Clone)]
struct Entry {
    payload: Payload,
    redelivered: bool,
}

struct Unacked {
    queue: String,
    entry: Entry,
}

struct Delayed {
    at: Instant,
    seq: u64,
    queue: String,
    entry: Entry,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

fn level(payload: &Payload) -> usize {
    usize::from(payload.priority().unwrap_or(0).min(9))
}

static INSTANCES: OnceLock<Mutex<HashMap<String, Arc<Inner>>>> = OnceLock::new();

impl MemoryBroker {
    /// A new broker, not shared with any URL.
    pub fn new(order: PriorityOrder) -> Self {
        Self {
            inner: Arc::new(Inner::new(String::new(), order)),
        }
    }

    /// The process-wide instance for a `memory://[NAME][?priority_order=high_first]` URL.
    pub fn from_url(url: &EngineUrl) -> Result<Self, UrlError> {
        let order = match url.query("priority_order").as_deref() {
            None | Some("low_first") => PriorityOrder::LowFirst,
            Some("high_first") => PriorityOrder::HighFirst,
            Some(other) => {
                return Err(url.bad_option(
                    "priority_order",
                    format!("expected low_first or high_first, got `{other}`"),
                ))
            }
        };
        let name = url.host().to_string();
        let inner = super::registry(&INSTANCES, &name, || Inner::new(name.clone(), order));
        Ok(Self { inner })
    }

    /// Messages delivered and not yet settled.
    pub fn unacked_count(&self) -> usize {
        self.inner.lock().unacked.len()
    }

    /// Messages held for delayed delivery in `queue`.
    pub fn delayed_count(&self, queue: &str) -> usize {
        self.inner
            .lock()
            .delayed
            .iter()
            .filter(|d| d.0.queue == queue)
            .count()
    }
}

impl Inner {
    fn new(name: String, order: PriorityOrder) -> Self {
        Self {
            name,
            order,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            fanout: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queues consistent (no section
        // unwinds half-way), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, queue: &str, entry: Entry, front: bool) {
        let lvl = level(&entry.payload);
        {
            let mut st = self.lock();
            let q = st.queues.entry(queue.to_string()).or_default();
            if front {
                q.levels[lvl].push_front(entry);
            } else {
                q.levels[lvl].push_back(entry);
            }
        }
        self.notify.notify_waiters();
    }

    fn settle(&self, tag: &str) -> Option<Unacked> {
        let tag: u64 = tag.parse().ok()?;
        self.lock().unacked.remove(&tag)
    }

    fn level_order(&self) -> [usize; 10] {
        match self.order {
            PriorityOrder::LowFirst => [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            PriorityOrder::HighFirst => [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        }
    }
}

impl State {
    /// Moves due delayed messages to their queues; returns when the next one is due.
    fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse(top)) = self.delayed.peek() {
            if top.at > now {
                return Some(top.at);
            }
            let Some(Reverse(d)) = self.delayed.pop() else {
                break;
            };
            let lvl = level(&d.entry.payload);
            self.queues.entry(d.queue).or_default().levels[lvl].push_back(d.entry);
        }
        None
    }

    /// Puts `entry` at the back of `queue`, or in the timer heap for `delay`.
    fn place(&mut self, queue: &str, entry: Entry, delay: Option<std::time::Duration>) {
        match delay {
            Some(delay) => {
                self.next_seq += 1;
                let seq = self.next_seq;
                self.queues.entry(queue.to_string()).or_default();
                self.delayed.push(Reverse(Delayed {
                    at: Instant::now() + delay,
                    seq,
                    queue: queue.to_string(),
                    entry,
                }));
            }
            None => {
                let lvl = level(&entry.payload);
                match self.queues.get_mut(queue) {
                    Some(q) => q.levels[lvl].push_back(entry),
                    None => self.queues.entry(queue.to_string()).or_default().levels[lvl]
                        .push_back(entry),
                }
            }
        }
    }

    /// Where a message published with `info` goes: `None` for the default exchange (the
    /// queue named by the routing key), else the queues bound to the exchange with that
    /// key; an error if that is nowhere.
    fn route(&self, info: &DeliveryInfo) -> Result<Option<Vec<String>>, BrokerError> {
        let bound = if info.exchange.is_empty() {
            None
        } else if let Some((kind, bound)) = self.patterns.get(&info.exchange) {
            let mut queues: Vec<String> = bound
                .iter()
                .filter(|(key, _)| kind.matches(key, &info.routing_key))
                .map(|(_, q)| q.clone())
                .collect();
            queues.dedup();
            Some(queues)
        } else {
            Some(
                self.bindings
                    .get(&(info.exchange.clone(), info.routing_key.clone()))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        let nowhere = match &bound {
            None => info.routing_key.is_empty(),
            Some(queues) => queues.iter().all(String::is_empty),
        };
        if nowhere {
            let reason = if info.exchange.is_empty() {
                "the message has no routing key (queue name)".to_string()
            } else {
                format!(
                    "no queue is bound to exchange `{}` with routing key `{}`",
                    info.exchange, info.routing_key
                )
            };
            return Err(BrokerError::Operation {
                op: "publish",
                reason,
            });
        }
        Ok(bound)
    }

    /// Queues `payload` where [`route`](Self::route) said — delayed until `deliver_at` if
    /// given. The caller wakes the consumers.
    fn enqueue(&mut self, payload: Payload, route: Option<Vec<String>>, options: &PublishOptions) {
        let delay = options
            .deliver_at
            .map(|at| crate::time::until_capped(&at))
            .filter(|d| !d.is_zero());
        let entry = |payload: Payload| Entry {
            payload,
            redelivered: false,
        };
        match route {
            None => {
                // The queue name is read from a second handle on the payload (a pointer
                // copy), not copied out of it.
                let named = payload.clone();
                self.place(&named.delivery_info().routing_key, entry(payload), delay);
            }
            Some(queues) => {
                for queue in queues.iter().filter(|q| !q.is_empty()) {
                    self.place(queue, entry(payload.clone()), delay);
                }
            }
        }
    }
}

#[async_trait]
impl Acker for Inner {
    async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag);
        Ok(())
    }

    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        if let Some(u) = self.settle(tag) {
            if requeue {
                let entry = Entry {
                    redelivered: true,
                    ..u.entry
                };
                self.push(&u.queue, entry, false);
            }
        }
        Ok(())
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        self.abandon(tag);
        Ok(())
    }

    fn abandon(&self, tag: &str) {
        if let Some(u) = self.settle(tag) {
            let entry = Entry {
                redelivered: true,
                ..u.entry
            };
            self.push(&u.queue, entry, true);
        }
    }
}

struct Fetcher {
    inner: Arc<Inner>,
}

#[async_trait]
impl Fetch for Fetcher {
    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let inner = &self.inner;
        loop {
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (taken, next_due) = {
                let mut st = inner.lock();
                let next_due = st.promote_due(Instant::now());
                let mut taken = Vec::new();
                // Priority first, then queue order; the starting queue rotates so one busy
                // queue cannot starve the others (kombu's round-robin cycle).
                let start = st.rotate;
                st.rotate = st.rotate.wrapping_add(1);
                'levels: for lvl in inner.level_order() {
                    for i in 0..queues.len() {
                        let name = &queues[(start + i) % queues.len()];
                        let Some(q) = st.queues.get_mut(name) else {
                            continue;
                        };
                        while taken.len() < max {
                            match q.levels[lvl].pop_front() {
                                Some(entry) => taken.push((name.clone(), entry)),
                                None => break,
                            }
                        }
                        if taken.len() >= max {
                            break 'levels;
                        }
                    }
                }
                let mut out = Vec::with_capacity(taken.len());
                for (queue, entry) in taken {
                    st.next_tag += 1;
                    let tag = st.next_tag;
                    out.push((tag, queue.clone(), entry.clone()));
                    st.unacked.insert(tag, Unacked { queue, entry });
                }
                (out, next_due)
            };
            if !taken.is_empty() {
                let acker: Arc<dyn Acker> = inner.clone();
                return Ok(taken
                    .into_iter()
                    .map(|(tag, queue, entry)| {
                        Delivery::from_payload(
                            entry.payload,
                            queue,
                            entry.redelivered,
                            tag.to_string(),
                            acker.clone(),
                        )
                    })
                    .collect());
            }
            match next_due {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn url(&self) -> String {
        format!("memory://{}", self.inner.name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            priorities: true,
            native_delay: true,
            fanout: true,
            durable: false,
            shared: false,
            topic: true,
            ordered_restore: true,
        }
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.inner
            .lock()
            .queues
            .entry(queue.to_string())
            .or_default();
        Ok(())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        if spec.exchange_type == ExchangeType::Direct {
            self.declare_queue(&spec.name).await?;
            if spec.is_default() {
                return Ok(());
            }
            return self
                .bind_queue(&spec.name, &spec.exchange, &spec.routing_key)
                .await;
        }
        if spec.exchange_type == ExchangeType::Headers {
            return Err(BrokerError::Unsupported(
                "headers exchanges (RabbitMQ only, as with kombu's virtual transports)",
            ));
        }
        let mut st = self.inner.lock();
        st.queues.entry(spec.name.clone()).or_default();
        let (kind, bound) = st
            .patterns
            .entry(spec.exchange.clone())
            .or_insert_with(|| (spec.exchange_type, Vec::new()));
        if *kind != spec.exchange_type {
            return Err(BrokerError::Operation {
                op: "declare",
                reason: format!(
                    "exchange `{}` is a {} exchange, not {}",
                    spec.exchange,
                    kind.as_str(),
                    spec.exchange_type.as_str()
                ),
            });
        }
        let binding = (spec.routing_key.clone(), spec.name.clone());
        if !bound.contains(&binding) {
            bound.push(binding);
        }
        Ok(())
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let mut st = self.inner.lock();
        st.queues.entry(queue.to_string()).or_default();
        let bound = st
            .bindings
            .entry((exchange.to_string(), routing_key.to_string()))
            .or_default();
        if !bound.iter().any(|q| q == queue) {
            bound.push(queue.to_string());
        }
        Ok(())
    }

    async fn publish(&self, message: Message, options: PublishOptions) -> Result<(), PublishError> {
        {
            let mut st = self.inner.lock();
            let route = match st.route(&message.properties.delivery_info) {
                Ok(route) => route,
                Err(e) => return Err(PublishError::new(message, e)),
            };
            st.enqueue(Payload::Wire(Arc::new(message)), route, &options);
        }
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn beat_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let now = Instant::now().into_std();
        Ok(self.inner.lock().beat.lease(schedule, holder, ttl, now))
    }

    async fn beat_release(&self, schedule: &str, holder: &str) -> Result<(), BrokerError> {
        let now = Instant::now().into_std();
        self.inner.lock().beat.release(schedule, holder, now);
        Ok(())
    }

    async fn beat_last_runs(
        &self,
        schedule: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, BrokerError> {
        Ok(self.inner.lock().beat.last_runs(schedule))
    }

    async fn beat_send(
        &self,
        run: &crate::beat::BeatRun,
        task: Option<(TaskMessage, PublishOptions)>,
    ) -> Result<crate::beat::BeatSent, BrokerError> {
        let now = Instant::now().into_std();
        let sent = {
            let mut st = self.inner.lock();
            // Routed first: an unroutable message records nothing.
            let routed = match &task {
                Some((t, _)) => Some(st.route(&t.properties.delivery_info)?),
                None => None,
            };
            let sent = st.beat.record(run, now);
            if let (crate::beat::BeatSent::Sent, Some((t, options)), Some(route)) =
                (sent, task, routed)
            {
                st.enqueue(Payload::Task(Arc::new(t)), route, &options);
            }
            sent
        };
        self.inner.notify.notify_waiters();
        Ok(sent)
    }

    async fn publish_task(
        &self,
        task: TaskMessage,
        options: PublishOptions,
    ) -> Result<(), PublishError> {
        {
            let mut st = self.inner.lock();
            let route = match st.route(&task.properties.delivery_info) {
                Ok(route) => route,
                Err(e) => return Err(PublishError::new(task.encode(), e)),
            };
            st.enqueue(Payload::Task(Arc::new(task)), route, &options);
        }
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn publish_tasks(
        &self,
        tasks: Vec<(TaskMessage, PublishOptions)>,
    ) -> Result<(), PublishManyError> {
        let mut failed = None;
        {
            // One lock for the batch: a million tasks are a million pointer moves.
            let mut st = self.inner.lock();
            let mut iter = tasks.into_iter();
            while let Some((task, options)) = iter.next() {
                match st.route(&task.properties.delivery_info) {
                    Ok(route) => st.enqueue(Payload::Task(Arc::new(task)), route, &options),
                    Err(e) => {
                        let mut unpublished = vec![(task.encode(), options)];
                        unpublished.extend(iter.map(|(t, o)| (t.encode(), o)));
                        failed = Some(PublishManyError {
                            source: e,
                            unpublished,
                        });
                        break;
                    }
                }
            }
        }
        self.inner.notify.notify_waiters();
        failed.map_or(Ok(()), Err)
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        {
            let mut st = self.inner.lock();
            for q in &options.queues {
                st.queues.entry(q.clone()).or_default();
            }
        }
        spawn_consumer(
            Arc::new(Fetcher {
                inner: self.inner.clone(),
            }),
            options,
        )
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut st = self.inner.lock();
        let mut n = 0;
        if let Some(q) = st.queues.get_mut(queue) {
            n += q.len();
            for lvl in q.levels.iter_mut() {
                lvl.clear();
            }
        }
        let before = st.delayed.len();
        st.delayed.retain(|d| d.0.queue != queue);
        n += before - st.delayed.len();
        Ok(n as u64)
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut st = self.inner.lock();
        st.promote_due(Instant::now());
        Ok(st.queues.get(queue).map_or(0, Queue::len) as u64)
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        let mut names: Vec<String> = self.inner.lock().queues.keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn publish_fanout(&self, exchange: &str, message: Message) -> Result<(), PublishError> {
        let mut fanout = self.inner.fanout.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subscribers) = fanout.get_mut(exchange) {
            subscribers.retain(|tx| tx.send(message.clone()).is_ok());
        }
        Ok(())
    }

    async fn subscribe_fanout(&self, exchange: &str) -> Result<Subscription, BrokerError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner
            .fanout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(exchange.to_string())
            .or_default()
            .push(tx);
        Ok(Subscription::from_channel(rx))
    }
}
