//! The `diskfull` scenario needs a disk that really fills up: a small tmpfs holding the
//! SQLite broker. Mounting one needs no root inside a user and mount namespace of our own
//! (`unshare --user --map-root-user --mount`), so the parent runs this program again there
//! (`--diskfull-child`); the child mounts the tmpfs, runs the scenario with its sender and
//! workers inside the namespace, and prints its row as one JSON line. The mount goes away
//! with the namespace, whatever happens to the child.
//!
//! (`PRAGMA max_page_count` from another connection would not do: it is a setting of the
//! connection that sets it, not of the file.)

use std::io::Write;
use std::process::Stdio;

use celeriac_testing::services::ScratchDir;

use crate::fleet::Kind;
use crate::run::Row;
use crate::scenarios::{diskfull_here, Ctx};

/// The prefix of the child's row line on stdout.
const ROW: &str = "CHAOS-ROW ";

/// In the parent: runs the scenario in a child process in a namespace of its own.
pub(crate) async fn from_parent(ctx: &Ctx, record: &str) -> Row {
    let na = |why: String| Row::not_run("diskfull", Kind::Celeriac, why);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return na(format!("n/a: cannot find this program: {e}")),
    };
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount"])
        .arg(exe)
        .args(["--diskfull-child", record])
        .args(["--rate", &ctx.rate.to_string()])
        .args(["--timeout", &ctx.limits.timeout.as_secs().to_string()])
        .args(["--stall", &ctx.limits.stall.as_secs().to_string()])
        .args(["--disk-mib", &ctx.disk_mib.to_string()])
        .arg("--logs")
        .arg(&ctx.programs.logs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = ctx.tasks {
        cmd.args(["--tasks", &n.to_string()]);
    }
    let out = match cmd.output().await {
        Ok(o) => o,
        Err(e) => return na(format!("n/a: cannot run unshare: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(ROW))
        .filter_map(|j| serde_json::from_str(j).ok())
        .find_map(|v| Row::from_json(&v));
    match row {
        Some(row) => row,
        None => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("no output");
            na(format!(
                "n/a: the run in its own mount namespace failed ({}): {last}",
                out.status
            ))
        }
    }
}

/// In the child (inside the namespace): mounts the tmpfs, runs, prints the row.
pub(crate) async fn in_child(ctx: &Ctx, record: &str) {
    let disk = ScratchDir::new("celeriac-chaos-disk");
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={}m", ctx.disk_mib),
            "tmpfs",
        ])
        .arg(disk.path())
        .status();
    let row = match mounted {
        Ok(s) if s.success() => {
            let row = diskfull_here(ctx, &disk, record).await;
            let _ = std::process::Command::new("umount")
                .arg(disk.path())
                .status();
            row
        }
        Ok(s) => Row::not_run(
            "diskfull",
            Kind::Celeriac,
            format!("n/a: cannot mount a tmpfs ({s})"),
        ),
        Err(e) => Row::not_run(
            "diskfull",
            Kind::Celeriac,
            format!("n/a: cannot run mount: {e}"),
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{ROW}{}", row.to_json());
}
