//! The receiving side of events: [`App::events`] subscribes to the event exchange and
//! hands out typed [`Event`]s, one at a time, whether they came alone or in a
//! `task.multi` batch, moving the app's clock past each one (as Celery's receiver does).

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;

use celeriac_core::Subscription;

use super::{Clock, Event, EventKind, EVENT_EXCHANGE};
use crate::app::App;
use crate::error::Error;

/// Events as they arrive; from [`App::events`]. Dropping it unsubscribes.
pub struct EventStream {
    sub: Subscription,
    pending: VecDeque<Event>,
    clock: Arc<Clock>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Subscribes to every event workers and clients send from now on (`celery events`'
    /// view of the cluster). Needs a broker with broadcast exchanges (all but a
    /// memory broker of another process).
    pub async fn events(&self) -> Result<EventStream, Error> {
        let sub = self.broker().subscribe_events(EVENT_EXCHANGE).await?;
        Ok(EventStream {
            sub,
            pending: VecDeque::new(),
            clock: self.clock().clone(),
        })
    }
}

impl EventStream {
    /// The next event; `None` when the subscription ended. Cancel-safe. Messages that are
    /// not events (not JSON, no `type`) are skipped.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let msg = self.sub.next().await?;
            let Ok(body) = celeriac_core::protocol::json::parse_lenient(&msg.body) else {
                continue;
            };
            let items = match body {
                Value::Array(items) => items,
                one => vec![one],
            };
            for item in items {
                if let Some(e) = Event::from_value(item) {
                    // Clients' clocks are not synchronised: Celery ignores task-sent's.
                    if e.kind != EventKind::TaskSent && e.clock > 0 {
                        self.clock.adjust(e.clock);
                    }
                    self.pending.push_back(e);
                }
            }
        }
    }

    /// As a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = Event> + Send {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|e| (e, s)) })
    }
}
