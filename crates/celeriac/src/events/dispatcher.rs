//! The sending side of events: stamps each event with the sender's fields and clock,
//! sends worker events at once, and buffers task events, flushed by a background task as
//! `task.multi` messages of up to 24 events (Celery's `buffer_group=["task"]`,
//! `buffer_limit=24`) — so a worker at full speed sends one message per batch, not one
//! per event, and never waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use celeriac_core::Broker;

use super::{event_message, unix_now, utcoffset, Clock, EventKind, EVENT_EXCHANGE};

/// Most task events in one `task.multi` message (Celery's `buffer_limit`).
const BUFFER_LIMIT: usize = 24;

/// An event's fields, written straight as JSON text: a worker sends three or four
/// events per task, and building a `serde_json::Value` for each (a map, a `String` per
/// key) would cost more than sending them.
pub(crate) struct Fields {
    buf: Vec<u8>,
}

impl Fields {
    /// No fields yet.
    pub(crate) fn new() -> Self {
        Self::in_buffer(Vec::with_capacity(256))
    }

    /// No fields yet, written into `buf` (cleared first): a buffer reused across events.
    fn in_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.push(b'{');
        Self { buf }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        // Keys are this crate's own ASCII names: no escaping needed.
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string field.
    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.value(key, value)
    }

    /// Any field.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        self.key(key);
        if serde_json::to_writer(&mut self.buf, value).is_err() {
            self.buf.extend_from_slice(b"null");
        }
        self
    }

    /// The JSON object.
    fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

thread_local! {
    /// Where a thread writes its task events before they are copied into the batch: no
    /// allocation per event.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Task events waiting to be sent, already as `task.multi` bodies: finished batches of
/// [`BUFFER_LIMIT`] events and the one being filled.
#[derive(Default)]
struct Batches {
    full: Vec<Vec<u8>>,
    open: Vec<u8>,
    count: usize,
}

impl Batches {
    /// Adds one event (a JSON object); returns whether nothing was waiting before.
    fn push(&mut self, event: &[u8]) -> bool {
        let was_empty = self.count == 0 && self.full.is_empty();
        if self.count == 0 {
            self.open.reserve(event.len() * BUFFER_LIMIT + 2);
            self.open.push(b'[');
        } else {
            self.open.push(b',');
        }
        self.open.extend_from_slice(event);
        self.count += 1;
        if self.count == BUFFER_LIMIT {
            self.open.push(b']');
            self.full.push(std::mem::take(&mut self.open));
            self.count = 0;
        }
        was_empty
    }

    /// Every waiting batch, the open one closed.
    fn take(&mut self) -> Vec<Vec<u8>> {
        let mut out = std::mem::take(&mut self.full);
        if self.count > 0 {
            self.open.push(b']');
            out.push(std::mem::take(&mut self.open));
            self.count = 0;
        }
        out
    }
}

/// Sends one node's events.
pub(crate) struct Dispatcher {
    broker: Arc<dyn Broker>,
    hostname: Arc<str>,
    clock: Arc<Clock>,
    utcoffset: f64,
    pid: u32,
    /// Whether task events are sent (worker events always are).
    task_events: AtomicBool,
    buffer: Mutex<Batches>,
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
            buffer: Mutex::new(Batches::default()),
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
    fn event(&self, kind: &EventKind, mut fields: Fields) -> Vec<u8> {
        fields
            .str("hostname", &self.hostname)
            .value("utcoffset", &self.utcoffset)
            .value("pid", &self.pid)
            .value("clock", &self.clock.forward())
            .value("timestamp", &unix_now())
            .str("type", kind.as_str());
        fields.finish()
    }

    /// Sends one event now, under its own routing key (`worker.heartbeat`, `task.sent`).
    pub(crate) async fn send(&self, kind: EventKind, fields: Fields) {
        let body = self.event(&kind, fields);
        self.publish(&kind.routing_key(), body).await;
    }

    /// Queues a task event for the next `task.multi` message, if task events are on;
    /// `fields` adds the event's own fields to `uuid`.
    #[inline]
    pub(crate) fn task(&self, kind: EventKind, uuid: &str, fields: impl FnOnce(&mut Fields)) {
        if !self.task_events() {
            return;
        }
        let mut f = Fields::in_buffer(SCRATCH.take());
        f.str("uuid", uuid);
        fields(&mut f);
        let event = self.event(&kind, f);
        let first = self
            .buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&event);
        SCRATCH.set(event);
        if first {
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
            let batches = self.buffer.lock().unwrap_or_else(|p| p.into_inner()).take();
            if batches.is_empty() {
                return;
            }
            for body in batches {
                self.publish("task.multi", body).await;
            }
        }
    }

    /// Publishes one event message (`body`: JSON text); a failure is logged once per
    /// outage and the events are dropped (events are fire and forget, as in Celery).
    async fn publish(&self, routing_key: &str, body: Vec<u8>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn fields_are_written_as_a_json_object() {
        let mut f = Fields::new();
        f.str("uuid", "a\"b")
            .value("n", &3)
            .value("x", &Option::<u8>::None);
        let v: Value = serde_json::from_slice(&f.finish()).unwrap();
        assert_eq!(v, json!({"uuid": "a\"b", "n": 3, "x": null}));
        assert_eq!(
            serde_json::from_slice::<Value>(&Fields::new().finish()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn batches_hold_at_most_the_buffer_limit() {
        let mut b = Batches::default();
        assert!(b.take().is_empty());
        assert!(b.push(br#"{"n":0}"#));
        for n in 1..30 {
            assert!(!b.push(format!(r#"{{"n":{n}}}"#).as_bytes()));
        }
        let bodies = b.take();
        assert_eq!(bodies.len(), 2);
        let first: Vec<Value> = serde_json::from_slice(&bodies[0]).unwrap();
        let second: Vec<Value> = serde_json::from_slice(&bodies[1]).unwrap();
        assert_eq!(
            (first.len(), second.len()),
            (BUFFER_LIMIT, 30 - BUFFER_LIMIT)
        );
        assert_eq!(second.last(), Some(&json!({"n": 29})));
        assert!(b.take().is_empty());
        assert!(b.push(br#"{}"#), "empty again after a take");
    }
}
