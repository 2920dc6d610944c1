//! The `beat` workload: how close to its due time a beat process sends each run, and what
//! an idle beat costs. celeriac's beat is this binary's `beat` command (a schedule file,
//! no worker: the runs pile up in a queue of their own, deleted afterwards), on Redis and
//! on a SQLite file; Celery's is `celery beat` on Redis, in the same run.
//!
//! Each side runs two beat processes side by side for the same time: one with an entry
//! every 0.5 s (accuracy, from its log) and one with an entry every 3600 s, which sends
//! nothing (idle cost, from `/proc`). Each has a store of its own (key prefix or file), so
//! they share no lease and no lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::{self, WorkerProc};
use crate::report::{Measurement, Percentiles, Status, Verdict};
use crate::workloads::{Ctx, RedisScope};

/// The accuracy entry's period, seconds.
const EVERY: f64 = 0.5;
/// The idle entry's period, seconds: nothing is due while measured.
const IDLE_EVERY: f64 = 3600.0;
/// From the beat being ready to the first CPU sample (start-up settled).
const SETTLE: Duration = Duration::from_secs(2);
/// The task the entries send (nobody runs it).
const TASK: &str = "bench.noop_ignored";
/// The entries' name.
const ENTRY: &str = "bench-tick";

/// CPU time so far: utime + stime of the tree (`/proc/PID/stat`, clock ticks) and, at ns
/// resolution, the threads' schedstat.
fn cpu(pid: u32) -> (f64, Option<f64>) {
    (
        procs::tree_cpu_seconds(pid),
        procs::threads_cpu_seconds(pid),
    )
}

/// Waits until `log` has a line containing `marker` (the beat is up), for up to 30 s.
async fn ready(log: &Path, marker: &str, proc: &mut WorkerProc) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(marker)) {
            return Ok(());
        }
        if !proc.running() {
            return Err(format!(
                "the beat process exited: {}",
                tail(&std::fs::read_to_string(log).unwrap_or_default())
            ));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "no `{marker}` in {} after 30 s: {}",
                log.display(),
                tail(&std::fs::read_to_string(log).unwrap_or_default())
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The log's last line, for errors.
fn tail(text: &str) -> String {
    text.lines().last().unwrap_or("(empty log)").to_string()
}

/// What the two processes of one side gave.
struct Pair {
    /// The accuracy process's log.
    log: String,
    /// The idle process: CPU seconds (stat, schedstat) over the window, RSS and peak.
    cpu_stat: f64,
    cpu_sched: Option<f64>,
    rss_mb: f64,
    hwm_mb: f64,
}

/// Starts both processes (`spawn(accuracy, log)`: the 0.5 s one, then the idle one), waits until each logs `marker`, samples
/// the idle one's CPU `SETTLE` after that and again `secs` later, then stops both.
async fn run_pair(
    scratch: &Path,
    marker: &str,
    secs: f64,
    spawn: impl Fn(bool, &Path) -> Result<WorkerProc, String>,
) -> Result<Pair, String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let acc_log = scratch.join(format!("beat-acc-{id}.log"));
    let idle_log = scratch.join(format!("beat-idle-{id}.log"));
    let mut acc = spawn(true, &acc_log)?;
    let mut idle = spawn(false, &idle_log)?;
    ready(&acc_log, marker, &mut acc).await?;
    ready(&idle_log, marker, &mut idle).await?;
    let t0 = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let (stat0, sched0) = cpu(idle.pid());
    tokio::time::sleep_until((t0 + SETTLE + Duration::from_secs_f64(secs)).into()).await;
    let (stat1, sched1) = cpu(idle.pid());
    let rss_mb = procs::status_mb(idle.pid(), "VmRSS").unwrap_or(f64::NAN);
    let hwm_mb = procs::status_mb(idle.pid(), "VmHWM").unwrap_or(f64::NAN);
    acc.stop();
    idle.stop();
    let idle_text = std::fs::read_to_string(&idle_log).unwrap_or_default();
    if idle_text.contains("Sending due task") {
        return Err("the idle beat sent a run (its entry is every 3600 s)".into());
    }
    Ok(Pair {
        log: std::fs::read_to_string(&acc_log)
            .map_err(|e| format!("cannot read {}: {e}", acc_log.display()))?,
        cpu_stat: stat1 - stat0,
        cpu_sched: sched0.zip(sched1).map(|(a, b)| b - a),
        rss_mb,
        hwm_mb,
    })
}

