//! `celeriac-chaos`: faults injected under load into celeriac workers and, on the same
//! scenarios, stock Python Celery 5.7 workers, counted task by task.
//!
//! ```text
//! cargo run --release -p celeriac-tests --bin celeriac-chaos -- [--worker celeriac|celery|both] [--tasks N] [SCENARIO ...]
//! ```
//!
//! Scenarios: `kill9` (SIGKILL a worker holding late-ack tasks, 5 times), `restart`
//! (redis-server restart), `failover` (to replica and back), `netcut` (a proxy cuts every
//! connection for 2 s), `garbage` (undecodable and oversized messages among the tasks),
//! `warm` (SIGTERM a worker with a backlog, start another), `diskfull` (celeriac's SQLite
//! broker on a tmpfs that fills up). Each run has its own redis-server (nothing shared is
//! touched) and prints one row: tasks sent, ran once, ran twice, never ran, wall time. See
//! `docs/reliability.md` for what each scenario does and the figures of a run.
//!
//! Minutes long and needing Python, so a program run by hand and not a test: `cargo test`
//! does not run it.

// A crate root finds `mod x;` beside itself (tests/bin/x.rs); the modules live in
// tests/bin/chaos/ so the test app's directory holds only programs.
#[path = "chaos/diskfull.rs"]
mod diskfull;
#[path = "chaos/fleet.rs"]
mod fleet;
#[path = "chaos/run.rs"]
mod run;
#[path = "chaos/scenarios.rs"]
mod scenarios;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use fleet::{Kind, Programs};
use run::{Limits, Row};
use scenarios::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Celeriac,
    Celery,
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "celeriac-chaos",
    about = "Faults under load, counted task by task, for celeriac and Python Celery 5.7 workers"
)]
struct Args {
    /// Which workers to run the scenarios with.
    #[arg(long, value_enum, default_value = "both")]
    worker: Which,
    /// Tasks per run [default: 2000 for kill9, 1000 for the others].
    #[arg(long)]
    tasks: Option<usize>,
    /// Tasks sent per second (`warm` sends as fast as it can).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Give up on a run this many seconds after its first send.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Give up on a run when, after the fault, nothing ran and nothing changed on the
    /// broker for this many seconds.
    #[arg(long, default_value_t = 20)]
    stall: u64,
    /// Size of the tmpfs `diskfull` fills, MiB: smaller than the SQLite broker's widest
    /// write-ahead log window (40 MiB), so the run shows the window narrowing to fit.
    #[arg(long, default_value_t = 32)]
    disk_mib: u64,
    /// Where the workers' logs go [default: `chaos/` beside the profile directory, e.g.
    /// target/chaos].
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Scenarios to run [default: all].
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(scenarios::ALL))]
    scenarios: Vec<String>,
    /// Internal: run `diskfull` here, recording to this Redis URL (inside the mount
    /// namespace the parent made).
    #[arg(long, hide = true)]
    diskfull_child: Option<String>,
}

/// The repository (for `tests/python`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package is inside the repository")
        .to_path_buf()
}

/// `celeriac-testapp` next to this program. Under `cargo run` it is built first, in this
/// program's profile: `cargo run --bin celeriac-chaos` builds only this binary, and a
/// stale worker binary would measure old code.
fn testapp(exe_dir: &Path) -> PathBuf {
    let testapp = exe_dir.join(format!("celeriac-testapp{}", std::env::consts::EXE_SUFFIX));
    let profile = exe_dir.file_name().and_then(|n| n.to_str());
    if let (Some(cargo), Some(profile @ ("release" | "debug"))) =
        (std::env::var_os("CARGO"), profile)
    {
        let mut build = std::process::Command::new(cargo);
        build.args([
            "build",
            "-q",
            "-p",
            "celeriac-tests",
            "--bin",
            "celeriac-testapp",
        ]);
        if profile == "release" {
            build.arg("--release");
        }
        match build.status() {
            Ok(s) if s.success() => {}
            other => eprintln!("warning: building celeriac-testapp failed ({other:?})"),
        }
    }
    if !testapp.exists() {
        eprintln!(
            "error: {} not found; build it first: cargo build --release -p celeriac-tests --bins",
            testapp.display()
        );
        std::process::exit(1);
    }
    testapp
}

fn cell(n: usize) -> String {
    n.to_string()
}

/// The table, in Markdown.
fn table(rows: &[Row]) -> String {
    let mut lines = vec![
        "| scenario | worker | sent | ran once | ran twice | never ran | wall time | notes |"
            .to_string(),
        "|---|---|---:|---:|---:|---:|---:|---|".to_string(),
    ];
    for r in rows {
        let (sent, once, twice, never, wall) = match r.counts {
            Some(c) => (
                cell(c.sent),
                cell(c.once),
                cell(c.twice),
                cell(c.never),
                format!("{:.1} s", c.wall.as_secs_f64()),
            ),
            None => Default::default(),
        };
        lines.push(format!(
            "| {} | {} | {sent} | {once} | {twice} | {never} | {wall} | {} |",
            r.scenario,
            r.worker,
            r.notes.join("; ")
        ));
    }
    lines.join("\n")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let exe = std::env::current_exe().expect("the path of this program");
    let exe_dir = exe
        .parent()
        .expect("this program's directory")
        .to_path_buf();
    let logs = args
        .logs
        .clone()
        .unwrap_or_else(|| exe_dir.parent().unwrap_or(&exe_dir).join("chaos"));
    std::fs::create_dir_all(&logs).expect("the log directory can be made");
    let child = args.diskfull_child.is_some();
    let kinds: Vec<Kind> = match args.worker {
        Which::Celeriac => vec![Kind::Celeriac],
        Which::Celery => vec![Kind::Celery],
        Which::Both => vec![Kind::Celeriac, Kind::Celery],
    };
    let scenarios: Vec<&'static str> = if args.scenarios.is_empty() {
        scenarios::ALL.to_vec()
    } else {
        scenarios::ALL
            .iter()
            .copied()
            .filter(|s| args.scenarios.iter().any(|a| a == s))
            .collect()
    };
    let testapp = if child {
        exe_dir.join("celeriac-testapp")
    } else {
        testapp(&exe_dir)
    };
    let venv = if kinds.contains(&Kind::Celery) && !child {
        celeriac_testing::python::celery_venv("celeriac-chaos", &repo_root())
    } else {
        None
    };
    let ctx = Ctx {
        programs: Arc::new(Programs {
            testapp,
            venv,
            logs: logs.clone(),
        }),
        limits: Limits {
            timeout: Duration::from_secs(args.timeout),
            stall: Duration::from_secs(args.stall),
        },
        tasks: args.tasks,
        rate: args.rate,
        disk_mib: args.disk_mib,
    };
    if let Some(record) = &args.diskfull_child {
        diskfull::in_child(&ctx, record).await;
        return;
    }

    let command: Vec<String> = std::env::args().skip(1).collect();
    eprintln!(
        "celeriac-chaos on {} cores; worker logs in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        logs.display()
    );
    eprintln!(
        "reproduce: cargo run --release -p celeriac-tests --bin celeriac-chaos --{}{}",
        if command.is_empty() { "" } else { " " },
        command.join(" ")
    );
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    for name in scenarios {
        for &kind in &kinds {
            eprintln!("running {name} with {} workers…", kind.label());
            let row = scenarios::run(&ctx, name, kind).await;
            eprintln!(
                "{}",
                table(std::slice::from_ref(&row))
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            rows.push(row);
        }
    }
    println!("{}", table(&rows));
    eprintln!("all runs took {:.0} s", started.elapsed().as_secs_f64());
}
