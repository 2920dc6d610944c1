//! Publishing built messages to the broker: one message, or a batch cut into chunks of
//! [`CHUNK`], with one retry policy for both — while the broker is unreachable, wait with
//! back-off and resend what came back, until the app's `publish_retry` runs out. Whatever
//! is not published is handed back in the error, never dropped.

use std::time::Duration;

use tracing::warn;

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::{PublishManyError, PublishOptions};
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::protocol::TaskMessage;

use super::prepare;
use crate::app::App;
use crate::error::Error;
use crate::events::dispatcher::Fields;

/// Messages prepared, encoded and published at a time by `send_many` and canvases: a
/// million signatures never become a million encoded messages in memory at once.
pub(super) const CHUNK: usize = 2_000;

/// What a failed publish hands back, for the retry loop.
trait Unpublished {
    fn source(&self) -> &BrokerError;
    fn describe(&self) -> String;
}

impl Unpublished for PublishError {
    fn source(&self) -> &BrokerError {
        &self.source
    }
    fn describe(&self) -> String {
        format!("publish to `{}` failed ({})", self.routing_key, self.source)
    }
}

impl Unpublished for PublishManyError {
    fn source(&self) -> &BrokerError {
        &self.source
    }
    fn describe(&self) -> String {
        format!(
            "publish of {} message(s) failed ({})",
            self.unpublished.len(),
            self.source
        )
    }
}

/// The first try hands over the built messages; retries resend what came back, while the
/// error is retryable and `publish_retry` leaves room for another pause.
async fn retrying<E, F>(
    app: &App,
    first: Result<(), E>,
    mut resend: impl FnMut(E) -> F,
) -> Result<(), E>
where
    E: Unpublished,
    F: std::future::Future<Output = Result<(), E>>,
{
    let deadline = app
        .config()
        .publish_retry
        .map(|limit| tokio::time::Instant::now() + limit);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut attempt = first;
    loop {
        let e = match attempt {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !e.source().is_retryable() || !backoff.fits_before(deadline) {
            return Err(e);
        }
        warn!("{}; retrying in {:?}", e.describe(), backoff.peek());
        backoff.wait().await;
        attempt = resend(e).await;
    }
}

/// Declares the configured queues (once) and lets the result backend make ready for the
/// results of what is about to be sent (the rpc:// backend declares the reply queue),
/// before anything is published.
async fn before_send(app: &App) -> Result<(), Error> {
    app.declare_queues().await?;
    match app.backend() {
        Some(b) => b.before_send().await.map_err(Error::Backend),
        None => Ok(()),
    }
}

/// The `task-sent` event's fields for `msg`, when the app sends them
/// (`task_send_sent_event`).
fn sent_event(app: &App, msg: &TaskMessage) -> Option<Fields> {
    if !app.config().send_sent_event {
        return None;
    }
    let mut f = Fields::new();
    f.str("uuid", &msg.headers.id);
    crate::events::request_fields(msg, &mut f);
    let info = &msg.properties.delivery_info;
    f.str("queue", &info.routing_key)
        .str("exchange", &info.exchange)
        .str("routing_key", &info.routing_key);
    Some(f)
}

/// Sends the `task-sent` events of what was just published.
async fn send_sent_events(app: &App, events: Vec<Fields>) {
    for fields in events {
        app.client_events()
            .send(crate::events::EventKind::TaskSent, fields)
            .await;
    }
}

/// Publishes one built message, retrying while the broker is unreachable; the error hands
/// the message back.
pub(super) async fn one(app: &App, msg: TaskMessage) -> Result<(), Error> {
    before_send(app).await?;
    let options = prepare::options(app, &msg);
    let sent = sent_event(app, &msg);
    let broker = app.broker();
    let first = broker.publish_task(msg, options.clone()).await;
    retrying(app, first, |e: PublishError| {
        broker.publish(*e.message, options.clone())
    })
    .await
    .map_err(Error::Publish)?;
    send_sent_events(app, sent.into_iter().collect()).await;
    Ok(())
}

/// Publishes built messages as one batch (a chunk at a time), retrying while the broker is
/// unreachable; the error hands back every message not published, the ones never tried
/// included.
pub(super) async fn batch(app: &App, messages: Vec<TaskMessage>) -> Result<(), Error> {
    if messages.len() <= 1 {
        return match messages.into_iter().next() {
            Some(msg) => one(app, msg).await,
            None => Ok(()),
        };
    }
    let mut rest = messages.into_iter();
    loop {
        let chunk: Vec<TaskMessage> = rest.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        if let Err(mut e) = self::chunk(app, chunk).await {
            if let Error::PublishMany(pm) = &mut e {
                pm.unpublished.extend(rest.map(|m| encoded(app, m)));
            }
            return Err(e);
        }
    }
}

/// Publishes one chunk with `publish_tasks` (the broker encodes it, unless it lives in
/// this process).
pub(super) async fn chunk(app: &App, messages: Vec<TaskMessage>) -> Result<(), Error> {
    before_send(app).await?;
    let sent: Vec<_> = messages.iter().filter_map(|m| sent_event(app, m)).collect();
    let tasks: Vec<(TaskMessage, PublishOptions)> = messages
        .into_iter()
        .map(|m| {
            let o = prepare::options(app, &m);
            (m, o)
        })
        .collect();
    let broker = app.broker();
    let first = broker.publish_tasks(tasks).await;
    retrying(app, first, |e: PublishManyError| {
        broker.publish_many(e.unpublished)
    })
    .await
    .map_err(Error::PublishMany)?;
    send_sent_events(app, sent).await;
    Ok(())
}

/// A message never tried, as a failed publish hands it back.
pub(super) fn encoded(app: &App, msg: TaskMessage) -> (celeriac_core::Message, PublishOptions) {
    let options = prepare::options(app, &msg);
    (msg.encode(), options)
}
