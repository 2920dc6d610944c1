//! Settling deliveries: the [`Acker`] every `Delivery` calls. Ack and reject delete the
//! row; reject with requeue moves it to the back (a new id); restore (and a dropped
//! delivery) releases the claim, keeping its place, marked redelivered.
//!
//! A settle that fails on a file that cannot be written just now (`Unavailable`: a full
//! disk, an I/O error) is retried with back-off for up to a minute, as the Redis broker
//! retries its acks through a failover.
//!
//! Every settle matches the claim as well as the tag (`WHERE tag = ? AND claimed_by = <this
//! consumer>`). A worker that stalled past `dead_after` (a long pause, a suspended VM) had
//! its claims released by another process's sweep, and its messages may already run
//! elsewhere: its late ack or restore must not delete or release a message another
//! consumer now holds. Such a settle changes nothing and logs one warning naming the task
//! (`claim lost: …`); it is not an error, since there is nothing left for the caller to do.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tracing::{debug, warn};

use celeriac_core::backoff::Backoff;
use celeriac_core::broker::Acker;
use celeriac_core::error::BrokerError;
use celeriac_core::protocol::envelope;

use super::{err, Inner};

/// How long a settle is retried while the file cannot be written (a full disk, an I/O
/// error, a lock held too long): an ack given up leaves the message claimed by this
/// consumer, to run again once it is released (at-least-once), so the worker waits for
/// room rather than run a task twice.
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

impl Inner {
    /// Settles `tag` as `how`, retried for up to [`SETTLE_PATIENCE`]; `op` names the operation in errors and warnings.
    pub(super) async fn settle(
        &self,
        tag: &str,
        how: Settle,
        op: &'static str,
    ) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + SETTLE_PATIENCE;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let lost = loop {
            let (owned, me) = (tag.to_string(), self.consumer.clone());
            let result = self
                .db
                .call(true, move |c| settle(c, &owned, &me, how))
                .await
                .map_err(err(&self.db, op));
            match result {
                // Not `is_retryable`: a closed database (this process shutting it) does
                // not come back.
                Err(e @ BrokerError::Unavailable { .. }) if backoff.fits_before(Some(deadline)) => {
                    debug!("{op} of delivery {tag} failed ({e}); retrying");
                    backoff.wait().await;
                }
                other => break other?,
            }
        };
        if let Some(lost) = lost {
            lost.warn(&self.db.name, tag, op);
        }
        Ok(())
    }
}

/// What a settle does with the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settle {
    /// Ack, or reject without requeue: delete it.
    Delete,
    /// Reject with requeue: to the back of its queue.
    Back,
    /// Restore: released in place, redelivered.
    Front,
}

/// A settle that found the claim gone: where the message is now.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Lost {
    /// True if another consumer holds it, false if it waits in its queue.
    held: bool,
    /// Its envelope, for the task id; `None` once another consumer settled it.
    envelope: Option<Vec<u8>>,
}

impl Lost {
    fn warn(&self, db: &str, tag: &str, op: &str) {
        let task = self
            .envelope
            .as_deref()
            .and_then(|raw| envelope::decode(raw).ok())
            .and_then(|(m, _)| m.headers.get("id")?.as_str().map(str::to_string));
        let what = match task {
            Some(id) => format!("task {id} (delivery {tag})"),
            None => format!("delivery {tag}"),
        };
        let now = match (self.held, self.envelope.is_some()) {
            (true, _) => "now belongs to another consumer",
            (false, true) => "waits in its queue for another consumer",
            (false, false) => "was already settled by another consumer",
        };
        warn!(
            "{db}: claim lost: {what} was released as this consumer was presumed dead and {now}; its {op} here changed nothing"
        );
    }
}

