//! When a periodic task is due: intervals (`every 10 s`), crontabs in a timezone, and
//! one-off times — and which runs are due now after a pause (`catch_up`).
//!
//! Due times are instants computed from the schedule alone (an interval counts from its
//! anchor, a crontab from the wall clock of its timezone), so two beat processes compute
//! the same due times and a run is known by its entry and due time.
//!
//! Crontabs follow Celery's `crontab`: five fields (minute, hour, day of month, month, day
//! of week; 0 or 7 = Sunday; names allowed), and a day must match **both** the day of the
//! month and the day of the week when both are given (Vixie cron takes either). Across DST
//! changes (parsed by `croner`, Vixie cron's rules): a fixed-time entry in the skipped hour
//! of a spring-forward day runs once, right after the gap; in the repeated hour of a
//! fall-back day it runs once, the first time; `*`/step entries run at each wall-clock
//! match that exists.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A schedule that cannot be used, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

/// The longest interval accepted: ten years.
const MAX_EVERY_SECS: f64 = 315_360_000.0;

/// When an entry is due.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every `period`, from the entry's anchor (its first start, or its last run).
    Every(Duration),
    /// A crontab in a timezone.
    Cron(Box<CronSchedule>),
    /// Once, at this time.
    At(DateTime<Utc>),
}

/// A parsed crontab and the timezone its fields are read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: croner::Cron,
    tz: Tz,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron(a), Schedule::Cron(b)) => a.expr == b.expr && a.tz == b.tz,
            (Schedule::At(a), Schedule::At(b)) => a == b,
            _ => false,
        }
    }
}

impl Schedule {
    /// Every `secs` seconds (fractions allowed; more than 0, at most ten years).
    pub fn every(secs: f64) -> Result<Schedule, ScheduleError> {
        if !(secs.is_finite() && secs > 0.0 && secs <= MAX_EVERY_SECS) {
            return Err(ScheduleError(format!(
                "`every` must be a number of seconds above 0 and at most {MAX_EVERY_SECS}, got {secs}"
            )));
        }
        Ok(Schedule::Every(Duration::from_secs_f64(secs)))
    }

    /// A five-field crontab (`"*/15 * * * *"`, `"30 7 * * mon-fri"`, `"@daily"`) in UTC.
    pub fn cron(expr: &str) -> Result<Schedule, ScheduleError> {
        Self::cron_in(expr, "UTC")
    }

    /// A crontab read in the IANA timezone `tz` (`"Europe/Paris"`).
    pub fn cron_in(expr: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let tz: Tz = tz.parse().map_err(|_| {
            ScheduleError(format!(
                "unknown timezone {tz:?} (an IANA name, like \"Europe/Paris\")"
            ))
        })?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 {
            return Err(ScheduleError(format!(
                "crontab {expr:?} has {fields} fields; expected 5 (minute hour day-of-month month day-of-week)"
            )));
        }
        let cron = croner::parser::CronParser::builder()
            .dom_and_dow(true)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError(format!("crontab {expr:?}: {e}")))?;
        Ok(Schedule::Cron(Box::new(CronSchedule {
            expr: expr.trim().to_string(),
            cron,
            tz,
        })))
    }

    /// Once, at `t`.
    pub fn at(t: DateTime<Utc>) -> Schedule {
        Schedule::At(t)
    }

    /// The first due time strictly after `after`, for an entry anchored at `anchor` (an
    /// interval's due times are `anchor + k × period`); `None` when there is no more (a
    /// one-off time that has passed, a crontab that never matches again).
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => {
                let period_ns = i64::try_from(period.as_nanos()).ok()?.max(1);
                let since = after.signed_duration_since(anchor).num_nanoseconds()?;
                // The first k with anchor + k·period > after.
                let k = if since < 0 { 0 } else { since / period_ns + 1 };
                anchor.checked_add_signed(chrono::Duration::nanoseconds(k.checked_mul(period_ns)?))
            }
            Schedule::Cron(c) => {
                let local = after.with_timezone(&c.tz);
                c.cron
                    .find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Schedule::At(t) => (*t > after).then_some(*t),
        }
    }

    /// How long one period lasts near `at` (the gap between the next two due times): the
    /// default `expires` of a run, so that a backlog of runs never piles up.
    pub fn period_near(&self, at: DateTime<Utc>) -> Option<Duration> {
        match self {
            Schedule::Every(p) => Some(*p),
            Schedule::Cron(_) => {
                let a = self.next_after(at, at)?;
                let b = self.next_after(a, a)?;
                b.signed_duration_since(a).to_std().ok()
            }
            Schedule::At(_) => None,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(p) => write!(f, "every {}s", p.as_secs_f64()),
            Schedule::Cron(c) if c.tz == Tz::UTC => write!(f, "cron {:?}", c.expr),
            Schedule::Cron(c) => write!(f, "cron {:?} ({})", c.expr, c.tz),
            Schedule::At(t) => write!(f, "at {}", t.to_rfc3339()),
        }
    }
}

