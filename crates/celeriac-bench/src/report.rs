//! What a run measured, the targets it is judged against, and the report: a table on
//! stdout, `report.md` and `report.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From samples in milliseconds (`None` if there are none).
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() as f64 - 1.0) * q).round() as usize];
        Some(Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: s[s.len() - 1],
        })
    }
}

/// One measured figure set: a workload run by one implementation in one configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measurement {
    /// Workload key (`noop_results`, `enqueue`, …).
    pub workload: String,
    /// `celeriac` or `celery`.
    pub implementation: String,
    /// Pool and concurrency (`async -c 64`, `prefork -c 2`), or the engine.
    pub variant: String,
    /// Tasks in the run.
    pub n: u64,
    /// Throughput.
    pub tasks_per_s: Option<f64>,
    /// Latency percentiles (ms).
    pub latency_ms: Option<Percentiles>,
    /// A duration (wall time, start-up time), in seconds.
    pub seconds: Option<f64>,
    /// Resident memory (peak where it applies), MiB.
    pub rss_mb: Option<f64>,
    /// CPU use, percent of one core.
    pub cpu_percent: Option<f64>,
    /// CPU time of the worker process per task, microseconds (throughput runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_cpu_us_per_task: Option<f64>,
    /// CPU time of the Redis server per task, microseconds (Redis throughput runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cpu_us_per_task: Option<f64>,
    /// Peak resident memory (`VmHWM`), MiB (beat runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// CPU time per minute, ms, from the threads' schedstat (ns resolution; beat runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_min: Option<f64>,
    /// Mean interval between sends minus the period, ms (Celery's beat runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_ms: Option<f64>,
    /// How it was measured, or why it is missing.
    pub note: String,
    /// The latency samples (ms), for the plot; not in the JSON report.
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

impl Measurement {
    /// An empty measurement of `workload` by `implementation`.
    pub fn new(workload: &str, implementation: &str, variant: impl Into<String>) -> Self {
        Self {
            workload: workload.into(),
            implementation: implementation.into(),
            variant: variant.into(),
            ..Self::default()
        }
    }

    /// The main figure as text.
    pub fn figure(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = self.tasks_per_s {
            parts.push(format!("{} tasks/s", thousands(t)));
        }
        if let Some(l) = self.latency_ms {
            parts.push(format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                l.p50, l.p99, l.max
            ));
        }
        if let Some(s) = self.seconds {
            parts.push(if s < 1.0 {
                format!("{:.1} ms", s * 1000.0)
            } else {
                format!("{s:.2} s")
            });
        }
        if let Some(c) = self.cpu_percent {
            parts.push(format!("{c:.2}% CPU"));
        }
        if let Some(r) = self.rss_mb {
            parts.push(format!("{r:.1} MiB RSS"));
        }
        if parts.is_empty() {
            "—".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A number with thousands separators, no decimals.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A target and how this run did against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// The workload.
    pub workload: String,
    /// The target, as the issue states it.
    pub target: String,
    /// celeriac's figure.
    pub celeriac: String,
    /// Python Celery's best figure in this run, if measured.
    pub celery: String,
    /// celeriac ÷ Celery (or Celery ÷ celeriac for times and memory), if both measured.
    pub ratio: Option<f64>,
    /// Met, missed, or not measured.
    pub status: Status,
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Met.
    Met,
    /// Missed.
    Missed,
    /// Not measured in this run.
    Skipped,
    /// Measured, with no target to judge it against (the RabbitMQ rows).
    Measured,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "MISSED",
            Status::Skipped => "not run",
            Status::Measured => "—",
        }
    }
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel.
    pub kernel: String,
    /// Redis server version.
    pub redis: String,
    /// Python Celery version, if present.
    pub celery: Option<String>,
    /// When the run started (UTC).
    pub date: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn probe(redis_version: String, celery: Option<String>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
            redis: redis_version,
            celery,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The targets and how they fared.
    pub verdicts: Vec<Verdict>,
    /// Every measurement.
    pub measurements: Vec<Measurement>,
    /// Redis's own limits measured in the same run.
    pub redis_limit: Option<RedisLimit>,
    /// Wall time of the whole run, seconds.
    pub run_seconds: f64,
}

/// Redis's pipelined throughput, and what that allows for a task needing `commands_per_task`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisLimit {
    /// `redis-benchmark -P 16` requests/s, averaged over the commands it ran.
    pub ops_per_s: f64,
    /// Per command, as redis-benchmark printed them.
    pub per_command: Vec<(String, f64)>,
    /// Redis commands (scripts' inner commands included) per task, from `INFO commandstats`
    /// around celeriac's results run.
    pub commands_per_task: Option<f64>,
}

impl RedisLimit {
    /// Tasks/s Redis alone allows for the worker's command mix.
    pub fn tasks_per_s(&self) -> Option<f64> {
        self.commands_per_task
            .filter(|c| *c > 0.0)
            .map(|c| self.ops_per_s / c)
    }
}

impl Report {
    /// The report as a Markdown document.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# celeriac vs Python Celery — benchmark report\n");
        let _ = writeln!(
            out,
            "{} · {} × {} · {:.0} GiB · Linux {} · Redis {} · Celery {} · run took {:.0} s\n",
            m.date,
            m.cores,
            m.cpu,
            m.memory_gib,
            m.kernel,
            m.redis,
            m.celery.as_deref().unwrap_or("not installed"),
            self.run_seconds
        );
        let _ = writeln!(out, "## Targets\n");
        let _ = writeln!(
            out,
            "| workload | target | celeriac | Celery (best) | ratio | |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                v.workload,
                v.target,
                v.celeriac,
                v.celery,
                v.ratio.map_or_else(|| "—".into(), |r| format!("{r:.1}×")),
                v.status.mark()
            );
        }
        if let Some(l) = &self.redis_limit {
            let _ = writeln!(
                out,
                "\nRedis's own limit in this run: `redis-benchmark -P 16` {} ops/s ({}); the worker issues {} Redis commands per task, so Redis alone allows {} tasks/s.",
                thousands(l.ops_per_s),
                l.per_command
                    .iter()
                    .map(|(c, v)| format!("{c} {}", thousands(*v)))
                    .collect::<Vec<_>>()
                    .join(", "),
                l.commands_per_task
                    .map_or_else(|| "?".into(), |c| format!("{c:.1}")),
                l.tasks_per_s().map_or_else(|| "?".into(), thousands)
            );
        }
        let _ = writeln!(out, "\n## Every measurement\n");
        let _ = writeln!(
            out,
            "| workload | implementation | configuration | n | figure | how |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for x in &self.measurements {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                x.workload,
                x.implementation,
                x.variant,
                x.n,
                x.figure(),
                x.note
            );
        }
        out
    }

    /// Prints the targets table to stdout.
    pub fn print(&self) {
        println!();
        println!(
            "{:<30} {:<34} {:<44} {:<34} {:>8}  status",
            "workload", "target", "celeriac", "Celery (best)", "ratio"
        );
        for v in &self.verdicts {
            println!(
                "{:<30} {:<34} {:<44} {:<34} {:>8}  {}",
                v.workload,
                v.target,
                v.celeriac,
                v.celery,
                v.ratio.map_or_else(|| "—".into(), |r| format!("{r:.1}×")),
                v.status.mark()
            );
        }
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown())
            .map_err(|e| format!("cannot write {}: {e}", md.display()))?;
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))
    }
}
