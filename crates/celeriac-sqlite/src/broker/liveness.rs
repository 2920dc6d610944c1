//! Consumer liveness: each consuming process beats in `consumers` every `heartbeat`, and
//! any live one releases the claims of consumers silent for `dead_after`, so a killed
//! worker's messages run again elsewhere; one task per process, from its first `consume`.
//!
//! A worker that was only stalled (a long pause, a suspended VM) finds out at its next
//! beat: a sweep deletes a silent consumer's row in the same transaction that releases its
//! claims, so a beat that finds its own row gone knows its unsettled messages went back to
//! their queues. It says so once, in a warning, and registers again under the same id (its
//! late settles of the released messages change nothing, see `settle`). Until it has
//! registered again it claims nothing (see `fetch`), so nothing it takes in that window can
//! be released a second time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rusqlite::{params, OptionalExtension};
use tracing::{info, warn};

use celeriac_core::error::BrokerError;

use super::{err, Inner, SqliteBroker};
use crate::schema::now;

impl SqliteBroker {
    /// Releases the claims of dead consumers now; returns how many messages went back.
    pub async fn sweep(&self) -> Result<usize, BrokerError> {
        self.inner.sweep().await
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Beat {
    /// This consumer's row was there, or this was its first beat.
    Alive,
    /// Another process's sweep had deleted this consumer's row (and released its claims)
    /// after `silent` seconds without a beat; it is registered again.
    PresumedDead {
        /// Seconds since this consumer's previous successful beat.
        silent: f64,
    },
}

impl Inner {
    /// Records that this consumer is alive, registering it if its row is missing.
    pub(super) async fn heartbeat(&self) -> Result<Beat, BrokerError> {
        let (id, host) = (self.consumer.clone(), hostname());
        let pid = std::process::id();
        let (t, existed) = self
            .db
            .call(true, move |c| {
                let t = now();
                let existed = c
                    .query_row("SELECT 1 FROM consumers WHERE id = ?1", params![id], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_some();
                c.execute(
                    "INSERT INTO consumers (id, pid, hostname, started, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                    params![id, pid, host, t],
                )?;
                Ok((t, existed))
            })
            .await
            .map_err(err(&self.db, "heartbeat"))?;
        let previous = self
            .last_beat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(t);
        match previous {
            Some(previous) if !existed => {
                let silent = (t - previous).max(0.0);
                warn!(
                    "{}: this consumer was presumed dead (silent for {silent:.1} s; dead_after is {} s); its unsettled messages were released to other workers; registered again",
                    self.db.name,
                    self.db.cfg.dead_after.as_secs_f64()
                );
                Ok(Beat::PresumedDead { silent })
            }
            _ => Ok(Beat::Alive),
        }
    }

    async fn sweep(&self) -> Result<usize, BrokerError> {
        let dead_after = self.db.cfg.dead_after.as_secs_f64();
        let restored = self
            .db
            .call(true, move |c| {
                let cutoff = now() - dead_after;
                c.execute(
                    "DELETE FROM consumers WHERE last_seen < ?1",
                    params![cutoff],
                )?;
                c.execute(
                    "UPDATE messages SET claimed_by = NULL, claimed_at = NULL, redelivered = 1
                     WHERE claimed_by IS NOT NULL AND claimed_by NOT IN (SELECT id FROM consumers)",
                    [],
                )
            })
            .await
            .map_err(err(&self.db, "sweep"))?;
        if restored > 0 {
            info!(
                "{}: returned {restored} message(s) of dead consumers to their queues",
                self.db.name
            );
        }
        Ok(restored)
    }

    /// Heartbeats and sweeps while this broker lives, from the first `consume` on.
    pub(super) fn start_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let every = self.db.cfg.heartbeat;
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let result = match inner.heartbeat().await {
                    Ok(_) => inner.sweep().await.map(drop),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warn!("{}: heartbeat failed ({e}); retrying", inner.db.name);
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

fn hostname() -> String {
    ::hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use celeriac_testing::services::ScratchDir;

    use super::*;
    use crate::broker::settle::tests::{age, sql, SLOW_BEATS};

    /// A consumer whose row another process's sweep deleted learns it at its next beat,
    /// and registers again under its own id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue14_a_stalled_consumer_notices_it_was_presumed_dead_and_registers_again() {
        let dir = ScratchDir::new("celeriac-sqlite-liveness");
        let url = dir.sqlite_url("q.sqlite", SLOW_BEATS);
        let a = SqliteBroker::connect(&url).await.unwrap();
        let b = SqliteBroker::connect(&url).await.unwrap();
        assert_eq!(
            a.inner.heartbeat().await.unwrap(),
            Beat::Alive,
            "first beat"
        );
        assert_eq!(a.inner.heartbeat().await.unwrap(), Beat::Alive);

        age(&a).await;
        b.sweep().await.unwrap();
        let id = a.inner.consumer.clone();
        let rows = move |id: String| {
            move |c: &rusqlite::Connection| {
                c.query_row("SELECT COUNT(*) FROM consumers WHERE id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })
            }
        };
        assert_eq!(sql(&b, rows(id.clone())).await, 0, "B's sweep removed A");

        assert!(matches!(
            a.inner.heartbeat().await.unwrap(),
            Beat::PresumedDead { .. }
        ));
        assert_eq!(sql(&b, rows(id)).await, 1, "A registered again");
        assert_eq!(a.inner.heartbeat().await.unwrap(), Beat::Alive, "said once");
    }
}
