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

mod banner;
mod control;
mod flow;
mod job;
pub mod prefork;
mod revoked;
mod stats;
mod terminate;

pub use stats::{StatsSnapshot, TaskCounts, WorkerStats};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::time::DelayQueue;
use tracing::{error, info, warn};

use celeriac_core::broker::ConsumeOptions;
use celeriac_core::Delivery;

use crate::app::App;
use crate::error::Error;
use crate::execute::{Limits, Pool};
use job::{Job, JobEnv};
use prefork::{PreforkOptions, PreforkPool};
use stats::Event;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Consuming and running tasks.
    Running,
    /// Not consuming; letting running tasks finish.
    Warm,
    /// Abandoning running tasks.
    Cold,
}

/// Asks a running worker to stop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<Phase>>,
}

impl ShutdownHandle {
    /// Warm shutdown: stop consuming, return unstarted messages, let running tasks finish.
    pub fn warm(&self) {
        self.tx.send_if_modified(|p| {
            let change = *p == Phase::Running;
            if change {
                *p = Phase::Warm;
            }
            change
        });
    }

    /// Cold shutdown: stop now; late-ack messages of running tasks go back to the queue.
    pub fn cold(&self) {
        self.tx.send_if_modified(|p| {
            let change = *p != Phase::Cold;
            *p = Phase::Cold;
            change
        });
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }
}

/// Configures a [`Worker`]; get one from [`App::worker`].
#[derive(Debug)]
pub struct WorkerBuilder {
    app: App,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: Option<usize>,
    pool: Pool,
    name: Option<String>,
    shutdown_timeout: Duration,
    handle_signals: bool,
    limits: Limits,
    prefork: PreforkOptions,
    autoscale: Option<Autoscale>,
    stats_interval: Duration,
}

/// Autoscaling bounds and how long an unused slot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Autoscale {
    max: usize,
    min: usize,
    keepalive: Duration,
}

