//! The schedule file (`beat.toml`) of the stand-alone `celeriac beat`, which needs no task
//! code: one table per entry, checked whole before anything runs — a mistake is one line
//! naming the entry and the key.
//!
//! ```toml
//! timezone = "UTC"            # for crontabs that name none (default UTC)
//! catch_up = "once"           # once | skip | all (default once)
//!
//! [schedule.add-every-10]
//! task = "tasks.add"
//! every = 10                  # seconds; fractions allowed
//! args = [1, 2]
//!
//! [schedule.report]
//! task = "tasks.report"
//! cron = "30 7 * * mon-fri"
//! timezone = "Europe/Paris"
//! kwargs = { format = "pdf" }
//! queue = "reports"
//! priority = 3
//! expires = 3600              # seconds (default: one period)
//!
//! [schedule.launch]
//! task = "tasks.launch"
//! at = 2027-01-01T00:00:00Z
//! ```

use std::time::Duration;

use serde_json::{Map, Value};

use celeriac_core::Signature;

use super::schedule::{CatchUp, Schedule};

/// One periodic task: when, what, and how its runs are sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name (the key of its runs' records).
    pub name: String,
    /// When it is due.
    pub schedule: Schedule,
    /// What is sent: task, args, kwargs and options (queue, routing key, priority,
    /// headers).
    pub signature: Signature,
    /// How long a sent run stays valid; `None`: one period (so a backlog never piles up).
    pub expires: Option<Duration>,
    /// What becomes of runs missed while no beat was running.
    pub catch_up: CatchUp,
}

/// A schedule file that cannot be used: one line naming the entry and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(String);

const ENTRY_KEYS: &[&str] = &[
    "task",
    "every",
    "cron",
    "at",
    "args",
    "kwargs",
    "queue",
    "routing_key",
    "priority",
    "expires",
    "timezone",
    "headers",
    "catch_up",
];

/// TOML as JSON (dates and times as their RFC 3339 text).
fn json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), json(v))).collect())
        }
    }
}

/// Reads a schedule file's text; `source` names it in errors (its path).
pub fn parse(text: &str, source: &str) -> Result<Vec<Entry>, FileError> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        FileError(format!("{source}: not valid TOML: {}", e.message()))
    })?;
    let fail = |what: String| FileError(format!("{source}: {what}"));
    for key in doc.keys() {
        if !matches!(key.as_str(), "schedule" | "timezone" | "catch_up") {
            return Err(fail(format!(
                "unknown top-level key `{key}` (expected `timezone`, `catch_up` or [schedule.NAME] tables)"
            )));
        }
    }
    let default_tz = match doc.get("timezone") {
        None => "UTC".to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => return Err(fail(format!("`timezone` must be a string, got {other}"))),
    };
    let default_catch_up = match doc.get("catch_up") {
        None => CatchUp::default(),
        Some(toml::Value::String(s)) => s.parse().map_err(|e| fail(format!("{e}")))?,
        Some(other) => return Err(fail(format!("`catch_up` must be a string, got {other}"))),
    };
    let Some(schedule) = doc.get("schedule") else {
        return Err(fail("no entries: add a [schedule.NAME] table".into()));
    };
    let Some(tables) = schedule.as_table() else {
        return Err(fail("`schedule` must hold [schedule.NAME] tables".into()));
    };
    let mut entries = Vec::with_capacity(tables.len());
    for (name, body) in tables {
        let entry_fail = |what: String| fail(format!("entry `{name}`: {what}"));
        let Some(t) = body.as_table() else {
            return Err(entry_fail("must be a table ([schedule.NAME])".into()));
        };
        entries.push(entry(name, t, &default_tz, default_catch_up).map_err(entry_fail)?);
    }
    Ok(entries)
}

