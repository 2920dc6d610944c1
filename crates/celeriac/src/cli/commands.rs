//! What each command does, once the app is connected.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::progress::Progress;
use super::{CallArgs, Common, PurgeArgs, WorkerArgs};
use crate::app::App;
use crate::error::Error;
use crate::result::AsyncResult;
use crate::Signature;

/// Messages sent per `send_many` batch by `call --from-file`.
const BATCH: usize = 1_000;

pub(super) async fn worker(app: App, w: WorkerArgs) -> Result<i32, Error> {
    let mut builder = app
        .worker()
        .pool(w.pool)
        .handle_signals(true)
        .print_banner(true)
        .shutdown_timeout(w.shutdown_timeout)
        .stats_interval(w.stats_interval);
    if !w.queues.is_empty() {
        builder = builder.queues(w.queues);
    }
    if let Some(c) = w.concurrency {
        builder = builder.concurrency(c);
    }
    if let Some(p) = w.prefetch {
        builder = builder.prefetch(p);
    }
    builder = builder
        .max_message_size(w.max_message_size)
        .max_held_eta(w.max_held_eta);
    if let Some(n) = w.hostname {
        builder = builder.name(n);
    }
    if let Some((max, min)) = w.autoscale {
        builder = builder.autoscale(max, min);
    }
    if let Some(n) = w.max_tasks_per_child {
        builder = builder.max_tasks_per_child(n);
    }
    if let Some(kib) = w.max_memory_per_child {
        builder = builder.max_memory_per_child(kib);
    }
    if let Some(t) = w.time_limit {
        builder = builder.time_limit(t.as_secs_f64());
    }
    if let Some(t) = w.soft_time_limit {
        builder = builder.soft_time_limit(t.as_secs_f64());
    }
    if w.task_events {
        builder = builder.task_events(true);
    }
    if w.without_mingle {
        builder = builder.mingle(false);
    }
    if let Some(path) = w.statedb {
        builder = builder.statedb(path);
    }
    // -B: beat checked before the worker starts (a bad schedule stops nothing running).
    let beat = if w.beat {
        Some(super::beat::builder(&app, w.schedule.as_deref())?.build()?)
    } else {
        None
    };
    let worker = builder.build();
    let (stop_beat, beat_stopped) = tokio::sync::oneshot::channel();
    let beat = beat.map(|b| super::beat::spawn_embedded(b, beat_stopped));
    let report = worker.run().await;
    if let Some(task) = beat {
        let _ = stop_beat.send(());
        let _ = tokio::time::timeout(super::beat::EMBEDDED_STOP, task).await;
    }
    let report = report?;
    let s = report.stats;
    eprintln!(
        "worker stopped: {} succeeded, {} failed, {} retried, {} rejected, {} revoked; {} message(s) returned to the queue",
        s.succeeded, s.failed, s.retried, s.rejected, s.revoked, report.returned
    );
    Ok(0)
}

pub(super) async fn common(app: App, command: Common) -> Result<i32, Error> {
    match command {
        Common::Call(c) => match c.from_file.clone() {
            Some(path) => call_many(app, &path, c.wait).await,
            None => call(app, c).await,
        },
        Common::Result(r) => {
            let res = app.async_result(r.id);
            show(&res, r.wait).await
        }
        Common::Purge(p) => purge(app, p).await,
        Common::Status => status(app).await,
        Common::Revoke(r) => {
            let ids: Vec<&str> = r.ids.iter().map(String::as_str).collect();
            app.control().revoke(&ids, r.terminate).await?;
            println!(
                "revoked {} task{}{}",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                if r.terminate {
                    " (terminating running ones)"
                } else {
                    ""
                }
            );
            Ok(0)
        }
        Common::Inspect(i) => super::remote::inspect(app, i).await,
        Common::Control(c) => super::remote::control(app, c).await,
        Common::Events(e) => super::events::run(app, e).await,
        Common::Beat(b) => super::beat::run(app, b).await,
    }
}