impl WorkerBuilder {
    pub(crate) fn new(app: App) -> Self {
        let concurrency = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            queues: vec![app.config().default_queue.clone()],
            app,
            concurrency,
            prefetch: None,
            pool: Pool::Async,
            name: None,
            shutdown_timeout: Duration::from_secs(30),
            handle_signals: false,
            limits: Limits::default(),
            prefork: PreforkOptions::default(),
            autoscale: None,
            stats_interval: Duration::from_secs(60),
        }
    }

    /// How often the worker logs its counters when they changed (default 60 s): its
    /// heartbeat in the log. The same counters answer the `stats` remote-control command.
    pub fn stats_interval(mut self, every: Duration) -> Self {
        self.stats_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Grows the pool up to `max` tasks at once while messages wait, and shrinks it back
    /// towards `min` when slots stay unused (`--autoscale MAX,MIN`). Overrides
    /// [`concurrency`](Self::concurrency).
    pub fn autoscale(mut self, max: usize, min: usize) -> Self {
        let max = max.max(1);
        self.autoscale = Some(Autoscale {
            max,
            min: min.clamp(1, max),
            keepalive: self
                .autoscale
                .map_or(Duration::from_secs(30), |a| a.keepalive),
        });
        self.concurrency = max;
        self
    }

    /// How long an unused autoscaled slot is kept before the pool shrinks (default 30 s).
    pub fn autoscale_keepalive(mut self, keepalive: Duration) -> Self {
        if let Some(a) = &mut self.autoscale {
            a.keepalive = keepalive;
        }
        self
    }

    /// Prefork pool: replace a child process after it ran this many tasks
    /// (`--max-tasks-per-child`).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.prefork.max_tasks_per_child = Some(n.max(1));
        self
    }

    /// Prefork pool: replace a child process whose resident memory passes this many KiB
    /// after a task (`--max-memory-per-child`).
    pub fn max_memory_per_child(mut self, kib: u64) -> Self {
        self.prefork.max_memory_per_child_kb = Some(kib);
        self
    }

    /// Hard time limit for tasks that set none (seconds): the task is stopped and fails
    /// with `TimeLimitExceeded` (`task_time_limit`).
    pub fn time_limit(mut self, secs: f64) -> Self {
        self.limits.hard = Some(secs);
        self
    }

    /// Soft time limit for tasks that set none (seconds): the task is told, and can clean
    /// up before the hard limit (`task_soft_time_limit`).
    pub fn soft_time_limit(mut self, secs: f64) -> Self {
        self.limits.soft = Some(secs);
        self
    }

    /// Queues to consume, in order of preference (default: the app's default queue).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Most tasks running at once (default: number of CPUs).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Most messages fetched and not yet acknowledged (default: concurrency × the app's
    /// prefetch multiplier; 0 = no limit).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Where task bodies run.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = pool;
        self
    }

    /// Node name (default `celery@<hostname>`; `%h` is replaced by the host name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long a warm shutdown waits for running tasks before going cold (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Installs SIGINT/SIGTERM handlers: the first signal is a warm shutdown, the second
    /// a cold one (default off for library use; the CLI turns it on).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Builds the worker.
    pub fn build(self) -> Worker {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let name = self
            .name
            .map(|n| n.replace("%h", &host))
            .unwrap_or_else(|| format!("celery@{host}"));
        let prefetch = self
            .prefetch
            .unwrap_or(self.concurrency * self.app.config().prefetch_multiplier);
        let (tx, _) = watch::channel(Phase::Running);
        Worker {
            app: self.app,
            queues: self.queues,
            concurrency: if self.pool == Pool::Solo {
                1
            } else {
                self.concurrency
            },
            prefetch,
            pool: self.pool,
            name,
            shutdown_timeout: self.shutdown_timeout,
            handle_signals: self.handle_signals,
            limits: self.limits,
            prefork: self.prefork,
            autoscale: self.autoscale,
            stats_interval: self.stats_interval,
            shutdown: ShutdownHandle { tx: Arc::new(tx) },
            stats: Arc::new(WorkerStats::default()),
        }
    }
}

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
    limits: Limits,
    prefork: PreforkOptions,
    autoscale: Option<Autoscale>,
    stats_interval: Duration,
    shutdown: ShutdownHandle,
    stats: Arc<WorkerStats>,
}

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

    /// Runs until shut down; returns the final counters.
    pub async fn run(self) -> Result<WorkerReport, Error> {
        let broker = self.app.broker().clone();
        for q in &self.queues {
            broker.declare_queue(q).await?;
        }
        let consumer = broker
            .consume(ConsumeOptions::new(self.queues.clone(), self.prefetch))
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
        let signals = self
            .handle_signals
            .then(|| spawn_signal_listener(self.shutdown.clone()));
        info!("{} ready.", self.name);
        let shared = Arc::new(JobEnv {
            app: self.app.clone(),
            hostname: self.name.as_str().into(),
            pool: self.pool,
            stats: self.stats.clone(),
            phase: self.shutdown.tx.subscribe(),
            limits: self.limits,
            prefork: prefork.clone(),
            terminators: terminate::Terminators::default(),
            revoked: revoked::Revoked::default(),
        });
        // Remote control, where the broker has fanout exchanges.
        let (revoked_tx, mut revoked_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        let control = if broker.capabilities().fanout {
            match broker.subscribe_fanout(crate::control::PIDBOX).await {
                Ok(sub) => Some(control::spawn(shared.clone(), sub, revoked_tx)),
                Err(e) => {
                    warn!("remote control unavailable ({e}): revoke and ping will not reach this worker");
                    None
                }
            }
        } else {
            None
        };
        let mut state = LoopState {
            shared,
            slots: Arc::new(Semaphore::new(
                self.autoscale.map_or(self.concurrency, |a| a.min),
            )),
            scale: self.autoscale.map(|a| Scaler {
                bounds: a,
                current: a.min,
                idle_since: None,
            }),
            pending: VecDeque::new(),
            held: DelayQueue::new(),
            held_jobs: HashMap::new(),
            next_hold: 0,
            running: JoinSet::new(),
        };
        let mut phase = self.shutdown.tx.subscribe();
        let mut consumer = Some(consumer);
        let heartbeat = spawn_heartbeat(self.name.clone(), self.stats.clone(), self.stats_interval);
        let mut scale_tick = tokio::time::interval(Duration::from_millis(250));
        scale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.stats
            .set_concurrency(self.autoscale.map_or(self.concurrency, |a| a.min));
        let mut broker_down = false;
        loop {
            state.start_pending().await;
            if *phase.borrow_and_update() != Phase::Running {
                break;
            }
            let Some(c) = consumer.as_mut() else { break };
            tokio::select! {
                _ = phase.changed() => {}
                Some(joined) = state.running.join_next(), if !state.running.is_empty() => {
                    // And every other finished job now: one loop turn per batch.
                    let rest = std::iter::from_fn(|| state.running.try_join_next());
                    for e in std::iter::once(joined).chain(rest).filter_map(Result::err) {
                        error!("worker job ended abnormally: {e}");
                    }
                }
                Some(ids) = revoked_rx.recv() => state.drop_revoked(&ids),
                _ = scale_tick.tick(), if state.scale.is_some() => state.autoscale(),
                Some(due) = state.held.next(), if !state.held.is_empty() => {
                    if let Some(job) = state.held_jobs.remove(due.get_ref()) {
                        state.release_or_hold(job);
                    }
                }
                next = c.next() => {
                    if state.take_deliveries(c, next, &mut broker_down) == Consuming::Ended {
                        consumer = None;
                    }
                }
            }
        }
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
        if let Some(pool) = prefork {
            pool.shutdown().await;
        }
        Ok(report)
    }
}