/// One `[schedule.NAME]` table.
fn entry(
    name: &str,
    t: &toml::Table,
    default_tz: &str,
    default_catch_up: CatchUp,
) -> Result<Entry, String> {
    if let Some(k) = t.keys().find(|k| !ENTRY_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{k}` (expected one of {})",
            ENTRY_KEYS.join(", ")
        ));
    }
    let string = |key: &str| -> Result<Option<String>, String> {
        match t.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be a string, got {other}")),
        }
    };
    let seconds = |key: &str| -> Result<Option<f64>, String> {
        match t.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(toml::Value::Float(f)) => Ok(Some(*f)),
            Some(other) => Err(format!("`{key}` must be a number of seconds, got {other}")),
        }
    };
    let task = string("task")?.ok_or("`task` is missing (the task's name, like \"tasks.add\")")?;
    let tz = string("timezone")?.unwrap_or_else(|| default_tz.to_string());
    let schedule = match (seconds("every")?, string("cron")?, t.get("at")) {
        (Some(every), None, None) => Schedule::every(every).map_err(|e| format!("`every`: {e}"))?,
        (None, Some(cron), None) => {
            Schedule::cron_in(&cron, &tz).map_err(|e| format!("`cron`: {e}"))?
        }
        (None, None, Some(at)) => {
            let text = match at {
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::String(s) => s.clone(),
                other => return Err(format!("`at` must be an RFC 3339 time, got {other}")),
            };
            let t = chrono::DateTime::parse_from_rfc3339(&text).map_err(|e| {
                format!("`at`: {text:?} is not an RFC 3339 time with an offset ({e})")
            })?;
            Schedule::at(t.with_timezone(&chrono::Utc))
        }
        (None, None, None) => return Err("needs one of `every`, `cron` or `at`".into()),
        _ => return Err("give only one of `every`, `cron` and `at`".into()),
    };
    let args = match t.get("args") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a.iter().map(json).collect(),
        Some(other) => return Err(format!("`args` must be an array, got {other}")),
    };
    let kwargs: Map<String, Value> = match t.get("kwargs") {
        None => Map::new(),
        Some(toml::Value::Table(k)) => k.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
        Some(other) => return Err(format!("`kwargs` must be a table, got {other}")),
    };
    let mut signature = Signature::new(task).args(args).kwargs(kwargs);
    if let Some(q) = string("queue")? {
        signature = signature.queue(q);
    }
    if let Some(rk) = string("routing_key")? {
        signature = signature.set_option("routing_key", rk);
    }
    match t.get("priority") {
        None => {}
        Some(toml::Value::Integer(p)) if (0..=9).contains(p) => {
            signature = signature.priority(*p as u8);
        }
        Some(other) => {
            return Err(format!(
                "`priority` must be an integer from 0 to 9, got {other}"
            ))
        }
    }
    match t.get("headers") {
        None => {}
        Some(toml::Value::Table(h)) => {
            for (k, v) in h {
                signature = signature.header(k.clone(), json(v));
            }
        }
        Some(other) => return Err(format!("`headers` must be a table, got {other}")),
    }
    let expires = match seconds("expires")? {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s.min(315_360_000.0))),
        Some(s) => return Err(format!("`expires` must be above 0 seconds, got {s}")),
    };
    let catch_up = match string("catch_up")? {
        None => default_catch_up,
        Some(c) => c.parse().map_err(|e| format!("`catch_up`: {e}"))?,
    };
    Ok(Entry {
        name: name.to_string(),
        schedule,
        signature,
        expires,
        catch_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The tutorial's schedule, as a file.
    const TUTORIAL: &str = r#"
timezone = "UTC"

[schedule.taskA-every-20]
task = "tasks.taskA"
every = 20
args = [5, 6]

[schedule.taskB-every-200]
task = "tasks.taskB"
every = 200
args = [10, 20, 30]

[schedule.add-every-10]
task = "tasks.add"
every = 10
args = [1, 2]
"#;

    #[test]
    fn reads_the_tutorials_schedule() {
        let entries = parse(TUTORIAL, "beat.toml").unwrap();
        assert_eq!(entries.len(), 3);
        let add = entries.iter().find(|e| e.name == "add-every-10").unwrap();
        assert_eq!(add.schedule, Schedule::every(10.0).unwrap());
        assert_eq!(add.signature.task, "tasks.add");
        assert_eq!(add.signature.args, vec![json!(1), json!(2)]);
        assert_eq!(add.expires, None);
        assert_eq!(add.catch_up, CatchUp::Once);
    }

    #[test]
    fn reads_every_option() {
        let text = r#"
catch_up = "skip"
[schedule.report]
task = "tasks.report"
cron = "30 7 * * mon-fri"
timezone = "Europe/Paris"
kwargs = { format = "pdf", pages = [1, 2] }
queue = "reports"
routing_key = "reports.daily"
priority = 3
expires = 3600
headers = { team = "ops" }

[schedule.launch]
task = "tasks.launch"
at = 2027-01-01T00:00:00Z
catch_up = "all"
"#;
        let entries = parse(text, "b.toml").unwrap();
        let report = entries.iter().find(|e| e.name == "report").unwrap();
        assert_eq!(
            report.schedule,
            Schedule::cron_in("30 7 * * mon-fri", "Europe/Paris").unwrap()
        );
        assert_eq!(report.signature.kwargs["pages"], json!([1, 2]));
        assert_eq!(report.signature.option("queue"), Some(&json!("reports")));
        assert_eq!(
            report.signature.option("routing_key"),
            Some(&json!("reports.daily"))
        );
        assert_eq!(report.signature.option("priority"), Some(&json!(3)));
        assert_eq!(
            report.signature.option("headers"),
            Some(&json!({"team": "ops"}))
        );
        assert_eq!(report.expires, Some(Duration::from_secs(3600)));
        assert_eq!(report.catch_up, CatchUp::Skip);
        let launch = entries.iter().find(|e| e.name == "launch").unwrap();
        assert_eq!(
            launch.schedule,
            Schedule::at("2027-01-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(launch.catch_up, CatchUp::All);
    }

    #[test]
    fn mistakes_name_the_entry_and_the_key() {
        let cases = [
            (
                "[schedule.a]\nevery = 1",
                "beat.toml: entry `a`: `task` is missing",
            ),
            (
                "[schedule.a]\ntask = \"t\"",
                "beat.toml: entry `a`: needs one of `every`, `cron` or `at`",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevery = 1\ncron = \"* * * * *\"",
                "beat.toml: entry `a`: give only one of",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevry = 1",
                "beat.toml: entry `a`: unknown key `evry`",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevery = -5",
                "beat.toml: entry `a`: `every`:",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevery = \"10\"",
                "beat.toml: entry `a`: `every` must be a number of seconds",
            ),
            (
                "[schedule.a]\ntask = \"t\"\ncron = \"* * *\"",
                "beat.toml: entry `a`: `cron`: crontab \"* * *\" has 3 fields",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevery = 1\npriority = 12",
                "beat.toml: entry `a`: `priority` must be an integer from 0 to 9",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevery = 1\nargs = 3",
                "beat.toml: entry `a`: `args` must be an array",
            ),
            (
                "[schedule.a]\ntask = \"t\"\ncron = \"* * * * *\"\ntimezone = \"Nowhere\"",
                "beat.toml: entry `a`: `cron`: unknown timezone",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nat = \"tomorrow\"",
                "beat.toml: entry `a`: `at`: \"tomorrow\" is not an RFC 3339 time",
            ),
            (
                "[schedule.a]\ntask = \"t\"\nevery = 1\ncatch_up = \"twice\"",
                "beat.toml: entry `a`: `catch_up`: catch_up must be",
            ),
            ("tz = \"UTC\"", "beat.toml: unknown top-level key `tz`"),
            ("timezone = \"UTC\"", "beat.toml: no entries"),
            ("[schedule", "beat.toml: not valid TOML"),
        ];
        for (text, want) in cases {
            let err = parse(text, "beat.toml").unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "{text:?}: got {err:?}, want it to start with {want:?}"
            );
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }
}
