//! `celeriac-bench`: the same workloads on celeriac and on Python Celery 5.7, on the same
//! machine and Redis, in one run — a table of figures and ratios against the targets, written
//! as Markdown and JSON, with PNG plots. See `docs/benchmarks.md`.
//!
//! `celeriac-bench worker …` is this program as a celeriac worker (the benchmark's
//! worker processes); `celeriac-bench beat …` as a celeriac beat (the `beat` workload).

// A binary: `pub` marks what each module offers the others.
#![allow(unreachable_pub)]

mod beat;
mod celery;
mod plot;
mod procs;
mod report;
mod tasks;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

use report::{Machine, Measurement, RedisLimit, Report, Status, Verdict};
use workloads::{Ctx, RedisScope};

// The allocator matters for a task queue: every message is a handful of short-lived
// allocations made on one thread and freed on another, where glibc's malloc serialises on
// its arena locks. mimalloc is what we recommend for celeriac binaries (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seconds since the Unix epoch, as a float (the latency task's clock).
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Parser, Debug)]
#[command(
    name = "celeriac-bench",
    about = "Benchmark celeriac against Python Celery (same machine, same Redis, one run)"
)]
struct Args {
    /// Smaller runs (about a third of the time), for a quick look.
    #[arg(long)]
    quick: bool,
    /// Redis to run on (a key prefix of its own per run; nothing else is touched).
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    redis: String,
    /// RabbitMQ for the `amqp_*` workloads (a queue of its own per run, deleted afterwards;
    /// results in Redis under the run's key prefix).
    #[arg(
        long,
        env = "BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672//"
    )]
    amqp: String,
    /// The virtualenv with celery[redis]==5.7.0 and gevent (bench/setup.sh makes it).
    #[arg(long, default_value = "target/bench-venv")]
    venv: PathBuf,
    /// Skip Python Celery (celeriac's figures only).
    #[arg(long)]
    no_celery: bool,
    /// Run only these workloads (comma-separated: noop_results, noop_ignored, noop_events, amqp_results,
    /// amqp_ignored, enqueue, latency, startup, memory, sqlite, sleepers, idle, beat;
    /// `memory_results` or `memory_ignored` runs one half of `memory`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the report and plots go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// Run sizes.
struct Sizes {
    noop: u64,
    celery_noop: u64,
    enqueue: u64,
    latency: u64,
    memory: u64,
    sqlite: u64,
    sleepers: u64,
    idle_secs: f64,
    beat_secs: f64,
}

