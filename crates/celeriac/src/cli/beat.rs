//! `beat`: runs the periodic tasks of the app's code ([`AppBuilder::periodic`]) and of a
//! schedule file (`--schedule beat.toml`), or prints their next due times (`--dry-run`);
//! and the beat a worker embeds with `-B`.
//!
//! [`AppBuilder::periodic`]: crate::AppBuilder::periodic

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use super::BeatArgs;
use crate::app::App;
use crate::beat::{Beat, BeatBuilder};
use crate::error::Error;

/// The app's entries plus those of the schedule file at `schedule`, if one is given.
pub(super) fn builder(app: &App, schedule: Option<&Path>) -> Result<BeatBuilder, Error> {
    let b = app.beat();
    let Some(path) = schedule else {
        return Ok(b);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let entries = crate::beat::parse_file(&text, &path.display().to_string())
        .map_err(|e| Error::Input(e.to_string()))?;
    Ok(b.entries(entries))
}

/// `beat`: runs until SIGINT or SIGTERM, or prints the next due times.
pub(super) async fn run(app: App, args: BeatArgs) -> Result<i32, Error> {
    let beat = builder(&app, args.schedule.as_deref())?
        .lease(args.lease)
        .schedule_name(args.name)
        .build()?;
    if args.dry_run {
        print_upcoming(&beat, args.count).await?;
        return Ok(0);
    }
    beat.run(stop_signal()).await?;
    Ok(0)
}

/// Prints each entry, its last recorded run and its next due times.
async fn print_upcoming(beat: &Beat, count: usize) -> Result<(), Error> {
    for u in beat.upcoming(count).await? {
        println!("{}  {}  {}", u.name, u.task, u.schedule);
        println!(
            "    last run: {}",
            u.last
                .map_or_else(|| "never".to_string(), crate::beat::show)
        );
        if u.next.is_empty() {
            println!("    next: none (it will not run again)");
        }
        for t in &u.next {
            println!("    next: {}", crate::beat::show(*t));
        }
    }
    Ok(())
}

/// Completes at the first SIGINT or SIGTERM.
fn stop_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            if let (Ok(mut int), Ok(mut term)) = streams {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                return;
            }
        }
        // No signal handlers: Ctrl-C, else run until the process is killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A worker's embedded beat (`worker -B`): runs until `stop` fires; its failure is
/// logged, the worker goes on.
pub(super) fn spawn_embedded(
    beat: Beat,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stop = async move {
            let _ = stop.await;
        };
        if let Err(e) = beat.run(stop).await {
            tracing::error!("beat: {e}");
        }
    })
}

/// How long `worker -B` waits for its beat to give its lease up at shutdown.
pub(super) const EMBEDDED_STOP: Duration = Duration::from_secs(5);
