//! The worker: consumes queues, runs tasks in a bounded pool, stores results, and shuts
//! down warm, then cold.
//!
//! One loop owns all bookkeeping — the consumer, the messages waiting for a slot, the ETA
//! messages being held, and the running jobs — and each job runs as its own tokio task
//! holding one of `concurrency` slots. That keeps the shutdown rules easy to state:
//!
//! - **warm** (first SIGINT/SIGTERM, or [`ShutdownHandle::warm`]): stop consuming; every
//!   message fetched but not started (waiting for a slot, or held for its ETA) goes back to
//!   the front of its queue; running tasks get `shutdown_timeout` to finish;
//! - **cold** (second signal, [`ShutdownHandle::cold`], or the timeout): running tasks are
//!   abandoned; late-ack messages go back to their queue (their delivery is dropped
//!   unsettled), early-ack ones were already acknowledged, as in Celery.

mod autoscale;
mod banner;
mod builder;
mod control;
mod heartbeat;
mod job;
mod overrides;
pub mod prefork;
mod revoked;
mod shutdown;
mod stats;
mod terminate;

pub use builder::{WorkerBuilder, DEFAULT_MAX_HELD_ETA, DEFAULT_MAX_MESSAGE_SIZE};
pub use shutdown::{Phase, ShutdownHandle};
pub use stats::{StatsSnapshot, TaskCounts, WorkerStats};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::time::DelayQueue;
use tracing::{error, info, warn};

use celeriac_core::broker::ConsumeOptions;
use celeriac_core::Delivery;

use crate::app::App;
use crate::error::Error;
use crate::events::dispatcher::Dispatcher;
use crate::events::{EventKind, HEARTBEAT_FREQ};
use crate::execute::{Limits, Pool};
use autoscale::{Autoscale, Scaler};
use control::{request_info, Held, LoopRequest};
use heartbeat::{send_worker_event, spawn_heartbeat, spawn_worker_events};
use job::{Job, JobEnv};
use prefork::{PreforkOptions, PreforkPool};
use shutdown::spawn_signal_listener;
use stats::Event;

/// A worker: run it with [`Worker::run`]; stop it with its [`ShutdownHandle`] or a signal.
#[derive(Debug)]
pub struct Worker {
    app: App,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: usize,
    pool: Pool,
    name: String,
    shutdown_timeout: Duration,
    handle_signals: bool,
    print_banner: bool,
    limits: Limits,
    prefork: PreforkOptions,
    autoscale: Option<Autoscale>,
    stats_interval: Duration,
    max_message_size: usize,
    max_held_eta: usize,
    task_events: bool,
    mingle: bool,
    statedb: Option<std::path::PathBuf>,
    shutdown: ShutdownHandle,
    stats: Arc<WorkerStats>,
}

/// Most tasks one worker may run at once after `pool_grow` or `autoscale` from remote
/// control: a bound, so that a command off the wire cannot make a worker start a million
/// child processes (or overflow its semaphore).
pub(crate) const MAX_POOL: usize = 10_000;

/// What a finished worker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    /// Final counters.
    pub stats: StatsSnapshot,
    /// Messages returned to their queues at shutdown, unstarted.
    pub returned: usize,
    /// Running tasks abandoned by a cold shutdown.
    pub abandoned: usize,
}

impl Worker {
    /// The handle that stops this worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// The node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The startup banner: node, broker, backend (credentials masked), concurrency,
    /// queues and tasks, in Celery's layout.
    pub fn banner(&self) -> String {
        banner::render(self)
    }