async fn call(app: App, c: CallArgs) -> Result<i32, Error> {
    let Some(name) = c.name else {
        return Err(Error::Input(
            "a task name or --from-file is required".into(),
        ));
    };
    let mut sig = Signature::new(name).args(c.args.0).kwargs(c.kwargs);
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

/// One line of a `--from-file` file: a task name and `apply_async` options.
fn signature_of(line_no: usize, line: &str) -> Result<Signature, Error> {
    let bad = |reason: String| Error::Input(format!("line {line_no}: {reason}"));
    let Value::Object(mut obj) =
        serde_json::from_str::<Value>(line).map_err(|e| bad(format!("not JSON: {e}")))?
    else {
        return Err(bad(
            "expected a JSON object like {\"name\": \"tasks.add\", \"args\": [2, 3]}".into(),
        ));
    };
    let name = match obj.remove("name").or_else(|| obj.remove("task")) {
        Some(Value::String(n)) if !n.is_empty() => n,
        _ => return Err(bad("no task `name`".into())),
    };
    let args = match obj.remove("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("`args` must be an array".into())),
    };
    let kwargs = match obj.remove("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(k)) => k,
        Some(_) => return Err(bad("`kwargs` must be an object".into())),
    };
    let mut sig = Signature::new(name).args(args).kwargs(kwargs);
    // Anything else is an apply_async option (queue, countdown, eta, expires, priority, ...).
    for (k, v) in obj {
        sig = sig.set_option(k, v);
    }
    Ok(sig)
}

async fn call_many(app: App, path: &str, wait: Option<Duration>) -> Result<i32, Error> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::Input(format!("cannot read {path}: {e}")))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut sigs = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::Input(format!("cannot read {path}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        sigs.push(signature_of(i + 1, &line)?);
    }
    let total = sigs.len() as u64;
    let mut sent = Progress::new("sent", total);
    let mut results: Vec<AsyncResult> = Vec::with_capacity(sigs.len());
    let mut rest = sigs;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(BATCH));
        let batch = app.send_many(rest).await?;
        sent.add(batch.len() as u64);
        if wait.is_none() {
            let mut out = std::io::stdout().lock();
            for r in &batch {
                let _ = writeln!(out, "{}", r.id());
            }
        }
        results.extend(batch);
        rest = tail;
    }
    sent.finish();
    let Some(wait) = wait else { return Ok(0) };
    let mut finished = Progress::new("finished", total);
    let deadline = tokio::time::Instant::now() + wait;
    let (mut ok, mut failed, mut late) = (0u64, 0u64, 0u64);
    for r in &results {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = match r.get::<Value>(left).await {
            Ok(v) => {
                ok += 1;
                json!({"id": r.id(), "state": "SUCCESS", "result": v})
            }
            Err(e) if e.is_timeout() => {
                late += 1;
                json!({"id": r.id(), "state": "PENDING", "error": e.to_string()})
            }
            Err(e) => {
                failed += 1;
                let state = if matches!(e, Error::TaskRevoked { .. }) {
                    "REVOKED"
                } else {
                    "FAILURE"
                };
                json!({"id": r.id(), "state": state, "error": e.to_string()})
            }
        };
        println!("{line}");
        finished.add(1);
    }
    finished.finish();
    eprintln!("{ok} succeeded, {failed} failed, {late} not finished within {wait:?}");
    Ok(if failed + late > 0 { 1 } else { 0 })
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

async fn purge(app: App, p: PurgeArgs) -> Result<i32, Error> {
    let waiting = app.broker().queue_depth(&p.queue).await?;
    if !p.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Input(format!(
                "refusing to purge `{}` ({waiting} messages) without --yes: stdin is not a terminal to ask on",
                p.queue
            )));
        }
        eprint!("Delete every waiting message of queue `{}` ({waiting} messages)? There is no undo. [y/N] ", p.queue);
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("not purged");
            return Ok(1);
        }
    }
    let mut progress = Progress::new("purged", waiting);
    let n = app.broker().purge(&p.queue).await?;
    progress.add(n.min(waiting));
    progress.finish();
    println!(
        "purged {n} message{} from `{}`",
        if n == 1 { "" } else { "s" },
        p.queue
    );
    Ok(0)
}

async fn status(app: App) -> Result<i32, Error> {
    let caps = app.broker().capabilities();
    let mut has = Vec::new();
    for (on, what) in [
        (caps.priorities, "priorities"),
        (caps.native_delay, "delayed delivery"),
        (caps.fanout, "fanout"),
        (caps.durable, "durable"),
        (caps.shared, "shared between processes"),
    ] {
        if on {
            has.push(what);
        }
    }
    let queues = app.broker().queues().await?;
    let mut waiting = 0;
    for q in &queues {
        waiting += app.broker().queue_depth(q).await?;
    }
    println!("broker:  {} ({})", app.broker_url(), has.join(", "));
    println!("results: {}", app.backend_url());
    println!("queues:  {} ({waiting} messages waiting)", queues.len());
    Ok(0)
}