/// What to send when runs were missed (the beat was down, or no leader for a while).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// One run for all that were missed, due at the latest missed time (the default).
    #[default]
    Once,
    /// None of the missed runs; the next one on time.
    Skip,
    /// Every missed run (at most [`MAX_CATCH_UP`]).
    All,
}

/// Most runs [`CatchUp::All`] sends for one entry at once.
pub const MAX_CATCH_UP: usize = 1_000;

impl std::str::FromStr for CatchUp {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "once" => Ok(CatchUp::Once),
            "skip" => Ok(CatchUp::Skip),
            "all" => Ok(CatchUp::All),
            other => Err(ScheduleError(format!(
                "catch_up must be \"once\", \"skip\" or \"all\", got {other:?}"
            ))),
        }
    }
}

/// Where an entry's runs count from: runs due strictly after the first time returned
/// count, on the grid of the second (an interval's due times). An entry that ran counts
/// from its last run; one never sent from `anchor` — an interval's first run one period
/// after it, a crontab's or a one-off's possibly at the anchor itself.
fn counted_after(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    anchor: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    match (schedule, last) {
        (_, Some(l)) => (l, l),
        (Schedule::Every(_), None) => (anchor, anchor),
        (_, None) => (anchor - chrono::Duration::nanoseconds(1), anchor),
    }
}

/// The next run of an entry whose last sent run was due at `last` (`None`: never sent;
/// it counts from `anchor`), whether or not that time has passed.
pub fn next_due(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    anchor: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let (after, anchor) = counted_after(schedule, last, anchor);
    schedule.next_after(after, anchor)
}

