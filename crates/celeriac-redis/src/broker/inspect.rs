//! Looking at and emptying queues: depths (summed over the priority buckets, or per
//! bucket), purge, and the list of queues known from kombu's bindings.

use std::collections::{HashMap, HashSet};

use celeriac_core::error::BrokerError;

use super::RedisBroker;
use crate::keys::{BrokerKeys, PRIORITY_STEPS};
use crate::lock;

impl RedisBroker {
    /// `Broker::purge`: empties every priority bucket of `queue` in one transaction.
    pub(super) async fn purge_buckets(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in self.inner.keys.queue_buckets(queue) {
            pipe.cmd("LLEN").arg(&key);
        }
        for key in self.inner.keys.queue_buckets(queue) {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("purge", e))?;
        Ok(counts.iter().sum())
    }

    /// `Broker::queue_depth`: messages waiting in `queue`, all buckets.
    pub(super) async fn depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for key in self.inner.keys.queue_buckets(queue) {
            pipe.cmd("LLEN").arg(&key);
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("queue depth", e))?;
        Ok(counts.iter().sum())
    }

    /// `Broker::queues`: the task queues named in kombu's bindings (and declared here).
    pub(super) async fn bound_queues(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.inner.conn();
        let mut sets: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.inner.keys.binding_pattern())
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.inner.err("list queues", e))?;
            sets.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut names: HashSet<String> = lock(&self.inner.declared).iter().cloned().collect();
        for set in sets {
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&set)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.inner.err("list queues", e))?;
            for m in members {
                if let Some((_, q)) = BrokerKeys::parse_binding_member(&m) {
                    // Remote-control and event queues are kombu's, not task queues.
                    if !(q.ends_with(".pidbox") || q.starts_with("celeryev.")) {
                        names.insert(q.to_string());
                    }
                }
            }
        }
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        Ok(names)
    }
}

/// Counts of what one queue holds, by priority bucket (for diagnostics and tests).
pub async fn bucket_depths(
    broker: &RedisBroker,
    queue: &str,
) -> Result<HashMap<u8, u64>, BrokerError> {
    let mut out = HashMap::new();
    let mut conn = broker.inner.conn();
    for step in PRIORITY_STEPS {
        let n: u64 = redis::cmd("LLEN")
            .arg(broker.inner.keys.queue(queue, step))
            .query_async(&mut conn)
            .await
            .map_err(|e| broker.inner.err("queue depth", e))?;
        out.insert(step, n);
    }
    Ok(out)
}
