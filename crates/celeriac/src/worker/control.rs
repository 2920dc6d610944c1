//! The worker's side of remote control: it listens on the `celery.pidbox` fanout and
//! answers every command a Celery 5.7 worker answers — inspect (`ping`, `stats`,
//! `registered`, `active`, `reserved`, `scheduled`, `query_task`, `revoked`,
//! `active_queues`, `conf`, `report`, `clock`, `hello`) and control (`revoke`,
//! `terminate`, `rate_limit`, `time_limit`, `add_consumer`, `cancel_consumer`,
//! `pool_grow`, `pool_shrink`, `autoscale`, `enable_events`, `disable_events`,
//! `heartbeat`, `shutdown`) — with Celery's reply shapes, for celeriac's clients,
//! Python's `celery inspect`/`control` and Flower alike.
//!
//! What the worker loop owns (the messages waiting for a slot or their ETA, the
//! consumer, the pool size) is asked for through a [`LoopRequest`]; the rest is read
//! from the shared [`JobEnv`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use celeriac_core::routing::{ExchangeType, QueueSpec};
use celeriac_core::Subscription;

use super::job::JobEnv;
use super::overrides::Rate;
use super::ShutdownHandle;
use crate::control::{reply_message, Command};
use crate::events::EventKind;
use crate::execute::{Limits, Pool};

/// What the control loop asks of the worker loop.
pub(super) enum LoopRequest {
    /// Settle these revoked ids if the worker holds them.
    Revoked(Vec<String>),
    /// Settle what the revoked stamps now cover, if the worker holds it.
    RevokedStamps,
    /// The messages waiting for a slot and those held for their ETA.
    Held(oneshot::Sender<Held>),
    /// Start consuming a queue (declared first).
    AddConsumer(QueueSpec, oneshot::Sender<Value>),
    /// Stop consuming a queue.
    CancelConsumer(String, oneshot::Sender<Value>),
    /// Grow (positive) or shrink (negative) the pool.
    Resize(i64, oneshot::Sender<Value>),
    /// New autoscale bounds (max, min).
    Autoscale(usize, usize, oneshot::Sender<Value>),
}

/// Request-info objects of what the worker holds, unstarted.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Received, waiting for a slot (Celery's "reserved").
    pub(super) reserved: Vec<Value>,
    /// Held for their ETA: `{"eta", "priority", "request"}` (Celery's "scheduled").
    pub(super) scheduled: Vec<Value>,
}

/// What remote control knows of the worker beyond its jobs' environment.
pub(super) struct Node {
    pub(super) env: Arc<JobEnv>,
    pub(super) to_loop: mpsc::UnboundedSender<LoopRequest>,
    pub(super) shutdown: ShutdownHandle,
    pub(super) started: std::time::Instant,
    pub(super) prefetch: usize,
    pub(super) max_tasks_per_child: Option<u64>,
    /// Where the revoked ids are kept across restarts (`--statedb`).
    pub(super) statedb: Option<std::path::PathBuf>,
}

/// Celery's request-info object for a task message (what `active`, `reserved`,
/// `scheduled` and `query_task` list).
pub(super) fn request_info(
    msg: &celeriac_core::protocol::TaskMessage,
    hostname: &str,
    time_start: Option<f64>,
    acknowledged: bool,
    worker_pid: Option<u32>,
) -> Value {
    let d = &msg.properties.delivery_info;
    json!({
        "id": msg.headers.id,
        "name": msg.headers.task,
        "args": msg.args,
        "kwargs": msg.kwargs,
        "type": msg.headers.task,
        "hostname": hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": d.exchange,
            "routing_key": d.routing_key,
            "priority": msg.properties.priority.unwrap_or(0),
            "redelivered": d.redelivered.unwrap_or(false),
        },
        "worker_pid": worker_pid,
    })
}

