//! The command line: [`run`] gives a user's binary every command with its tasks
//! registered (`worker`, `call`, `result`, `purge`, `inspect queues`, `status`);
//! [`run_tool`] is the stand-alone `celeriac` binary, everything that needs no task code.
//!
//! ```no_run
//! #[celeriac::task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> celeriac::TaskResult<i64> { Ok(x + y) }
//!
//! fn main() {
//!     celeriac::cli::run(celeriac::App::builder().task(add))
//! }
//! // myapp worker -Q celery,q2 -c 8
//! // myapp call tasks.add --args '[2, 3]' --wait 10
//! ```
//!
//! Bad arguments print clap's usage and exit 2; runtime errors print one line
//! (`error: ...`) and exit 1; a task that fails under `--wait` exits 1 with its exception.
//! With no broker configured, the embedded SQLite file `celeriac.sqlite` in the working
//! directory is used, and a line on stderr names it.

mod beat;
mod commands;
mod events;
mod progress;
mod remote;

use std::io::Write;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::app::AppBuilder;
use crate::error::Error;
use crate::execute::Pool;

#[derive(Args, Debug)]
struct Global {
    /// Broker URL [env: CELERIAC_BROKER_URL, CELERY_BROKER_URL] [default: sqlite://celeriac.sqlite]
    #[arg(long, short = 'b', global = true)]
    broker: Option<String>,
    /// Result backend URL [env: CELERIAC_RESULT_BACKEND, CELERY_RESULT_BACKEND] [default: the broker's]
    #[arg(long, global = true)]
    backend: Option<String>,
}

/// A user's binary: every command, with the binary's tasks.
#[derive(Parser, Debug)]
#[command(version, about = "celeriac: run workers, send tasks and read results", long_about = None)]
struct AppCli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: AppCommand,
}

/// The stand-alone `celeriac` binary: everything that needs no task code.
#[derive(Parser, Debug)]
#[command(
    name = "celeriac",
    version,
    about = "celeriac: send tasks by name, read results, inspect and purge queues — on SQLite, Redis or memory",
    long_about = None
)]
struct ToolCli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Common,
}

#[derive(Subcommand, Debug)]
enum AppCommand {
    /// Run a worker.
    Worker(WorkerArgs),
    #[command(flatten)]
    Common(Common),
}

