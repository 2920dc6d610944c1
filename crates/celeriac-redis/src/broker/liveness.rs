//! Consumer liveness, so a killed worker's messages run again within seconds instead of
//! after the visibility timeout (an hour by default, as in kombu).
//!
//! Each consuming process has an id. Beside kombu's `unacked` records (kept exactly as
//! kombu keeps them, so a Python worker sharing the queues sees nothing change) it keeps
//! the tags it holds in a set of its own (`_celeriac.held.<id>`: added by the fetch
//! script, removed by acks and restores), registers itself in `_celeriac.consumers`, and
//! renews `_celeriac.alive.<id>` every `heartbeat`, with a time to live of `dead_after`.
//! Every beat a live consumer looks for registered consumers whose liveness key is gone
//! and, under a per-dead-consumer lock, puts their held messages back at the front of
//! their queues (the same compare-and-swap restore as everywhere, so a message settled
//! meanwhile is left alone, and one another live consumer holds now is skipped).
//!
//! A consumer that was only stalled past `dead_after` (not dead) finds at its next beat
//! that it had been struck from the registry, says so, and registers again; its messages
//! may have run elsewhere meanwhile, as after kombu's visibility timeout.
//!
//! The same set finds messages a fetch took whose reply was lost (a connection cut just
//! then): after a failed fetch, tags in this consumer's set that it does not hold are
//! restored (`reclaim_orphans`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use redis::AsyncCommands;
use tracing::{info, warn};

use celeriac_core::error::BrokerError;

use super::Inner;
use crate::lock;

impl Inner {
    /// This consumer's held set.
    pub(super) fn held_key(&self) -> String {
        self.keys.held(&self.consumer)
    }

    /// Renews this consumer's liveness key and registration; warns once when it finds it
    /// had been presumed dead (struck from the registry) meanwhile.
    pub(super) async fn beat(&self) -> Result<(), BrokerError> {
        let info = serde_json::json!({
            "hostname": hostname(),
            "pid": std::process::id(),
            "started": self.started,
        })
        .to_string();
        let ttl_ms = self.cfg.dead_after.as_millis().max(1) as u64;
        let (added,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(self.keys.alive(&self.consumer))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("HSET")
            .arg(self.keys.consumers())
            .arg(&self.consumer)
            .arg(info)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.err("heartbeat", e))?;
        let first = !self.registered.swap(true, Ordering::SeqCst);
        if added == 1 && !first {
            warn!(
                "this worker's broker consumer {} was presumed dead (silent for more than {:?}) and its unacknowledged messages were given back to the queues; it carries on",
                self.consumer, self.cfg.dead_after
            );
        }
        Ok(())
    }

    /// Restores the held messages of every registered consumer whose liveness key is
    /// gone; returns how many went back.
    pub(super) async fn reap(&self) -> Result<usize, BrokerError> {
        let mut conn = self.conn();
        let ids: Vec<String> = conn
            .hkeys(self.keys.consumers())
            .await
            .map_err(|e| self.err("liveness", e))?;
        let others: Vec<&String> = ids.iter().filter(|id| **id != self.consumer).collect();
        if others.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for id in &others {
            pipe.exists(self.keys.alive(id));
        }
        let alive: Vec<bool> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("liveness", e))?;
        let (live, dead): (Vec<_>, Vec<_>) =
            others.into_iter().zip(alive).partition(|(_, alive)| *alive);
        let mut live_sets: Vec<String> = live.iter().map(|(id, _)| self.keys.held(id)).collect();
        live_sets.push(self.held_key());
        let mut restored = 0;
        for (id, _) in dead {
            restored += self.reap_one(id, &live_sets).await?;
        }
        Ok(restored)
    }

    /// Restores one dead consumer's held messages, under its reaping lock.
    async fn reap_one(&self, id: &str, live_sets: &[String]) -> Result<usize, BrokerError> {
        let mut conn = self.conn();
        let lock_key = self.keys.reaping(id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&lock_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err("liveness", e))?;
        if locked.is_none() {
            return Ok(0);
        }
        let held = self.keys.held(id);
        let about: Option<String> = conn
            .hget(self.keys.consumers(), id)
            .await
            .map_err(|e| self.err("liveness", e))?;
        let tags: Vec<String> = conn
            .smembers(&held)
            .await
            .map_err(|e| self.err("liveness", e))?;
        let mut restored = 0;
        for tag in &tags {
            // Restored before and taken by a live consumer since: not the dead one's.
            let mut pipe = redis::pipe();
            for set in live_sets {
                pipe.sismember(set, tag);
            }
            let taken: Vec<bool> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err("liveness", e))?;
            if taken.iter().any(|t| *t) {
                continue;
            }
            if self.restore_tag(tag, true, &held).await? {
                restored += 1;
            }
        }
        redis::pipe()
            .del(&held)
            .hdel(self.keys.consumers(), id)
            .del(&lock_key)
            .exec_async(&mut conn)
            .await
            .map_err(|e| self.err("liveness", e))?;
        if restored > 0 {
            info!(
                "restored {restored} unacknowledged message(s) of dead consumer {id} ({}), silent for more than {:?}",
                about.as_deref().unwrap_or("{}"),
                self.cfg.dead_after
            );
        }
        Ok(restored)
    }

    /// Restores messages this consumer's set says it holds but it does not: taken by a
    /// fetch whose reply never arrived. Called after a failed fetch, before the next.
    pub(super) async fn reclaim_orphans(&self) -> Result<usize, BrokerError> {
        let held = self.held_key();
        let tags: Vec<String> = self
            .conn()
            .smembers(&held)
            .await
            .map_err(|e| self.err("consume", e))?;
        let orphans: Vec<String> = {
            let outstanding = lock(&self.outstanding);
            tags.into_iter()
                .filter(|t| !outstanding.contains(t))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        let mut restored = 0;
        for tag in orphans {
            if self.restore_tag(&tag, true, &held).await? {
                restored += 1;
            }
        }
        if restored > 0 {
            warn!("restored {restored} message(s) a fetch took whose reply was lost");
        }
        Ok(restored)
    }
}

/// This machine's host name, for the registry.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
