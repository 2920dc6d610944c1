//! Celery's events (what Flower, `celery events` and [`App::events`](crate::App::events) watch): the event
//! type with its fields, the Lamport clock every event carries, the worker's dispatcher
//! (which batches task events into `task.multi` messages as Celery's does) and the
//! receiver.
//!
//! Events travel on the `celeryev` exchange (a topic exchange on RabbitMQ, pub/sub on
//! Redis), fire and forget: a monitor that is not listening misses them. Workers send
//! `worker-online`, a `worker-heartbeat` every 2 s and `worker-offline` always; task events
//! (`task-received`, `task-started`, `task-succeeded`, …) only when task events are on
//! (`--task-events`/`-E`, [`AppBuilder::task_events`](crate::AppBuilder::task_events), or
//! the `enable_events` command).
//!
//! ```no_run
//! # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
//! use celeriac::events::EventKind;
//! let mut events = app.events().await?;
//! while let Some(e) = events.next().await {
//!     if e.kind == EventKind::TaskSucceeded {
//!         println!("{} on {}: {}", e.uuid().unwrap_or("?"), e.hostname, e.fields["result"]);
//!     }
//! }
//! # Ok(()) }
//! ```

mod clock;
pub(crate) mod dispatcher;
mod receiver;
mod state;

pub use clock::Clock;
pub use receiver::EventStream;
pub use state::{ClusterState, TaskState, WorkerState};

use serde_json::{json, Map, Value};

use celeriac_core::message::Message;

/// The exchange events travel on (Celery's `event_exchange`).
pub const EVENT_EXCHANGE: &str = "celeryev";

/// How often a worker sends `worker-heartbeat` (Celery's default `freq`, seconds).
pub const HEARTBEAT_FREQ: f64 = 2.0;

/// What happened: the event's `type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A worker started.
    WorkerOnline,
    /// A worker is alive (every `freq` seconds).
    WorkerHeartbeat,
    /// A worker stopped.
    WorkerOffline,
    /// A client sent a task (`task_send_sent_event`).
    TaskSent,
    /// A worker received a task.
    TaskReceived,
    /// A task started running.
    TaskStarted,
    /// A task succeeded (`result`, `runtime`).
    TaskSucceeded,
    /// A task failed (`exception`, `traceback`).
    TaskFailed,
    /// A task will be retried (`exception`, `traceback`).
    TaskRetried,
    /// A task was revoked (`terminated`, `signum`, `expired`).
    TaskRevoked,
    /// A task's message was rejected (`requeue`).
    TaskRejected,
    /// Any other type, as sent.
    Other(String),
}

impl EventKind {
    /// The wire name (`task-succeeded`, …).
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::WorkerOnline => "worker-online",
            EventKind::WorkerHeartbeat => "worker-heartbeat",
            EventKind::WorkerOffline => "worker-offline",
            EventKind::TaskSent => "task-sent",
            EventKind::TaskReceived => "task-received",
            EventKind::TaskStarted => "task-started",
            EventKind::TaskSucceeded => "task-succeeded",
            EventKind::TaskFailed => "task-failed",
            EventKind::TaskRetried => "task-retried",
            EventKind::TaskRevoked => "task-revoked",
            EventKind::TaskRejected => "task-rejected",
            EventKind::Other(s) => s,
        }
    }

    /// Reads a wire name.
    pub fn parse(s: &str) -> EventKind {
        match s {
            "worker-online" => EventKind::WorkerOnline,
            "worker-heartbeat" => EventKind::WorkerHeartbeat,
            "worker-offline" => EventKind::WorkerOffline,
            "task-sent" => EventKind::TaskSent,
            "task-received" => EventKind::TaskReceived,
            "task-started" => EventKind::TaskStarted,
            "task-succeeded" => EventKind::TaskSucceeded,
            "task-failed" => EventKind::TaskFailed,
            "task-retried" => EventKind::TaskRetried,
            "task-revoked" => EventKind::TaskRevoked,
            "task-rejected" => EventKind::TaskRejected,
            other => EventKind::Other(other.to_string()),
        }
    }

    /// Whether it is about a task (it then carries `uuid`).
    pub fn is_task(&self) -> bool {
        self.as_str().starts_with("task-")
    }

    /// The task state a monitor shows after this event (Celery's `events.state`), for
    /// task events.
    pub fn task_state(&self) -> Option<&'static str> {
        Some(match self {
            EventKind::TaskSent => "PENDING",
            EventKind::TaskReceived => "RECEIVED",
            EventKind::TaskStarted => "STARTED",
            EventKind::TaskSucceeded => "SUCCESS",
            EventKind::TaskFailed => "FAILURE",
            EventKind::TaskRetried => "RETRY",
            EventKind::TaskRevoked => "REVOKED",
            EventKind::TaskRejected => "REJECTED",
            _ => return None,
        })
    }

    /// The routing key it is published under when sent alone (`worker.heartbeat`).
    fn routing_key(&self) -> String {
        self.as_str().replace('-', ".")
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event, as a Celery worker or client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its type.
    pub kind: EventKind,
    /// The sender's node name (`celery@host`, or `gen<pid>@host` for a client).
    pub hostname: String,
    /// When it was sent: Unix seconds.
    pub timestamp: f64,
    /// The sender's Lamport clock for it.
    pub clock: u64,
    /// Every field as sent (the ones above too): `uuid`, `name`, `result`, `runtime`,
    /// `active`, `processed`, `freq`, …
    pub fields: Map<String, Value>,
}