#[derive(Subcommand, Debug)]
enum Common {
    /// Send a task by name (or many, from a JSON-lines file).
    Call(CallArgs),
    /// Show (or wait for) a task's result.
    Result(ResultArgs),
    /// Delete every waiting message in a queue.
    Purge(PurgeArgs),
    /// Revoke tasks on every worker (they will not run; with --terminate, running ones stop).
    Revoke(RevokeArgs),
    /// Ask workers (Celery's `inspect`), or look at the broker's queues.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Steer workers (Celery's `control`): revoke, rate and time limits, queues, pool size,
    /// events, shutdown.
    #[command(subcommand)]
    Control(ControlCommand),
    /// Watch the cluster's events: a live view of workers and tasks, or every event as a
    /// JSON line (--dump).
    Events(EventsArgs),
    /// Send periodic tasks: the app's (`AppBuilder::periodic`) and a schedule file's;
    /// any number of beat processes send each due run once.
    Beat(BeatArgs),
    /// Show what this command connects to.
    Status,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// Queues to consume, comma separated.
    #[arg(short = 'Q', long, value_delimiter = ',')]
    queues: Vec<String>,
    /// Most tasks running at once [default: number of CPUs].
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Log level: trace, debug, info, warning, error.
    #[arg(short = 'l', long, default_value = "info")]
    loglevel: String,
    /// Node name (`%h` = host name; `celery@` is added to a name without `@`) [default: celery@<host>].
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// Most unacknowledged messages held [default: concurrency × 4]; at least 1.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    prefetch: Option<usize>,
    /// Largest message body accepted, in bytes; larger ones are rejected with a FAILURE.
    #[arg(long, default_value_t = crate::worker::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// Most messages held in memory for their ETA; at the limit, fetching pauses.
    #[arg(long, default_value_t = crate::worker::DEFAULT_MAX_HELD_ETA)]
    max_held_eta: usize,
    /// Where tasks run: async, threads, prefork (child processes) or solo.
    #[arg(long, default_value = "async")]
    pool: Pool,
    /// Seconds between the worker's stats lines in the log (when anything changed).
    #[arg(long, default_value = "60", value_parser = seconds)]
    stats_interval: Duration,
    /// Grow up to MAX tasks at once while messages wait, shrink back to MIN when idle.
    #[arg(long, value_name = "MAX,MIN", value_parser = autoscale)]
    autoscale: Option<(usize, usize)>,
    /// Prefork: replace a child process after this many tasks.
    #[arg(long)]
    max_tasks_per_child: Option<u64>,
    /// Prefork: replace a child process whose resident memory passes this many KiB.
    #[arg(long)]
    max_memory_per_child: Option<u64>,
    /// Seconds a warm shutdown waits for running tasks.
    #[arg(long, default_value = "30", value_parser = seconds)]
    shutdown_timeout: Duration,
    /// Hard time limit in seconds for tasks that set none.
    #[arg(long, value_parser = seconds)]
    time_limit: Option<Duration>,
    /// Soft time limit in seconds for tasks that set none.
    #[arg(long, value_parser = seconds)]
    soft_time_limit: Option<Duration>,
    /// Send task events (for Flower and `celery events`) [env: CELERY_WORKER_SEND_TASK_EVENTS].
    #[arg(short = 'E', long)]
    task_events: bool,
    /// Do not ask the other workers for their revoked task ids at start-up.
    #[arg(long)]
    without_mingle: bool,
    /// Keep the revoked task ids in this file across restarts.
    #[arg(short = 'S', long, value_name = "FILE")]
    statedb: Option<std::path::PathBuf>,
    /// Run beat in this worker too (the app's periodic tasks; safe in every worker: one
    /// leader sends each run).
    #[arg(short = 'B', long)]
    beat: bool,
    /// With -B: a schedule file to send besides the app's periodic tasks.
    #[arg(long, value_name = "FILE", requires = "beat")]
    schedule: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct BeatArgs {
    /// Schedule file (TOML, one [schedule.NAME] table per entry); needed when the app
    /// registers no periodic tasks (the stand-alone `celeriac` binary).
    #[arg(short = 's', long, value_name = "FILE")]
    schedule: Option<std::path::PathBuf>,
    /// Print each entry's last run and next due times, and exit.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: how many due times per entry.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Lease period in seconds: a dead leader is replaced within it.
    #[arg(long, default_value = "5", value_parser = seconds)]
    lease: Duration,
    /// Schedule name: beat processes with the same name take turns.
    #[arg(long, default_value = crate::beat::DEFAULT_SCHEDULE)]
    name: String,
    /// Log level: trace, debug, info, warning, error.
    #[arg(short = 'l', long, default_value = "info")]
    loglevel: String,
}

#[derive(Args, Debug)]
struct CallArgs {
    /// Task name.
    #[arg(required_unless_present = "from_file")]
    name: Option<String>,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]", value_parser = json_array)]
    args: JsonArray,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}", value_parser = json_object)]
    kwargs: serde_json::Map<String, Value>,
    /// Queue to send to instead of the routed one.
    #[arg(long)]
    queue: Option<String>,
    /// Seconds to wait before the task may run.
    #[arg(long, value_parser = seconds)]
    countdown: Option<Duration>,
    /// Priority 0..=9 (0 is served first on Redis, SQLite and memory://).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Wait up to this many seconds for the result(s) and print them.
    #[arg(long, value_parser = seconds)]
    wait: Option<Duration>,
    /// Send every task of a JSON-lines file (`-` for stdin): one object per line with
    /// `name`, and optionally `args`, `kwargs`, `queue`, `countdown`, `eta`, `expires`,
    /// `priority`, `task_id`.
    #[arg(long, conflicts_with_all = ["name", "args", "kwargs"])]
    from_file: Option<String>,
}

#[derive(Args, Debug)]
struct ResultArgs {
    /// Task id.
    id: String,
    /// Wait up to this many seconds for the task to finish.
    #[arg(long, value_parser = seconds)]
    wait: Option<Duration>,
}

#[derive(Args, Debug)]
struct PurgeArgs {
    /// Queue name.
    queue: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'f', visible_alias = "force")]
    yes: bool,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    /// Task ids.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Stop the tasks if they are running (prefork: the child is killed).
    #[arg(long)]
    terminate: bool,
}

