//! What each pool is for, measured: 10,000 concurrent I/O waits in one async worker (wall
//! time and the worker's peak memory), and CPU-bound work on 1 vs 2 cores in the threads
//! and prefork pools.
//!
//! `cargo run --release -p celeriac-examples --example pools`
//!
//! Each measurement starts a worker process (`pools worker ...`, this binary with celeriac's
//! CLI) on a fresh SQLite file in a temporary directory, sends the tasks from this process,
//! and takes the time each task finished from its own result, so reading results back does
//! not count. `POOLS_SLEEPERS` sets the number of sleeping tasks (default 10000).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use celeriac::{App, Error, Signature, TaskResult};

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Waits `secs` on a timer (an I/O wait), then says when it started and finished.
#[celeriac::task(name = "pools.sleep", ignore_result = false)]
async fn sleep(secs: f64) -> TaskResult<(i64, i64)> {
    let started = now_us();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    Ok((started, now_us()))
}

/// Burns a core for `secs`, then says when it started and finished.
#[celeriac::task(name = "pools.burn")]
fn burn(secs: f64) -> TaskResult<(i64, i64)> {
    let started = now_us();
    let start = std::time::Instant::now();
    let mut x: u64 = 1;
    while start.elapsed().as_secs_f64() < secs {
        for i in 0..20_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
    Ok((started, now_us()))
}

fn app(url: &str) -> celeriac::AppBuilder {
    App::builder().broker_url(url).task(sleep).task(burn)
}

struct Worker {
    child: Child,
}

impl Worker {
    fn start(url: &str, args: &[&str]) -> std::io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--broker", url, "worker", "-l", "error"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if line?.contains("pools.sleep") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child })
    }

    /// Peak resident memory so far, in MiB (Linux `VmHWM`).
    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Seconds from the first send until: all were sent, the last task started, the last ended.
struct Run {
    sent: f64,
    last_start: f64,
    wall: f64,
}

/// Sends `sigs` and waits for them all.
async fn run(app: &App, sigs: Vec<Signature>) -> Result<Run, Error> {
    let start = now_us();
    let results = app.send_many(sigs).await?;
    let sent = now_us();
    let (mut last_start, mut last) = (start, start);
    for r in &results {
        let (began, ended) = r.get::<(i64, i64)>(Duration::from_secs(120)).await?;
        last_start = last_start.max(began);
        last = last.max(ended);
    }
    let secs = |t: i64| (t - start) as f64 / 1e6;
    Ok(Run {
        sent: secs(sent),
        last_start: secs(last_start),
        wall: secs(last),
    })
}

fn fresh_url(dir: &std::path::Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

fn main() -> Result<(), Error> {
    if std::env::args().nth(1).is_some() {
        // `pools --broker URL worker ...`: the worker processes this example starts.
        celeriac::cli::run(App::builder().task(sleep).task(burn));
    }
    tokio::runtime::Runtime::new()
        .map_err(|e| Error::Config(e.to_string()))?
        .block_on(measure())
}

async fn measure() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("celeriac-pools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Config(e.to_string()))?;
    let spawn_err = |e: std::io::Error| Error::Config(format!("cannot start a worker: {e}"));

    let n: usize = std::env::var("POOLS_SLEEPERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let url = fresh_url(&dir, "sleepers.sqlite");
    let c = n.to_string();
    let worker = Worker::start(&url, &["--pool", "async", "-c", &c]).map_err(spawn_err)?;
    let client = app(&url).build().await?;
    let r = run(&client, (0..n).map(|_| sleep::new(1.0)).collect()).await?;
    println!(
        "async pool, {n} tasks each awaiting a 1 s timer, -c {n}: all done {:.2} s after the first was sent \
         (all sent by {:.2} s, all started by {:.2} s); worker peak RSS {:.1} MiB",
        r.wall,
        r.sent,
        r.last_start,
        worker.peak_rss_mib()
    );
    drop(worker);

    let tasks = 8;
    for pool in ["threads", "prefork"] {
        let mut walls = Vec::new();
        for c in ["1", "2"] {
            let url = fresh_url(&dir, &format!("{pool}-{c}.sqlite"));
            let worker = Worker::start(&url, &["--pool", pool, "-c", c]).map_err(spawn_err)?;
            let client = app(&url).build().await?;
            let r = run(&client, (0..tasks).map(|_| burn::new(0.25)).collect()).await?;
            walls.push(r.wall);
            drop(worker);
        }
        println!(
            "{pool} pool, {tasks} CPU-bound tasks of 0.25 s: -c 1 {:.2} s, -c 2 {:.2} s (-c 2 takes {:.0} % of the time of -c 1)",
            walls[0],
            walls[1],
            100.0 * walls[1] / walls[0]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
