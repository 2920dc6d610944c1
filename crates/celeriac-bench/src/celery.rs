//! Python Celery's side: runs `bench/python/celery_bench.py` (one workload per call, one
//! JSON object back) with the virtualenv `bench/setup.sh` made.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::report::{Measurement, Percentiles};

/// A Celery install to compare against.
pub struct Celery {
    python: PathBuf,
    script: PathBuf,
    redis: String,
    /// `celery.__version__`.
    pub version: String,
}

impl Celery {
    /// The virtualenv at `venv`, if it has Celery; `None` (with the reason) otherwise.
    pub fn find(venv: &Path, repo: &Path, redis: &str) -> Result<Self, String> {
        let python = venv.join("bin/python");
        let script = repo.join("bench/python/celery_bench.py");
        if !script.exists() {
            return Err(format!("{} is missing", script.display()));
        }
        let out = Command::new(&python)
            .args(["-c", "import celery, gevent; print(celery.__version__)"])
            .output()
            .map_err(|e| format!("cannot run {}: {e} (run bench/setup.sh)", python.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} has no celery and gevent (run bench/setup.sh)",
                venv.display()
            ));
        }
        Ok(Self {
            python,
            script,
            redis: redis.to_string(),
            version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    /// The virtualenv's Python (its `celery` script is next to it).
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Runs one workload (`args` after the workload name) and maps its JSON.
    pub fn run(&self, workload: &str, args: &[String], timeout: Duration) -> Measurement {
        let label = args.join(" ");
        let out = Command::new("timeout")
            .arg(format!("{}", timeout.as_secs()))
            .arg(&self.python)
            .arg(&self.script)
            .arg(workload)
            .args(["--redis", &self.redis])
            .args(args)
            .output();
        let mut m = Measurement::new(workload, "celery", variant(args));
        let text = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => {
                m.note = format!("could not run: {e}");
                return m;
            }
        };
        let Some(v) = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
        else {
            m.note = format!("no result from celery_bench.py {workload} {label} (timed out?)");
            return m;
        };
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            m.note = format!("error: {e}");
            return m;
        }
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        m.n = v.get("n").and_then(Value::as_u64).unwrap_or(0);
        m.tasks_per_s = f("tasks_per_s");
        m.seconds = f("seconds").or_else(|| f("wall_s"));
        m.rss_mb = f("peak_rss_mb").or_else(|| f("rss_mb"));
        m.cpu_percent = f("cpu_percent");
        if let Some(p50) = f("p50_ms") {
            m.latency_ms = Some(Percentiles {
                p50,
                p90: f("p90_ms").unwrap_or(f64::NAN),
                p99: f("p99_ms").unwrap_or(f64::NAN),
                max: f("max_ms").unwrap_or(f64::NAN),
            });
        }
        if let Some(s) = v.get("samples_ms").and_then(Value::as_array) {
            m.samples_ms = s.iter().filter_map(Value::as_f64).collect();
        }
        m.note = v
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // RabbitMQ runs: where the CPU went, per task, as celeriac's rows print it.
        m.worker_cpu_us_per_task = f("worker_cpu_us_per_task");
        if let Some(w) = m.worker_cpu_us_per_task {
            let broker = f("broker_cpu_us_per_task")
                .map_or_else(|| "?".to_string(), |b| format!("{b:.1} µs"));
            m.note = format!(
                "{}; CPU per task: worker {w:.1} µs, RabbitMQ {broker}",
                m.note
            );
            if let Some(sent) = f("sent_s") {
                m.note = format!("{}; sent in {sent:.2} s", m.note);
            }
        }
        if let Some(done) = v.get("completed").and_then(Value::as_u64) {
            if done < m.n {
                m.note = format!("{} (only {done} of {} completed)", m.note, m.n);
            }
        }
        m
    }
}

/// `prefork -c 2` from the arguments.
fn variant(args: &[String]) -> String {
    let find = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let events = if args.iter().any(|a| a == "--events") {
        " -E"
    } else {
        ""
    };
    match (find("--pool"), find("-c")) {
        (Some(p), Some(c)) => format!("{p} -c {c}{events}"),
        (Some(p), None) => format!("{p}{events}"),
        _ => "client".into(),
    }
}
