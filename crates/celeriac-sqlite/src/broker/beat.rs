//! Beat's lease and run records (see `celeriac_core::beat`): a `beat_leases` row per
//! schedule and a `beat_runs` row per entry; taking the lease, and recording a run with
//! inserting its message, are each one operation of the database thread (one savepoint
//! of a write transaction), so two processes never both hold the lease or send one run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use celeriac_core::beat::{self, BeatRun, BeatSent};
use celeriac_core::broker::PublishOptions;
use celeriac_core::error::BrokerError;
use celeriac_core::protocol::TaskMessage;

use super::publish::{insert, unroutable};
use super::{err, SqliteBroker};
use crate::schema::now;

/// The lease of `schedule` taken or renewed for `holder` until `now + ttl`.
fn lease(c: &Connection, schedule: &str, holder: &str, ttl: f64) -> rusqlite::Result<Option<u64>> {
    let now = now();
    let current: Option<(String, i64, f64)> = c
        .prepare_cached("SELECT holder, token, expires_at FROM beat_leases WHERE schedule = ?1")?
        .query_row(params![schedule], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let token = match current {
        Some((h, token, _)) if h == holder => token,
        Some((_, _, until)) if until > now => return Ok(None),
        Some((_, token, _)) => token + 1,
        None => 1,
    };
    c.prepare_cached(
        "INSERT INTO beat_leases (schedule, holder, token, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (schedule) DO UPDATE SET holder = ?2, token = ?3, expires_at = ?4",
    )?
    .execute(params![schedule, holder, token, now + ttl])?;
    Ok(u64::try_from(token).ok())
}

/// What a send found before it recorded anything.
enum Sent {
    Done(BeatSent),
    Unroutable(BrokerError),
}

fn send(
    c: &Connection,
    run: &BeatRun,
    task: Option<&(TaskMessage, PublishOptions)>,
) -> rusqlite::Result<Sent> {
    let live: Option<i64> = c
        .prepare_cached("SELECT token FROM beat_leases WHERE schedule = ?1 AND expires_at > ?2")?
        .query_row(params![run.schedule, now()], |r| r.get(0))
        .optional()?;
    if live.and_then(|t| u64::try_from(t).ok()) != Some(run.token) {
        return Ok(Sent::Done(BeatSent::NotLeader));
    }
    let due = beat::micros(&run.due);
    let last: Option<i64> = c
        .prepare_cached("SELECT last_due FROM beat_runs WHERE schedule = ?1 AND entry = ?2")?
        .query_row(params![run.schedule, run.entry], |r| r.get(0))
        .optional()?;
    if last.is_some_and(|l| l >= due) {
        return Ok(Sent::Done(BeatSent::AlreadySent));
    }
    if let Some((task, options)) = task {
        let message = task.encode();
        let deliver_at = options
            .deliver_at
            .map(|t| t.timestamp_micros() as f64 / 1e6);
        // Nothing is written when no queue is bound, and the run is not recorded.
        if insert(c, &message, deliver_at)? == 0 {
            return Ok(Sent::Unroutable(unroutable(&message)));
        }
    }
    c.prepare_cached(
        "INSERT INTO beat_runs (schedule, entry, last_due) VALUES (?1, ?2, ?3)
         ON CONFLICT (schedule, entry) DO UPDATE SET last_due = ?3",
    )?
    .execute(params![run.schedule, run.entry, due])?;
    Ok(Sent::Done(BeatSent::Sent))
}

impl SqliteBroker {
    pub(super) async fn lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let db = &self.inner.db;
        let (schedule, holder) = (schedule.to_string(), holder.to_string());
        let ttl = ttl.as_secs_f64();
        db.call(true, move |c| lease(c, &schedule, &holder, ttl))
            .await
            .map_err(err(db, "beat lease"))
    }

    pub(super) async fn release(&self, schedule: &str, holder: &str) -> Result<(), BrokerError> {
        let db = &self.inner.db;
        let (schedule, holder) = (schedule.to_string(), holder.to_string());
        db.call(true, move |c| {
            c.prepare_cached(
                "UPDATE beat_leases SET expires_at = 0 WHERE schedule = ?1 AND holder = ?2",
            )?
            .execute(params![schedule, holder])
            .map(drop)
        })
        .await
        .map_err(err(db, "beat release"))
    }

    pub(super) async fn last_runs(
        &self,
        schedule: &str,
    ) -> Result<Vec<(String, DateTime<Utc>)>, BrokerError> {
        let db = &self.inner.db;
        let schedule = schedule.to_string();
        let rows: Vec<(String, i64)> = db
            .call(false, move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT entry, last_due FROM beat_runs WHERE schedule = ?1")?;
                let rows = stmt.query_map(params![schedule], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await
            .map_err(err(db, "beat runs"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(e, us)| Some((e, beat::from_micros(us)?)))
            .collect())
    }

    pub(super) async fn send_run(
        &self,
        run: &BeatRun,
        task: Option<(TaskMessage, PublishOptions)>,
    ) -> Result<BeatSent, BrokerError> {
        let db = &self.inner.db;
        if let Some((t, _)) = &task {
            let queue = &t.properties.delivery_info.routing_key;
            if t.properties.delivery_info.exchange.is_empty() {
                self.declare(queue).await?;
            }
        }
        let run = run.clone();
        match db
            .call(true, move |c| send(c, &run, task.as_ref()))
            .await
            .map_err(err(db, "beat send"))?
        {
            Sent::Done(sent) => Ok(sent),
            Sent::Unroutable(e) => Err(e),
        }
    }
}