impl Event {
    /// Reads one event object; `None` if it has no `type`.
    pub fn from_value(v: Value) -> Option<Event> {
        let Value::Object(fields) = v else {
            return None;
        };
        let kind = EventKind::parse(fields.get("type")?.as_str()?);
        Some(Event {
            kind,
            hostname: fields
                .get("hostname")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            timestamp: fields
                .get("timestamp")
                .and_then(Value::as_f64)
                .unwrap_or_default(),
            clock: fields.get("clock").and_then(Value::as_u64).unwrap_or(0),
            fields,
        })
    }

    /// The task id, for task events.
    pub fn uuid(&self) -> Option<&str> {
        self.str("uuid")
    }

    /// A string field.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }

    /// A number field.
    pub fn f64(&self, field: &str) -> Option<f64> {
        self.fields.get(field).and_then(Value::as_f64)
    }
}

/// The sender's offset from UTC in hours *west*, as Celery writes `utcoffset`.
pub(crate) fn utcoffset() -> f64 {
    let east = chrono::Local::now().offset().local_minus_utc();
    f64::from(-east) / 3600.0
}

/// Unix time now, in seconds.
pub(crate) fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// The request fields `task-received` and `task-sent` carry: `name`, `args` and `kwargs`
/// (their reprs, as Celery sends), `root_id`, `parent_id`, `retries`, `eta`, `expires`.
pub(crate) fn request_fields(
    msg: &celeriac_core::protocol::TaskMessage,
    f: &mut dispatcher::Fields,
) {
    use celeriac_core::protocol::json::{args_repr, kwargs_repr};
    let h = &msg.headers;
    let iso =
        |t: &Option<chrono::DateTime<chrono::Utc>>| t.as_ref().map(celeriac_core::time::isoformat);
    f.str("name", &h.task);
    match &h.argsrepr {
        Some(r) => f.str("args", r),
        None => f.str("args", &args_repr(&msg.args)),
    };
    match &h.kwargsrepr {
        Some(r) => f.str("kwargs", r),
        None => f.str("kwargs", &kwargs_repr(&msg.kwargs)),
    };
    f.str("root_id", h.root_id.as_deref().unwrap_or(&h.id))
        .value("parent_id", &h.parent_id)
        .value("retries", &h.retries)
        .value("eta", &iso(&h.eta))
        .value("expires", &iso(&h.expires));
}

/// An event message: JSON `body` (one event or an array of them) on [`EVENT_EXCHANGE`]
/// under `routing_key`, transient, with the sender in the `hostname` header.
pub(crate) fn event_message(hostname: &str, routing_key: &str, body: Vec<u8>) -> Message {
    crate::control::json_message(
        json!({"hostname": hostname}),
        EVENT_EXCHANGE,
        routing_key,
        body,
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_name_their_routing_key() {
        for k in [
            EventKind::WorkerOnline,
            EventKind::TaskSucceeded,
            EventKind::TaskRevoked,
            EventKind::Other("worker-elect".into()),
        ] {
            assert_eq!(EventKind::parse(k.as_str()), k);
        }
        assert_eq!(EventKind::WorkerHeartbeat.routing_key(), "worker.heartbeat");
        assert!(EventKind::TaskSent.is_task() && !EventKind::WorkerOnline.is_task());
        assert_eq!(EventKind::TaskFailed.task_state(), Some("FAILURE"));
        assert_eq!(EventKind::WorkerOffline.task_state(), None);
    }

    #[test]
    fn reads_a_python_worker_event() {
        let v: Value = serde_json::from_str(r#"{"hostname": "w1@wire3", "utcoffset": 0.0, "pid": 8783, "clock": 18, "uuid": "31003ac9", "result": "5", "runtime": 0.0009, "timestamp": 1795462141.296352, "type": "task-succeeded"}"#).unwrap();
        let e = Event::from_value(v).unwrap();
        assert_eq!(e.kind, EventKind::TaskSucceeded);
        assert_eq!(e.hostname, "w1@wire3");
        assert_eq!(e.clock, 18);
        assert_eq!(e.uuid(), Some("31003ac9"));
        assert_eq!(e.str("result"), Some("5"));
        assert!(Event::from_value(json!({"hostname": "x"})).is_none());
        assert!(Event::from_value(json!([1])).is_none());
    }

    #[test]
    fn event_messages_are_transient_json_with_the_sender_header() {
        let m = event_message(
            "w@h",
            "task.multi",
            br#"[{"type": "task-started"}]"#.to_vec(),
        );
        assert_eq!(m.properties.delivery_mode, 1);
        assert_eq!(m.routing_key(), "task.multi");
        assert_eq!(m.properties.delivery_info.exchange, "celeryev");
        assert_eq!(m.headers["hostname"], json!("w@h"));
        assert_eq!(m.content_type, "application/json");
    }
}
