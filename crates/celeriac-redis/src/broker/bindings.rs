//! kombu's exchange bindings: the `_kombu.binding.<exchange>` sets that route a message
//! to queues, read when publishing (and restoring) through a named exchange, and the
//! default binding (`queue` ← exchange `queue`) declared for every queue this process
//! publishes to directly, so Python producers that publish through the exchange find it.

use celeriac_core::error::BrokerError;

use super::{Inner, RedisBroker};
use crate::keys::BrokerKeys;
use crate::lock;

impl Inner {
    /// Queues a message for `exchange`/`routing_key` goes to: the routing key for the
    /// default exchange, else the queues bound to the exchange with that routing key.
    pub(super) async fn targets(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_string()]);
        }
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.binding(exchange))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.err("publish", e))?;
        let mut queues: Vec<String> = members
            .iter()
            .filter_map(|m| BrokerKeys::parse_binding_member(m))
            .filter(|(rk, _)| *rk == routing_key)
            .map(|(_, q)| q.to_string())
            .collect();
        queues.dedup();
        Ok(queues)
    }

    /// Adds the binding `queue` ← exchange `queue` (Celery's default) to `pipe`, once per
    /// process, so Python producers that publish through the exchange find the queue.
    pub(super) fn declare_into(&self, pipe: &mut redis::Pipeline, queue: &str) {
        if !lock(&self.declared).insert(queue.to_string()) {
            return;
        }
        let member = BrokerKeys::binding_member(queue, queue);
        pipe.cmd("SADD")
            .arg(self.keys.binding(queue))
            .arg(&member)
            .ignore();
        pipe.cmd("SADD")
            .arg(self.keys.binding_permanent(queue))
            .arg(&member)
            .ignore();
    }
}

impl RedisBroker {
    /// `Broker::declare_queue`: writes the queue's default binding, once per process.
    pub(super) async fn declare_binding(&self, queue: &str) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        self.inner.declare_into(&mut pipe, queue);
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("declare", e))
    }
}
