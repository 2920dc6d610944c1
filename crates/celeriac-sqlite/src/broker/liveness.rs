//! Consumer liveness: each consuming process beats in `consumers` every `heartbeat`, and
//! any live one releases the claims of consumers silent for `dead_after`, so a killed
//! worker's messages run again elsewhere; one task per process, from its first `consume`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rusqlite::params;
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

impl Inner {
    pub(super) async fn heartbeat(&self) -> Result<(), BrokerError> {
        let (id, host) = (self.consumer.clone(), hostname());
        let pid = std::process::id();
        self.db
            .call(true, move |c| {
                let t = now();
                c.execute(
                    "INSERT INTO consumers (id, pid, hostname, started, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                    params![id, pid, host, t],
                )
                .map(drop)
            })
            .await
            .map_err(err(&self.db, "heartbeat"))
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
                    Ok(()) => inner.sweep().await.map(drop),
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