/// Handles commands until the subscription ends.
pub(super) fn spawn(node: Node, mut pidbox: Subscription) -> tokio::task::JoinHandle<()> {
    let node = Arc::new(node);
    tokio::spawn(async move {
        while let Some(msg) = pidbox.next().await {
            let Some(cmd) = Command::parse(&msg) else {
                continue;
            };
            if let Some(c) = msg.headers.get("clock").and_then(Value::as_u64) {
                node.env.app.clock().adjust(c);
            }
            if !cmd.is_for(&node.env.hostname) {
                continue;
            }
            // Each command on its own task: one waiting for the worker loop (a solo pool
            // running a long task) does not hold up a revoke behind it.
            let node = node.clone();
            tokio::spawn(async move {
                let Some(reply) = node.handle(&cmd).await else {
                    return;
                };
                let Some((ticket, exchange, routing_key)) = &cmd.reply else {
                    return;
                };
                let answer = reply_message(
                    &node.env.hostname,
                    ticket,
                    exchange,
                    routing_key,
                    reply,
                    node.env.app.clock().forward(),
                );
                if let Err(e) = node
                    .env
                    .app
                    .broker()
                    .publish(answer, Default::default())
                    .await
                {
                    warn!("could not reply to `{}`: {e}", cmd.method);
                }
            });
        }
    })
}

/// Strings in a command (task ids, stamp values): one string or a list.
pub(super) fn ids(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn ok(text: impl Into<String>) -> Value {
    json!({"ok": text.into()})
}

fn nok(text: impl Into<String>) -> Value {
    json!({"error": text.into()})
}

/// Python's repr of a set of strings, as Celery's revoke reply embeds it.
fn py_set(ids: &[String]) -> String {
    if ids.is_empty() {
        return "set()".into();
    }
    let items: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    format!("{{{}}}", items.join(", "))
}

/// The signal a `revoke`/`terminate` names: a name (`"SIGTERM"`, `"TERM"`, `"KILL"`) or a
/// number; SIGTERM when none is given.
fn signum(v: Option<&Value>) -> Result<i32, String> {
    let name = match v {
        None | Some(Value::Null) => return Ok(15),
        Some(Value::Number(n)) => {
            return n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("unknown signal {n}"));
        }
        Some(Value::String(s)) => s.trim().to_ascii_uppercase(),
        Some(other) => return Err(format!("unknown signal {other}")),
    };
    let short = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match short {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return Err(format!("unknown signal {name:?}")),
    })
}

/// The `queue` argument of `add_consumer` / `cancel_consumer`, or the error reply.
fn queue_arg(args: &Map<String, Value>) -> Result<&str, Value> {
    args.get("queue")
        .and_then(Value::as_str)
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| nok("missing argument `queue` (a queue name)"))
}