#[derive(Args, Debug, Clone)]
struct ReplyArgs {
    /// Seconds to wait for replies.
    #[arg(long, short = 't', default_value = "1", value_parser = seconds, global = true)]
    timeout: Duration,
    /// Only these workers (node names, comma separated).
    #[arg(long, short = 'd', value_delimiter = ',', global = true)]
    destination: Vec<String>,
    /// Print the replies as one JSON object (`{node: reply}`).
    #[arg(long, short = 'j', global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum InspectCommand {
    /// Messages waiting in each queue (the broker, not the workers).
    Queues,
    /// Which workers answer.
    Ping(ReplyArgs),
    /// Each worker's statistics (pool, broker, totals, uptime, rusage).
    Stats(ReplyArgs),
    /// The tasks each worker has registered.
    Registered(ReplyArgs),
    /// The tasks each worker runs now.
    Active(ReplyArgs),
    /// The tasks each worker received and has not started.
    Reserved(ReplyArgs),
    /// The tasks each worker holds for their ETA or countdown.
    Scheduled(ReplyArgs),
    /// The task ids each worker holds as revoked.
    Revoked(ReplyArgs),
    /// The queues each worker consumes.
    #[command(name = "active_queues", visible_alias = "active-queues")]
    ActiveQueues(ReplyArgs),
    /// Where given tasks are on each worker (active, reserved, scheduled).
    #[command(name = "query_task", visible_alias = "query-task")]
    QueryTask(QueryArgs),
    /// Each worker's settings.
    Conf(ReplyArgs),
    /// Each worker's software and platform.
    Report(ReplyArgs),
    /// Each worker's Lamport clock.
    Clock(ReplyArgs),
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// Task ids.
    #[arg(required = true)]
    ids: Vec<String>,
    #[command(flatten)]
    reply: ReplyArgs,
}