/// Settles the message `tag` if `consumer` still holds it; otherwise changes nothing and
/// says where the message went.
fn settle(
    c: &Connection,
    tag: &str,
    consumer: &str,
    how: Settle,
) -> rusqlite::Result<Option<Lost>> {
    let changed = match how {
        Settle::Delete => c.execute(
            "DELETE FROM messages WHERE tag = ?1 AND claimed_by = ?2",
            params![tag, consumer],
        ),
        Settle::Back => c.execute(
            "UPDATE messages SET id = (SELECT MAX(id) + 1 FROM messages), claimed_by = NULL, claimed_at = NULL,
             redelivered = 1 WHERE tag = ?1 AND claimed_by = ?2",
            params![tag, consumer],
        ),
        Settle::Front => c.execute(
            "UPDATE messages SET claimed_by = NULL, claimed_at = NULL, redelivered = 1
             WHERE tag = ?1 AND claimed_by = ?2",
            params![tag, consumer],
        ),
    }?;
    if changed > 0 {
        return Ok(None);
    }
    let now: Option<(Option<String>, Vec<u8>)> = c
        .query_row(
            "SELECT claimed_by, envelope FROM messages WHERE tag = ?1",
            params![tag],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(Some(match now {
        Some((holder, envelope)) => Lost {
            held: holder.is_some(),
            envelope: Some(envelope),
        },
        None => Lost {
            held: false,
            envelope: None,
        },
    }))
}

#[async_trait]
impl Acker for Inner {
    async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag, Settle::Delete, "ack").await
    }

    async fn reject(&self, tag: &str, requeue: bool) -> Result<(), BrokerError> {
        self.settle(
            tag,
            if requeue {
                Settle::Back
            } else {
                Settle::Delete
            },
            "reject",
        )
        .await
    }

    async fn restore(&self, tag: &str) -> Result<(), BrokerError> {
        self.settle(tag, Settle::Front, "restore").await
    }

    fn abandon(&self, tag: &str) {
        let (tag, me, name) = (tag.to_string(), self.consumer.clone(), self.db.name.clone());
        self.db.spawn_write(move |c| {
            // Logged before the commit: `Drop` has no one to hand the outcome to.
            if let Some(lost) = settle(c, &tag, &me, Settle::Front)? {
                lost.warn(&name, &tag, "restore");
            }
            Ok(())
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use celeriac_core::broker::{Consumer, Delivery};
    use celeriac_core::{Broker, ConsumeOptions, PublishOptions};
    use celeriac_testing::broker::message;
    use celeriac_testing::services::ScratchDir;

    use super::*;
    use crate::SqliteBroker;

    /// Beats far apart: no maintenance task beats during a test, so a consumer row aged by
    /// hand stays aged until the test beats itself.
    pub(crate) const SLOW_BEATS: &str = "heartbeat=60&dead_after=200";

    /// Runs `f` on the broker's database thread.
    pub(crate) async fn sql<T, F>(b: &SqliteBroker, f: F) -> T
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        b.inner.db.call(true, f).await.expect("the test's SQL")
    }

    /// Makes `b`'s consumer look silent for 1000 s, as a stalled worker would.
    pub(crate) async fn age(b: &SqliteBroker) {
        let id = b.inner.consumer.clone();
        let aged = sql(b, move |c| {
            c.execute(
                "UPDATE consumers SET last_seen = last_seen - 1000 WHERE id = ?1",
                [id],
            )
        })
        .await;
        assert_eq!(aged, 1, "the consumer was registered");
    }

    async fn next(c: &mut Consumer) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("a delivery within 5 s")
            .expect("the consumer is open")
            .expect("no error")
    }

    /// Worker A stalls past `dead_after` holding three messages; B's sweep releases them and
    /// B takes them. A then wakes and acks, requeues and restores what it held: every one of
    /// those must leave B's claims alone, and B settles its messages as usual.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_settles_by_a_consumer_presumed_dead_leave_the_new_holders_claims_alone() {
        let dir = ScratchDir::new("celeriac-sqlite-claims");
        let url = dir.sqlite_url("q.sqlite", SLOW_BEATS);
        let a = SqliteBroker::connect(&url).await.unwrap();
        let b = SqliteBroker::connect(&url).await.unwrap();
        for n in 0..3 {
            a.publish(message("q", n, None), PublishOptions::default())
                .await
                .unwrap();
        }
        let mut from_a = a
            .consume(ConsumeOptions::new(vec!["q".into()], 3))
            .await
            .unwrap();
        let held_by_a = [
            next(&mut from_a).await,
            next(&mut from_a).await,
            next(&mut from_a).await,
        ];
        drop(from_a);

        age(&a).await;
        assert_eq!(b.sweep().await.unwrap(), 3, "A's claims were released");
        let mut from_b = b
            .consume(ConsumeOptions::new(vec!["q".into()], 3))
            .await
            .unwrap();
        let held_by_b = [
            next(&mut from_b).await,
            next(&mut from_b).await,
            next(&mut from_b).await,
        ];
        assert!(held_by_b.iter().all(Delivery::redelivered));

        let [ack, requeue, restore] = held_by_a;
        ack.ack().await.unwrap();
        requeue.reject(true).await.unwrap();
        restore.restore().await.unwrap();

        let b_id = b.inner.consumer.clone();
        let holders: Vec<Option<String>> = sql(&b, |c| {
            let mut s = c.prepare("SELECT claimed_by FROM messages")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect()
        })
        .await;
        assert_eq!(
            holders,
            vec![Some(b_id); 3],
            "A's late settles deleted or released B's messages"
        );
        assert_eq!(b.queue_depth("q").await.unwrap(), 0);

        for d in held_by_b {
            d.ack().await.unwrap();
        }
        let left: i64 = sql(&b, |c| {
            c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        })
        .await;
        assert_eq!(left, 0, "B's acks deleted its messages");
    }

    /// The settle itself reports where a lost message went: held by another consumer,
    /// waiting in its queue, or gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_claim_is_reported_with_where_the_message_went() {
        let dir = ScratchDir::new("celeriac-sqlite-claims");
        let a = SqliteBroker::connect(&dir.sqlite_url("q.sqlite", SLOW_BEATS))
            .await
            .unwrap();
        a.publish(message("q", 1, None), PublishOptions::default())
            .await
            .unwrap();
        let try_as =
            |who: &'static str, how: Settle| sql(&a, move |c| settle(c, "tag-of-q", who, how));
        sql(&a, |c| {
            c.execute("UPDATE messages SET tag = 'tag-of-q', claimed_by = 'b'", [])
        })
        .await;
        let lost = try_as("a", Settle::Front).await.expect("lost");
        assert!(lost.held && lost.envelope.is_some());
        let lost = try_as("a", Settle::Delete).await.expect("lost");
        assert!(lost.held);
        assert_eq!(try_as("b", Settle::Front).await, None, "b holds it");
        let lost = try_as("a", Settle::Back).await.expect("lost");
        assert!(!lost.held && lost.envelope.is_some(), "waiting: {lost:?}");
        sql(&a, |c| c.execute("DELETE FROM messages", [])).await;
        let lost = try_as("a", Settle::Delete).await.expect("lost");
        assert_eq!(
            lost,
            Lost {
                held: false,
                envelope: None
            }
        );
    }
}