/// A float argument (Celery accepts numbers and numeric strings).
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Node {
    /// The reply to `cmd`, or `None` for none (`shutdown`).
    async fn handle(&self, cmd: &Command) -> Option<Value> {
        let env = &self.env;
        let args = &cmd.arguments;
        Some(match cmd.method.as_str() {
            "ping" => ok("pong"),
            "revoke" => {
                // The signal matters only to terminate: a plain revoke never fails on it.
                let terminate = args.get("terminate").and_then(Value::as_bool) == Some(true);
                match terminate.then(|| signum(args.get("signal"))).transpose() {
                    Ok(sig) => self.revoke(ids(args.get("task_id")), sig),
                    Err(e) => nok(e),
                }
            }
            "revoke_by_stamped_headers" => self.revoke_by_stamps(args),
            "terminate" => match signum(args.get("signal")) {
                Ok(sig) => self.revoke(ids(args.get("task_id")), Some(sig)),
                Err(e) => nok(e),
            },
            "stats" => self.stats(),
            "registered" => self.registered(),
            "active" | "dump_active" => {
                Value::Array(self.active().into_iter().map(|(_, v)| v).collect())
            }
            "reserved" => Value::Array(self.held().await.reserved),
            "scheduled" => Value::Array(self.held().await.scheduled),
            "query_task" => self.query_task(ids(args.get("ids"))).await,
            "revoked" => json!(env.revoked.list()),
            "active_queues" => self.active_queues(),
            "conf" => self.conf(),
            "report" => ok(self.report()),
            "clock" => json!({"clock": env.app.clock().value()}),
            "hello" => self.hello(args),
            "rate_limit" => self.rate_limit(args),
            "time_limit" => self.time_limit(args),
            "add_consumer" => self.add_consumer(args).await,
            "cancel_consumer" => match queue_arg(args) {
                Ok(queue) => {
                    self.ask(|tx| LoopRequest::CancelConsumer(queue.to_string(), tx))
                        .await
                }
                Err(e) => e,
            },
            "pool_grow" | "pool_shrink" => {
                let n = args.get("n").and_then(Value::as_i64).unwrap_or(1).max(0);
                let delta = if cmd.method == "pool_grow" { n } else { -n };
                self.ask(|tx| LoopRequest::Resize(delta, tx)).await
            }
            "autoscale" => {
                let max = args.get("max").and_then(Value::as_u64);
                let min = args.get("min").and_then(Value::as_u64);
                match (max, min) {
                    (Some(max), Some(min))
                        if max >= min && min >= 1 && max <= super::MAX_POOL as u64 =>
                    {
                        self.ask(|tx| LoopRequest::Autoscale(max as usize, min as usize, tx))
                            .await
                    }
                    _ => nok(format!(
                        "autoscale needs integer arguments {} ≥ max ≥ min ≥ 1",
                        super::MAX_POOL
                    )),
                }
            }
            "enable_events" => {
                if env.events.set_task_events(true) {
                    ok("task events already enabled")
                } else {
                    info!("task events enabled by remote control");
                    ok("task events enabled")
                }
            }
            "disable_events" => {
                if env.events.set_task_events(false) {
                    info!("task events disabled by remote control");
                    ok("task events disabled")
                } else {
                    ok("task events already disabled")
                }
            }
            "heartbeat" => {
                super::heartbeat::send_worker_event(env, EventKind::WorkerHeartbeat, 5.0).await;
                Value::Null
            }
            "shutdown" => {
                warn!("remote control: shutdown requested; shutting down warm");
                self.shutdown.warm();
                return None;
            }
            // Celery's wording: its dispatcher's `KeyError`.
            other => nok(format!("KeyError('{other}')")),
        })
    }

    /// Asks the worker loop; an error reply if it does not answer (it is stopping).
    async fn ask(&self, request: impl FnOnce(oneshot::Sender<Value>) -> LoopRequest) -> Value {
        self.ask_loop(request)
            .await
            .unwrap_or_else(|| nok("the worker loop did not answer (it is stopping)"))
    }

    /// What the worker holds unstarted; nothing if the loop does not answer.
    async fn held(&self) -> Held {
        self.ask_loop(LoopRequest::Held).await.unwrap_or_default()
    }

    /// Sends `request` to the worker loop and waits (10 s at most) for its answer.
    async fn ask_loop<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> LoopRequest,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.to_loop.send(request(tx)).ok()?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .ok()?
            .ok()
    }

    /// Revokes `ids`; with `terminate` (a signal number) running ones are stopped too.
    fn revoke(&self, ids: Vec<String>, terminate: Option<i32>) -> Value {
        let env = &self.env;
        env.revoked.insert(&ids);
        if let Some(path) = &self.statedb {
            if let Err(e) = env.revoked.save(path) {
                warn!("revoked task ids not kept: {e}");
            }
        }
        let _ = self.to_loop.send(LoopRequest::Revoked(ids.clone()));
        let Some(sig) = terminate else {
            info!("Tasks flagged as revoked: {}", ids.join(", "));
            return ok(format!("tasks {} flagged as revoked", py_set(&ids)));
        };
        let terminated: Vec<String> = ids
            .iter()
            .filter(|id| env.terminators.terminate(id, sig))
            .cloned()
            .collect();
        if terminated.is_empty() {
            return ok("terminate: tasks unknown");
        }
        info!("Terminating {} ({sig})", terminated.join(", "));
        ok(format!("terminate: {}", terminated.join(", ")))
    }

    /// `revoke_by_stamped_headers`: every task stamped with one of the given values is
    /// revoked (and with `terminate`, stopped if it runs here). `headers` is an object of
    /// stamp → value or list of values, or a list of `"stamp=value"` strings.
    fn revoke_by_stamps(&self, args: &Map<String, Value>) -> Value {
        let env = &self.env;
        let mut stamps: std::collections::HashMap<String, Vec<String>> = Default::default();
        match args.get("headers") {
            Some(Value::Object(h)) => {
                for (k, v) in h {
                    let values = match v {
                        Value::Array(_) | Value::String(_) => ids(Some(v)),
                        other => vec![other.to_string()],
                    };
                    stamps.insert(k.clone(), values);
                }
            }
            Some(Value::Array(items)) => {
                for item in items.iter().filter_map(Value::as_str) {
                    let Some((k, v)) = item.split_once('=') else {
                        return nok(format!("expected stamp=value, got {item:?}"));
                    };
                    stamps.insert(k.to_string(), vec![v.to_string()]);
                }
            }
            _ => return nok("missing argument `headers`"),
        }
        // Python's repr of the dict, as Celery's reply embeds it.
        let shown: Vec<String> = stamps
            .iter()
            .map(|(k, v)| match v.as_slice() {
                [one] => format!("'{k}': '{one}'"),
                many => format!(
                    "'{k}': [{}]",
                    many.iter()
                        .map(|m| format!("'{m}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect();
        env.revoked.insert_stamps(stamps);
        let _ = self.to_loop.send(LoopRequest::RevokedStamps);
        if args.get("terminate").and_then(Value::as_bool) == Some(true) {
            let sig = match signum(args.get("signal")) {
                Ok(s) => s,
                Err(e) => return nok(e),
            };
            for (ctx, _) in env.terminators.running() {
                if env.revoked.stamped(&ctx.message().headers.stamps) {
                    env.terminators.terminate(ctx.id(), sig);
                }
            }
        }
        info!("Tasks stamped {} flagged as revoked", shown.join(", "));
        ok(format!(
            "headers {{{}}} flagged as revoked",
            shown.join(", ")
        ))
    }

    /// Running tasks: (id, request info).
    fn active(&self) -> Vec<(String, Value)> {
        let env = &self.env;
        env.terminators
            .running()
            .into_iter()
            .map(|(ctx, started)| {
                let acked = !env.acks_late(ctx.name());
                let info = request_info(
                    ctx.message(),
                    &env.hostname,
                    Some(started),
                    acked,
                    Some(std::process::id()),
                );
                (ctx.id().to_string(), info)
            })
            .collect()
    }

    async fn query_task(&self, ids: Vec<String>) -> Value {
        let mut out = Map::new();
        let wanted = |v: &Value| {
            v.get("id")
                .and_then(Value::as_str)
                .filter(|id| ids.iter().any(|w| w == id))
                .map(str::to_string)
        };
        for (id, info) in self.active() {
            if ids.contains(&id) {
                out.insert(id, json!(["active", info]));
            }
        }
        let held = self.held().await;
        for info in held.reserved {
            if let Some(id) = wanted(&info) {
                out.entry(id).or_insert(json!(["reserved", info]));
            }
        }
        for entry in held.scheduled {
            let info = entry.get("request").cloned().unwrap_or(Value::Null);
            if let Some(id) = wanted(&info) {
                out.entry(id).or_insert(json!(["scheduled", info]));
            }
        }
        Value::Object(out)
    }

    fn registered(&self) -> Value {
        let env = &self.env;
        let mut names: Vec<String> = env
            .app
            .task_names()
            .into_iter()
            .filter(|n| !n.starts_with("celery."))
            .map(|n| match env.overrides.rate(n) {
                Some(rate) => format!("{n} [rate_limit={rate}]"),
                None => n.to_string(),
            })
            .collect();
        names.sort();
        json!(names)
    }

    fn stats(&self) -> Value {
        let env = &self.env;
        let s = env.stats.snapshot();
        // Celery counts a task when it starts: the finished ones and those running now.
        let mut counts: std::collections::BTreeMap<String, u64> = s
            .per_task
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    c.succeeded + c.failed + c.retried + c.terminated,
                )
            })
            .collect();
        for (ctx, _) in env.terminators.running() {
            *counts.entry(ctx.name().to_string()).or_default() += 1;
        }
        let total: Map<String, Value> = counts.into_iter().map(|(k, v)| (k, json!(v))).collect();
        let concurrency = s.concurrency;
        let mut pool = json!({
            "implementation": pool_implementation(env.pool),
            "max-concurrency": concurrency,
        });
        match &env.prefork {
            Some(p) => {
                pool["processes"] = json!(p.pids());
                pool["max-tasks-per-child"] =
                    self.max_tasks_per_child.map_or(json!("N/A"), |n| json!(n));
                pool["put-guarded-by-semaphore"] = json!(false);
                pool["timeouts"] = json!([
                    env.limits.soft.unwrap_or(0.0),
                    env.limits.hard.unwrap_or(0.0)
                ]);
            }
            None if env.pool == Pool::Threads => pool["threads"] = json!(concurrency),
            None => {}
        }
        json!({
            "total": total,
            "pid": std::process::id(),
            "clock": env.app.clock().value().to_string(),
            "uptime": self.started.elapsed().as_secs(),
            "pool": pool,
            "broker": broker_info(env.app.broker_url()),
            "prefetch_count": self.prefetch,
            "rusage": super::stats::rusage(),
        })
    }

    fn active_queues(&self) -> Value {
        let env = &self.env;
        let queues = env.queues();
        Value::Array(
            queues
                .iter()
                .map(|q| kombu_queue(&env.app.router().queue_spec(q)))
                .collect(),
        )
    }

    fn conf(&self) -> Value {
        let env = &self.env;
        let c = env.app.config();
        json!({
            "broker_url": env.app.broker_url(),
            "result_backend": env.app.backend_url(),
            "task_default_queue": c.default_queue,
            "task_acks_late": c.acks_late,
            "task_track_started": c.track_started,
            "result_expires": c.result_expires.map(|d| d.as_secs_f64()),
            "result_extended": c.result_extended,
            "worker_prefetch_multiplier": c.prefetch_multiplier,
            "worker_send_task_events": env.events.task_events(),
            "task_send_sent_event": c.send_sent_event,
            "worker_pool": env.pool.to_string(),
            "include": [],
        })
    }

    fn report(&self) -> String {
        let env = &self.env;
        format!(
            "software -> celeriac:{} (Rust) protocol:2 celery-compatible:5.7\nplatform -> system:{} arch:{}\nloader   -> none\nsettings -> transport:{} results:{}\n",
            env!("CARGO_PKG_VERSION"),
            sw_sys(),
            std::env::consts::ARCH,
            env.app.broker_url().split(':').next().unwrap_or(""),
            env.app.backend_url(),
        )
    }

    /// Mingle: another node says hello with its revoked ids; merge them and answer with
    /// ours. Our own hello gets no answer (`null`), as in Celery.
    fn hello(&self, args: &Map<String, Value>) -> Value {
        let env = &self.env;
        let from = args.get("from_node").and_then(Value::as_str).unwrap_or("");
        if from == &*env.hostname {
            return Value::Null;
        }
        let theirs = ids(args.get("revoked"));
        if !theirs.is_empty() {
            env.revoked.insert(&theirs);
        }
        info!("sync with {from}");
        json!({"revoked": env.revoked.list(), "clock": env.app.clock().value()})
    }

    fn rate_limit(&self, args: &Map<String, Value>) -> Value {
        let env = &self.env;
        let Some(task) = args.get("task_name").and_then(Value::as_str) else {
            return nok("missing argument `task_name`");
        };
        if env.app.task(task).is_none() {
            return nok("unknown task");
        }
        let text = match args.get("rate_limit") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        match Rate::parse(&text) {
            Err(e) => nok(e),
            Ok(None) => {
                env.overrides.set_rate(task, None, &text);
                info!("Rate limits disabled for tasks of type {task}");
                ok("rate limit disabled successfully")
            }
            Ok(Some(rate)) => {
                env.overrides.set_rate(task, Some(rate), &text);
                info!("New rate limit for tasks of type {task}: {text}.");
                ok("new rate limit set successfully")
            }
        }
    }

    fn time_limit(&self, args: &Map<String, Value>) -> Value {
        let env = &self.env;
        let Some(task) = args.get("task_name").and_then(Value::as_str) else {
            return nok("missing argument `task_name`");
        };
        if env.app.task(task).is_none() {
            return nok("unknown task");
        }
        let limits = Limits {
            soft: number(args.get("soft")),
            hard: number(args.get("hard")),
        };
        env.overrides.set_limits(task, limits);
        info!(
            "New time limits for tasks of type {task}: soft={:?} hard={:?}",
            limits.soft, limits.hard
        );
        ok("time limits set successfully")
    }

    async fn add_consumer(&self, args: &Map<String, Value>) -> Value {
        let queue = match queue_arg(args) {
            Ok(q) => q,
            Err(e) => return e,
        };
        let env = &self.env;
        let mut spec = env.app.router().queue_spec(queue);
        let text = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(exchange) = text("exchange") {
            spec.exchange = exchange.to_string();
        }
        if let Some(kind) = text("exchange_type") {
            match ExchangeType::parse(kind) {
                Some(k) => spec.exchange_type = k,
                None => return nok(format!("unknown exchange type `{kind}`")),
            }
        }
        if let Some(key) = text("routing_key") {
            spec.routing_key = key.to_string();
        }
        self.ask(|tx| LoopRequest::AddConsumer(spec, tx)).await
    }
}

/// Celery's name of a pool class, for `stats`.
fn pool_implementation(pool: Pool) -> &'static str {
    match pool {
        Pool::Async => "celeriac.pool:AsyncPool",
        Pool::Threads => "celeriac.pool:ThreadPool",
        Pool::Prefork => "celeriac.pool:PreforkPool",
        Pool::Solo => "celeriac.pool:SoloPool",
    }
}

