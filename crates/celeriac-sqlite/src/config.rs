//! `sqlite://PATH[?options]`: everything after `sqlite://` up to `?` is the file path, as
//! sqlx reads it — `sqlite://celeriac.sqlite` is relative to the working directory,
//! `sqlite:///var/lib/app/queue.sqlite` absolute. (The text is not parsed as a URL host, so
//! upper-case letters and dots in file names survive.)
//!
//! Options: `busy_timeout` (ms a writer waits for another process's lock, default 5000),
//! `heartbeat` (s between a consumer's liveness beats, default 2), `dead_after` (s without a
//! beat after which a consumer's messages go back to their queues, default 10),
//! `poll_interval` (s: the longest an idle consumer or waiter sleeps when no change
//! notification arrives, default 2), `synchronous` (`normal`, the default: durable across
//! process crashes; `full`: across power loss too), `max_size` (bytes the file may grow
//! to; publishes beyond it fail as on a full disk).

use std::path::PathBuf;
use std::time::Duration;

use celeriac_core::url::UrlError;

/// The file a relative default resolves to.
pub const DEFAULT_FILE: &str = "celeriac.sqlite";

/// What a `sqlite://` URL asks for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file, absolute.
    pub path: PathBuf,
    /// How long a write waits for another process's lock.
    pub busy_timeout: Duration,
    /// How often a consuming process proves it is alive.
    pub heartbeat: Duration,
    /// Silence after which a consumer counts as dead and its messages are restored.
    pub dead_after: Duration,
    /// Longest sleep of an idle consumer or result waiter between checks.
    pub poll_interval: Duration,
    /// `PRAGMA synchronous=FULL` instead of `NORMAL`.
    pub synchronous_full: bool,
    /// Largest size the file may reach, in bytes.
    pub max_size: Option<u64>,
}

impl SqliteConfig {
    /// Reads a `sqlite://` URL.
    ///
    /// ```
    /// use celeriac_sqlite::SqliteConfig;
    /// let c = SqliteConfig::from_url("sqlite:///var/lib/app/Queue.sqlite?dead_after=30").unwrap();
    /// assert_eq!(c.path.to_str(), Some("/var/lib/app/Queue.sqlite"));
    /// assert_eq!(c.dead_after.as_secs(), 30);
    /// ```
    pub fn from_url(text: &str) -> Result<Self, UrlError> {
        let text = text.trim();
        let rest = text
            .strip_prefix("sqlite://")
            .ok_or_else(|| UrlError::Invalid {
                url: text.to_string(),
                reason: "expected sqlite://PATH".into(),
            })?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        if path.is_empty() {
            return Err(UrlError::Invalid {
                url: text.to_string(),
                reason: "no file path (expected sqlite://FILE or sqlite:///absolute/FILE)".into(),
            });
        }
        let mut path = PathBuf::from(path);
        if path.is_relative() {
            let cwd = std::env::current_dir().map_err(|e| UrlError::Invalid {
                url: text.to_string(),
                reason: format!("cannot resolve a relative path: {e}"),
            })?;
            path = cwd.join(path);
        }
        let bad = |option: &str, reason: String| UrlError::BadOption {
            url: text.to_string(),
            option: option.to_string(),
            reason,
        };
        let mut cfg = Self {
            path,
            busy_timeout: Duration::from_millis(5000),
            heartbeat: Duration::from_secs(2),
            dead_after: Duration::from_secs(10),
            poll_interval: Duration::from_secs(2),
            synchronous_full: false,
            max_size: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let secs = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        bad(
                            k,
                            format!("expected a positive number of seconds, got `{v}`"),
                        )
                    })
            };
            match k {
                "busy_timeout" => {
                    cfg.busy_timeout = Duration::from_millis(
                        v.parse().map_err(|_| bad(k, format!("expected milliseconds, got `{v}`")))?,
                    )
                }
                "heartbeat" => cfg.heartbeat = secs(v)?,
                "dead_after" => cfg.dead_after = secs(v)?,
                "poll_interval" => cfg.poll_interval = secs(v)?,
                "synchronous" => {
                    cfg.synchronous_full = match v.to_ascii_lowercase().as_str() {
                        "normal" => false,
                        "full" => true,
                        other => return Err(bad(k, format!("expected normal or full, got `{other}`"))),
                    }
                }
                "max_size" => {
                    cfg.max_size = Some(v.parse().map_err(|_| bad(k, format!("expected a number of bytes, got `{v}`")))?)
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown option (expected busy_timeout, heartbeat, dead_after, poll_interval, synchronous, max_size)"
                            .into(),
                    ))
                }
            }
        }
        // `checked_mul`: a heartbeat of 1e19 s is a valid `Duration`, but twice it is not
        // (found by the `url` fuzz target; see docs/fuzzing.md).
        if cfg
            .heartbeat
            .checked_mul(2)
            .is_none_or(|twice| cfg.dead_after <= twice)
        {
            return Err(bad(
                "dead_after",
                "must be more than twice heartbeat".into(),
            ));
        }
        Ok(cfg)
    }

    /// `sqlite://` + the absolute path: how logs and banners name the database.
    pub fn display(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_literal_and_relative_ones_resolve() {
        let c = SqliteConfig::from_url("sqlite://My.Queue.sqlite").unwrap();
        assert!(c.path.is_absolute());
        assert!(c.path.ends_with("My.Queue.sqlite"));
        let c = SqliteConfig::from_url("sqlite:///tmp/a b/x.db?busy_timeout=100&synchronous=full")
            .unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/a b/x.db"));
        assert_eq!(c.busy_timeout, Duration::from_millis(100));
        assert!(c.synchronous_full);
        assert_eq!(c.display(), "sqlite:///tmp/a b/x.db");
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, want) in [
            ("sqlite://", "no file path"),
            ("sqlite:///x?heartbeat=0", "heartbeat"),
            ("sqlite:///x?nope=1", "unknown option"),
            ("sqlite:///x?heartbeat=5&dead_after=6", "twice heartbeat"),
            ("sqlite:///x?max_size=big", "max_size"),
        ] {
            let e = SqliteConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    /// Issue 14, found by the `url` fuzz target: twice this heartbeat overflows
    /// `Duration`, and the check against `dead_after` panicked.
    #[test]
    fn huge_heartbeat_is_an_error_not_a_panic_issue14() {
        let e = SqliteConfig::from_url("sqlite:///x?heartbeat=1e19")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice heartbeat"), "{e}");
    }
}