fn main() {
    if matches!(std::env::args().nth(1).as_deref(), Some("worker" | "beat")) {
        celeriac::cli::run(tasks::app());
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .map_err(|e| format!("cannot find the repository: {e}"))?;
    let want = |w: &str| args.only.is_empty() || args.only.iter().any(|o| o == w);
    let sizes = if args.quick {
        Sizes {
            noop: 5_000,
            celery_noop: 1_000,
            enqueue: 20_000,
            latency: 2_000,
            memory: 200_000,
            sqlite: 5_000,
            sleepers: 10_000,
            idle_secs: 10.0,
            beat_secs: 10.0,
        }
    } else {
        Sizes {
            noop: 20_000,
            celery_noop: 2_000,
            enqueue: 100_000,
            latency: 5_000,
            memory: 1_000_000,
            sqlite: 20_000,
            sleepers: 10_000,
            idle_secs: 20.0,
            beat_secs: 20.0,
        }
    };
    let redis_version = redis_version(&args.redis).await?;
    let celery = if args.no_celery {
        None
    } else {
        let venv = if args.venv.is_absolute() {
            args.venv.clone()
        } else {
            repo.join(&args.venv)
        };
        match celery::Celery::find(&venv, &repo, &args.redis) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("Python Celery: skipped — {e}");
                None
            }
        }
    };
    let scratch = std::env::temp_dir().join(format!("celeriac-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let ctx = Ctx {
        redis: args.redis.clone(),
        scratch: scratch.clone(),
    };
    let mut ms: Vec<Measurement> = Vec::new();
    let mut limit: Option<RedisLimit> = None;
    let note = |w: &str, e: String| {
        let mut m = Measurement::new(w, "celeriac", "—");
        m.note = format!("failed: {e}");
        eprintln!("{w}: {e}");
        m
    };
    let py = |w: &str, a: &[&str], secs: u64| -> Option<Measurement> {
        let c = celery.as_ref()?;
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        eprintln!("  celery {w} {}", a.join(" "));
        Some(c.run(w, &a, Duration::from_secs(secs)))
    };
    let cn = sizes.celery_noop.to_string();

    for (w, ignore, events) in [
        ("noop_results", false, false),
        ("noop_ignored", true, false),
        ("noop_events", false, true),
    ] {
        if !want(w) {
            continue;
        }
        eprintln!("{w}: celeriac, {} tasks", sizes.noop);
        let scope = RedisScope::new(&ctx.redis);
        let run =
            workloads::noop_throughput(&scope.url, Some(&scope), ignore, sizes.noop, 64, events);
        match run.await {
            Ok((m, per_task)) => {
                if !ignore {
                    if let Some(p) = per_task {
                        limit = redis_limit(&ctx.redis, p).await.ok();
                    }
                }
                ms.push(m);
            }
            Err(e) => ms.push(note(w, e)),
        }
        drop(scope);
        for (pool, c) in [("prefork", "2"), ("threads", "8"), ("gevent", "100")] {
            let mut a = vec!["--n", &cn, "--pool", pool, "-c", c];
            if ignore {
                a.push("--ignore-result");
            }
            if events {
                a.push("--events");
            }
            if let Some(mut m) = py("throughput", &a, 180) {
                m.workload = w.into();
                ms.push(m);
            }
        }
    }
    // The same no-op runs with RabbitMQ as the broker (a queue of the run's own; results
    // in Redis under a key prefix of the run's own).
    let mut rabbit: Option<Result<(), String>> = None;
    for (w, ignore) in [("amqp_results", false), ("amqp_ignored", true)] {
        if !want(w) {
            continue;
        }
        let reachable = match &rabbit {
            Some(r) => r.clone(),
            None => {
                let r = workloads::AmqpScope::new(&args.amqp).await.map(|_| ());
                rabbit = Some(r.clone());
                r
            }
        };
        if let Err(e) = reachable {
            eprintln!("{w}: skipped — {e}");
            let mut m = Measurement::new(w, "celeriac", "—");
            m.note = format!("skipped: {e}");
            ms.push(m);
            continue;
        }
        eprintln!("{w}: celeriac on RabbitMQ, {} tasks", sizes.noop);
        let scope = RedisScope::new(&ctx.redis);
        ms.push(
            workloads::amqp_throughput(&args.amqp, &scope, ignore, sizes.noop, 64)
                .await
                .unwrap_or_else(|e| note(w, e)),
        );
        drop(scope);
        for (pool, c) in [("prefork", "2"), ("threads", "8"), ("gevent", "100")] {
            let mut a = vec!["--n", &cn, "--pool", pool, "-c", c, "--amqp", &args.amqp];
            if ignore {
                a.push("--ignore-result");
            }
            if let Some(mut m) = py("throughput", &a, 180) {
                m.workload = w.into();
                ms.push(m);
            }
        }
    }
    if want("enqueue") {
        eprintln!("enqueue: celeriac, {} tasks", sizes.enqueue);
        let scope = RedisScope::new(&ctx.redis);
        ms.push(
            workloads::enqueue(&scope, sizes.enqueue)
                .await
                .unwrap_or_else(|e| note("enqueue", e)),
        );
        if let Some(m) = py("enqueue", &["--n", &cn], 120) {
            ms.push(m);
        }
    }
    if want("latency") {
        eprintln!("latency: celeriac, {} tasks at 1,000/s", sizes.latency);
        let scope = RedisScope::new(&ctx.redis);
        ms.push(
            workloads::latency(&scope, 1000.0, sizes.latency)
                .await
                .unwrap_or_else(|e| note("latency", e)),
        );
        drop(scope);
        let n = (sizes.latency / 2).to_string();
        for (pool, c) in [("prefork", "2"), ("gevent", "100")] {
            if let Some(m) = py(
                "latency",
                &["--rate", "1000", "--n", &n, "--pool", pool, "-c", c],
                180,
            ) {
                ms.push(m);
            }
        }
    }
    if want("startup") {
        eprintln!("startup: celeriac");
        let scope = RedisScope::new(&ctx.redis);
        ms.push(
            workloads::startup(&scope)
                .await
                .unwrap_or_else(|e| note("startup", e)),
        );
        drop(scope);
        for (pool, c) in [("prefork", "2"), ("threads", "8")] {
            if let Some(m) = py("startup", &["--pool", pool, "-c", c], 120) {
                ms.push(m);
            }
        }
    }
    if want("memory") || want("memory_results") || want("memory_ignored") {
        eprintln!("memory: celeriac, {} tasks in one process", sizes.memory);
        for ignore in [false, true] {
            let variant = if ignore {
                "memory_ignored"
            } else {
                "memory_results"
            };
            if !want("memory") && !want(variant) {
                continue;
            }
            ms.push(
                workloads::memory(sizes.memory, 256, ignore)
                    .await
                    .unwrap_or_else(|e| note("memory", e)),
            );
        }
    }
    if want("sqlite") {
        eprintln!("sqlite: celeriac, {} tasks", sizes.sqlite);
        ms.push(
            workloads::sqlite(&ctx, sizes.sqlite, 64)
                .await
                .unwrap_or_else(|e| note("sqlite", e)),
        );
    }
    if want("sleepers") {
        eprintln!("sleepers: celeriac, {} × sleep(1)", sizes.sleepers);
        let scope = RedisScope::new(&ctx.redis);
        ms.push(
            workloads::sleepers(&scope, sizes.sleepers, 1.0)
                .await
                .unwrap_or_else(|e| note("sleepers", e)),
        );
        drop(scope);
        let n = sizes.sleepers.to_string();
        for (pool, c) in [("gevent", n.as_str()), ("threads", "1000")] {
            if let Some(m) = py(
                "sleepers",
                &["--n", &n, "--seconds", "1", "--pool", pool, "-c", c],
                240,
            ) {
                ms.push(m);
            }
        }
    }
    if want("idle") {
        eprintln!("idle: celeriac, {:.0} s", sizes.idle_secs);
        let scope = RedisScope::new(&ctx.redis);
        ms.push(
            workloads::idle(&scope, sizes.idle_secs)
                .await
                .unwrap_or_else(|e| note("idle", e)),
        );
        drop(scope);
        let secs = format!("{}", sizes.idle_secs);
        for (pool, c) in [("prefork", "2"), ("threads", "8")] {
            if let Some(m) = py("idle", &["--seconds", &secs, "--pool", pool, "-c", c], 120) {
                ms.push(m);
            }
        }
    }
    if want("beat") {
        let python = celery.as_ref().map(|c| (c.python(), repo.as_path()));
        ms.extend(beat::run(&ctx, sizes.beat_secs, python).await);
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let report = Report {
        machine: Machine::probe(redis_version, celery.as_ref().map(|c| c.version.clone())),
        verdicts: verdicts(&ms, limit.as_ref()),
        measurements: ms,
        redis_limit: limit,
        run_seconds: started.elapsed().as_secs_f64(),
    };
    report.print();
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        repo.join(&args.out)
    };
    report.write(&out)?;
    println!(
        "\nreport: {}/report.md, {}/report.json",
        out.display(),
        out.display()
    );
    match plot::write(&report, &out) {
        Ok(files) => println!("plots: {}", files.join(", ")),
        Err(e) => eprintln!("plots skipped: {e}"),
    }
    println!("run took {:.0} s", report.run_seconds);
    Ok(())
}