/// The operating system's name as Python's `platform.system()` gives it.
pub(super) fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// The broker connection as kombu's `Connection.info()` describes it (credentials left
/// out), for `stats`.
fn broker_info(masked_url: &str) -> Value {
    let parsed = url::Url::parse(masked_url).ok();
    let scheme = masked_url.split(':').next().unwrap_or("");
    let transport = match scheme {
        "rediss" => "redis",
        "amqps" | "pyamqp" => "amqp",
        s => s,
    };
    let ssl = matches!(scheme, "rediss" | "amqps");
    let (host, port, user, vhost) = match &parsed {
        Some(u) => (
            u.host_str().unwrap_or("").to_string(),
            u.port_or_known_default(),
            (!u.username().is_empty()).then(|| u.username().to_string()),
            u.path().trim_start_matches('/').to_string(),
        ),
        None => (String::new(), None, None, String::new()),
    };
    let default_port = match transport {
        "redis" => Some(6379),
        "amqp" => Some(if ssl { 5671 } else { 5672 }),
        _ => None,
    };
    // The URL's options, as kombu's `transport_options` (values as given).
    let options: Map<String, Value> = parsed
        .as_ref()
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "hostname": host,
        "userid": user,
        "virtual_host": if vhost.is_empty() && transport == "amqp" { "/".to_string() } else { vhost },
        "port": port.or(default_port),
        "insist": false,
        "ssl": ssl,
        "transport": transport,
        "connect_timeout": 4,
        "transport_options": options,
        "login_method": if transport == "amqp" { Some("PLAIN") } else { None },
        "uri_prefix": null,
        "heartbeat": 120.0,
        "failover_strategy": "round-robin",
        "alternates": [],
        "credential_provider": null,
    })
}

