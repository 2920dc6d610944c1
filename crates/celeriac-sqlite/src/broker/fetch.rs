//! Consuming: a consumer first looks (a read, no write lock) for a ready message and the
//! next delayed one's due time, then claims up to the free prefetch for this process's
//! consumer id in one `UPDATE … RETURNING`; with nothing ready it sleeps until a commit is
//! seen, the next delayed message is due, or `poll_interval` passes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params_from_iter, Connection};

use celeriac_core::broker::{Acker, ConsumeOptions, Consumer, Delivery};
use celeriac_core::emulation::{spawn_consumer, Fetch};
use celeriac_core::error::BrokerError;
use celeriac_core::protocol::envelope;

use super::settle::Settle;
use super::{err, Inner, SqliteBroker};
use crate::schema::now;

impl SqliteBroker {
    /// `Broker::consume`: beats once, starts the heartbeat/sweep task (once) and a consumer.
    pub(super) async fn start_consumer(
        &self,
        options: ConsumeOptions,
    ) -> Result<Consumer, BrokerError> {
        // Refused options start no heartbeat or maintenance (spawn_consumer checks again).
        options.check()?;
        self.inner.heartbeat().await?;
        self.inner.start_maintenance();
        spawn_consumer(
            Arc::new(Fetcher {
                inner: self.inner.clone(),
            }),
            options,
        )
    }
}

struct Fetcher {
    inner: Arc<Inner>,
}

type Claimed = (i64, i64, String, String, bool, Vec<u8>);

#[async_trait]
impl Fetch for Fetcher {
    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        let db = &self.inner.db;
        loop {
            let changed = db.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Look before taking the write lock: idle consumers of several processes would
            // otherwise queue for it on every commit any of them makes.
            let qs = queues.to_vec();
            let (ready, next_due) = db
                .call(false, move |c| peek(c, &qs))
                .await
                .map_err(err(db, "consume"))?;
            let mut rows = Vec::new();
            if ready {
                let (qs, consumer) = (queues.to_vec(), self.inner.consumer.clone());
                rows = db
                    .call(true, move |c| claim(c, &qs, max, &consumer))
                    .await
                    .map_err(err(db, "consume"))?;
            }
            if !rows.is_empty() {
                // RETURNING does not keep the ORDER BY of the subquery.
                rows.sort_by_key(|r| (r.1, r.0));
                let acker: Arc<dyn Acker> = self.inner.clone();
                let mut out = Vec::with_capacity(rows.len());
                for (_, _, queue, tag, redelivered, raw) in rows {
                    match envelope::decode(&raw) {
                        Ok((message, _)) => out.push(Delivery::new(
                            Arc::new(message),
                            queue,
                            redelivered,
                            tag,
                            acker.clone(),
                        )),
                        Err(e) => {
                            tracing::error!(
                                "{}: discarded an undecodable message from `{queue}`: {e}",
                                db.name
                            );
                            let _ = self.inner.settle(&tag, Settle::Delete, "discard").await;
                        }
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            let mut wait = db.cfg.poll_interval;
            if let Some(due) = next_due {
                wait = wait.min(Duration::from_secs_f64((due - now()).max(0.0)));
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn placeholders(n: usize, first: usize) -> String {
    (0..n)
        .map(|i| format!("?{}", i + first))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a message of `queues` is ready now, and when the next delayed one is due.
fn peek(c: &Connection, queues: &[String]) -> rusqlite::Result<(bool, Option<f64>)> {
    let t = now();
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE claimed_by IS NULL AND visible_at <= ?1 AND queue IN ({0})),
                (SELECT MIN(visible_at) FROM messages WHERE claimed_by IS NULL AND visible_at > ?1 AND queue IN ({0}))",
        placeholders(queues.len(), 2)
    );
    let mut args: Vec<rusqlite::types::Value> = vec![t.into()];
    args.extend(queues.iter().map(|q| q.clone().into()));
    c.prepare_cached(&sql)?
        .query_row(params_from_iter(args.iter()), |r| {
            Ok((r.get::<_, bool>(0)?, r.get(1)?))
        })
}

/// Claims up to `max` visible messages of `queues` for `consumer`, in one statement.
fn claim(
    c: &Connection,
    queues: &[String],
    max: usize,
    consumer: &str,
) -> rusqlite::Result<Vec<Claimed>> {
    // Placeholders are numbered: an anonymous `?` takes the number after the largest seen
    // so far in the text, and would collide with `?3`.
    //
    // Only a registered consumer claims: one whose row another process's sweep deleted
    // (it stalled past `dead_after`) waits for its next heartbeat, since whatever it took
    // under an id without a row the next sweep would release again, to run twice.
    let sql = format!(
        "UPDATE messages SET claimed_by = ?1, claimed_at = ?2
         WHERE id IN (SELECT id FROM messages INDEXED BY messages_ready
                      WHERE claimed_by IS NULL AND visible_at <= ?2 AND queue IN ({})
                      ORDER BY priority, id LIMIT ?3)
           AND EXISTS (SELECT 1 FROM consumers WHERE id = ?1)
         RETURNING id, priority, queue, tag, redelivered, envelope",
        placeholders(queues.len(), 4)
    );
    let mut args: Vec<rusqlite::types::Value> = vec![
        consumer.to_string().into(),
        now().into(),
        (max as i64).into(),
    ];
    args.extend(queues.iter().map(|q| q.clone().into()));
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get::<_, i64>(4)? != 0,
            r.get(5)?,
        ))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use celeriac_core::{Broker, PublishOptions};
    use celeriac_testing::broker::message;
    use celeriac_testing::services::ScratchDir;

    use super::*;
    use crate::broker::settle::tests::{age, sql, SLOW_BEATS};

    /// Whatever a consumer whose row was swept took would be released again by the next
    /// sweep and run twice: it takes nothing until it has registered again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_consumer_presumed_dead_claims_nothing_until_it_beats_again() {
        let dir = ScratchDir::new("celeriac-sqlite-fetch");
        let url = dir.sqlite_url("q.sqlite", SLOW_BEATS);
        let a = SqliteBroker::connect(&url).await.unwrap();
        let b = SqliteBroker::connect(&url).await.unwrap();
        a.inner.heartbeat().await.unwrap();
        a.publish(message("q", 1, None), PublishOptions::default())
            .await
            .unwrap();
        age(&a).await;
        b.sweep().await.unwrap();

        let id = a.inner.consumer.clone();
        let take = move || {
            let id = id.clone();
            move |c: &Connection| claim(c, &["q".to_string()], 1, &id)
        };
        assert!(
            sql(&a, take()).await.is_empty(),
            "claimed while presumed dead"
        );
        a.inner.heartbeat().await.unwrap();
        assert_eq!(
            sql(&a, take()).await.len(),
            1,
            "claims once registered again"
        );
    }
}
