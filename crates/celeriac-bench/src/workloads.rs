//! celeriac's side of each workload. Workers run in their own process (this binary's
//! `worker` command), as Celery's do, except for `memory://`, which is one process by
//! definition. Every Redis run works under a key prefix of its own, deleted afterwards.

use std::time::{Duration, Instant};

use celeriac::{App, Signature, TaskMeta};
use futures::{stream, StreamExt};

use crate::procs::{self, RssSampler, WorkerProc};
use crate::report::{Measurement, Percentiles};
use crate::tasks;

/// Where and how big the runs are.
pub struct Ctx {
    /// Redis base URL (`redis://127.0.0.1:6379/0`).
    pub redis: String,
    /// A scratch directory for SQLite files.
    pub scratch: std::path::PathBuf,
}

/// A Redis URL under a fresh key prefix; its keys are deleted on drop.
pub struct RedisScope {
    /// The URL with `global_keyprefix`.
    pub url: String,
    /// The prefix.
    pub prefix: String,
    base: String,
}

impl RedisScope {
    /// A new scope on `base`.
    pub fn new(base: &str) -> Self {
        let prefix = format!("celeriac-bench-{}:", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        Self {
            url: format!("{base}{sep}global_keyprefix={prefix}"),
            prefix,
            base: base.to_string(),
        }
    }

    /// A plain connection to the scope's Redis.
    pub async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        redis::Client::open(self.base.as_str())
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.base))
    }
}

impl Drop for RedisScope {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.base.as_str()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = match redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut c)
        {
            Ok(k) => k,
            Err(_) => return,
        };
        for chunk in keys.chunks(1000) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut c);
        }
    }
}

