//! Periodic tasks ("beat"). So far: [`Schedule`] — intervals, crontabs in a timezone and
//! one-off times — [`due_runs`], which runs are due after a pause ([`CatchUp`]), and the
//! schedule file's [`Entry`]s ([`parse_file`]). The scheduler that sends them (with a
//! leader lease in the engine, so any number of beat processes send each run once) builds
//! on these.

mod file;
mod schedule;

pub use file::{parse as parse_file, Entry, FileError};
pub use schedule::{due_runs, CatchUp, CronSchedule, Schedule, ScheduleError, MAX_CATCH_UP};
