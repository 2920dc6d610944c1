//! What kombu's virtual transport does once for every engine that is not AMQP: the
//! consumer loop with prefetch (QoS), batching and error back-off, written once here.
//!
//! An engine implements [`Fetch`] — "take up to N messages from these queues, waiting until
//! there is one" — and [`spawn_consumer`] turns it into a [`Consumer`] that never has more
//! than `prefetch` unsettled deliveries out, fetches as many as the free prefetch allows in
//! one call, retries every fetch error with back-off (reporting each to the consumer), and
//! stops only when the consumer is dropped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, Semaphore};

use crate::backoff::Backoff;
use crate::broker::{ConsumeOptions, Consumer, Delivery};
use crate::error::BrokerError;

/// Most messages fetched in one call when no prefetch limit is set.
pub const UNLIMITED_BATCH: usize = 256;

/// The one primitive a queue engine provides for consumption.
#[async_trait]
pub trait Fetch: Send + Sync + 'static {
    /// Takes between 1 and `max` messages from `queues` (the engine's priority and queue
    /// order), waiting until at least one is available.
    ///
    /// Must be cancel-safe: if the returned future is dropped before it completes, no
    /// message may have been taken.
    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError>;
}

/// Starts the consumption loop for `fetcher` on a tokio task and returns its consumer;
/// options no engine can serve (no queues) are refused here, for every engine.
pub fn spawn_consumer(
    fetcher: Arc<dyn Fetch>,
    options: ConsumeOptions,
) -> Result<Consumer, BrokerError> {
    options.check()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let qos = (options.prefetch > 0).then(|| Arc::new(Semaphore::new(options.prefetch)));
    let queues = options.queues;
    let feeder = tokio::spawn(async move {
        // Capped at 2 s: after an outage the worker is back within 2 s of the broker.
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let mut slots = Vec::new();
            if let Some(qos) = &qos {
                let first = tokio::select! {
                    _ = tx.closed() => return Vec::new(),
                    permit = qos.clone().acquire_owned() => permit,
                };
                let Ok(first) = first else { return Vec::new() };
                slots.push(first);
                while let Ok(more) = qos.clone().try_acquire_owned() {
                    slots.push(more);
                }
            }
            let max = if qos.is_some() {
                slots.len()
            } else {
                UNLIMITED_BATCH
            };
            let fetched = tokio::select! {
                _ = tx.closed() => return Vec::new(),
                r = fetcher.fetch(&queues, max) => r,
            };
            match fetched {
                Ok(deliveries) => {
                    backoff.reset();
                    let mut held = Vec::new();
                    for mut d in deliveries {
                        if let Some(slot) = slots.pop() {
                            d.attach_prefetch(slot);
                        }
                        // Closed meanwhile: hand what is left to `Consumer::close`.
                        if let Err(mpsc::error::SendError(Ok(d))) = tx.send(Ok(d)) {
                            held.push(d);
                        }
                    }
                    if !held.is_empty() {
                        return held;
                    }
                }
                Err(e) => {
                    // Every error class is retried: a consumer only ends when it is
                    // dropped. An error that will not go away (a queue key of the wrong
                    // type, say) is reported on every try, `backoff` apart.
                    if tx.send(Err(e)).is_err() {
                        return Vec::new();
                    }
                    tokio::select! {
                        _ = tx.closed() => return Vec::new(),
                        _ = backoff.wait() => {}
                    }
                }
            }
        }
    });
    Ok(Consumer::from_feeder(rx, feeder))
}
