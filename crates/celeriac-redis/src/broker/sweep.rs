//! The visibility sweep and keep-alive, run by one task per consuming process (with the
//! liveness beat and the restore of dead consumers' messages, see `liveness`): the
//! `unacked_index` score of every message this process holds is refreshed (so no sweep,
//! ours or a Python worker's, restores a held ETA task or a long late-ack task while its
//! holder lives — Celery runs those twice), and messages older than the visibility timeout
//! are restored under kombu's `unacked_mutex`, released by `SCRIPT`
//! (`lua/sweep_release_mutex.lua`) only if this sweeper still holds it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, info, warn};

use celeriac_core::error::BrokerError;

use super::{now_secs, Inner, RedisBroker};
use crate::lock;

/// Releases `unacked_mutex` if the caller's token still holds it (kombu's release script).
pub(super) const SCRIPT: &str = include_str!("../lua/sweep_release_mutex.lua");

/// kombu's `unacked_mutex_expire`.
const SWEEP_LOCK_MS: u64 = 300_000;
/// Most stale entries one sweep restores.
const SWEEP_LIMIT: isize = 1_000;

impl RedisBroker {
    /// Runs one visibility-timeout sweep now; returns how many messages it restored.
    pub async fn sweep(&self) -> Result<usize, BrokerError> {
        self.inner.sweep().await
    }
}

impl Inner {
    /// Restores unacked messages older than the visibility timeout (at most `SWEEP_LIMIT`
    /// a sweep), under kombu's sweep lock; messages this process holds are skipped
    /// (`keep_alive` refreshes them).
    async fn sweep(&self) -> Result<usize, BrokerError> {
        let mut conn = self.conn();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(self.keys.unacked_mutex())
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(SWEEP_LOCK_MS)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("sweep", e))?;
        if locked.is_none() {
            debug!(
                "visibility sweep skipped: another worker holds {}",
                self.keys.unacked_mutex()
            );
            return Ok(0);
        }
        let cutoff = now_secs() - self.cfg.visibility_timeout.as_secs_f64();
        let stale: Result<Vec<String>, _> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.unacked_index())
            .arg("-inf")
            .arg(cutoff)
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_LIMIT)
            .query_async(&mut conn)
            .await;
        let mut restored = 0;
        let result = match stale {
            Ok(tags) => {
                for tag in tags {
                    if lock(&self.outstanding).contains(&tag) {
                        continue;
                    }
                    match self.restore_tag(&tag, true, &self.held_key()).await {
                        Ok(true) => restored += 1,
                        Ok(false) => {}
                        Err(e) => warn!("could not restore unacked message {tag}: {e}"),
                    }
                }
                Ok(restored)
            }
            Err(e) => Err(self.err("sweep", e)),
        };
        let _: Result<i64, _> = self
            .release
            .key(self.keys.unacked_mutex())
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        if restored > 0 {
            info!(
                "restored {restored} unacknowledged message(s) older than the visibility timeout ({:?})",
                self.cfg.visibility_timeout
            );
        }
        result
    }

    /// Refreshes the `unacked_index` score of every message this process holds.
    async fn keep_alive(&self) -> Result<(), BrokerError> {
        let tags: Vec<String> = lock(&self.outstanding).iter().cloned().collect();
        if tags.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        for chunk in tags.chunks(1_000) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(self.keys.unacked_index()).arg("XX");
            for t in chunk {
                cmd.arg(now).arg(t);
            }
            cmd.exec_async(&mut self.conn())
                .await
                .map_err(|e| self.err("keep-alive", e))?;
        }
        Ok(())
    }

    /// Starts the maintenance task once, when this process first consumes: every
    /// heartbeat it beats (see `liveness`), refreshes what it holds, and restores what dead
    /// consumers held; every `restore_interval` it runs the visibility sweep.
    pub(super) fn start_maintenance(self: &Arc<Self>) {
        if self.maintenance_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let tick = (self.cfg.visibility_timeout / 4)
            .min(self.cfg.restore_interval)
            .min(self.cfg.heartbeat)
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(50));
        let sweep_every = self.cfg.restore_interval;
        tokio::spawn(async move {
            let mut last_sweep: Option<tokio::time::Instant> = None;
            let mut warned = false;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let beat = inner.beat().await;
                let kept = inner.keep_alive().await;
                let reaped = inner.reap().await.map(drop);
                let mut result = beat.and(kept).and(reaped);
                if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                    last_sweep = Some(tokio::time::Instant::now());
                    result = result.and(inner.sweep().await.map(|_| ()));
                }
                match result {
                    Ok(()) => warned = false,
                    Err(e) if !warned => {
                        warn!("unacked maintenance failed ({e}); retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
                drop(inner);
                tokio::time::sleep(tick).await;
            }
        });
    }
}
