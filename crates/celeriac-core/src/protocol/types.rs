//! The typed task message: [`TaskMessage`] with its protocol v2 [`TaskHeaders`] and the
//! [`Embed`] (the body's third element). Building one is in `build`, the wire form in
//! `encode` and `decode`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::message::Properties;
use crate::signature::Signature;

/// A decoded protocol v2 task message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The task headers.
    pub headers: TaskHeaders,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Workflow continuation: callbacks, errbacks, chain, chord.
    pub embed: Embed,
    /// Message properties (correlation id, reply-to, routing, priority).
    pub properties: Properties,
}

/// The protocol v2 headers, in the order Celery sends them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    /// Sender's language, `"py"` by convention.
    pub lang: String,
    /// Registered task name.
    pub task: String,
    /// Task id (UUID text).
    pub id: String,
    /// Display name used instead of `task` in logs.
    pub shadow: Option<String>,
    /// Earliest time to run.
    pub eta: Option<DateTime<Utc>>,
    /// Time after which the task must not run.
    pub expires: Option<DateTime<Utc>>,
    /// Group (or chord header) the task belongs to.
    pub group: Option<String>,
    /// Position within the group.
    pub group_index: Option<u64>,
    /// How many times the task has been retried.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    /// First task of the workflow.
    pub root_id: Option<String>,
    /// Task that sent this one.
    pub parent_id: Option<String>,
    /// Python repr of the args, for display.
    pub argsrepr: Option<String>,
    /// Python repr of the kwargs, for display.
    pub kwargsrepr: Option<String>,
    /// Node name of the sending process (`gen<pid>@<host>`).
    pub origin: Option<String>,
    /// Per-call override of result storing; `None` means the task's own setting.
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced.
    pub replaced_task_nesting: u32,
    /// Names of canvas stamps.
    pub stamped_headers: Option<Vec<String>>,
    /// Stamp values.
    pub stamps: Map<String, Value>,
    /// Any other header (`x-custom`, ...), in order.
    pub extra: Map<String, Value>,
}

impl TaskHeaders {
    /// Headers for a new top-level call of `task` with id `id`.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            lang: "py".into(),
            task: task.into(),
            root_id: Some(id.clone()),
            id,
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: (None, None),
            parent_id: None,
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            ignore_result: None,
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Map::new(),
            extra: Map::new(),
        }
    }
}

/// The third body element: how the workflow continues.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Embed {
    /// Run on success with the result prepended (`link`).
    pub callbacks: Option<Vec<Signature>>,
    /// Run on failure with the task id prepended (`link_error`).
    pub errbacks: Option<Vec<Signature>>,
    /// Remaining chain steps, in reverse order (the last one runs next).
    pub chain: Option<Vec<Signature>>,
    /// Chord body, when this task is a chord header member.
    pub chord: Option<Box<Signature>>,
}
