//! Key and channel names, exactly as kombu and Celery's Redis backend spell them.
//!
//! Broker keys (`global_keyprefix` prepended as given): queue lists `<q>` and priority
//! buckets `<q>\x06\x16<step>`, binding sets `_kombu.binding.<exchange>` (and
//! `_kombu.binding_permanent.<exchange>`), `unacked`, `unacked_index`, `unacked_mutex`;
//! and celeriac's own liveness keys beside them (`_celeriac.consumers`,
//! `_celeriac.alive.<id>`, `_celeriac.held.<id>`, `_celeriac.reaping.<id>`) and batch
//! markers (`_celeriac.sent.<id>`), which kombu ignores.
//! Result keys: `celery-task-meta-<id>`, with the backend's prefix rule (an `_` is added
//! unless the prefix already ends in `:`, `_`, `-` or `.`).

/// kombu's separator inside binding members and priority list names.
pub const SEP: &str = "\x06\x16";

/// kombu's default `priority_steps`.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The broker's key names.
#[derive(Debug, Clone)]
pub struct BrokerKeys {
    prefix: String,
}

impl BrokerKeys {
    /// Keys under `global_keyprefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The priority bucket a message priority falls in: the largest step not above it.
    pub fn bucket(priority: Option<u8>) -> u8 {
        let p = priority.unwrap_or(0).min(9);
        PRIORITY_STEPS
            .iter()
            .rev()
            .copied()
            .find(|s| *s <= p)
            .unwrap_or(0)
    }

