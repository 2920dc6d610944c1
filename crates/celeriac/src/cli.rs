//! `celeriac::cli::run(app)`: a whole command line for a user's binary, with its tasks
//! registered — `worker`, `call`, `result`, `purge`, `inspect queues`.
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

use std::io::Write;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::app::{App, AppBuilder};
use crate::error::Error;
use crate::execute::Pool;
use crate::result::AsyncResult;

#[derive(Parser, Debug)]
#[command(version, about = "celeriac: run workers, send tasks and read results", long_about = None)]
struct Cli {
    /// Broker URL [env: CELERIAC_BROKER_URL, CELERY_BROKER_URL] [default: memory://]
    #[arg(long, short = 'b', global = true)]
    broker: Option<String>,
    /// Result backend URL [env: CELERIAC_RESULT_BACKEND, CELERY_RESULT_BACKEND]
    #[arg(long, global = true)]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker.
    Worker(WorkerArgs),
    /// Send a task by name.
    Call(CallArgs),
    /// Show (or wait for) a task's result.
    Result(ResultArgs),
    /// Delete every waiting message in a queue.
    Purge(PurgeArgs),
    /// Inspect the broker.
    #[command(subcommand)]
    Inspect(InspectCommand),
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
    /// Node name (`%h` = host name) [default: celery@<host>].
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// Most unacknowledged messages held [default: concurrency × 4].
    #[arg(long)]
    prefetch: Option<usize>,
    /// Where tasks run: async or threads.
    #[arg(long, default_value = "async")]
    pool: Pool,
    /// Seconds a warm shutdown waits for running tasks.
    #[arg(long, default_value = "30", value_parser = seconds)]
    shutdown_timeout: Duration,
}

#[derive(Args, Debug)]
struct CallArgs {
    /// Task name.
    name: String,
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
    /// Priority 0..=9.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
    /// Wait up to this many seconds for the result and print it.
    #[arg(long, value_parser = seconds)]
    wait: Option<Duration>,
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
}

#[derive(Subcommand, Debug)]
enum InspectCommand {
    /// Messages waiting in each queue.
    Queues,
}

/// Parses the process's arguments, runs the command with `app`'s tasks, and exits.
pub fn run(app: AppBuilder) -> ! {
    let code = run_with_args(app, std::env::args_os());
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Like [`run`], with explicit arguments, returning the exit code instead of exiting.
pub fn run_with_args<I, T>(app: AppBuilder, args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let level = match &cli.command {
        Command::Worker(w) => w.loglevel.clone(),
        _ => "warn".to_string(),
    };
    if let Err(e) = init_logging(&level) {
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
    let code = runtime.block_on(async move {
        let mut app = app;
        if let Some(b) = cli.broker {
            app = app.broker_url(b);
        }
        if let Some(b) = cli.backend {
            app = app.result_backend_url(b);
        }
        match execute(app, cli.command).await {
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
        .try_init();
    Ok(())
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

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| "expected a non-negative number of seconds".to_string())
}

async fn execute(builder: AppBuilder, command: Command) -> Result<i32, Error> {
    let app = builder.build().await?;
    match command {
        Command::Worker(w) => worker(app, w).await,
        Command::Call(c) => call(app, c).await,
        Command::Result(r) => {
            let res = app.async_result(r.id);
            show(&res, r.wait).await
        }
        Command::Purge(p) => {
            let n = app.broker().purge(&p.queue).await?;
            println!(
                "purged {n} message{} from `{}`",
                if n == 1 { "" } else { "s" },
                p.queue
            );
            Ok(0)
        }
        Command::Inspect(InspectCommand::Queues) => {
            let queues = app.broker().queues().await?;
            println!("{:<30} {:>10}", "QUEUE", "MESSAGES");
            for q in queues {
                println!("{:<30} {:>10}", q, app.broker().queue_depth(&q).await?);
            }
            Ok(0)
        }
    }
}

async fn worker(app: App, w: WorkerArgs) -> Result<i32, Error> {
    let mut builder = app
        .worker()
        .pool(w.pool)
        .handle_signals(true)
        .shutdown_timeout(w.shutdown_timeout);
    if !w.queues.is_empty() {
        builder = builder.queues(w.queues);
    }
    if let Some(c) = w.concurrency {
        builder = builder.concurrency(c);
    }
    if let Some(p) = w.prefetch {
        builder = builder.prefetch(p);
    }
    if let Some(n) = w.hostname {
        builder = builder.name(n);
    }
    let worker = builder.build();
    println!("{}", worker.banner());
    let report = worker.run().await?;
    let s = report.stats;
    eprintln!(
        "worker stopped: {} succeeded, {} failed, {} retried, {} rejected, {} revoked; {} message(s) returned to the queue",
        s.succeeded, s.failed, s.retried, s.rejected, s.revoked, report.returned
    );
    Ok(0)
}

async fn call(app: App, c: CallArgs) -> Result<i32, Error> {
    let mut sig = crate::Signature::new(c.name)
        .args(c.args.0)
        .kwargs(c.kwargs);
    if let Some(q) = c.queue {
        sig = sig.queue(q);
    }
    if let Some(cd) = c.countdown {
        sig = sig.countdown(cd.as_secs_f64());
    }
    if let Some(p) = c.priority {
        sig = sig.priority(p);
    }
    let res = sig.apply_async(&app).await?;
    match c.wait {
        None => {
            println!("{}", res.id());
            Ok(0)
        }
        Some(w) => {
            eprintln!("sent {}", res.id());
            show(&res, Some(w)).await
        }
    }
}

/// Prints a result: the value for SUCCESS; the state otherwise. Exit 1 on FAILURE/REVOKED.
async fn show(res: &AsyncResult, wait: Option<Duration>) -> Result<i32, Error> {
    let meta = match wait {
        Some(w) => res.wait(w).await?,
        None => res.info().await?,
    };
    if !meta.status.is_ready() {
        println!("{}", meta.status);
        return Ok(0);
    }
    let status = meta.status.clone();
    match crate::result::into_result::<Value>(meta) {
        Ok(v) => {
            println!("{v}");
            Ok(0)
        }
        Err(e) => {
            println!("{status}");
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}
