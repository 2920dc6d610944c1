//! `inspect` and `control`: broadcast a remote-control command, collect the workers'
//! replies and print them as Celery's command line does (`->  node: OK` and the reply,
//! then `N nodes online.`), or as one JSON object with `--json`.

use serde_json::{json, Value};

use super::{ControlCommand, InspectCommand, ReplyArgs};
use crate::app::App;
use crate::error::Error;

/// Runs an `inspect` command against the workers.
pub(super) async fn inspect(app: App, command: InspectCommand) -> Result<i32, Error> {
    let (method, args, reply) = match command {
        InspectCommand::Queues => return queues(app).await,
        InspectCommand::Ping(r) => ("ping", json!({}), r),
        InspectCommand::Stats(r) => ("stats", json!({}), r),
        InspectCommand::Registered(r) => ("registered", json!({"taskinfoitems": []}), r),
        InspectCommand::Active(r) => ("active", json!({}), r),
        InspectCommand::Reserved(r) => ("reserved", json!({}), r),
        InspectCommand::Scheduled(r) => ("scheduled", json!({}), r),
        InspectCommand::Revoked(r) => ("revoked", json!({}), r),
        InspectCommand::ActiveQueues(r) => ("active_queues", json!({}), r),
        InspectCommand::QueryTask(q) => ("query_task", json!({"ids": q.ids}), q.reply),
        InspectCommand::Conf(r) => ("conf", json!({"with_defaults": false}), r),
        InspectCommand::Report(r) => ("report", json!({}), r),
        InspectCommand::Clock(r) => ("clock", json!({}), r),
    };
    broadcast(app, method, args, reply, true).await
}

/// `inspect queues`: the messages waiting in each queue, from the broker.
async fn queues(app: App) -> Result<i32, Error> {
    let queues = app.broker().queues().await?;
    println!("{:<30} {:>10}", "QUEUE", "MESSAGES");
    for q in queues {
        println!("{:<30} {:>10}", q, app.broker().queue_depth(&q).await?);
    }
    Ok(0)
}

/// Runs a `control` command against the workers.
pub(super) async fn control(app: App, command: ControlCommand) -> Result<i32, Error> {
    let (method, args, reply) = match command {
        ControlCommand::Revoke {
            ids,
            terminate,
            signal,
            reply,
        } => (
            "revoke",
            json!({"task_id": ids, "terminate": terminate, "signal": signal}),
            reply,
        ),
        ControlCommand::Terminate { signal, ids, reply } => (
            "terminate",
            json!({"task_id": ids, "signal": signal}),
            reply,
        ),
        ControlCommand::RateLimit { task, rate, reply } => (
            "rate_limit",
            json!({"task_name": task, "rate_limit": rate}),
            reply,
        ),
        ControlCommand::TimeLimit {
            task,
            soft,
            hard,
            reply,
        } => (
            "time_limit",
            json!({"task_name": task, "soft": soft, "hard": hard}),
            reply,
        ),
        ControlCommand::AddConsumer {
            queue,
            exchange,
            exchange_type,
            routing_key,
            reply,
        } => (
            "add_consumer",
            json!({"queue": queue, "exchange": exchange, "exchange_type": exchange_type, "routing_key": routing_key}),
            reply,
        ),
        ControlCommand::CancelConsumer { queue, reply } => {
            ("cancel_consumer", json!({"queue": queue}), reply)
        }
        ControlCommand::PoolGrow { n, reply } => ("pool_grow", json!({"n": n}), reply),
        ControlCommand::PoolShrink { n, reply } => ("pool_shrink", json!({"n": n}), reply),
        ControlCommand::Autoscale { max, min, reply } => {
            ("autoscale", json!({"max": max, "min": min}), reply)
        }
        ControlCommand::EnableEvents(r) => ("enable_events", json!({}), r),
        ControlCommand::DisableEvents(r) => ("disable_events", json!({}), r),
        ControlCommand::Heartbeat(r) => ("heartbeat", json!({}), r),
        ControlCommand::Shutdown(r) => ("shutdown", json!({}), r),
    };
    broadcast(app, method, args, reply, false).await
}

/// Exit status when no worker replied (`EX_UNAVAILABLE`, as Celery's CLI exits).
const NO_REPLY: i32 = 69;

/// Sends the command, prints the replies: an `inspect` (`summary`) ends with the number
/// of nodes online; `--json` prints them merged (inspect) or as a list (control), as
/// Celery's CLI does.
async fn broadcast(
    app: App,
    method: &str,
    args: Value,
    a: ReplyArgs,
    summary: bool,
) -> Result<i32, Error> {
    let destination = (!a.destination.is_empty()).then_some(a.destination.as_slice());
    let replies = app
        .control()
        .broadcast(method, args, destination, Some(a.timeout))
        .await?;
    if a.json {
        let out = if summary {
            Value::Object(replies.into_iter().collect())
        } else {
            Value::Array(replies.into_iter().map(|(n, r)| json!({ n: r })).collect())
        };
        println!("{out}");
        return Ok(0);
    }
    if replies.is_empty() {
        // Celery's wording; `shutdown` never gets a reply, so it is not an error there.
        eprintln!("Error: No nodes replied within time constraint");
        return Ok(if method == "shutdown" { 0 } else { NO_REPLY });
    }
    let n = replies.len();
    for (node, reply) in &replies {
        println!("{}", render(node, reply));
    }
    if summary {
        println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
    }
    Ok(0)
}

/// One node's reply as Celery's CLI prints it.
fn render(node: &str, reply: &Value) -> String {
    let indent = |text: &str, by: &str| {
        text.lines()
            .map(|l| format!("{by}{l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(err) = reply.get("error") {
        let text = err.as_str().map_or_else(|| err.to_string(), str::to_string);
        return format!("->  {node}: ERROR\n{}", indent(&text, "        "));
    }
    let body = match reply {
        Value::Object(o) if o.len() == 1 && o.contains_key("ok") => {
            let ok = &o["ok"];
            indent(
                &ok.as_str().map_or_else(|| ok.to_string(), str::to_string),
                "        ",
            )
        }
        Value::Array(items) if items.is_empty() => "    - empty -".to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => format!("    * {s}"),
                other => format!("    * {other}"),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => "    null".to_string(),
        other => indent(
            &serde_json::to_string_pretty(other).unwrap_or_default(),
            "    ",
        ),
    };
    format!("->  {node}: OK\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_print_as_celery_prints_them() {
        assert_eq!(
            render("w@h", &json!({"ok": "pong"})),
            "->  w@h: OK\n        pong"
        );
        assert_eq!(render("w@h", &json!([])), "->  w@h: OK\n    - empty -");
        assert_eq!(
            render("w@h", &json!(["tasks.add", "tasks.mul"])),
            "->  w@h: OK\n    * tasks.add\n    * tasks.mul"
        );
        assert_eq!(
            render("w@h", &json!({"error": "unknown task"})),
            "->  w@h: ERROR\n        unknown task"
        );
        assert!(render("w@h", &json!({"clock": 3})).starts_with("->  w@h: OK\n    {"));
    }
}