/// The idle row from a pair.
fn idle_row(imp: &str, engine: &str, p: &Pair, secs: f64) -> Measurement {
    let mut m = Measurement::new("beat", imp, format!("{engine}, idle (every 3600 s)"));
    m.cpu_percent = Some(p.cpu_stat / secs * 100.0);
    m.cpu_ms_per_min = Some(p.cpu_sched.unwrap_or(p.cpu_stat) * 1000.0 * 60.0 / secs);
    m.rss_mb = Some(p.rss_mb);
    m.peak_rss_mb = Some(p.hwm_mb);
    m.note = format!(
        "CPU over {secs:.0} s after a {:.0} s settle: utime+stime {:.0} ms, threads' schedstat {}; {:.2} ms CPU per minute; VmRSS at the end, peak (VmHWM) {:.1} MiB",
        SETTLE.as_secs_f64(),
        p.cpu_stat * 1000.0,
        p.cpu_sched
            .map_or_else(|| "n/a".into(), |s| format!("{:.2} ms", s * 1000.0)),
        m.cpu_ms_per_min.unwrap_or(f64::NAN),
        p.hwm_mb
    );
    m
}

/// The `(X.Y ms after)` of each `Sending due task` line of celeriac's log.
fn lateness_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("Scheduler: Sending due task"))
        .filter_map(|l| {
            let end = l.find(" ms after)")?;
            let start = l[..end].rfind('(')? + 1;
            l[start..end].trim().parse().ok()
        })
        .collect()
}