async fn app_on(url: &str) -> Result<App, String> {
    tasks::app()
        .broker_url(url)
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Waits until a `bench.noop` round trip succeeds: the worker is consuming.
async fn wait_ready(app: &App) -> Result<(), String> {
    let r = tasks::noop::new()
        .apply_async(app)
        .await
        .map_err(|e| e.to_string())?;
    r.get::<()>(Duration::from_secs(60))
        .await
        .map_err(|e| format!("the worker did not answer: {e}"))
}

/// Reads the records of `ids`, waiting (up to `timeout`) for any not there yet.
async fn records(app: &App, ids: &[String], timeout: Duration) -> Result<Vec<TaskMeta>, String> {
    let backend = app.backend().ok_or("no result backend")?.clone();
    let deadline = Instant::now() + timeout;
    let mut missing: Vec<String> = ids.to_vec();
    let mut out = Vec::with_capacity(ids.len());
    loop {
        let got: Vec<(String, Option<TaskMeta>)> = stream::iter(missing.clone())
            .map(|id| {
                let b = backend.clone();
                async move {
                    let m = b.get(&id).await.ok().flatten();
                    (id, m)
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        missing.clear();
        for (id, m) in got {
            match m {
                Some(m) if m.status.is_ready() => out.push(m),
                _ => missing.push(id),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} results still missing after {timeout:?}",
                missing.len(),
                ids.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds between the first and the last `date_done`, and the last one.
fn spread(records: &[TaskMeta]) -> Option<(f64, chrono::DateTime<chrono::Utc>)> {
    let dates: Vec<_> = records.iter().filter_map(|m| m.date_done).collect();
    let first = dates.iter().min()?;
    let last = dates.iter().max()?;
    Some(((*last - *first).num_microseconds()? as f64 / 1e6, *last))
}

/// Waits until `queue` is empty (nothing waiting; `unacked_key` empty too when given),
/// looking every `poll`; returns the time from the queue first shrinking to empty.
async fn drained(
    app: &App,
    queue: &str,
    unacked: Option<(&RedisScope, &mut redis::aio::MultiplexedConnection)>,
    n: u64,
    timeout: Duration,
    poll: Duration,
) -> Result<f64, String> {
    let deadline = Instant::now() + timeout;
    let mut started: Option<Instant> = None;
    let (scope, mut conn) = match unacked {
        Some((s, c)) => (Some(s), Some(c)),
        None => (None, None),
    };
    loop {
        let depth = app
            .broker()
            .queue_depth(queue)
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        if started.is_none() && depth < n {
            started = Some(now);
        }
        if depth == 0 {
            let held: u64 = match (scope, conn.as_deref_mut()) {
                (Some(s), Some(c)) => redis::cmd("HLEN")
                    .arg(format!("{}unacked", s.prefix))
                    .query_async(c)
                    .await
                    .map_err(|e| e.to_string())?,
                _ => 0,
            };
            if held == 0 {
                let t0 = started.unwrap_or(now);
                return Ok(now.duration_since(t0).as_secs_f64());
            }
        }
        if now > deadline {
            return Err(format!("{depth} messages still queued after {timeout:?}"));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Sends `n` no-op tasks, then starts one worker and measures how fast it gets through
/// them: with results, from the spread of their `date_done`; without, from the queue
/// draining. `commands` counts the Redis commands of the run (results runs on Redis).
/// With `events`, the worker sends task events (`-E`): the `noop_events` row.
pub async fn noop_throughput(
    engine_url: &str,
    redis: Option<&RedisScope>,
    ignore_result: bool,
    n: u64,
    concurrency: usize,
    events: bool,
) -> Result<(Measurement, Option<f64>), String> {
    let workload = match (ignore_result, events) {
        (_, true) => "noop_events",
        (true, false) => "noop_ignored",
        (false, false) => "noop_results",
    };
    let app = app_on(engine_url).await?;
    let name = if ignore_result {
        "bench.noop_ignored"
    } else {
        "bench.noop"
    };
    let ids: Vec<String> = app
        .send_many((0..n).map(|_| Signature::new(name)).collect())
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    let mut conn = match redis {
        Some(s) => Some(s.conn().await?),
        None => None,
    };
    let before = match conn.as_mut() {
        Some(c) => Some(command_count(c).await?),
        None => None,
    };
    // Redis's CPU time from the worker's start to the queue being drained (the records
    // are read after that, and not counted).
    let mut redis_cpu = match conn.as_mut() {
        Some(c) => Some(redis_cpu_seconds(c).await?),
        None => None,
    };
    let c = concurrency.to_string();
    let spawned = Instant::now();
    let mut args = vec!["-c", &c];
    if events {
        args.push("-E");
    }
    let mut worker = WorkerProc::spawn(engine_url, &args)?;
    let variant = format!("async -c {concurrency}{}", if events { " -E" } else { "" });
    let mut m = Measurement::new(workload, "celeriac", variant);
    m.n = n;
    if ignore_result {
        let unacked = match (redis, conn.as_mut()) {
            (Some(s), Some(c)) => Some((s, c)),
            _ => None,
        };
        let poll = Duration::from_millis(2);
        let secs = drained(&app, "celery", unacked, n, Duration::from_secs(300), poll).await?;
        redis_cpu = match (conn.as_mut(), redis_cpu) {
            (Some(c), Some(t0)) => Some(redis_cpu_seconds(c).await? - t0),
            _ => None,
        };
        m.tasks_per_s = Some(n as f64 / secs.max(1e-6));
        m.note = "queue drain (LLEN + HLEN unacked polled every 2 ms)".into();
    } else {
        // Wait cheaply until the queue has drained, so reading the records does not
        // compete with the worker; then read them once. The figure comes from the records'
        // `date_done`, so the drain is looked at only every 20 ms (on SQLite a depth is a
        // count of the waiting rows, which every 2 ms would take CPU from the worker).
        let unacked = match (redis, conn.as_mut()) {
            (Some(s), Some(c)) => Some((s, c)),
            _ => None,
        };
        let poll = Duration::from_millis(20);
        drained(&app, "celery", unacked, n, Duration::from_secs(300), poll).await?;
        redis_cpu = match (conn.as_mut(), redis_cpu) {
            (Some(c), Some(t0)) => Some(redis_cpu_seconds(c).await? - t0),
            _ => None,
        };
        let recs = records(&app, &ids, Duration::from_secs(300)).await?;
        m.seconds = Some(spawned.elapsed().as_secs_f64());
        let (secs, _) = spread(&recs).ok_or("no date_done in the records")?;
        m.tasks_per_s = Some((n - 1) as f64 / secs.max(1e-6));
        m.note = "(n-1) ÷ spread of date_done; seconds = spawn → last result read".into();
    }
    // Where the CPU went, per task: the worker process (start-up included, a few ms) and
    // the Redis server (everything it ran meanwhile, which here is this run).
    m.worker_cpu_us_per_task = Some(procs::tree_cpu_seconds(worker.pid()) * 1e6 / n as f64);
    m.redis_cpu_us_per_task = redis_cpu.map(|spent| spent * 1e6 / n as f64);
    m.note
        .push_str(&match (m.worker_cpu_us_per_task, m.redis_cpu_us_per_task) {
            (Some(w), Some(r)) => format!("; CPU per task: worker {w:.1} µs, Redis {r:.1} µs"),
            (Some(w), None) => format!("; CPU per task: worker {w:.1} µs"),
            _ => String::new(),
        });
    worker.stop();
    let per_task = match (conn.as_mut(), before) {
        (Some(c), Some(b)) => Some((command_count(c).await?.saturating_sub(b)) as f64 / n as f64),
        _ => None,
    };
    Ok((m, per_task))
}

/// One section of `INFO`.
async fn info(c: &mut redis::aio::MultiplexedConnection, section: &str) -> Result<String, String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(c)
        .await
        .map_err(|e| e.to_string())
}

/// CPU seconds (user + system) the Redis server has used since it started (`INFO cpu`).
async fn redis_cpu_seconds(c: &mut redis::aio::MultiplexedConnection) -> Result<f64, String> {
    let info = info(c, "cpu").await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Ok(field("used_cpu_user") + field("used_cpu_sys"))
}

/// Total commands Redis has run (`INFO commandstats`, scripts' inner commands included).
async fn command_count(c: &mut redis::aio::MultiplexedConnection) -> Result<u64, String> {
    let info = info(c, "commandstats").await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let calls = l.split("calls=").nth(1)?.split(',').next()?;
            calls.parse::<u64>().ok()
        })
        .sum())
}

/// One client sending `n` tasks with `send_many` (pipelined batches).
pub async fn enqueue(scope: &RedisScope, n: u64) -> Result<Measurement, String> {
    let app = app_on(&scope.url).await?;
    // Warm the connection and the queue's binding.
    app.send_many(vec![Signature::new("bench.noop")])
        .await
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let sigs: Vec<Signature> = (0..n).map(|_| tasks::noop::new()).collect();
    app.send_many(sigs).await.map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let mut m = Measurement::new("enqueue", "celeriac", "send_many");
    m.n = n;
    m.tasks_per_s = Some(n as f64 / secs);
    m.seconds = Some(secs);
    m.note = "signatures built and published in pipelined batches".into();
    Ok(m)
}

/// Publish → start latency with tasks sent one by one at `rate` per second.
pub async fn latency(scope: &RedisScope, rate: f64, n: u64) -> Result<Measurement, String> {
    let app = app_on(&scope.url).await?;
    let _worker = WorkerProc::spawn(&scope.url, &["-c", "16"])?;
    wait_ready(&app).await?;
    let t0 = Instant::now();
    let mut results = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let r = tasks::latency::new(crate::unix_now())
            .apply_async(&app)
            .await
            .map_err(|e| e.to_string())?;
        results.push(r);
    }
    let achieved = n as f64 / t0.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(results.len());
    for r in &results {
        let s: f64 = r
            .get(Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        samples.push(s * 1000.0);
    }
    let mut m = Measurement::new("latency", "celeriac", "async -c 16");
    m.n = n;
    m.latency_ms = Percentiles::of(&samples);
    m.note = format!("sent one by one at {rate:.0}/s (achieved {achieved:.0}/s); the task measures now − sent_at");
    m.samples_ms = samples;
    Ok(m)
}

/// From starting a worker process to the first (already queued) task's result.
pub async fn startup(scope: &RedisScope) -> Result<Measurement, String> {
    let app = app_on(&scope.url).await?;
    let r = tasks::noop::new()
        .apply_async(&app)
        .await
        .map_err(|e| e.to_string())?;
    let backend = app.backend().ok_or("no backend")?.clone();
    let t0 = Instant::now();
    let _worker = WorkerProc::spawn(&scope.url, &[])?;
    loop {
        if let Ok(Some(m)) = backend.get(r.id()).await {
            if m.status.is_ready() {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the first task did not finish within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut m = Measurement::new("startup", "celeriac", "async");
    m.n = 1;
    m.seconds = Some(t0.elapsed().as_secs_f64());
    m.note = "process spawn → result of a task queued before (polled every 1 ms)".into();
    Ok(m)
}

/// memory:// in one process: client and worker share the broker and result store. The
/// client sends in batches of 10,000 and keeps at most two batches waiting (a producer
/// that respects backpressure), so the figure is the steady state, not the cost of
/// holding a million queued messages.
pub async fn memory(
    n: u64,
    concurrency: usize,
    ignore_result: bool,
) -> Result<Measurement, String> {
    let app = app_on(&format!("memory://bench-{}", uuid::Uuid::new_v4().simple())).await?;
    let worker = app.worker().concurrency(concurrency).build();
    let stats = worker.stats();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let t0 = Instant::now();
    let chunk = 10_000u64;
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let sig = || {
        if ignore_result {
            tasks::noop_ignored::new()
        } else {
            tasks::noop::new()
        }
    };
    while sent < n {
        while sent - stats.snapshot().succeeded > 2 * chunk {
            if Instant::now() > deadline {
                return Err("memory run did not finish in 300 s".into());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let k = chunk.min(n - sent);
        app.send_many((0..k).map(|_| sig()).collect())
            .await
            .map_err(|e| e.to_string())?;
        sent += k;
    }
    while stats.snapshot().succeeded < n {
        if Instant::now() > deadline {
            return Err("memory run did not finish in 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.warm();
    let _ = running.await;
    let what = if ignore_result {
        "ignore_result"
    } else {
        "results stored"
    };
    let mut m = Measurement::new(
        "memory",
        "celeriac",
        format!("async -c {concurrency}, {what}"),
    );
    m.n = n;
    m.tasks_per_s = Some(n as f64 / secs);
    m.seconds = Some(secs);
    m.note = "one process: send_many in batches of 10,000 (at most 20,000 waiting) while the worker runs; first send → last task done".into();
    Ok(m)
}

/// `n` tasks sleeping `secs` each, all at once, in one worker process.
pub async fn sleepers(scope: &RedisScope, n: u64, secs: f64) -> Result<Measurement, String> {
    let app = app_on(&scope.url).await?;
    let c = n.to_string();
    let worker = WorkerProc::spawn(&scope.url, &["-c", &c, "--prefetch", &c])?;
    wait_ready(&app).await?;
    let sampler = RssSampler::start(worker.pid());
    let t0 = chrono::Utc::now();
    let started = Instant::now();
    let ids: Vec<String> = app
        .send_many((0..n).map(|_| tasks::sleep::new(secs)).collect())
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    let sent = started.elapsed().as_secs_f64();
    let recs = records(&app, &ids, Duration::from_secs(120)).await?;
    let peak = sampler.finish();
    let (_, last) = spread(&recs).ok_or("no date_done")?;
    let wall = (last - t0).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let mut m = Measurement::new("sleepers", "celeriac", format!("async -c {n}"));
    m.n = n;
    m.seconds = Some(wall);
    m.rss_mb = Some(peak);
    m.note = format!("{n} × sleep({secs}) sent with send_many (in {sent:.2} s); wall = first send → last date_done; peak RSS of the worker");
    Ok(m)
}

/// An idle worker's CPU use and memory over `secs`.
pub async fn idle(scope: &RedisScope, secs: f64) -> Result<Measurement, String> {
    let app = app_on(&scope.url).await?;
    let worker = WorkerProc::spawn(&scope.url, &[])?;
    wait_ready(&app).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = procs::tree_cpu_seconds(worker.pid());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let cpu = procs::tree_cpu_seconds(worker.pid()) - cpu0;
    let mut m = Measurement::new("idle", "celeriac", "async (default)");
    m.cpu_percent = Some(cpu / secs * 100.0);
    m.rss_mb = Some(procs::tree_rss_mb(worker.pid()));
    m.note = format!("CPU time over {secs:.0} s after a 2 s settle; RSS at the end");
    Ok(m)
}

/// SQLite: `n` no-op tasks through one worker process, results stored.
pub async fn sqlite(ctx: &Ctx, n: u64, concurrency: usize) -> Result<Measurement, String> {
    let path = ctx
        .scratch
        .join(format!("bench-{}.sqlite", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", path.display());
    let out = noop_throughput(&url, None, false, n, concurrency, false).await;
    for suffix in ["", "-wal", "-shm", "-wake"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let (mut m, _) = out?;
    m.workload = "sqlite".into();
    Ok(m)
}

/// A RabbitMQ queue of the run's own (and the direct exchange of the same name, as Celery
/// declares a task queue), deleted by [`AmqpScope::delete`].
pub struct AmqpScope {
    /// The broker URL.
    pub url: String,
    /// The queue (and exchange) name.
    pub queue: String,
    broker: celeriac_amqp::AmqpBroker,
}

impl AmqpScope {
    /// Connects to `url` (the check that RabbitMQ is reachable) and names a fresh queue.
    pub async fn new(url: &str) -> Result<Self, String> {
        let parsed = celeriac::core::url::EngineUrl::parse(url).map_err(|e| e.to_string())?;
        let broker = celeriac_amqp::AmqpBroker::connect(&parsed)
            .await
            .map_err(|e| format!("RabbitMQ not reachable at {}: {e}", parsed.masked()))?;
        Ok(Self {
            url: url.to_string(),
            queue: format!("celeriac-bench-{}", uuid::Uuid::new_v4().simple()),
            broker,
        })
    }

    /// Deletes the queue (with any message left) and its exchange.
    pub async fn delete(&self) -> Result<(), String> {
        self.broker
            .delete_queue(&self.queue)
            .await
            .map_err(|e| format!("cannot delete queue {}: {e}", self.queue))
    }
}

/// `noop_throughput` with RabbitMQ as the broker: `n` no-op tasks sent to the scope's
/// queue, then one worker process consuming it. With results (stored in Redis under
/// `redis`'s prefix), the figure comes from the spread of their `date_done`; without, from
/// the queue draining. The queue is deleted afterwards, also on errors.
pub async fn amqp_throughput(
    amqp_url: &str,
    redis: &RedisScope,
    ignore_result: bool,
    n: u64,
    concurrency: usize,
) -> Result<Measurement, String> {
    let scope = AmqpScope::new(amqp_url).await?;
    let out = amqp_run(&scope, redis, ignore_result, n, concurrency).await;
    let cleaned = scope.delete().await;
    let m = out?;
    cleaned?;
    Ok(m)
}

async fn amqp_run(
    scope: &AmqpScope,
    redis: &RedisScope,
    ignore_result: bool,
    n: u64,
    concurrency: usize,
) -> Result<Measurement, String> {
    let (workload, name) = if ignore_result {
        ("amqp_ignored", "bench.noop_ignored")
    } else {
        ("amqp_results", "bench.noop")
    };
    let app = tasks::app()
        .broker_url(&scope.url)
        .result_backend_url(&redis.url)
        .default_queue(&scope.queue)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let sent = Instant::now();
    let ids: Vec<String> = app
        .send_many((0..n).map(|_| Signature::new(name)).collect())
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    let send_secs = sent.elapsed().as_secs_f64();
    let depth = app
        .broker()
        .queue_depth(&scope.queue)
        .await
        .map_err(|e| e.to_string())?;
    if depth != n {
        return Err(format!("queued {depth} messages, expected {n}"));
    }
    let mut conn = redis.conn().await?;
    // RabbitMQ's and Redis's CPU time from the worker's start to the queue being drained.
    let rabbit = procs::rabbitmq_server();
    let rabbit_cpu0 = rabbit.map(procs::tree_cpu_seconds);
    let redis_cpu0 = redis_cpu_seconds(&mut conn).await?;
    let c = concurrency.to_string();
    let node = format!("bench-{}@%h", uuid::Uuid::new_v4().simple());
    let spawned = Instant::now();
    let mut worker = WorkerProc::spawn(
        &scope.url,
        &[
            "--backend",
            &redis.url,
            "-Q",
            &scope.queue,
            "-c",
            &c,
            "-n",
            &node,
        ],
    )?;
    let mut m = Measurement::new(workload, "celeriac", format!("async -c {concurrency}"));
    m.n = n;
    let timeout = Duration::from_secs(300);
    if ignore_result {
        let poll = Duration::from_millis(2);
        let secs = drained(&app, &scope.queue, None, n, timeout, poll).await?;
        m.tasks_per_s = Some(n as f64 / secs.max(1e-6));
        m.note = "queue drain (ready count of a passive queue.declare polled every 2 ms; \
                  up to the prefetch may still be unacked then)"
            .into();
    } else {
        drained(
            &app,
            &scope.queue,
            None,
            n,
            timeout,
            Duration::from_millis(20),
        )
        .await?;
    }
    let rabbit_cpu = rabbit
        .zip(rabbit_cpu0)
        .map(|(p, t0)| procs::tree_cpu_seconds(p) - t0);
    let redis_cpu = redis_cpu_seconds(&mut conn).await? - redis_cpu0;
    if !ignore_result {
        let recs = records(&app, &ids, timeout).await?;
        m.seconds = Some(spawned.elapsed().as_secs_f64());
        let (secs, _) = spread(&recs).ok_or("no date_done in the records")?;
        m.tasks_per_s = Some((n - 1) as f64 / secs.max(1e-6));
        m.note =
            "(n-1) ÷ spread of date_done (records in Redis); seconds = spawn → last result read"
                .into();
    }
    m.worker_cpu_us_per_task = Some(procs::tree_cpu_seconds(worker.pid()) * 1e6 / n as f64);
    if !ignore_result {
        m.redis_cpu_us_per_task = Some(redis_cpu * 1e6 / n as f64);
    }
    let per = |s: f64| s * 1e6 / n as f64;
    m.note.push_str(&format!(
        "; CPU per task: worker {:.1} µs, RabbitMQ {}{}; sent in {send_secs:.2} s",
        m.worker_cpu_us_per_task.unwrap_or(0.0),
        rabbit_cpu.map_or_else(|| "?".into(), |s| format!("{:.1} µs", per(s))),
        if ignore_result {
            String::new()
        } else {
            format!(", Redis {:.1} µs", per(redis_cpu))
        },
    ));
    worker.stop();
    Ok(m)
}