#[derive(Subcommand, Debug)]
enum ControlCommand {
    /// Revoke tasks: they will not run; with --terminate, running ones stop.
    Revoke {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Stop the tasks if they are running.
        #[arg(long)]
        terminate: bool,
        /// The signal for --terminate (prefork children get it).
        #[arg(long, default_value = "SIGTERM")]
        signal: String,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Stop running tasks (Celery's `terminate SIGNAL ID…`).
    Terminate {
        /// The signal (SIGTERM, SIGKILL, …).
        signal: String,
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Limit how often a task starts on each worker: "10/s", "10/m", "10/h" ("0" lifts it).
    #[command(name = "rate_limit", visible_alias = "rate-limit")]
    RateLimit {
        /// Task name.
        task: String,
        /// The rate.
        rate: String,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Set a task's soft and hard time limits (seconds).
    #[command(name = "time_limit", visible_alias = "time-limit")]
    TimeLimit {
        /// Task name.
        task: String,
        /// Soft limit.
        soft: f64,
        /// Hard limit.
        hard: Option<f64>,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Start consuming a queue.
    #[command(name = "add_consumer", visible_alias = "add-consumer")]
    AddConsumer {
        /// Queue name.
        queue: String,
        /// Exchange [default: the queue's].
        exchange: Option<String>,
        /// Exchange type: direct, topic, fanout, headers.
        exchange_type: Option<String>,
        /// Routing key [default: the queue name].
        routing_key: Option<String>,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Stop consuming a queue.
    #[command(name = "cancel_consumer", visible_alias = "cancel-consumer")]
    CancelConsumer {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Let each worker run N more tasks at once.
    #[command(name = "pool_grow", visible_alias = "pool-grow")]
    PoolGrow {
        /// How many.
        #[arg(default_value = "1")]
        n: u32,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Let each worker run N fewer tasks at once.
    #[command(name = "pool_shrink", visible_alias = "pool-shrink")]
    PoolShrink {
        /// How many.
        #[arg(default_value = "1")]
        n: u32,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// New autoscale bounds, for workers started with --autoscale.
    Autoscale {
        /// Most tasks at once.
        max: u32,
        /// Fewest.
        min: u32,
        #[command(flatten)]
        reply: ReplyArgs,
    },
    /// Turn task events on.
    #[command(name = "enable_events", visible_alias = "enable-events")]
    EnableEvents(ReplyArgs),
    /// Turn task events off.
    #[command(name = "disable_events", visible_alias = "disable-events")]
    DisableEvents(ReplyArgs),
    /// Ask for a heartbeat event now.
    Heartbeat(ReplyArgs),
    /// Shut workers down (warm: running tasks finish).
    Shutdown(ReplyArgs),
}

#[derive(Args, Debug)]
struct EventsArgs {
    /// Print every event as one JSON line instead of the live view.
    #[arg(long)]
    dump: bool,
    /// Stop after this many seconds.
    #[arg(long, value_parser = seconds)]
    duration: Option<Duration>,
}

/// A JSON array argument (a newtype, so clap does not read `Vec` as "repeatable").
#[derive(Clone, Debug)]
struct JsonArray(Vec<Value>);

fn json_array(text: &str) -> Result<JsonArray, String> {
    match serde_json::from_str(text) {
        Ok(Value::Array(a)) => Ok(JsonArray(a)),
        Ok(_) => Err("expected a JSON array, like '[2, 3]'".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

fn json_object(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("expected a JSON object, like '{\"x\": 1}'".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

fn autoscale(text: &str) -> Result<(usize, usize), String> {
    let bad = || "expected MAX,MIN with MAX ≥ MIN ≥ 1, like 10,3".to_string();
    let (max, min) = text.split_once(',').ok_or_else(bad)?;
    let (max, min): (usize, usize) = (
        max.trim().parse().map_err(|_| bad())?,
        min.trim().parse().map_err(|_| bad())?,
    );
    if min == 0 || max < min {
        return Err(bad());
    }
    Ok((max, min))
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| "expected a non-negative number of seconds".to_string())
}

/// Parses the process's arguments, runs the command with `app`'s tasks, and exits.
pub fn run(app: AppBuilder) -> ! {
    exit(run_with_args(app, std::env::args_os()))
}

/// The stand-alone `celeriac` binary: parses the arguments, runs, and exits.
pub fn run_tool() -> ! {
    exit(run_tool_with_args(std::env::args_os()))
}

fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Like [`run`], with explicit arguments, returning the exit code instead of exiting.
pub fn run_with_args<I, T>(app: AppBuilder, args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // A prefork worker starts this same binary as its child processes.
    let app = crate::worker::prefork::run_child_if_requested(app);
    match AppCli::try_parse_from(args) {
        Ok(cli) => {
            let level = match &cli.command {
                AppCommand::Worker(w) => w.loglevel.clone(),
                AppCommand::Common(Common::Beat(b)) => b.loglevel.clone(),
                AppCommand::Common(_) => "warn".into(),
            };
            execute(app, cli.global, &level, move |app| async move {
                match cli.command {
                    AppCommand::Worker(w) => commands::worker(app, w).await,
                    AppCommand::Common(c) => commands::common(app, c).await,
                }
            })
        }
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
    }
}

/// Like [`run_tool`], with explicit arguments, returning the exit code.
pub fn run_tool_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match ToolCli::try_parse_from(args) {
        Ok(cli) => {
            let level = match &cli.command {
                Common::Beat(b) => b.loglevel.clone(),
                _ => "warn".into(),
            };
            execute(
                crate::App::builder(),
                cli.global,
                &level,
                move |app| async move { commands::common(app, cli.command).await },
            )
        }
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
    }
}

fn execute<F, Fut>(mut builder: AppBuilder, global: Global, level: &str, command: F) -> i32
where
    F: FnOnce(crate::App) -> Fut,
    Fut: std::future::Future<Output = Result<i32, Error>>,
{
    if let Err(e) = init_logging(level) {
        eprintln!("error: {e}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    if let Some(b) = global.broker {
        builder = builder.broker_url(b);
    }
    if let Some(b) = global.backend {
        builder = builder.result_backend_url(b);
    }
    let defaulted = builder.broker_is_default();
    let code = runtime.block_on(async move {
        let app = match builder.build().await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        if defaulted {
            eprintln!("celeriac: no broker configured; using {}", app.broker_url());
        }
        match command(app).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    });
    // Do not wait for abandoned blocking task threads.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

fn init_logging(level: &str) -> Result<(), String> {
    let level = match level.to_ascii_lowercase().as_str() {
        "warning" | "warn" => "warn",
        "critical" | "fatal" => "error",
        l @ ("trace" | "debug" | "info" | "error") => l,
        other => {
            return Err(format!(
                "unknown log level `{other}` (expected debug, info, warning, error)"
            ))
        }
    }
    .to_string();
    let filter = std::env::var("RUST_LOG").unwrap_or(level);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}
