//! [`WorkerBuilder`]: a worker's options (queues, concurrency, prefetch, pool, limits,
//! autoscaling, shutdown) and their defaults.

use std::sync::Arc;
use std::time::Duration;

use super::autoscale::Autoscale;
use super::prefork::PreforkOptions;
use super::{ShutdownHandle, Worker, WorkerStats};
use crate::app::App;
use crate::execute::{Limits, Pool};

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
    print_banner: bool,
    limits: Limits,
    prefork: PreforkOptions,
    autoscale: Option<Autoscale>,
    stats_interval: Duration,
    max_message_size: usize,
    max_held_eta: usize,
    task_events: Option<bool>,
    mingle: bool,
    statedb: Option<std::path::PathBuf>,
}

/// Default [`WorkerBuilder::max_message_size`]: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;
/// Default [`WorkerBuilder::max_held_eta`].
pub const DEFAULT_MAX_HELD_ETA: usize = 100_000;

impl App {
    /// A worker for this app, to configure and run.
    pub fn worker(&self) -> WorkerBuilder {
        WorkerBuilder::new(self.clone())
    }
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
            print_banner: false,
            limits: Limits::default(),
            prefork: PreforkOptions::default(),
            autoscale: None,
            stats_interval: Duration::from_secs(60),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_held_eta: DEFAULT_MAX_HELD_ETA,
            task_events: None,
            mingle: true,
            statedb: None,
        }
    }

    /// Largest message body accepted, in bytes (default 64 MiB). A larger one is rejected
    /// unread, with a logged reason and a FAILURE (`MessageTooLarge`) stored under its
    /// task id, so one oversized message cannot take the worker's memory.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// Most messages held in memory for their ETA (default 100,000). At the limit the
    /// worker stops fetching until some fall due (or are revoked), so a flood of
    /// far-future ETAs cannot take its memory; brokers that hold ETAs themselves
    /// (SQLite) never reach it.
    pub fn max_held_eta(mut self, n: usize) -> Self {
        self.max_held_eta = n.max(1);
        self
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

    /// Send task events (`-E`, `--task-events`): `task-received`, `task-started`,
    /// `task-succeeded`, … for Flower and `celery events`. Default: the app's
    /// [`Config::task_events`](crate::Config::task_events). Worker events (online,
    /// heartbeat, offline) are sent either way; `enable_events` / `disable_events`
    /// switch task events while the worker runs.
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = Some(on);
        self
    }

    /// Mingle at start-up (default on, as Celery's; `--without-mingle` turns it off): ask
    /// the other workers for the task ids they hold as revoked (Celery's `hello`), for up
    /// to a second, before taking any task — so a task revoked before this worker started
    /// does not run here. Only on brokers shared between processes.
    pub fn mingle(mut self, on: bool) -> Self {
        self.mingle = on;
        self
    }

    /// Keep the revoked task ids in this file across restarts (Celery's `--statedb`):
    /// read at start, written after every revoke and at shutdown.
    pub fn statedb(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.statedb = Some(path.into());
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
    /// prefetch multiplier). Always a limit: 0 (here, or a multiplier of 0) is not taken
    /// for "no limit" — a worker fetching without one holds its whole queue in memory —
    /// but for the default, with a warning.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Where task bodies run.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = pool;
        self
    }

    /// Node name (default `celery@<hostname>`; `%h` is replaced by the host name, and a
    /// name without `@` gets Celery's `celery@` in front: `workerA.%h` is
    /// `celery@workerA.<host>`, as Celery's `default_nodename` makes it).
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

    /// Prints the [banner](Worker::banner) to stdout when [`Worker::run`] starts, once
    /// its signal handlers are in place — so whoever waits for the banner may signal the
    /// worker (default off; the CLI turns it on).
    pub fn print_banner(mut self, on: bool) -> Self {
        self.print_banner = on;
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
            .map(|n| {
                if n.contains('@') {
                    n
                } else {
                    format!("celery@{n}")
                }
            })
            .unwrap_or_else(|| format!("celery@{host}"));
        let default_prefetch = self.concurrency * self.app.config().prefetch_multiplier.max(1);
        let prefetch = match self.prefetch {
            None if self.app.config().prefetch_multiplier == 0 => {
                tracing::warn!(
                    "a prefetch multiplier of 0 does not mean \"no limit\" here; prefetching {default_prefetch} (concurrency × 1)"
                );
                default_prefetch
            }
            None => default_prefetch,
            Some(0) => {
                tracing::warn!(
                    "prefetch 0 does not mean \"no limit\" here; prefetching {default_prefetch} (the default)"
                );
                default_prefetch
            }
            Some(n) => n,
        };
        let task_events = self.task_events.unwrap_or(self.app.config().task_events);
        Worker {
            task_events,
            mingle: self.mingle,
            statedb: self.statedb,
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
            print_banner: self.print_banner,
            limits: self.limits,
            prefork: self.prefork,
            autoscale: self.autoscale,
            stats_interval: self.stats_interval,
            max_message_size: self.max_message_size,
            max_held_eta: self.max_held_eta,
            shutdown: ShutdownHandle::new(),
            stats: Arc::new(WorkerStats::default()),
        }
    }
}