    /// Celery's mingle: says `hello` (with the ids this worker holds as revoked) to every
    /// worker, waits a second for the replies, and takes their revoked ids and clocks.
    async fn mingle(&self, revoked: &revoked::Revoked) {
        let hello = json!({"from_node": self.name, "revoked": revoked.list()});
        let replies = match self
            .app
            .control()
            .broadcast("hello", hello, None, Some(Duration::from_secs(1)))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!("mingle: cannot reach the other workers ({e}); starting without their revoked ids");
                return;
            }
        };
        let mut nodes = Vec::new();
        for (node, reply) in replies {
            if node == self.name || !reply.is_object() {
                continue;
            }
            if let Some(c) = reply.get("clock").and_then(serde_json::Value::as_u64) {
                self.app.clock().adjust(c);
            }
            revoked.insert(&control::ids(reply.get("revoked")));
            nodes.push(node);
        }
        if nodes.is_empty() {
            info!("mingle: all alone");
        } else {
            info!(
                "mingle: sync with {} node(s): {}",
                nodes.len(),
                nodes.join(", ")
            );
        }
    }

    /// Runs until shut down; returns the final counters.
    ///
    /// Broker errors never stop it: consumption is retried with back-off, whatever the
    /// error. If it stops without a shutdown request all the same (the broker ended
    /// consumption), it shuts down warm and returns [`Error::Stopped`].
    pub async fn run(self) -> Result<WorkerReport, Error> {
        // First: a SIGTERM that arrives while the worker starts is a shutdown request,
        // not the default action (death by signal).
        let signals = self
            .handle_signals
            .then(|| spawn_signal_listener(self.shutdown.clone()));
        if self.print_banner {
            println!("{}", self.banner());
        }
        let broker = self.app.broker().clone();
        let mut starting = self.shutdown.subscribe();
        for q in &self.queues {
            let spec = self.app.router().queue_spec(q);
            until_available(&mut starting, "declare the queues", || {
                broker.declare(&spec)
            })
            .await?;
        }
        // The revoked ids this worker must honour from its first task: its state file's,
        // then the other workers'.
        let revoked = revoked::Revoked::default();
        if let Some(path) = &self.statedb {
            let n = revoked.load(path).map_err(Error::Config)?;
            info!("state file {}: {n} revoked task id(s)", path.display());
        }
        let caps = broker.capabilities();
        if self.mingle && caps.fanout && caps.shared {
            self.mingle(&revoked).await;
        }
        let options = ConsumeOptions::new(self.queues.clone(), self.prefetch);
        let consumer = until_available(&mut starting, "start consuming", || {
            broker.consume(options.clone())
        })
        .await?;
        let prefork = match self.pool {
            Pool::Prefork => Some(Arc::new(
                PreforkPool::start(
                    self.prefork,
                    self.autoscale.map_or(self.concurrency, |a| a.min),
                    self.concurrency,
                    self.app.connect_urls().clone(),
                )
                .await
                .map_err(|e| Error::Engine(format!("prefork pool: {e}").into()))?,
            )),
            _ => None,
        };
        info!("{} ready.", self.name);
        let hostname: Arc<str> = self.name.as_str().into();
        let events = Dispatcher::new(
            broker.clone(),
            hostname.clone(),
            self.app.clock().clone(),
            self.task_events,
        );
        let shared = Arc::new(JobEnv {
            app: self.app.clone(),
            hostname,
            pool: self.pool,
            stats: self.stats.clone(),
            phase: self.shutdown.subscribe(),
            limits: self.limits,
            prefork: prefork.clone(),
            terminators: terminate::Terminators::default(),
            revoked,
            events: events.clone(),
            overrides: overrides::Overrides::default(),
            queues: std::sync::Mutex::new(self.queues.clone()),
        });
        // Remote control and events, where the broker has broadcast exchanges.
        let (to_loop, mut loop_rx) = tokio::sync::mpsc::unbounded_channel::<LoopRequest>();
        let broadcasts = broker.capabilities().fanout;
        let control = if broadcasts {
            let subscribed = until_available(&mut starting, "listen for remote control", || {
                broker.subscribe_fanout(crate::control::PIDBOX)
            });
            match subscribed.await {
                Ok(sub) => Some(control::spawn(
                    control::Node {
                        env: shared.clone(),
                        to_loop,
                        shutdown: self.shutdown.clone(),
                        started: std::time::Instant::now(),
                        prefetch: self.prefetch,
                        max_tasks_per_child: self.prefork.max_tasks_per_child,
                        statedb: self.statedb.clone(),
                    },
                    sub,
                )),
                Err(e) => {
                    warn!("remote control unavailable ({e}): revoke and ping will not reach this worker");
                    None
                }
            }
        } else {
            None
        };
        let flusher = events.spawn_flusher();
        let worker_events = broadcasts.then(|| spawn_worker_events(shared.clone()));
        let mut state = LoopState {
            shared,
            slots: Arc::new(Semaphore::new(
                self.autoscale.map_or(self.concurrency, |a| a.min),
            )),
            scale: self.autoscale.map(Scaler::new),
            pending: VecDeque::new(),
            held: DelayQueue::new(),
            held_jobs: HashMap::new(),
            next_hold: 0,
            running: JoinSet::new(),
            max_message_size: self.max_message_size,
            max_held_eta: self.max_held_eta,
            held_full_warned: false,
            prefetch: self.prefetch,
        };
        let mut phase = self.shutdown.subscribe();
        let mut consumer = Some(consumer);
        let heartbeat = spawn_heartbeat(self.name.clone(), self.stats.clone(), self.stats_interval);
        let mut scale_tick = tokio::time::interval(Duration::from_millis(250));
        scale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.stats
            .set_concurrency(self.autoscale.map_or(self.concurrency, |a| a.min));
        let mut broker_down = false;
        let mut stopped_unasked = None;
        loop {
            state.start_pending().await;
            if *phase.borrow_and_update() != Phase::Running || stopped_unasked.is_some() {
                break;
            }
            tokio::select! {
                _ = phase.changed() => {}
                Some(joined) = state.running.join_next(), if !state.running.is_empty() => {
                    // And every other finished job now: one loop turn per batch.
                    let rest = std::iter::from_fn(|| state.running.try_join_next());
                    for e in std::iter::once(joined).chain(rest).filter_map(Result::err) {
                        error!("worker job ended abnormally: {e}");
                    }
                }
                Some(request) = loop_rx.recv() => state.serve(request, &mut consumer).await,
                _ = scale_tick.tick(), if state.scale.is_some() => state.autoscale(),
                Some(due) = state.held.next(), if !state.held.is_empty() => {
                    if let Some(job) = state.held_jobs.remove(due.get_ref()) {
                        state.release_or_hold(job);
                    }
                }
                next = next_delivery(&mut consumer), if consumer.is_some() && state.may_take_more() => {
                    if let Some(c) = consumer.as_mut() {
                        if state.take_deliveries(c, next, &mut broker_down) == Consuming::Ended {
                            consumer = None;
                            stopped_unasked = Some("the broker ended consumption");
                        }
                    }
                }
            }
        }
        let shared = state.shared.clone();
        let report = state
            .shutdown(consumer, &mut phase, self.shutdown_timeout, &self.stats)
            .await;
        if let Some(s) = signals {
            s.abort();
        }
        if let Some(c) = control {
            c.abort();
        }
        heartbeat.abort();
        flusher.abort();
        if let Some(path) = &self.statedb {
            if let Err(e) = shared.revoked.save(path) {
                error!("revoked task ids not kept: {e}");
            }
        }
        if let Some(w) = worker_events {
            w.abort();
            // The last task events first, then the goodbye.
            events.flush().await;
            send_worker_event(&shared, EventKind::WorkerOffline, HEARTBEAT_FREQ).await;
        }
        if let Some(pool) = prefork {
            pool.shutdown().await;
        }
        match stopped_unasked {
            Some(reason) => {
                error!(
                    "{} stopped unasked ({reason}) after {} task(s); exiting with an error so a supervisor restarts it",
                    self.name,
                    report.stats.succeeded + report.stats.failed
                );
                Err(Error::Stopped(reason.into()))
            }
            None => Ok(report),
        }
    }
}