/// The autoscaler's state: the current pool size and since when a slot went unused.
struct Scaler {
    bounds: Autoscale,
    current: usize,
    idle_since: Option<tokio::time::Instant>,
}

struct LoopState {
    shared: Arc<JobEnv>,
    slots: Arc<Semaphore>,
    scale: Option<Scaler>,
    pending: VecDeque<Job>,
    held: DelayQueue<u64>,
    held_jobs: HashMap<u64, Job>,
    next_hold: u64,
    running: JoinSet<()>,
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
                    error!("the broker ended consumption; shutting down");
                    return Consuming::Ended;
                }
            }
            match consumer.try_next() {
                Some(more) => next = Some(more),
                None => return Consuming::Open,
            }
        }
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
            let store = !job
                .msg
                .headers
                .ignore_result
                .unwrap_or(job.task.config().ignore_result);
            self.running
                .spawn(shared.not_run(Some(job.delivery), job.msg, store, reason));
            return;
        }
        self.release_or_hold(job);
    }

    /// One autoscaler step: grow while messages wait for a slot, shrink by one after a
    /// slot went unused for the keepalive.
    fn autoscale(&mut self) {
        let Some(scale) = &mut self.scale else { return };
        let free = self.slots.available_permits();
        if !self.pending.is_empty() && scale.current < scale.bounds.max {
            let grow = self.pending.len().min(scale.bounds.max - scale.current);
            self.slots.add_permits(grow);
            scale.current += grow;
            scale.idle_since = None;
            info!(
                "autoscale: {} → {} slots",
                scale.current - grow,
                scale.current
            );
        } else if self.pending.is_empty() && free > 0 && scale.current > scale.bounds.min {
            let since = *scale
                .idle_since
                .get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= scale.bounds.keepalive {
                if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                    slot.forget();
                    scale.current -= 1;
                    scale.idle_since = None;
                    info!("autoscale: {} → {} slots", scale.current + 1, scale.current);
                    if let Some(pool) = &self.shared.prefork {
                        pool.shrink_to(scale.current);
                    }
                }
            }
        } else {
            scale.idle_since = None;
        }
        self.shared.stats.set_concurrency(scale.current);
    }

    /// Settles the waiting and held jobs a revoke named (REVOKED, acknowledged) at once,
    /// rather than when they would have run.
    fn drop_revoked(&mut self, ids: &[String]) {
        let (revoked, keep): (Vec<Job>, Vec<Job>) = self
            .pending
            .drain(..)
            .partition(|j| ids.contains(&j.msg.headers.id));
        self.pending = keep.into();
        let held: Vec<u64> = self
            .held_jobs
            .iter()
            .filter(|(_, j)| ids.contains(&j.msg.headers.id))
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

    /// Queues a job for a slot, or holds it (without a slot and without counting against
    /// prefetch) until its ETA. Timers are capped, so a far ETA is checked again on expiry.
    fn release_or_hold(&mut self, mut job: Job) {
        match job.msg.headers.eta.filter(|eta| *eta > Utc::now()) {
            Some(eta) => {
                job.delivery.release_prefetch();
                self.next_hold += 1;
                self.held
                    .insert(self.next_hold, celeriac_core::time::until_capped(&eta));
                self.held_jobs.insert(self.next_hold, job);
            }
            None => self.pending.push_back(job),
        }
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

/// Logs the worker's counters every `every` when they changed since the last line.
fn spawn_heartbeat(
    name: String,
    stats: Arc<WorkerStats>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = stats.snapshot();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = stats.snapshot();
            if now == last {
                continue;
            }
            let per_task: Vec<String> = now
                .per_task
                .iter()
                .map(|(t, c)| format!("{t} {}/{}/{}", c.succeeded, c.failed, c.retried))
                .collect();
            info!(
                "{name} stats: {} succeeded, {} failed, {} retried, {} active of {}; per task (ok/failed/retried): {}",
                now.succeeded,
                now.failed,
                now.retried,
                now.active,
                now.concurrency,
                per_task.join(", ")
            );
            last = now;
        }
    })
}

fn spawn_signal_listener(handle: ShutdownHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                error!("cannot install signal handlers; stop the worker another way");
                return;
            };
            let mut count = 0;
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                count += 1;
                if count == 1 {
                    warn!(
                        "{name} received: warm shutdown (a second signal forces a cold shutdown)"
                    );
                    handle.warm();
                } else {
                    warn!("{name} received again: cold shutdown");
                    handle.cold();
                    return;
                }
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_ok() {
                handle.warm();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                handle.cold();
            }
        }
    })
}
