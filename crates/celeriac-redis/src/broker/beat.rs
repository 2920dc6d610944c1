//! Beat's lease and run records (see `celeriac_core::beat`): the lease is a key holding
//! `<token>:<holder>` with a `PX` expiry (Redis's clock, not the beat processes'), taken
//! with `INCR` on a fencing counter when it is free; a run is checked against the lease's
//! token and the entry's last run, recorded and `LPUSH`ed in one Lua step.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;

use celeriac_core::beat::{self, BeatRun, BeatSent};
use celeriac_core::broker::PublishOptions;
use celeriac_core::error::BrokerError;
use celeriac_core::protocol::{envelope, TaskMessage};

use super::RedisBroker;

/// Takes or renews the lease.
const LEASE: &str = include_str!("../lua/beat_lease.lua");
/// Gives the lease up if still held.
const RELEASE: &str = include_str!("../lua/beat_release.lua");
/// Records a run and enqueues its message.
const SEND: &str = include_str!("../lua/beat_send.lua");

impl RedisBroker {
    pub(super) async fn lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let [lease, fence, _] = self.inner.keys.beat(schedule);
        let ms = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        Script::new(LEASE)
            .key(lease)
            .key(fence)
            .arg(holder)
            .arg(ms)
            .invoke_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("beat lease", e))
    }

    pub(super) async fn release(&self, schedule: &str, holder: &str) -> Result<(), BrokerError> {
        let [lease, _, _] = self.inner.keys.beat(schedule);
        Script::new(RELEASE)
            .key(lease)
            .arg(holder)
            .invoke_async::<i64>(&mut self.inner.conn())
            .await
            .map(drop)
            .map_err(|e| self.inner.err("beat release", e))
    }

    pub(super) async fn last_runs(
        &self,
        schedule: &str,
    ) -> Result<Vec<(String, DateTime<Utc>)>, BrokerError> {
        let [_, _, runs] = self.inner.keys.beat(schedule);
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(runs)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("beat runs", e))?;
        // A value that is not a time (written by hand) is skipped, not fatal.
        Ok(all
            .into_iter()
            .filter_map(|(e, us)| Some((e, beat::from_micros(us.parse().ok()?)?)))
            .collect())
    }

    pub(super) async fn send_run(
        &self,
        run: &BeatRun,
        task: Option<(TaskMessage, PublishOptions)>,
    ) -> Result<BeatSent, BrokerError> {
        let [lease, _, runs] = self.inner.keys.beat(&run.schedule);
        let script = Script::new(SEND);
        let mut call = script.prepare_invoke();
        call.key(lease).key(runs);
        let mut body = Vec::new();
        if let Some((task, _)) = task {
            let message = task.encode();
            let info = &message.properties.delivery_info;
            let queues = self
                .inner
                .targets(&info.exchange, &info.routing_key)
                .await?;
            if queues.is_empty() {
                return Err(super::publish::unroutable(info));
            }
            for q in &queues {
                if info.exchange.is_empty() {
                    self.declare_binding(q).await?;
                }
                call.key(self.inner.keys.queue_for(q, message.priority()));
            }
            body = envelope::encode(&message, &uuid::Uuid::new_v4().to_string());
        }
        let outcome: i64 = call
            .arg(run.token)
            .arg(&run.entry)
            .arg(beat::micros(&run.due))
            .arg(body)
            .invoke_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("beat send", e))?;
        Ok(match outcome {
            2 => BeatSent::Sent,
            1 => BeatSent::AlreadySent,
            _ => BeatSent::NotLeader,
        })
    }
}