/// Runs a start-up step, retrying with back-off while the broker is unavailable (as
/// Celery's `broker_connection_retry_on_startup`): a worker started during a broker outage
/// (or a full disk) waits for it instead of exiting. Gives up on errors that will not pass,
/// and when asked to shut down meanwhile.
async fn until_available<T, F, Fut>(
    phase: &mut watch::Receiver<Phase>,
    what: &str,
    mut step: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, celeriac_core::BrokerError>>,
{
    let mut backoff =
        celeriac_core::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut warned = false;
    loop {
        match step().await {
            Ok(v) => {
                if warned {
                    info!("broker available again: could {what}");
                }
                return Ok(v);
            }
            Err(e) if e.is_retryable() && *phase.borrow() == Phase::Running => {
                if !warned {
                    warn!(
                        "cannot {what} ({e}); retrying with back-off until the broker is available"
                    );
                    warned = true;
                }
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = phase.changed() => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the worker loop owns: the slots (resized by the autoscaler), the jobs waiting for
/// one, the jobs held for their ETA, and the running jobs.
struct LoopState {
    shared: Arc<JobEnv>,
    slots: Arc<Semaphore>,
    scale: Option<Scaler>,
    pending: VecDeque<Job>,
    held: DelayQueue<u64>,
    held_jobs: HashMap<u64, Job>,
    next_hold: u64,
    running: JoinSet<()>,
    /// Largest message body accepted (bytes).
    max_message_size: usize,
    /// Most ETA messages held; at the limit, fetching pauses.
    max_held_eta: usize,
    /// Whether the pause at `max_held_eta` was logged (once per time it is reached).
    held_full_warned: bool,
    /// The consumer's prefetch limit (kept when the queues change).
    prefetch: usize,
}

/// The next delivery of the consumer, if there is one (never, without).
async fn next_delivery(
    consumer: &mut Option<celeriac_core::Consumer>,
) -> Option<Result<Delivery, celeriac_core::BrokerError>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Whether the broker is still handing out deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consuming {
    Open,
    Ended,
}

impl LoopState {
    /// Sorts `first` and whatever else has arrived meanwhile (at most the prefetch): one
    /// loop turn per batch of deliveries, not per message. Logs a broker error once per
    /// outage (`broker_down`).
    fn take_deliveries(
        &mut self,
        consumer: &mut celeriac_core::Consumer,
        first: Option<Result<Delivery, celeriac_core::BrokerError>>,
        broker_down: &mut bool,
    ) -> Consuming {
        let mut next = first;
        loop {
            match next {
                Some(Ok(delivery)) => {
                    if *broker_down {
                        info!("broker connection restored");
                        *broker_down = false;
                    }
                    self.accept(delivery);
                }
                Some(Err(e)) => {
                    if !*broker_down {
                        error!("consumer error: {e}; retrying with back-off");
                        *broker_down = true;
                    }
                    return Consuming::Open;
                }
                None => {
                    error!("the broker ended consumption; shutting down warm");
                    return Consuming::Ended;
                }
            }
            if self.held_jobs.len() >= self.max_held_eta {
                return Consuming::Open;
            }
            match consumer.try_next() {
                Some(more) => next = Some(more),
                None => return Consuming::Open,
            }
        }
    }

    /// Whether to take more deliveries: not while `max_held_eta` messages are held for
    /// their ETA (they are in memory; the rest wait in the broker).
    fn may_take_more(&mut self) -> bool {
        let full = self.held_jobs.len() >= self.max_held_eta;
        if full && !self.held_full_warned {
            warn!(
                "holding {} messages for their ETA (the worker's max_held_eta); fetching paused until some fall due",
                self.held_jobs.len()
            );
        }
        self.held_full_warned = full;
        !full
    }

    /// Starts waiting jobs while slots are free.
    async fn start_pending(&mut self) {
        while !self.pending.is_empty() {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let Some(job) = self.pending.pop_front() else {
                return;
            };
            if self.shared.pool == Pool::Solo {
                // Solo: the task runs in the worker's own loop, nothing else meanwhile.
                job::execute(self.shared.clone(), job, slot).await;
                continue;
            }
            self.running
                .spawn(job::execute(self.shared.clone(), job, slot));
        }
    }

    /// Sorts a fresh delivery: invalid, unregistered, expired, held for its ETA, or ready.
    fn accept(&mut self, delivery: Delivery) {
        let shared = self.shared.clone();
        if let Some(size) = delivery
            .wire_size()
            .filter(|size| *size > self.max_message_size)
        {
            self.running
                .spawn(shared.oversized(delivery, size, self.max_message_size));
            return;
        }
        let msg = match delivery.task_message() {
            Ok(m) => m,
            Err(e) => {
                self.running.spawn(shared.undecodable(delivery, e));
                return;
            }
        };
        self.shared.stats.record(None, Event::Received);
        let Some(task) = shared.app.task(&msg.headers.task).cloned() else {
            self.running.spawn(shared.unregistered(delivery, msg));
            return;
        };
        let job = Job {
            delivery,
            msg,
            task,
        };
        info!("Task {} received", job.label());
        if let Some(reason) = shared.why_not_run(&job.msg) {
            // As Celery: a revoked or expired task gets `task-revoked`, not `task-received`.
            let store = !job
                .msg
                .headers
                .ignore_result
                .unwrap_or(job.task.config().ignore_result);
            self.running
                .spawn(shared.not_run(Some(job.delivery), job.msg, store, reason));
            return;
        }
        shared
            .events
            .task(EventKind::TaskReceived, &job.msg.headers.id, |f| {
                crate::events::request_fields(&job.msg, f)
            });
        self.release_or_hold(job);
    }

    /// One autoscaler step (see [`Scaler::step`]).
    fn autoscale(&mut self) {
        let Some(scale) = &mut self.scale else { return };
        let current = scale.step(
            &self.slots,
            self.pending.len(),
            self.shared.prefork.as_deref(),
        );
        self.shared.stats.set_concurrency(current);
    }

    /// Settles the waiting and held jobs a revoke covers (REVOKED, acknowledged) at once,
    /// rather than when they would have run: one pass over them, so a revoke of many ids
    /// (looked up in a set) with many messages held stays cheap.
    fn drop_revoked(&mut self, named: impl Fn(&Job) -> bool) {
        let (revoked, keep): (Vec<Job>, Vec<Job>) = self.pending.drain(..).partition(&named);
        self.pending = keep.into();
        let held: Vec<u64> = self
            .held_jobs
            .iter()
            .filter(|(_, j)| named(j))
            .map(|(k, _)| *k)
            .collect();
        let held_jobs: Vec<Job> = held
            .iter()
            .filter_map(|k| self.held_jobs.remove(k))
            .collect();
        // Their DelayQueue timers fire later and find nothing.
        for job in revoked.into_iter().chain(held_jobs) {
            let store = !job
                .msg
                .headers
                .ignore_result
                .unwrap_or(job.task.config().ignore_result);
            self.running.spawn(self.shared.clone().not_run(
                Some(job.delivery),
                job.msg,
                store,
                "revoked",
            ));
        }
    }

    /// Queues a job for a slot, or holds it: until its ETA (without a slot and without
    /// counting against prefetch; timers are capped, so a far ETA is checked again on
    /// expiry), or until its task's rate limit lets it start (still counted against
    /// prefetch, so a rate-limited queue is not all fetched into memory).
    fn release_or_hold(&mut self, mut job: Job) {
        let wait = match job.msg.headers.eta.filter(|eta| *eta > Utc::now()) {
            Some(eta) => {
                job.delivery.release_prefetch();
                celeriac_core::time::until_capped(&eta)
            }
            None => match self.shared.overrides.admit(&job.msg.headers.task) {
                Ok(()) => {
                    self.pending.push_back(job);
                    return;
                }
                Err(wait) => wait,
            },
        };
        self.next_hold += 1;
        self.held.insert(self.next_hold, wait);
        self.held_jobs.insert(self.next_hold, job);
    }

    /// Answers remote control about what the loop owns.
    async fn serve(
        &mut self,
        request: LoopRequest,
        consumer: &mut Option<celeriac_core::Consumer>,
    ) {
        match request {
            LoopRequest::Revoked(ids) => {
                let ids: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
                self.drop_revoked(|j| ids.contains(j.msg.headers.id.as_str()));
            }
            LoopRequest::RevokedStamps => {
                let shared = self.shared.clone();
                self.drop_revoked(|j| shared.revoked.stamped(&j.msg.headers.stamps));
            }
            LoopRequest::Held(tx) => {
                let _ = tx.send(self.held());
            }
            LoopRequest::AddConsumer(spec, tx) => {
                let _ = tx.send(self.add_consumer(spec, consumer).await);
            }
            LoopRequest::CancelConsumer(queue, tx) => {
                let _ = tx.send(self.cancel_consumer(queue, consumer).await);
            }
            LoopRequest::Resize(delta, tx) => {
                let _ = tx.send(self.resize(delta));
            }
            LoopRequest::Autoscale(max, min, tx) => {
                let reply = match &mut self.scale {
                    None => json!({"error": "ValueError('Autoscale not enabled')"}),
                    Some(scale) => {
                        let n =
                            scale.set_bounds(&self.slots, max, min, self.shared.prefork.as_ref());
                        self.shared.stats.set_concurrency(n);
                        json!({"ok": format!("autoscale now max={max} min={min}")})
                    }
                };
                let _ = tx.send(reply);
            }
        }
    }

    /// Request infos of the jobs waiting for a slot (or their rate limit) and of those
    /// held for their ETA.
    fn held(&self) -> Held {
        let host = &*self.shared.hostname;
        let info = |j: &Job| request_info(&j.msg, host, None, false, None);
        let now = Utc::now();
        let mut held = Held {
            reserved: self.pending.iter().map(info).collect(),
            scheduled: Vec::new(),
        };
        for job in self.held_jobs.values() {
            match job.msg.headers.eta.filter(|eta| *eta > now) {
                Some(eta) => held.scheduled.push(json!({
                    "eta": celeriac_core::time::isoformat(&eta),
                    "priority": job.msg.properties.priority.unwrap_or(0),
                    "request": info(job),
                })),
                None => held.reserved.push(info(job)),
            }
        }
        held
    }

    /// Consumes `queues` from now on: the current consumer is closed (what it had
    /// fetched goes back to the front of its queue) and a new one started; none when
    /// `queues` is empty.
    async fn reconsume(
        &mut self,
        queues: Vec<String>,
        consumer: &mut Option<celeriac_core::Consumer>,
    ) -> Result<(), celeriac_core::BrokerError> {
        let broker = self.shared.app.broker().clone();
        let next = if queues.is_empty() {
            None
        } else {
            Some(
                broker
                    .consume(ConsumeOptions::new(queues.clone(), self.prefetch))
                    .await?,
            )
        };
        if let Some(old) = std::mem::replace(consumer, next) {
            for d in old.close().await {
                if let Err(e) = d.restore().await {
                    warn!("could not return a message to its queue: {e}");
                }
            }
        }
        *self.shared.queues.lock().unwrap_or_else(|p| p.into_inner()) = queues;
        Ok(())
    }

    async fn add_consumer(
        &mut self,
        spec: celeriac_core::routing::QueueSpec,
        consumer: &mut Option<celeriac_core::Consumer>,
    ) -> serde_json::Value {
        let mut queues = self.shared.queues();
        if queues.contains(&spec.name) {
            return json!({"ok": format!("already consuming from '{}'", spec.name)});
        }
        if let Err(e) = self.shared.app.broker().declare(&spec).await {
            return json!({"error": format!("cannot declare queue `{}`: {e}", spec.name)});
        }
        queues.push(spec.name.clone());
        match self.reconsume(queues, consumer).await {
            Ok(()) => {
                info!("Started consuming from {}", spec.name);
                json!({"ok": format!("add consumer {}", spec.name)})
            }
            Err(e) => json!({"error": format!("cannot consume `{}`: {e}", spec.name)}),
        }
    }

    async fn cancel_consumer(
        &mut self,
        queue: String,
        consumer: &mut Option<celeriac_core::Consumer>,
    ) -> serde_json::Value {
        let mut queues = self.shared.queues();
        if queues.contains(&queue) {
            queues.retain(|q| *q != queue);
            if let Err(e) = self.reconsume(queues, consumer).await {
                return json!({"error": format!("cannot consume the other queues: {e}")});
            }
            info!("Stopped consuming from {queue}");
        }
        json!({"ok": format!("no longer consuming from {queue}")})
    }

    /// `pool_grow` (positive `delta`) and `pool_shrink` (negative).
    fn resize(&mut self, delta: i64) -> serde_json::Value {
        let grow = delta >= 0;
        if self.scale.is_some() {
            let cmd = if grow { "pool_grow" } else { "pool_shrink" };
            return json!({"error": format!("{cmd} is not supported with autoscale. Adjust autoscale range instead.")});
        }
        let current = self.shared.stats.concurrency();
        let n = usize::try_from(delta.unsigned_abs()).unwrap_or(usize::MAX);
        if grow && current.saturating_add(n) > MAX_POOL {
            return json!({"error": format!("pool_grow: a worker runs at most {MAX_POOL} tasks at once (now {current})")});
        }
        let next = if grow {
            self.slots.add_permits(n);
            current + n
        } else {
            let n = n.min(current.saturating_sub(1));
            autoscale::forget_slots(&self.slots, n);
            current - n
        };
        if let Some(pool) = &self.shared.prefork {
            pool.set_capacity(next);
        }
        self.shared.stats.set_concurrency(next);
        info!("pool: {current} → {next} slots (remote control)");
        json!({"ok": if grow { "pool will grow" } else { "pool will shrink" }})
    }

    async fn shutdown(
        mut self,
        consumer: Option<celeriac_core::Consumer>,
        phase: &mut watch::Receiver<Phase>,
        timeout: Duration,
        stats: &WorkerStats,
    ) -> WorkerReport {
        let cold_now = *phase.borrow() == Phase::Cold;
        info!(
            "{} shutdown: returning unstarted messages, {} task(s) running",
            if cold_now { "Cold" } else { "Warm" },
            self.running.len()
        );
        let mut unstarted: Vec<Delivery> = match consumer {
            Some(c) => c.close().await,
            None => Vec::new(),
        };
        unstarted.extend(self.pending.drain(..).map(|j| j.delivery));
        unstarted.extend(self.held_jobs.drain().map(|(_, j)| j.delivery));
        self.held.clear();
        let returned = unstarted.len();
        for d in unstarted {
            if let Err(e) = d.restore().await {
                warn!("could not return a message to its queue: {e}");
            }
        }
        if returned > 0 {
            info!("returned {returned} unstarted message(s) to their queues");
        }
        if !cold_now {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    joined = self.running.join_next() => if joined.is_none() { break },
                    _ = &mut deadline => {
                        warn!("warm shutdown timed out after {timeout:?}; going cold");
                        break;
                    }
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow() == Phase::Cold {
                            break;
                        }
                    }
                }
            }
        }
        let abandoned = self.running.len();
        if abandoned > 0 {
            warn!("cold shutdown: abandoning {abandoned} running task(s); late-ack messages go back to their queues");
            self.running.abort_all();
            while self.running.join_next().await.is_some() {}
        }
        // Dropped deliveries restore themselves in the background: let that land before
        // the process may exit.
        if let Err(e) = self.shared.app.broker().flush().await {
            warn!("could not confirm that unfinished messages went back to their queues: {e}");
        }
        WorkerReport {
            stats: stats.snapshot(),
            returned,
            abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use celeriac_core::broker::{Broker, Capabilities, ConsumeOptions, Consumer, PublishOptions};
    use celeriac_core::error::{BrokerError, PublishError};
    use celeriac_core::message::Message;

    use crate::{App, Error};

    /// A broker whose consumption ends at once, as no engine's should.
    struct Ending;

    #[async_trait]
    impl Broker for Ending {
        fn url(&self) -> String {
            "ending://".into()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn publish(&self, m: Message, _: PublishOptions) -> Result<(), PublishError> {
            Err(PublishError::new(m, BrokerError::Unsupported("publish")))
        }
        async fn consume(&self, _: ConsumeOptions) -> Result<Consumer, BrokerError> {
            let (_, rx) = tokio::sync::mpsc::unbounded_channel();
            Ok(Consumer::from_channel(rx))
        }
        async fn purge(&self, _: &str) -> Result<u64, BrokerError> {
            Ok(0)
        }
        async fn queue_depth(&self, _: &str) -> Result<u64, BrokerError> {
            Ok(0)
        }
        async fn queues(&self) -> Result<Vec<String>, BrokerError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_worker_that_stops_unasked_returns_an_error() {
        let app = App::builder()
            .broker_url("memory://")
            .build()
            .await
            .unwrap()
            .on_broker(Arc::new(Ending));
        let err = app.worker().build().run().await.unwrap_err();
        assert!(matches!(err, Error::Stopped(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the worker stopped unasked: the broker ended consumption"
        );
    }
}
