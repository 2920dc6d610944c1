//! What a monitor knows of the cluster, built from events as Celery's `events.State` builds
//! it: each worker (alive while its heartbeats keep coming: `freq × 2` after the last, as
//! Celery judges), and the latest tasks with their state, name, worker and outcome.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::Value;

use super::{Event, EventKind};

/// A worker as its events describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    /// Node name.
    pub hostname: String,
    /// Heartbeat period it announced (seconds).
    pub freq: f64,
    /// Tasks running at its last event.
    pub active: u64,
    /// Tasks it processed, at its last event.
    pub processed: u64,
    /// When its last event was sent (Unix seconds, its clock).
    pub last_heartbeat: f64,
    /// Whether it said `worker-offline`.
    pub offline: bool,
    /// Its software (`celeriac`, `py-celery`).
    pub sw_ident: String,
}

impl WorkerState {
    /// Alive at `now` (Unix seconds): not offline, and heard from within `freq × 2`.
    pub fn alive(&self, now: f64) -> bool {
        !self.offline && now < self.last_heartbeat + self.freq * 2.0
    }
}

/// A task as its events describe it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskState {
    /// Task id.
    pub uuid: String,
    /// Task name (from `task-received` or `task-sent`).
    pub name: Option<String>,
    /// Its state: `RECEIVED`, `STARTED`, `SUCCESS`, …
    pub state: String,
    /// The worker that sent its last event.
    pub worker: Option<String>,
    /// The result's repr, once it succeeded.
    pub result: Option<String>,
    /// The exception's repr, once it failed.
    pub exception: Option<String>,
    /// How long it ran (seconds), once it succeeded.
    pub runtime: Option<f64>,
    /// When its last event was sent.
    pub timestamp: f64,
}

/// The cluster as seen through its events.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// Workers by node name.
    pub workers: BTreeMap<String, WorkerState>,
    tasks: HashMap<String, TaskState>,
    order: VecDeque<String>,
    max_tasks: usize,
    /// Events applied.
    pub events: u64,
}

impl Default for ClusterState {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl ClusterState {
    /// Keeps the latest `max_tasks` tasks (Celery's `max_tasks_in_memory` is 10,000).
    pub fn new(max_tasks: usize) -> Self {
        Self {
            workers: BTreeMap::new(),
            tasks: HashMap::new(),
            order: VecDeque::new(),
            max_tasks: max_tasks.max(1),
            events: 0,
        }
    }

    /// The worker named `hostname`, created (heard of, not yet heard from) if new.
    fn worker_entry(&mut self, hostname: &str) -> &mut WorkerState {
        self.workers
            .entry(hostname.to_string())
            .or_insert_with(|| WorkerState {
                hostname: hostname.to_string(),
                freq: 2.0,
                active: 0,
                processed: 0,
                last_heartbeat: 0.0,
                offline: false,
                sw_ident: String::new(),
            })
    }

    /// Takes one event into account.
    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        let num = |f: &str| e.fields.get(f).and_then(Value::as_u64);
        match &e.kind {
            EventKind::WorkerOnline | EventKind::WorkerHeartbeat | EventKind::WorkerOffline => {
                let w = self.worker_entry(&e.hostname);
                w.freq = e.f64("freq").unwrap_or(w.freq);
                w.active = num("active").unwrap_or(w.active);
                w.processed = num("processed").unwrap_or(w.processed);
                w.last_heartbeat = e.timestamp;
                w.offline = e.kind == EventKind::WorkerOffline;
                if let Some(sw) = e.str("sw_ident") {
                    w.sw_ident = sw.to_string();
                }
            }
            kind => {
                let (Some(state), Some(uuid)) = (kind.task_state(), e.uuid()) else {
                    return;
                };
                if !self.tasks.contains_key(uuid) {
                    self.order.push_back(uuid.to_string());
                    if self.order.len() > self.max_tasks {
                        if let Some(old) = self.order.pop_front() {
                            self.tasks.remove(&old);
                        }
                    }
                }
                // A task event from a worker is a sign of life, as in Celery's `State`
                // (`task-sent` comes from a client, not a worker).
                if *kind != EventKind::TaskSent {
                    let w = self.worker_entry(&e.hostname);
                    w.last_heartbeat = w.last_heartbeat.max(e.timestamp);
                }
                let t = self.tasks.entry(uuid.to_string()).or_default();
                t.uuid = uuid.to_string();
                t.state = state.to_string();
                t.timestamp = e.timestamp;
                if *kind != EventKind::TaskSent {
                    t.worker = Some(e.hostname.clone());
                }
                if let Some(name) = e.str("name") {
                    t.name = Some(name.to_string());
                }
                if let Some(r) = e.str("result") {
                    t.result = Some(r.to_string());
                }
                if let Some(x) = e.str("exception") {
                    t.exception = Some(x.to_string());
                }
                if let Some(rt) = e.f64("runtime") {
                    t.runtime = Some(rt);
                }
            }
        }
    }

    /// A task by id.
    pub fn task(&self, uuid: &str) -> Option<&TaskState> {
        self.tasks.get(uuid)
    }

    /// The tasks, newest first.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskState> {
        self.order.iter().rev().filter_map(|u| self.tasks.get(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> Event {
        Event::from_value(v).unwrap()
    }

    #[test]
    fn follows_workers_and_tasks() {
        let mut s = ClusterState::new(2);
        s.apply(&ev(json!({"type": "worker-online", "hostname": "w@h", "timestamp": 100.0, "freq": 2.0, "active": 0, "processed": 0, "sw_ident": "celeriac"})));
        assert!(s.workers["w@h"].alive(101.0));
        assert!(!s.workers["w@h"].alive(104.5), "two missed heartbeats");
        s.apply(&ev(json!({"type": "task-received", "hostname": "w@h", "timestamp": 101.0, "uuid": "a", "name": "tasks.add"})));
        s.apply(&ev(json!({"type": "task-succeeded", "hostname": "w@h", "timestamp": 102.0, "uuid": "a", "result": "5", "runtime": 0.1})));
        let a = s.task("a").unwrap();
        assert_eq!(
            (a.state.as_str(), a.name.as_deref(), a.result.as_deref()),
            ("SUCCESS", Some("tasks.add"), Some("5"))
        );
        s.apply(&ev(
            json!({"type": "task-started", "hostname": "w@h", "timestamp": 103.0, "uuid": "b"}),
        ));
        s.apply(&ev(json!({"type": "task-failed", "hostname": "w@h", "timestamp": 103.0, "uuid": "c", "exception": "ValueError('x')"})));
        assert!(
            s.task("a").is_none(),
            "the oldest task is forgotten past the limit"
        );
        assert_eq!(
            s.tasks().map(|t| t.uuid.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        s.apply(&ev(
            json!({"type": "worker-offline", "hostname": "w@h", "timestamp": 104.0}),
        ));
        assert!(!s.workers["w@h"].alive(104.1));
        assert_eq!(s.events, 6);
    }

    #[test]
    fn task_events_tell_of_their_worker_but_task_sent_does_not() {
        let mut s = ClusterState::default();
        s.apply(&ev(json!({"type": "task-sent", "hostname": "gen1@client", "timestamp": 10.0, "uuid": "a", "name": "tasks.add"})));
        assert!(s.workers.is_empty(), "task-sent comes from a client");
        s.apply(&ev(json!({"type": "task-succeeded", "hostname": "w@h", "timestamp": 11.0, "uuid": "a", "result": "9"})));
        assert!(s.workers["w@h"].alive(12.0));
        assert!(!s.workers["w@h"].alive(15.5));
    }
}
