//! kombu's exchange bindings: the `_kombu.binding.<exchange>` sets that route a message
//! to queues, read when publishing (and restoring) through a named exchange, and the
//! default binding (`queue` ← exchange `queue`) declared for every queue this process
//! publishes to directly, so Python producers that publish through the exchange find it.

use celeriac_core::error::BrokerError;
use celeriac_core::routing::{ExchangeType, QueueSpec};

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
        let kind = lock(&self.exchange_types)
            .get(exchange)
            .copied()
            .unwrap_or_default();
        let mut queues: Vec<String> = members
            .iter()
            .filter_map(|m| BrokerKeys::parse_binding_member(m))
            .filter(|(key, _)| kind.matches(key, routing_key))
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

/// kombu's regular expression for a topic binding key (`TopicExchange.key_to_pattern`),
/// stored in the binding member for Python peers, which match with it.
fn kombu_topic_pattern(key: &str) -> String {
    let words: Vec<String> = key
        .split('.')
        .map(|w| match w {
            "*" => r".*?[^\.]".to_string(),
            "#" => ".*?".to_string(),
            w => regex_escape(w),
        })
        .collect();
    format!("^{}$", words.join(r"\."))
}

/// Python's `re.escape` for the characters a routing key word may hold.
fn regex_escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBroker {
    /// `Broker::declare`: the queue's default binding, and for another exchange the
    /// binding there (kombu's member: binding key, pattern, queue), the exchange's type
    /// kept in this process as kombu keeps it. Fanout exchanges on Redis are kombu's
    /// pub/sub broadcasts, not queues: a fanout task queue is refused.
    pub(super) async fn declare_spec(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.declare_binding(&spec.name).await?;
        if spec.is_default() {
            return Ok(());
        }
        let pattern =
            match spec.exchange_type {
                ExchangeType::Direct => String::new(),
                ExchangeType::Topic => kombu_topic_pattern(&spec.routing_key),
                ExchangeType::Fanout => return Err(BrokerError::Unsupported(
                    "fanout task queues on Redis (kombu broadcasts fanout exchanges over pub/sub)",
                )),
                ExchangeType::Headers => {
                    return Err(BrokerError::Unsupported(
                        "headers exchanges on Redis (kombu's Redis transport has none)",
                    ))
                }
            };
        let member = format!(
            "{}{SEP}{pattern}{SEP}{}",
            spec.routing_key,
            spec.name,
            SEP = crate::keys::SEP
        );
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(self.inner.keys.binding(&spec.exchange))
            .arg(&member)
            .ignore();
        pipe.cmd("SADD")
            .arg(self.inner.keys.binding_permanent(&spec.exchange))
            .arg(&member)
            .ignore();
        pipe.exec_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("declare", e))?;
        lock(&self.inner.exchange_types).insert(spec.exchange.clone(), spec.exchange_type);
        Ok(())
    }

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