    /// The list holding `queue`'s messages of priority bucket `step`.
    pub fn queue(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{SEP}{step}", self.prefix)
        }
    }

    /// The list a message of `priority` for `queue` goes to.
    pub fn queue_for(&self, queue: &str, priority: Option<u8>) -> String {
        self.queue(queue, Self::bucket(priority))
    }

    /// All four bucket lists of `queue`, most urgent first.
    pub fn queue_buckets(&self, queue: &str) -> [String; 4] {
        PRIORITY_STEPS.map(|s| self.queue(queue, s))
    }

    /// The queue name a list key belongs to (the prefix and any bucket suffix cut off).
    pub fn queue_of<'a>(&self, key: &'a str) -> &'a str {
        let key = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
        match key.rfind(SEP) {
            Some(at) if key[at + SEP.len()..].parse::<u8>().is_ok() => &key[..at],
            _ => key,
        }
    }

    /// `_kombu.binding.<exchange>`.
    pub fn binding(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// `_kombu.binding_permanent.<exchange>` (kombu 5.7).
    pub fn binding_permanent(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// The pattern `SCAN` uses to find every binding set.
    pub fn binding_pattern(&self) -> String {
        format!("{}_kombu.binding.*", self.prefix)
    }

    /// A binding member: `<routing_key>\x06\x16<pattern>\x06\x16<queue>`.
    pub fn binding_member(routing_key: &str, queue: &str) -> String {
        format!("{routing_key}{SEP}{SEP}{queue}")
    }

    /// Splits a binding member into (routing key, queue).
    pub fn parse_binding_member(member: &str) -> Option<(&str, &str)> {
        let mut parts = member.splitn(3, SEP);
        let rk = parts.next()?;
        let _pattern = parts.next()?;
        let queue = parts.next()?;
        Some((rk, queue))
    }

    /// kombu's fanout channel: `<prefix>/<db>.<exchange>[/<routing key>]`.
    pub fn fanout(&self, db: i64, exchange: &str, routing_key: &str) -> String {
        if routing_key.is_empty() {
            format!("{}/{db}.{exchange}", self.prefix)
        } else {
            format!("{}/{db}.{exchange}/{routing_key}", self.prefix)
        }
    }

    /// Beat's leader lease of `schedule` (`<token>:<holder>`, expiring), its fencing
    /// counter, and the hash of its entries' last runs (entry → due time in µs). Not
    /// kombu keys: Python Celery's beat keeps its state in a local file.
    pub fn beat(&self, schedule: &str) -> [String; 3] {
        let base = format!("{}_celeriac.beat.{schedule}", self.prefix);
        [
            format!("{base}.lease"),
            format!("{base}.fence"),
            format!("{base}.runs"),
        ]
    }

    /// The `unacked` hash.
    pub fn unacked(&self) -> String {
        format!("{}unacked", self.prefix)
    }

    /// The `unacked_index` sorted set.
    pub fn unacked_index(&self) -> String {
        format!("{}unacked_index", self.prefix)
    }

    /// The sweep lock.
    pub fn unacked_mutex(&self) -> String {
        format!("{}unacked_mutex", self.prefix)
    }

    /// celeriac's consumer registry (hash: consumer id → `{"hostname", "pid",
    /// "started"}`), read by live consumers to find dead ones. Not a kombu key: Python
    /// workers neither read nor write it.
    pub fn consumers(&self) -> String {
        format!("{}_celeriac.consumers", self.prefix)
    }

    /// A consumer's liveness key, set with a time to live of `dead_after` and renewed
    /// every heartbeat: gone means dead.
    pub fn alive(&self, consumer: &str) -> String {
        format!("{}_celeriac.alive.{consumer}", self.prefix)
    }

    /// The delivery tags a consumer holds unacknowledged (a set), restored when it dies.
    pub fn held(&self, consumer: &str) -> String {
        format!("{}_celeriac.held.{consumer}", self.prefix)
    }

    /// A batch publish's marker, written in the batch's transaction: after a lost reply it
    /// tells whether the batch landed.
    pub fn sent(&self, batch: &str) -> String {
        format!("{}_celeriac.sent.{batch}", self.prefix)
    }

    /// The lock one live consumer takes to restore a dead one's messages.
    pub fn reaping(&self, consumer: &str) -> String {
        format!("{}_celeriac.reaping.{consumer}", self.prefix)
    }
}

/// The result backend's key names.
#[derive(Debug, Clone)]
pub struct ResultKeys {
    prefix: String,
}

impl ResultKeys {
    /// Keys under `global_keyprefix`, with Celery's separator rule.
    pub fn new(prefix: &str) -> Self {
        let prefix = if prefix.is_empty() || prefix.ends_with([':', '_', '-', '.']) {
            prefix.to_string()
        } else {
            format!("{prefix}_")
        };
        Self { prefix }
    }

    /// `celery-task-meta-<id>`: the record's key and its PUBLISH channel.
    pub fn task_meta(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    /// `celery-taskset-meta-<gid><suffix>`: a saved group (no suffix) and a chord's join
    /// keys (`.j` results, `.s` size, `.t` size adjustment, `.d` parts seen, `.c` claim).
    pub fn group(&self, group_id: &str, suffix: &str) -> String {
        format!("{}celery-taskset-meta-{group_id}{suffix}", self.prefix)
    }

    /// The task id of a meta key or channel, if it is one.
    pub fn task_id_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("celery-task-meta-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_buckets_follow_kombu() {
        let got: Vec<u8> = (0..=9).map(|p| BrokerKeys::bucket(Some(p))).collect();
        assert_eq!(got, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]);
        assert_eq!(BrokerKeys::bucket(None), 0);
        let k = BrokerKeys::new("");
        assert_eq!(k.queue_for("q2", Some(5)), "q2\x06\x163");
        assert_eq!(k.queue_for("celery", Some(9)), "celery\x06\x169");
        assert_eq!(k.queue_of("q2\x06\x163"), "q2");
        assert_eq!(k.queue_of("celery"), "celery");
    }

    #[test]
    fn prefixes_apply_everywhere() {
        let k = BrokerKeys::new("app:");
        assert_eq!(k.queue("celery", 0), "app:celery");
        assert_eq!(k.queue_of("app:celery\x06\x166"), "celery");
        assert_eq!(k.unacked_index(), "app:unacked_index");
        assert_eq!(k.fanout(13, "celery.pidbox", ""), "app:/13.celery.pidbox");
        assert_eq!(
            k.fanout(0, "celeryev", "worker.online"),
            "app:/0.celeryev/worker.online"
        );
        assert_eq!(k.binding("celery"), "app:_kombu.binding.celery");
        assert_eq!(
            BrokerKeys::binding_member("celery", "celery"),
            "celery\x06\x16\x06\x16celery"
        );
        assert_eq!(
            BrokerKeys::parse_binding_member("rk\x06\x16\x06\x16q"),
            Some(("rk", "q"))
        );
    }

    #[test]
    fn result_prefix_gets_celerys_separator() {
        assert_eq!(ResultKeys::new("").task_meta("x"), "celery-task-meta-x");
        assert_eq!(
            ResultKeys::new("app").task_meta("x"),
            "app_celery-task-meta-x"
        );
        assert_eq!(
            ResultKeys::new("app:").task_meta("x"),
            "app:celery-task-meta-x"
        );
        let k = ResultKeys::new("app");
        assert_eq!(k.task_id_of("app_celery-task-meta-abc"), Some("abc"));
        assert_eq!(k.task_id_of("celery-task-meta-abc"), None);
    }
}
