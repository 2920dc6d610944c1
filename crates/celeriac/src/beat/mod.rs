//! Periodic tasks ("beat"): [`Schedule`]s — intervals, crontabs in a timezone, one-off
//! times — their [`Entry`]s (from code, [`AppBuilder::periodic`](crate::AppBuilder::periodic),
//! or a schedule file, [`parse_file`]), and the [`Beat`] process that sends each due run
//! once, whatever the number of beat processes: a leader lease with a fencing token in the
//! engine, and each entry's last run recorded there with its message in one atomic step
//! (see `docs/beat.md`).
//!
//! | file | what it holds |
//! |---|---|
//! | `schedule` | when an entry is due; which runs are due after a pause ([`CatchUp`]) |
//! | `file` | the `beat.toml` schedule file |
//! | `scheduler` | the beat process: lease, sleep until due, send, record |

mod file;
mod schedule;
mod scheduler;

pub use celeriac_core::beat::{BeatRun, BeatSent};
pub use file::{parse as parse_file, Entry, FileError};
pub use schedule::{
    coming, due_runs, next_due, CatchUp, CronSchedule, Schedule, ScheduleError, MAX_CATCH_UP,
};
pub(crate) use scheduler::entry_of;
#[cfg(feature = "cli")]
pub(crate) use scheduler::show;
pub use scheduler::{
    cron, every, Beat, BeatBuilder, Clock, IntoSchedule, Upcoming, BEAT_TASK_HEADER, DEFAULT_LEASE,
    DEFAULT_SCHEDULE, DUE_HEADER, ENTRY_HEADER,
};