/// The next run still to come after `now`, and whether a run is overdue (due by `now`
/// yet not sent: to be caught up, or passed over by [`CatchUp::Skip`]).
pub fn coming(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    anchor: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (bool, Option<DateTime<Utc>>) {
    match next_due(schedule, last, anchor) {
        Some(due) if due <= now => (true, schedule.next_after(now, last.unwrap_or(anchor))),
        next => (false, next),
    }
}

/// The runs due at `now` for an entry whose last sent run was due at `last` (`None`:
/// never sent; an interval then counts from `anchor`), oldest first. A run is missed when
/// it was due more than `grace` before `now`; `catch_up` says what becomes of missed runs.
/// The work is bounded whatever the backlog: at most [`MAX_CATCH_UP`] steps.
pub fn due_runs(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    anchor: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
    catch_up: CatchUp,
) -> Vec<DateTime<Utc>> {
    let (after, anchor) = counted_after(schedule, last, anchor);
    let Some(latest) = schedule.at_or_before(now, anchor).filter(|t| *t > after) else {
        return Vec::new();
    };
    let missed_before = now - chrono::Duration::from_std(grace).unwrap_or_default();
    match catch_up {
        CatchUp::Once => vec![latest],
        CatchUp::Skip => {
            if latest >= missed_before {
                vec![latest]
            } else {
                Vec::new()
            }
        }
        CatchUp::All => {
            // Back from the latest, at most MAX_CATCH_UP of them.
            let mut runs = vec![latest];
            while runs.len() < MAX_CATCH_UP {
                let before = runs[runs.len() - 1] - chrono::Duration::nanoseconds(1);
                match schedule.at_or_before(before, anchor) {
                    Some(t) if t > after => runs.push(t),
                    _ => break,
                }
            }
            runs.reverse();
            runs
        }
    }
}

impl Schedule {
    /// The latest due time at or before `t` (`None` if there is none).
    fn at_or_before(&self, t: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => {
                let period_ns = i64::try_from(period.as_nanos()).ok()?.max(1);
                let since = t.signed_duration_since(anchor).num_nanoseconds()?;
                if since < 0 {
                    return None;
                }
                let k = since / period_ns;
                anchor.checked_add_signed(chrono::Duration::nanoseconds(k.checked_mul(period_ns)?))
            }
            Schedule::Cron(c) => c
                .cron
                .find_previous_occurrence(&t.with_timezone(&c.tz), true)
                .ok()
                .map(|x| x.with_timezone(&Utc)),
            Schedule::At(at) => (*at <= t).then_some(*at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let s = Schedule::every(10.0).unwrap();
        let a = utc("2026-01-01T00:00:00Z");
        assert_eq!(s.next_after(a, a), Some(utc("2026-01-01T00:00:10Z")));
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:25Z"), a),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        assert_eq!(s.next_after(utc("2025-12-31T23:00:00Z"), a), Some(a));
        let half = Schedule::every(0.5).unwrap();
        assert_eq!(half.next_after(a, a), Some(utc("2026-01-01T00:00:00.5Z")));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(Schedule::every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crontabs_follow_the_wall_clock_of_their_timezone() {
        let s = Schedule::cron("30 7 * * mon-fri").unwrap();
        // Friday 2026-01-02 08:00 UTC → next Monday 07:30.
        let t = s.next_after(utc("2026-01-02T08:00:00Z"), utc("2026-01-01T00:00:00Z"));
        assert_eq!(t, Some(utc("2026-01-05T07:30:00Z")));
        let paris = Schedule::cron_in("0 9 * * *", "Europe/Paris").unwrap();
        // 09:00 in Paris is 08:00 UTC in winter, 07:00 in summer.
        assert_eq!(
            paris.next_after(utc("2026-01-10T00:00:00Z"), utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(utc("2026-07-10T00:00:00Z"), utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-07-10T07:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_must_both_match_as_in_celery() {
        // The 13th that is a Friday: 2026-02-13 is the first after 2026-01-01.
        let s = Schedule::cron("0 12 13 * fri").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-02-13T12:00:00Z"))
        );
    }

    #[test]
    fn a_fixed_time_in_the_spring_forward_gap_runs_once() {
        // Europe/Paris, 2026-03-29: 02:00 → 03:00. A 02:30 entry runs once, at 03:00 local
        // (01:00 UTC), not zero or two times.
        let s = Schedule::cron_in("30 2 * * *", "Europe/Paris").unwrap();
        let a = utc("2026-03-28T12:00:00Z");
        let first = s.next_after(a, a).unwrap();
        let second = s.next_after(first, a).unwrap();
        let runs_that_day: Vec<_> = [first, second]
            .into_iter()
            .filter(|t| {
                t.with_timezone(&Tz::Europe__Paris).date_naive()
                    == chrono::NaiveDate::from_ymd_opt(2026, 3, 29).unwrap()
            })
            .collect();
        assert_eq!(runs_that_day.len(), 1, "{first} {second}");
        assert_eq!(runs_that_day[0], utc("2026-03-29T01:00:00Z"));
    }

    #[test]
    fn a_fixed_time_in_the_fall_back_hour_runs_once() {
        // Europe/Paris, 2026-10-25: 03:00 → 02:00; 02:30 happens twice, the entry runs once.
        let s = Schedule::cron_in("30 2 * * *", "Europe/Paris").unwrap();
        let a = utc("2026-10-24T12:00:00Z");
        let first = s.next_after(a, a).unwrap();
        let second = s.next_after(first, a).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(
            second,
            utc("2026-10-26T01:30:00Z"),
            "the repeated 02:30 is not a second run"
        );
    }

    #[test]
    fn bad_crontabs_and_timezones_say_what_is_wrong() {
        let e = Schedule::cron("* * *").unwrap_err().to_string();
        assert!(e.contains("has 3 fields; expected 5"), "{e}");
        let e = Schedule::cron("61 * * * *").unwrap_err().to_string();
        assert!(e.starts_with("crontab \"61 * * * *\""), "{e}");
        let e = Schedule::cron_in("* * * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown timezone \"Mars/Olympus\""), "{e}");
        assert!(Schedule::cron("@hourly").is_ok());
    }

    #[test]
    fn one_off_times_fire_once() {
        let t = utc("2026-05-01T12:00:00Z");
        let s = Schedule::at(t);
        assert_eq!(s.next_after(utc("2026-05-01T11:00:00Z"), t), Some(t));
        assert_eq!(s.next_after(t, t), None);
    }

    #[test]
    fn missed_runs_are_caught_up_once_skipped_or_all_sent() {
        let s = Schedule::every(10.0).unwrap();
        let a = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:01:05Z");
        let grace = Duration::from_secs(1);
        // Never sent: due at 10, 20, …, 60.
        assert_eq!(due_runs(&s, None, a, now, grace, CatchUp::All).len(), 6);
        assert_eq!(
            due_runs(&s, None, a, now, grace, CatchUp::Once),
            vec![utc("2026-01-01T00:01:00Z")]
        );
        assert!(due_runs(&s, None, a, now, grace, CatchUp::Skip).is_empty());
        // On time: the run due a moment ago is sent, whatever the policy.
        let on_time = utc("2026-01-01T00:01:00.2Z");
        let last = Some(utc("2026-01-01T00:00:50Z"));
        for c in [CatchUp::Once, CatchUp::Skip, CatchUp::All] {
            assert_eq!(
                due_runs(&s, last, a, on_time, grace, c),
                vec![utc("2026-01-01T00:01:00Z")],
                "{c:?}"
            );
        }
        // Nothing due yet.
        assert!(due_runs(
            &s,
            last,
            a,
            utc("2026-01-01T00:00:59Z"),
            grace,
            CatchUp::All
        )
        .is_empty());
        // A huge backlog costs at most MAX_CATCH_UP steps, the latest ones.
        let tiny = Schedule::every(0.001).unwrap();
        let year_later = utc("2027-01-01T00:00:00Z");
        let all = due_runs(&tiny, None, a, year_later, grace, CatchUp::All);
        assert_eq!(all.len(), MAX_CATCH_UP);
        assert_eq!(all.last(), Some(&year_later));
        // A crontab, never sent, anchored now: its first minute boundary.
        let c = Schedule::cron("* * * * *").unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
        assert!(due_runs(&c, None, t0, t0, grace, CatchUp::Once).is_empty());
        assert_eq!(
            due_runs(
                &c,
                None,
                t0,
                utc("2026-01-01T00:01:00.1Z"),
                grace,
                CatchUp::Once
            ),
            vec![utc("2026-01-01T00:01:00Z")]
        );
    }

    #[test]
    fn the_default_expiry_is_one_period() {
        let now = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            Schedule::every(20.0).unwrap().period_near(now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            Schedule::cron("*/15 * * * *").unwrap().period_near(now),
            Some(Duration::from_secs(900))
        );
        assert_eq!(Schedule::at(now).period_near(now), None);
    }
}