/// A queue as kombu's `Queue.as_dict(recurse=True)` describes it, for `active_queues`.
fn kombu_queue(spec: &QueueSpec) -> Value {
    json!({
        "name": spec.name,
        "exchange": {
            "name": spec.exchange,
            "type": spec.exchange_type.as_str(),
            "arguments": null,
            "durable": true,
            "passive": false,
            "auto_delete": false,
            "delivery_mode": null,
            "no_declare": false,
        },
        "routing_key": spec.routing_key,
        "queue_arguments": null,
        "binding_arguments": if spec.binding_arguments.is_empty() { Value::Null } else { Value::Object(spec.binding_arguments.clone()) },
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_replies_embed_a_python_set() {
        assert_eq!(py_set(&["a".into()]), "{'a'}");
        assert_eq!(py_set(&["a".into(), "b".into()]), "{'a', 'b'}");
        assert_eq!(py_set(&[]), "set()");
    }

    #[test]
    fn signals_are_read_by_name_or_number() {
        assert_eq!(signum(None), Ok(15));
        assert_eq!(signum(Some(&json!("SIGTERM"))), Ok(15));
        assert_eq!(signum(Some(&json!("kill"))), Ok(9));
        assert_eq!(signum(Some(&json!(2))), Ok(2));
        assert!(signum(Some(&json!("SIGNOPE"))).is_err());
        assert!(signum(Some(&json!(0))).is_err());
    }

    #[test]
    fn broker_info_reads_the_masked_url() {
        let b = broker_info("amqp://guest:********@127.0.0.1:5672/wire3");
        assert_eq!(b["transport"], json!("amqp"));
        assert_eq!(b["hostname"], json!("127.0.0.1"));
        assert_eq!(b["userid"], json!("guest"));
        assert_eq!(b["virtual_host"], json!("wire3"));
        assert_eq!(b["port"], json!(5672));
        let r = broker_info("rediss://127.0.0.1/0?global_keyprefix=app:");
        assert_eq!(r["transport_options"], json!({"global_keyprefix": "app:"}));
        assert_eq!(r["ssl"], json!(true));
        assert_eq!(r["port"], json!(6379));
    }

    #[test]
    fn queues_are_described_as_kombu_does() {
        let q = kombu_queue(&QueueSpec::new("q2"));
        assert_eq!(q["name"], json!("q2"));
        assert_eq!(q["exchange"]["type"], json!("direct"));
        assert_eq!(q["routing_key"], json!("q2"));
        assert_eq!(q["binding_arguments"], Value::Null);
    }
}