async fn redis_version(url: &str) -> Result<String, String> {
    let mut c = redis::Client::open(url)
        .map_err(|e| format!("bad Redis URL {url}: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string())
}

/// `redis-benchmark -P 16` on the same Redis: its pipelined ops/s for the commands a worker
/// uses, and what that allows at `per_task` commands per task.
async fn redis_limit(url: &str, per_task: f64) -> Result<RedisLimit, String> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest.split(['/', '?']).next().unwrap_or("127.0.0.1:6379");
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-P", "16", "-n", "200000", "-q"])
        .args(["-t", "set,get,lpush,rpop,hset,zadd"])
        .output()
        .await
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let per_command: Vec<(String, f64)> = text
        .split(['\r', '\n'])
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            rest.contains("requests per second")
                .then(|| (name.trim().to_string(), v))
        })
        .collect();
    if per_command.is_empty() {
        return Err(format!("redis-benchmark printed nothing usable: {text}"));
    }
    let ops = per_command.iter().map(|(_, v)| v).sum::<f64>() / per_command.len() as f64;
    Ok(RedisLimit {
        ops_per_s: ops,
        per_command,
        commands_per_task: Some(per_task),
    })
}

fn best<'a>(
    ms: &'a [Measurement],
    w: &str,
    imp: &str,
    key: fn(&Measurement) -> Option<f64>,
    high: bool,
) -> Option<&'a Measurement> {
    ms.iter()
        .filter(|m| m.workload == w && m.implementation == imp && key(m).is_some())
        .max_by(|a, b| {
            let (x, y) = (key(a).unwrap_or(0.0), key(b).unwrap_or(0.0));
            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            if high {
                o
            } else {
                o.reverse()
            }
        })
}

