//! `celeriac events`: the cluster's events, as `celery events` shows them — a live view
//! of the workers (online, active, processed) and the latest tasks, redrawn every second,
//! or with `--dump` every event as one JSON line.

use std::io::Write;

use serde_json::Value;

use super::EventsArgs;
use crate::app::App;
use crate::error::Error;
use crate::events::{unix_now, ClusterState};

/// Runs `celeriac events` until Ctrl-C (or `--duration`).
pub(super) async fn run(app: App, a: EventsArgs) -> Result<i32, Error> {
    let mut events = app.events().await?;
    let deadline = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut state = ClusterState::new(1_000);
    let mut redraw = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut out = std::io::stdout();
    if a.dump {
        eprintln!(
            "-> celeriac events: dumping events from {}",
            app.broker_url()
        );
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = &mut deadline => break,
            _ = redraw.tick(), if !a.dump => {
                let _ = write!(out, "\x1b[2J\x1b[H{}", render(&state, unix_now()));
                let _ = out.flush();
            }
            e = events.next() => {
                let Some(e) = e else { break };
                if a.dump {
                    if writeln!(out, "{}", Value::Object(e.fields.clone())).is_err() {
                        break; // stdout closed (a pipe): done
                    }
                } else {
                    state.apply(&e);
                }
            }
        }
    }
    if !a.dump {
        let _ = write!(out, "\x1b[2J\x1b[H{}", render(&state, unix_now()));
    }
    Ok(0)
}

/// The live view: workers, then the latest tasks.
fn render(state: &ClusterState, now: f64) -> String {
    let mut s = format!(
        "celeriac events — {} event(s)\n\nWORKERS\n{:<36} {:<8} {:>7} {:>10}  {}\n",
        state.events, "NODE", "STATUS", "ACTIVE", "PROCESSED", "SOFTWARE"
    );
    for w in state.workers.values() {
        s.push_str(&format!(
            "{:<36} {:<8} {:>7} {:>10}  {}\n",
            w.hostname,
            if w.alive(now) { "ONLINE" } else { "OFFLINE" },
            w.active,
            w.processed,
            w.sw_ident
        ));
    }
    s.push_str(&format!(
        "\nTASKS (latest first)\n{:<36} {:<24} {:<9} {:<28} {}\n",
        "UUID", "NAME", "STATE", "WORKER", "RESULT"
    ));
    for t in state.tasks().take(20) {
        let outcome = t
            .result
            .clone()
            .or_else(|| t.exception.clone())
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<36} {:<24} {:<9} {:<28} {}\n",
            t.uuid,
            t.name.as_deref().unwrap_or("?"),
            t.state,
            t.worker.as_deref().unwrap_or(""),
            outcome.chars().take(40).collect::<String>()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use serde_json::json;

    #[test]
    fn the_view_lists_workers_and_tasks() {
        let mut st = ClusterState::default();
        for v in [
            json!({"type": "worker-heartbeat", "hostname": "w@h", "timestamp": 10.0, "freq": 2.0, "active": 1, "processed": 7, "sw_ident": "celeriac"}),
            json!({"type": "task-received", "hostname": "w@h", "timestamp": 10.0, "uuid": "u1", "name": "tasks.add"}),
            json!({"type": "task-succeeded", "hostname": "w@h", "timestamp": 10.5, "uuid": "u1", "result": "5"}),
        ] {
            st.apply(&Event::from_value(v).unwrap());
        }
        let view = render(&st, 11.0);
        assert!(view.contains("w@h") && view.contains("ONLINE"), "{view}");
        assert!(
            view.contains("tasks.add") && view.contains("SUCCESS"),
            "{view}"
        );
        assert!(render(&st, 30.0).contains("OFFLINE"));
    }
}
