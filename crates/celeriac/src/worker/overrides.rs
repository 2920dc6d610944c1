//! Per-task settings changed at run time by remote control: rate limits (`rate_limit`,
//! a token bucket per task name, as Celery's) and time limits (`time_limit`). Until the
//! first change a lookup takes no lock: every task asks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::execute::Limits;

/// The longest a rate-limited message is held before its rate is asked again.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A rate: this many tasks per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate(pub(super) f64);

impl Rate {
    /// Reads Celery's rate strings: `"10/s"`, `"10/m"`, `"10/h"`, or a bare number (per
    /// second). `Ok(None)` for `""` or `0` (no limit).
    pub(super) fn parse(text: &str) -> Result<Option<Rate>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let (n, per) = match text.split_once('/') {
            Some((n, unit)) => {
                let per = match unit.trim().chars().next() {
                    Some('s') => 1.0,
                    Some('m') => 60.0,
                    Some('h') => 3600.0,
                    _ => return Err(format!("Invalid rate limit string: {text:?}")),
                };
                (n.trim(), per)
            }
            None => (text, 1.0),
        };
        match n.parse::<f64>() {
            Ok(0.0) => Ok(None),
            Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(Rate(n / per))),
            _ => Err(format!("Invalid rate limit string: {text:?}")),
        }
    }
}

/// kombu's `TokenBucket` with capacity 1: one task may start every `1/rate` seconds.
#[derive(Debug)]
struct Bucket {
    rate: Rate,
    /// As it was given (`"10/m"`), for `inspect registered`.
    text: String,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate, text: &str) -> Self {
        Self {
            rate,
            text: text.to_string(),
            tokens: 1.0,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until there is one.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.0).min(1.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // Capped: a tiny rate ("1e-300/s") must not overflow a timer; a capped wait
            // just asks again.
            let wait = (1.0 - self.tokens) / self.rate.0;
            Err(Duration::try_from_secs_f64(wait)
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT))
        }
    }
}

/// The run-time settings of one worker's tasks.
#[derive(Default)]
pub(super) struct Overrides {
    rates: Mutex<HashMap<String, Bucket>>,
    any_rate: AtomicBool,
    limits: Mutex<HashMap<String, Limits>>,
    any_limits: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Overrides {
    /// Sets (or with `None` removes) `task`'s rate limit; `text` is how it was given.
    pub(super) fn set_rate(&self, task: &str, rate: Option<Rate>, text: &str) {
        let mut rates = lock(&self.rates);
        match rate {
            Some(r) => {
                rates.insert(task.to_string(), Bucket::new(r, text));
            }
            None => {
                rates.remove(task);
            }
        }
        self.any_rate.store(!rates.is_empty(), Ordering::Release);
    }

    /// `task`'s rate limit, as it was given.
    pub(super) fn rate(&self, task: &str) -> Option<String> {
        if !self.any_rate.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.rates).get(task).map(|b| b.text.clone())
    }

    /// Whether `task` may start now (a token is taken), or how long until it may.
    #[inline]
    pub(super) fn admit(&self, task: &str) -> Result<(), Duration> {
        if !self.any_rate.load(Ordering::Acquire) {
            return Ok(());
        }
        match lock(&self.rates).get_mut(task) {
            Some(b) => b.take(Instant::now()),
            None => Ok(()),
        }
    }

    /// Sets `task`'s time limits, replacing the task's own.
    pub(super) fn set_limits(&self, task: &str, limits: Limits) {
        lock(&self.limits).insert(task.to_string(), limits);
        self.any_limits.store(true, Ordering::Release);
    }

    /// `task`'s time limits set at run time, if any.
    #[inline]
    pub(super) fn limits(&self, task: &str) -> Option<Limits> {
        if !self.any_limits.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.limits).get(task).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_celery_rate_strings() {
        assert_eq!(Rate::parse("10/s"), Ok(Some(Rate(10.0))));
        assert_eq!(Rate::parse("30/m"), Ok(Some(Rate(0.5))));
        assert_eq!(Rate::parse("3600/h"), Ok(Some(Rate(1.0))));
        assert_eq!(Rate::parse("2"), Ok(Some(Rate(2.0))));
        assert_eq!(Rate::parse("0"), Ok(None));
        assert_eq!(Rate::parse(""), Ok(None));
        assert_eq!(
            Rate::parse("abc"),
            Err("Invalid rate limit string: \"abc\"".into())
        );
        assert!(Rate::parse("5/d").is_err());
        assert!(Rate::parse("-1/s").is_err());
    }

    #[test]
    fn a_bucket_admits_one_task_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Rate(2.0), "2/s");
        b.last = t0;
        assert_eq!(b.take(t0), Ok(()));
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(250)).is_err());
        assert_eq!(b.take(t0 + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn a_tiny_rate_waits_at_most_an_hour_at_a_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Rate::parse("1e-300/s").unwrap().unwrap(), "1e-300/s");
        b.last = t0;
        assert_eq!(b.take(t0), Ok(()));
        assert_eq!(b.take(t0), Err(MAX_WAIT));
    }

    #[test]
    fn overrides_are_per_task() {
        let o = Overrides::default();
        assert_eq!(o.admit("a"), Ok(()));
        o.set_rate("a", Some(Rate(1.0)), "1/s");
        assert_eq!(o.rate("a").as_deref(), Some("1/s"));
        assert_eq!(o.admit("a"), Ok(()));
        assert!(o.admit("a").is_err());
        assert_eq!(o.admit("b"), Ok(()));
        o.set_rate("a", None, "0");
        assert_eq!(o.admit("a"), Ok(()));
        assert_eq!(o.limits("a"), None);
        let l = Limits {
            hard: Some(2.0),
            soft: None,
        };
        o.set_limits("a", l);
        assert_eq!(o.limits("a"), Some(l));
    }
}
