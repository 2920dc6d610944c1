//! Fanout exchanges over the `broadcasts` table: a publish inserts one row (and drops
//! rows older than a minute); each subscriber's task reads the rows after the last it saw,
//! waking on a commit or every `poll_interval`. A subscriber sees only what is published
//! after it subscribed.

use rusqlite::params;

use celeriac_core::broker::Subscription;
use celeriac_core::error::{BrokerError, PublishError};
use celeriac_core::message::Message;
use celeriac_core::protocol::envelope;

use super::{err, SqliteBroker};
use crate::schema::now;

impl SqliteBroker {
    /// `Broker::publish_fanout`: one row in `broadcasts`.
    pub(super) async fn fanout_publish(
        &self,
        exchange: &str,
        message: Message,
    ) -> Result<(), PublishError> {
        let (ex, body) = (
            exchange.to_string(),
            envelope::encode(&message, &uuid::Uuid::new_v4().to_string()),
        );
        let db = &self.inner.db;
        db.call(true, move |c| {
            let t = now();
            c.execute(
                "INSERT INTO broadcasts (exchange, envelope, created) VALUES (?1, ?2, ?3)",
                params![ex, body, t],
            )?;
            // Broadcasts are for whoever listens now: keep a minute of them.
            c.execute(
                "DELETE FROM broadcasts WHERE created < ?1",
                params![t - 60.0],
            )
            .map(drop)
        })
        .await
        .map_err(|e| PublishError::new(message, e.broker(&db.name, "publish")))
    }

    /// `Broker::subscribe_fanout`: a task forwarding the rows published from now on.
    pub(super) async fn fanout_subscribe(
        &self,
        exchange: &str,
    ) -> Result<Subscription, BrokerError> {
        let db = self.inner.db.clone();
        let ex = exchange.to_string();
        let start: i64 = db
            .call(false, |c| {
                c.query_row("SELECT COALESCE(MAX(id), 0) FROM broadcasts", [], |r| {
                    r.get(0)
                })
            })
            .await
            .map_err(err(&db, "subscribe"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut last = start;
            loop {
                let changed = db.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let ex2 = ex.clone();
                let rows: Result<Vec<(i64, Vec<u8>)>, _> = db
                    .call(false, move |c| {
                        let mut stmt = c.prepare_cached(
                            "SELECT id, envelope FROM broadcasts WHERE exchange = ?1 AND id > ?2 ORDER BY id",
                        )?;
                        let rows = stmt.query_map(params![ex2, last], |r| Ok((r.get(0)?, r.get(1)?)))?;
                        rows.collect()
                    })
                    .await;
                for (id, raw) in rows.unwrap_or_default() {
                    last = id;
                    if let Ok((message, _)) = envelope::decode(&raw) {
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = &mut changed => {}
                    _ = tokio::time::sleep(db.cfg.poll_interval) => {}
                }
            }
        });
        Ok(Subscription::from_channel(rx))
    }
}
