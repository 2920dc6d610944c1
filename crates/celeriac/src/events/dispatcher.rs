//! The sending side of events: stamps each event with the sender's fields and clock,
//! sends worker events at once, and buffers task events, flushed by a background task as
//! `task.multi` messages of up to 24 events (Celery's `buffer_group=["task"]`,
//! `buffer_limit=24`) — so a worker at full speed sends one message per batch, not one
//! per event, and never waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tracing::{info, warn};

use celeriac_core::Broker;

use super::{event_message, unix_now, utcoffset, Clock, EventKind, EVENT_EXCHANGE};

/// Most task events in one `task.multi` message (Celery's `buffer_limit`).
const BUFFER_LIMIT: usize = 24;

/// Sends one node's events.
pub(crate) struct Dispatcher {
    broker: Arc<dyn Broker>,
    hostname: Arc<str>,
    clock: Arc<Clock>,
    utcoffset: f64,
    pid: u32,
    /// Whether task events are sent (worker events always are).
    task_events: AtomicBool,
    buffer: Mutex<Vec<Value>>,
    wake: Notify,
    /// Whether a failed publish was logged (once per outage).
    failing: AtomicBool,
}

impl Dispatcher {
    /// A dispatcher for node `hostname` on `broker`, stamping `clock`.
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        hostname: Arc<str>,
        clock: Arc<Clock>,
        task_events: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            hostname,
            clock,
            utcoffset: utcoffset(),
            pid: std::process::id(),
            task_events: AtomicBool::new(task_events),
            buffer: Mutex::new(Vec::new()),
            wake: Notify::new(),
            failing: AtomicBool::new(false),
        })
    }

    /// Whether task events are on.
    #[inline]
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns whether they were on.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// The event object: `fields` plus the sender's `hostname`, `utcoffset`, `pid`,
    /// `clock`, `timestamp` and `type`.
    fn event(&self, kind: &EventKind, mut fields: Map<String, Value>) -> Value {
        fields.insert("hostname".into(), Value::from(&*self.hostname));
        fields.insert("utcoffset".into(), Value::from(self.utcoffset));
        fields.insert("pid".into(), Value::from(self.pid));
        fields.insert("clock".into(), Value::from(self.clock.forward()));
        fields.insert("timestamp".into(), Value::from(unix_now()));
        fields.insert("type".into(), Value::from(kind.as_str()));
        Value::Object(fields)
    }

    /// Sends one event now, under its own routing key (`worker.heartbeat`, `task.sent`).
    pub(crate) async fn send(&self, kind: EventKind, fields: Map<String, Value>) {
        let body = self.event(&kind, fields);
        self.publish(&kind.routing_key(), &body).await;
    }

    /// Queues a task event for the next `task.multi` message, if task events are on;
    /// `fields` adds the event's own fields to `uuid`.
    #[inline]
    pub(crate) fn task(
        &self,
        kind: EventKind,
        uuid: &str,
        fields: impl FnOnce(&mut Map<String, Value>),
    ) {
        if !self.task_events() {
            return;
        }
        let mut map = Map::new();
        map.insert("uuid".into(), Value::from(uuid));
        fields(&mut map);
        let event = self.event(&kind, map);
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        buffer.push(event);
        if buffer.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// Sends the buffered task events whenever there are some, until aborted.
    pub(crate) fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.wake.notified().await;
                me.flush().await;
            }
        })
    }

    /// Sends every buffered task event now.
    pub(crate) async fn flush(&self) {
        loop {
            let batch = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                return;
            }
            for chunk in batch.chunks(BUFFER_LIMIT) {
                self.publish("task.multi", &Value::Array(chunk.to_vec()))
                    .await;
            }
        }
    }

    /// Publishes one event message; a failure is logged once per outage and the events
    /// are dropped (events are fire and forget, as in Celery).
    async fn publish(&self, routing_key: &str, body: &Value) {
        let msg = event_message(&self.hostname, routing_key, body);
        match self.broker.publish_event(EVENT_EXCHANGE, msg).await {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("events are sent again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "could not send events ({}); dropping them until the broker is back",
                        e.source
                    );
                }
            }
        }
    }
}
