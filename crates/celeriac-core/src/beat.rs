//! What an engine keeps for beat (periodic tasks): a leader lease with a fencing token per
//! schedule, and the due time of each entry's last sent run — so that any number of beat
//! processes send each due run once ([`Broker::beat_lease`](crate::Broker::beat_lease),
//! [`Broker::beat_send`](crate::Broker::beat_send)).
//!
//! The rule every engine follows, in one atomic step per run (a Lua script, a transaction,
//! a lock): a run is recorded only by the holder of the current lease (its token is the
//! current one and the lease has not expired), only if it is later than the entry's last
//! recorded run, and — when the engine is also the broker — its message is enqueued in the
//! same step. A leader paused past its lease therefore sends nothing when it wakes, and a
//! new leader never sends a run the old one sent.

use chrono::{DateTime, Utc};

/// One due run of one entry of one schedule, as the leader asks to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeatRun {
    /// The schedule (a name shared by the beat processes that take turns).
    pub schedule: String,
    /// The sender's fencing token (from `beat_lease`).
    pub token: u64,
    /// The entry's name.
    pub entry: String,
    /// When the run is due (kept to the microsecond).
    pub due: DateTime<Utc>,
}

/// What became of a [`BeatRun`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatSent {
    /// Recorded (and its message enqueued, when one was given).
    Sent,
    /// This run, or a later one, was already recorded: nothing was done.
    AlreadySent,
    /// The token is not the current lease's (it expired or changed hands): nothing was done.
    NotLeader,
}

/// Microseconds since the Unix epoch: how engines store a due time.
pub fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The time `micros` stands for.
pub fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

/// A lease and its records kept in one process's memory (the `memory://` engine): the
/// same rule as the shared engines, with the caller holding the lock.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: std::collections::HashMap<String, Lease>,
    runs: std::collections::HashMap<(String, String), i64>,
}

#[derive(Debug)]
struct Lease {
    holder: String,
    token: u64,
    until: std::time::Instant,
}

impl LeaseTable {
    /// Takes or renews the lease of `schedule` for `holder` until `now + ttl`; its token
    /// if `holder` holds it now. The token grows each time the lease changes hands.
    pub fn lease(
        &mut self,
        schedule: &str,
        holder: &str,
        ttl: std::time::Duration,
        now: std::time::Instant,
    ) -> Option<u64> {
        match self.leases.get_mut(schedule) {
            Some(l) if l.holder == holder => {
                l.until = now + ttl;
                Some(l.token)
            }
            Some(l) if l.until > now => None,
            current => {
                let token = current.map_or(1, |l| l.token + 1);
                self.leases.insert(
                    schedule.to_string(),
                    Lease {
                        holder: holder.to_string(),
                        token,
                        until: now + ttl,
                    },
                );
                Some(token)
            }
        }
    }

    /// Gives the lease up, if `holder` holds it.
    pub fn release(&mut self, schedule: &str, holder: &str, now: std::time::Instant) {
        if let Some(l) = self.leases.get_mut(schedule) {
            if l.holder == holder {
                l.until = now;
            }
        }
    }

    /// The last recorded run of each entry of `schedule`.
    pub fn last_runs(&self, schedule: &str) -> Vec<(String, DateTime<Utc>)> {
        self.runs
            .iter()
            .filter(|((s, _), _)| s == schedule)
            .filter_map(|((_, e), us)| Some((e.clone(), from_micros(*us)?)))
            .collect()
    }

    /// Records `run` if its token holds the live lease and it is later than the last one.
    pub fn record(&mut self, run: &BeatRun, now: std::time::Instant) -> BeatSent {
        match self.leases.get(&run.schedule) {
            Some(l) if l.token == run.token && l.until > now => {}
            _ => return BeatSent::NotLeader,
        }
        let due = micros(&run.due);
        let last = self
            .runs
            .entry((run.schedule.clone(), run.entry.clone()))
            .or_insert(i64::MIN);
        if *last >= due {
            return BeatSent::AlreadySent;
        }
        *last = due;
        BeatSent::Sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn run(token: u64, secs: i64) -> BeatRun {
        BeatRun {
            schedule: "s".into(),
            token,
            entry: "e".into(),
            due: DateTime::from_timestamp(secs, 0).unwrap(),
        }
    }

    #[test]
    fn one_holder_at_a_time_and_a_stale_token_records_nothing() {
        let mut t = LeaseTable::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        assert_eq!(t.lease("s", "a", ttl, t0), Some(1));
        assert_eq!(t.lease("s", "b", ttl, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.record(&run(1, 10), t0), BeatSent::Sent);
        assert_eq!(t.record(&run(1, 10), t0), BeatSent::AlreadySent);
        assert_eq!(t.record(&run(1, 9), t0), BeatSent::AlreadySent);
        // a stops renewing; b takes over after the lease ran out, with a new token.
        let later = t0 + Duration::from_secs(6);
        assert_eq!(t.lease("s", "b", ttl, later), Some(2));
        assert_eq!(t.record(&run(1, 11), later), BeatSent::NotLeader);
        assert_eq!(t.record(&run(2, 11), later), BeatSent::Sent);
        assert_eq!(t.last_runs("s").len(), 1);
        t.release("s", "b", later);
        assert_eq!(t.lease("s", "a", ttl, later), Some(3));
    }
}