fn verdicts(ms: &[Measurement], limit: Option<&RedisLimit>) -> Vec<Verdict> {
    let tps = |m: &Measurement| m.tasks_per_s;
    let secs = |m: &Measurement| m.seconds;
    let p50 = |m: &Measurement| m.latency_ms.map(|l| l.p50);
    let cpu = |m: &Measurement| m.cpu_percent;
    let fig = |m: Option<&Measurement>| {
        m.map_or_else(
            || "—".to_string(),
            |m| format!("{} ({})", m.figure(), m.variant),
        )
    };
    let mut out = Vec::new();
    let mut push = |workload: &str,
                    target: &str,
                    ours: Option<&Measurement>,
                    theirs: Option<&Measurement>,
                    ratio: Option<f64>,
                    ok: Option<bool>| {
        out.push(Verdict {
            workload: workload.into(),
            target: target.into(),
            celeriac: fig(ours),
            celery: fig(theirs),
            ratio,
            status: match ok {
                Some(true) => Status::Met,
                Some(false) => Status::Missed,
                None => Status::Skipped,
            },
        });
    };
    // Throughput with results stored.
    let (o, t) = (
        best(ms, "noop_results", "celeriac", tps, true),
        best(ms, "noop_results", "celery", tps, true),
    );
    let ratio = o
        .zip(t)
        .and_then(|(o, t)| Some(o.tasks_per_s? / t.tasks_per_s?));
    let share = o.and_then(|o| Some(o.tasks_per_s? / limit?.tasks_per_s()?));
    let target_text = format!(
        "≥ 80× Celery, ≥ 30,000/s, ≥ 50% of Redis's limit{}",
        share.map_or_else(String::new, |s| format!(" (here {:.0}%)", s * 100.0))
    );
    push(
        "no-op, results, Redis",
        &target_text,
        o,
        t,
        ratio,
        o.and_then(|o| o.tasks_per_s).map(|v| {
            v >= 30_000.0 && ratio.is_none_or(|r| r >= 80.0) && share.is_none_or(|s| s >= 0.5)
        }),
    );
    let (o, t) = (
        best(ms, "noop_ignored", "celeriac", tps, true),
        best(ms, "noop_ignored", "celery", tps, true),
    );
    let ratio = o
        .zip(t)
        .and_then(|(o, t)| Some(o.tasks_per_s? / t.tasks_per_s?));
    push(
        "no-op, ignore_result, Redis",
        "≥ 100× Celery, ≥ 50,000/s",
        o,
        t,
        ratio,
        o.and_then(|o| o.tasks_per_s)
            .map(|v| v >= 50_000.0 && ratio.is_none_or(|r| r >= 100.0)),
    );
    // Task events on (`-E`): the cost of events, against the same run without them.
    let (o, t) = (
        best(ms, "noop_events", "celeriac", tps, true),
        best(ms, "noop_events", "celery", tps, true),
    );
    let off = best(ms, "noop_results", "celeriac", tps, true).and_then(|m| m.tasks_per_s);
    let kept = o.and_then(|o| Some(o.tasks_per_s? / off?));
    let ratio = o
        .zip(t)
        .and_then(|(o, t)| Some(o.tasks_per_s? / t.tasks_per_s?));
    push(
        "no-op, results, task events on, Redis",
        &format!(
            "≥ 90% of the rate without events{}",
            kept.map_or_else(String::new, |k| format!(" (here {:.0}%)", k * 100.0))
        ),
        o,
        t,
        ratio,
        kept.map(|k| k >= 0.9),
    );
    let (o, t) = (
        best(ms, "enqueue", "celeriac", tps, true),
        best(ms, "enqueue", "celery", tps, true),
    );
    let ratio = o
        .zip(t)
        .and_then(|(o, t)| Some(o.tasks_per_s? / t.tasks_per_s?));
    push(
        "enqueue, one client",
        "≥ 100,000/s",
        o,
        t,
        ratio,
        o.and_then(|o| o.tasks_per_s).map(|v| v >= 100_000.0),
    );
    let (o, t) = (
        best(ms, "latency", "celeriac", p50, false),
        best(ms, "latency", "celery", p50, false),
    );
    let ratio = o
        .zip(t)
        .and_then(|(o, t)| Some(t.latency_ms?.p50 / o.latency_ms?.p50));
    push(
        "latency at 1,000/s, Redis",
        "p50 < 0.5 ms, p99 < 2 ms",
        o,
        t,
        ratio,
        o.and_then(|o| o.latency_ms)
            .map(|l| l.p50 < 0.5 && l.p99 < 2.0),
    );
    let (o, t) = (
        best(ms, "startup", "celeriac", secs, false),
        best(ms, "startup", "celery", secs, false),
    );
    let ratio = o.zip(t).and_then(|(o, t)| Some(t.seconds? / o.seconds?));
    push(
        "start → first task done",
        "≤ 50 ms",
        o,
        t,
        ratio,
        o.and_then(|o| o.seconds).map(|s| s <= 0.05),
    );
    let o = best(ms, "memory", "celeriac", tps, true);
    push(
        "memory://, one process",
        "≥ 1,000,000/s",
        o,
        None,
        None,
        o.and_then(|o| o.tasks_per_s).map(|v| v >= 1e6),
    );
    let o = best(ms, "sqlite", "celeriac", tps, true);
    push(
        "sqlite://, one worker",
        "≥ 20,000/s",
        o,
        None,
        None,
        o.and_then(|o| o.tasks_per_s).map(|v| v >= 20_000.0),
    );
    let (o, t) = (
        best(ms, "sleepers", "celeriac", secs, false),
        best(ms, "sleepers", "celery", secs, false),
    );
    let ratio = o.zip(t).and_then(|(o, t)| Some(t.seconds? / o.seconds?));
    push(
        "10,000 × sleep(1)",
        "wall ≤ 1.5 s, RSS ≤ 100 MB",
        o,
        t,
        ratio,
        o.and_then(|o| Some(o.seconds? <= 1.5 && o.rss_mb? <= 100.0)),
    );
    let (o, t) = (
        best(ms, "idle", "celeriac", cpu, false),
        best(ms, "idle", "celery", cpu, false),
    );
    let ratio = o.zip(t).and_then(|(o, t)| Some(t.rss_mb? / o.rss_mb?));
    push(
        "idle worker",
        "≤ 0.1% CPU, RSS ≤ 20 MB",
        o,
        t,
        ratio,
        o.and_then(|o| Some(o.cpu_percent? <= 0.1 && o.rss_mb? <= 20.0)),
    );
    // RabbitMQ: figures and the ratio, no target; after the Redis no-op rows.
    let at = out
        .iter()
        .position(|v| v.workload == "no-op, ignore_result, Redis")
        .map_or(0, |i| i + 1);
    let rabbit: Vec<Verdict> = [
        ("amqp_results", "no-op, results, RabbitMQ"),
        ("amqp_ignored", "no-op, ignore_result, RabbitMQ"),
    ]
    .into_iter()
    .map(|(w, label)| {
        let (o, t) = (
            best(ms, w, "celeriac", tps, true),
            best(ms, w, "celery", tps, true),
        );
        Verdict {
            workload: label.into(),
            target: "— (no target)".into(),
            celeriac: fig(o),
            celery: fig(t),
            ratio: o
                .zip(t)
                .and_then(|(o, t)| Some(o.tasks_per_s? / t.tasks_per_s?)),
            status: if o.is_some() {
                Status::Measured
            } else {
                Status::Skipped
            },
        }
    })
    .collect();
    out.splice(at..at, rabbit);
    out.extend(beat::verdicts(ms));
    out
}
