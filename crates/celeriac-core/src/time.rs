//! Celery's time formats: Python `datetime.isoformat()` text out, a permissive ISO-8601
//! parser in.
//!
//! Celery writes every timestamp (`eta`, `expires`, `date_done`) with `isoformat()`:
//! `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`, the fraction omitted when it is zero. Python reads
//! them with `dateutil.isoparse`, which also takes `Z`, other offsets, naive values (UTC)
//! and bare dates, so the parser here accepts the same set.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc};

/// Formats a UTC time as Python's `datetime.isoformat()` does for an aware datetime.
///
/// ```
/// use chrono::{TimeZone, Utc};
/// let t = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
/// assert_eq!(celeriac_core::time::isoformat(&t), "2030-01-02T03:04:05+00:00");
/// ```
pub fn isoformat(t: &DateTime<Utc>) -> String {
    // Python prints microseconds (6 digits) unless they are exactly zero; it has no
    // nanoseconds, so truncate to microseconds first.
    let micros = t.nanosecond() / 1_000;
    let t = t.with_nanosecond(micros * 1_000).unwrap_or(*t);
    if micros == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, false)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Micros, false)
    }
}

/// Parses an ISO-8601 timestamp the way Celery's worker does: offsets and `Z` are honoured,
/// naive values and bare dates are taken as UTC.
///
/// Returns `None` for text that is not a timestamp.
pub fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // Offsets without a colon (`+0000`) and fractional seconds of any length.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
}

/// Converts seconds (as Celery's `countdown`/`expires` numbers are given) to a
/// [`chrono::Duration`], saturating instead of overflowing and treating NaN as zero.
pub fn seconds(secs: f64) -> chrono::Duration {
    if !secs.is_finite() {
        return if secs > 0.0 {
            chrono::Duration::days(365 * 1000)
        } else {
            chrono::Duration::zero()
        };
    }
    let micros = (secs * 1_000_000.0).clamp(-3.0e16, 3.0e16) as i64;
    chrono::Duration::microseconds(micros)
}

/// How long from now until `at`, zero when it has passed.
pub fn until(at: &DateTime<Utc>) -> std::time::Duration {
    (*at - Utc::now()).to_std().unwrap_or_default()
}

/// The longest a timer is armed for. tokio's timer wheel (and `DelayQueue`, which panics
/// beyond it) reaches about 2.2 years; a message may carry an ETA centuries away, so
/// holders arm at most this long and check the ETA again when the timer fires.
pub const MAX_TIMER: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// [`until`], capped at [`MAX_TIMER`].
pub fn until_capped(at: &DateTime<Utc>) -> std::time::Duration {
    until(at).min(MAX_TIMER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_matches_python() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 19, 29, 58).unwrap();
        assert_eq!(isoformat(&t), "2026-11-23T19:29:58+00:00");
        let t = t.with_nanosecond(706_481_999).unwrap();
        assert_eq!(isoformat(&t), "2026-11-23T19:29:58.706481+00:00");
        let t = t.with_nanosecond(500).unwrap();
        assert_eq!(isoformat(&t), "2026-11-23T19:29:58+00:00");
    }

    #[test]
    fn parses_every_form_dateutil_accepts() {
        let want = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        for text in [
            "2020-01-01T00:00:00Z",
            "2020-01-01T00:00:00+00:00",
            "2020-01-01T01:00:00+01:00",
            "2020-01-01T00:00:00",
            "2020-01-01 00:00:00",
            "2020-01-01T00:00:00.000000",
            "2020-01-01T00:00:00+0000",
            "2020-01-01",
        ] {
            assert_eq!(parse_iso(text), Some(want), "{text}");
        }
        assert_eq!(parse_iso("not-a-date"), None);
        assert_eq!(parse_iso(""), None);
        let t = parse_iso("2026-11-23T19:29:58.706481+00:00").unwrap();
        assert_eq!(isoformat(&t), "2026-11-23T19:29:58.706481+00:00");
    }

    #[test]
    fn timers_are_capped() {
        let far = parse_iso("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(until_capped(&far), MAX_TIMER);
        assert_eq!(
            until(&parse_iso("2000-01-01").unwrap()),
            std::time::Duration::ZERO
        );
    }

    #[test]
    fn seconds_saturate() {
        assert_eq!(seconds(1.5), chrono::Duration::milliseconds(1500));
        assert_eq!(seconds(f64::NAN), chrono::Duration::zero());
        assert!(seconds(f64::INFINITY) > chrono::Duration::days(1000));
        assert!(seconds(1e300) > chrono::Duration::days(1000));
    }
}