/// The time stamps (ms, from the first) of the `Sending due task` lines of Celery's log:
/// `[2026-12-01 10:00:00,123: INFO/MainProcess] Scheduler: Sending due task …`.
fn celery_send_times_ms(log: &str) -> Vec<f64> {
    let stamps: Vec<chrono::NaiveDateTime> = log
        .lines()
        .filter(|l| l.contains("Scheduler: Sending due task"))
        .filter_map(|l| {
            let s = l.strip_prefix('[')?;
            let s = &s[..s.find(": ")?];
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S,%3f").ok()
        })
        .collect();
    let Some(first) = stamps.first().copied() else {
        return Vec::new();
    };
    stamps
        .iter()
        .map(|t| (*t - first).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        .collect()
}

/// Messages waiting in `queue` on `url` (the runs really were enqueued).
async fn depth(url: &str, queue: &str) -> Result<u64, String> {
    let app = crate::tasks::app()
        .broker_url(url)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    app.broker()
        .queue_depth(queue)
        .await
        .map_err(|e| e.to_string())
}

/// celeriac's beat on one engine: `urls` gives a fresh store URL (and what to drop
/// afterwards) per process.
async fn celeriac_side(
    ctx: &Ctx,
    engine: &str,
    secs: f64,
    queue: &str,
    urls: &mut dyn FnMut() -> String,
) -> Result<Vec<Measurement>, String> {
    let acc_url = urls();
    let idle_url = urls();
    let scratch = ctx.scratch.clone();
    let spawn = |accuracy: bool, log: &Path| {
        let every = if accuracy { EVERY } else { IDLE_EVERY };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let file = scratch.join(format!("beat-{id}.toml"));
        std::fs::write(
            &file,
            format!(
                "[schedule.{ENTRY}]\ntask = \"{TASK}\"\nevery = {every}\nqueue = \"{queue}\"\n"
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let url = if accuracy { &acc_url } else { &idle_url };
        WorkerProc::spawn_beat(url, &file, &format!("bench-{id}"), log)
    };
    let pair = run_pair(&ctx.scratch, "beat: leading", secs, spawn).await?;
    let late = lateness_ms(&pair.log);
    let queued = depth(&acc_url, queue).await?;
    let mut m = Measurement::new("beat", "celeriac", format!("{engine}, every 0.5 s"));
    m.n = late.len() as u64;
    m.latency_ms = Percentiles::of(&late);
    m.note = format!(
        "lateness = send time − due time, the `(X ms after)` of each `Sending due task` log line; {} sends over {:.0} s, {queued} messages found queued",
        late.len(),
        secs + SETTLE.as_secs_f64()
    );
    if late.is_empty() {
        m.note = format!("no sends logged: {}", tail(&pair.log));
    }
    m.samples_ms = late;
    Ok(vec![m, idle_row("celeriac", engine, &pair, secs)])
}

/// Celery's beat on Redis: `celery -A bench_beat beat`, `bench_beat` a module written in
/// the scratch directory that gives `bench_tasks`'s app a one-entry `beat_schedule`.
async fn celery_side(
    ctx: &Ctx,
    python: &Path,
    repo: &Path,
    secs: f64,
    queue: &str,
) -> Result<Vec<Measurement>, String> {
    std::fs::write(
        ctx.scratch.join("bench_beat.py"),
        format!(
            "import os\nfrom bench_tasks import app\napp.conf.timezone = 'UTC'\napp.conf.beat_schedule = {{\n    '{ENTRY}': {{'task': '{TASK}', 'schedule': float(os.environ['BENCH_BEAT_EVERY']), 'options': {{'queue': '{queue}'}}}},\n}}\n"
        ),
    )
    .map_err(|e| format!("cannot write bench_beat.py: {e}"))?;
    let acc_scope = RedisScope::new(&ctx.redis);
    let idle_scope = RedisScope::new(&ctx.redis);
    let celery = python.with_file_name("celery");
    let pythonpath = format!(
        "{}:{}",
        ctx.scratch.display(),
        repo.join("bench/python").display()
    );
    let spawn = |accuracy: bool, log: &Path| {
        let (scope, every) = if accuracy {
            (&acc_scope, EVERY)
        } else {
            (&idle_scope, IDLE_EVERY)
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(&celery);
        cmd.args(["-A", "bench_beat", "beat", "-l", "info", "--schedule"])
            .arg(ctx.scratch.join(format!("celerybeat-{id}")))
            .arg("--pidfile=")
            .current_dir(&ctx.scratch)
            .env("PYTHONPATH", &pythonpath)
            .env("BENCH_BROKER", &ctx.redis)
            .env("BENCH_PREFIX", &scope.prefix)
            .env("BENCH_BEAT_EVERY", every.to_string())
            .env_remove("BENCH_BACKEND")
            .env_remove("BENCH_QUEUE");
        WorkerProc::adopt(&mut cmd, file)
    };
    let pair = run_pair(&ctx.scratch, "beat: Starting", secs, spawn).await?;
    let sent = celery_send_times_ms(&pair.log);
    let intervals: Vec<f64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    let off: Vec<f64> = intervals
        .iter()
        .map(|i| (i - EVERY * 1000.0).abs())
        .collect();
    let queued = depth(&acc_scope.url, queue).await?;
    let mut m = Measurement::new("beat", "celery", "Redis, every 0.5 s");
    m.n = sent.len() as u64;
    if !intervals.is_empty() {
        let mean = intervals.iter().sum::<f64>() / intervals.len() as f64;
        m.drift_ms = Some(mean - EVERY * 1000.0);
        m.latency_ms = Percentiles::of(&off);
        m.note = format!(
            "log time stamps (1 ms) of the `Sending due task` lines: mean interval {mean:.2} ms, so each run {:+.2} ms later than the last ({:+.0} ms after {} runs); percentiles are of abs(interval − 500 ms); {} sends, {queued} messages found queued",
            mean - EVERY * 1000.0,
            (mean - EVERY * 1000.0) * intervals.len() as f64,
            intervals.len(),
            sent.len()
        );
    } else {
        m.note = format!("fewer than two sends logged: {}", tail(&pair.log));
    }
    m.samples_ms = off;
    drop((acc_scope, idle_scope));
    Ok(vec![m, idle_row("celery", "Redis", &pair, secs)])
}

/// The whole workload: celeriac on Redis and SQLite, then Celery on Redis (when `python`,
/// the virtualenv's interpreter, is given). `secs` is the measured window (after the
/// settle). Failures become rows with a note.
pub async fn run(ctx: &Ctx, secs: f64, celery: Option<(&Path, &Path)>) -> Vec<Measurement> {
    let queue = "celeriac-bench-beat";
    let mut out = Vec::new();
    let failed = |imp: &str, variant: &str, e: String| {
        eprintln!("beat ({imp}, {variant}): {e}");
        let mut m = Measurement::new("beat", imp, variant);
        m.note = format!("failed: {e}");
        m
    };
    eprintln!("beat: celeriac on Redis, every 0.5 s and every 3600 s, {secs:.0} s");
    let mut scopes: Vec<RedisScope> = Vec::new();
    let mut redis_url = || {
        let s = RedisScope::new(&ctx.redis);
        let url = s.url.clone();
        scopes.push(s);
        url
    };
    match celeriac_side(ctx, "Redis", secs, queue, &mut redis_url).await {
        Ok(ms) => out.extend(ms),
        Err(e) => out.push(failed("celeriac", "Redis", e)),
    }
    drop(scopes);
    eprintln!("beat: celeriac on SQLite, every 0.5 s and every 3600 s, {secs:.0} s");
    let mut files: Vec<PathBuf> = Vec::new();
    let mut sqlite_url = || {
        let path = ctx
            .scratch
            .join(format!("beat-{}.sqlite", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite://{}", path.display());
        files.push(path);
        url
    };
    match celeriac_side(ctx, "SQLite", secs, queue, &mut sqlite_url).await {
        Ok(ms) => out.extend(ms),
        Err(e) => out.push(failed("celeriac", "SQLite", e)),
    }
    for path in files {
        for suffix in ["", "-wal", "-shm", "-wake"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    if let Some((python, repo)) = celery {
        eprintln!("beat: Celery on Redis, every 0.5 s and every 3600 s, {secs:.0} s");
        match celery_side(ctx, python, repo, secs, queue).await {
            Ok(ms) => out.extend(ms),
            Err(e) => out.push(failed("celery", "Redis", e)),
        }
    }
    out
}

/// The beat rows of the targets table.
pub fn verdicts(ms: &[Measurement]) -> Vec<Verdict> {
    let find = |imp: &str, variant: &str| {
        ms.iter()
            .find(|m| m.workload == "beat" && m.implementation == imp && m.variant == variant)
    };
    let late = |m: Option<&Measurement>| {
        m.and_then(|m| m.latency_ms).map_or_else(
            || "—".to_string(),
            |l| {
                format!(
                    "late p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    l.p50, l.p99, l.max
                )
            },
        )
    };
    let mut out = Vec::new();
    let celery_acc = find("celery", "Redis, every 0.5 s");
    let celery_text = celery_acc
        .and_then(|m| Some((m.drift_ms?, m.latency_ms?)))
        .map_or_else(
            || "—".to_string(),
            |(d, l)| format!("drift {d:+.2} ms/run, jitter p99 {:.1} ms", l.p99),
        );
    for engine in ["Redis", "SQLite"] {
        let o = find("celeriac", &format!("{engine}, every 0.5 s"));
        out.push(Verdict {
            workload: format!("beat, every 0.5 s, {engine}"),
            target: "sent ≤ 50 ms after due".into(),
            celeriac: late(o),
            celery: if engine == "Redis" {
                celery_text.clone()
            } else {
                "—".into()
            },
            ratio: None,
            status: match o.and_then(|m| m.latency_ms) {
                Some(l) => {
                    if l.max <= 50.0 {
                        Status::Met
                    } else {
                        Status::Missed
                    }
                }
                None => Status::Skipped,
            },
        });
    }
    let idle = |m: Option<&Measurement>| {
        m.and_then(|m| Some((m.cpu_percent?, m.cpu_ms_per_min?, m.rss_mb?, m.peak_rss_mb?)))
    };
    let text = |v: Option<(f64, f64, f64, f64)>| {
        v.map_or_else(
            || "—".to_string(),
            |(c, per_min, rss, hwm)| {
                format!("{c:.2}% CPU ({per_min:.1} ms/min), {rss:.1} MiB (peak {hwm:.1})")
            },
        )
    };
    let theirs = idle(find("celery", "Redis, idle (every 3600 s)"));
    for engine in ["Redis", "SQLite"] {
        let ours = idle(find("celeriac", &format!("{engine}, idle (every 3600 s)")));
        let ratios = ours.zip(theirs).map(|(o, t)| (t.1 / o.1, t.2 / o.2));
        out.push(Verdict {
            workload: format!("beat, idle, {engine}"),
            target: format!(
                "CPU ≈ 0, RSS < 20 MB{}",
                ratios.map_or_else(String::new, |(cpu, _)| format!(
                    " (ratio: RSS; CPU {cpu:.2}×)"
                ))
            ),
            celeriac: text(ours),
            celery: text(theirs),
            ratio: ratios.map(|(_, rss)| rss),
            status: match ours {
                Some((c, _, rss, _)) => {
                    if c <= 0.1 && rss * 1.048_576 < 20.0 {
                        Status::Met
                    } else {
                        Status::Missed
                    }
                }
                None => Status::Skipped,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_celeriac_lateness() {
        let log = "2026-12-01T10:00:00.501Z  INFO celeriac::beat::scheduler: Scheduler: Sending due task bench-tick (bench.noop_ignored) due 2026-12-01T10:00:00.500Z (1.3 ms after) entry=bench-tick\nother line (2.0 ms after)\n";
        assert_eq!(lateness_ms(log), vec![1.3]);
    }

    #[test]
    fn reads_celery_send_times() {
        let log = "[2026-12-01 10:00:00,100: INFO/MainProcess] beat: Starting...\n[2026-12-01 10:00:00,600: INFO/MainProcess] Scheduler: Sending due task bench-tick (bench.noop_ignored)\n[2026-12-01 10:00:01,102: INFO/MainProcess] Scheduler: Sending due task bench-tick (bench.noop_ignored)\n";
        assert_eq!(celery_send_times_ms(log), vec![0.0, 502.0]);
    }
}
