//! Time as Sidekiq writes it.
//!
//! Sidekiq 6 and 7 write job timestamps as float epoch seconds; Sidekiq 8
//! writes integer epoch milliseconds and tells the two apart by JSON type
//! (float = seconds, integer = ms). Sorted-set scores, heartbeat `beat` and
//! `run_at` stay seconds in every version. kiq writes float seconds unless told
//! the whole cluster runs Sidekiq 8, and never integer seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// How job timestamps (`created_at`, `enqueued_at`, `failed_at`, `retried_at`) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampUnit {
    /// Float seconds: read correctly by Sidekiq 6.4 through 8.x.
    #[default]
    Seconds,
    /// Integer milliseconds: Sidekiq 8's own format, misread by 6.x/7.x.
    Millis,
}

impl TimestampUnit {
    /// `"seconds"` or `"milliseconds"`, as `Kiq(timestamps=...)` names them.
    pub fn parse(value: &str) -> crate::Result<Self> {
        match value {
            "seconds" => Ok(Self::Seconds),
            "milliseconds" => Ok(Self::Millis),
            other => Err(crate::error::KiqError::config(format!(
                "timestamps must be \"seconds\" (Sidekiq 6.4-8.x) or \"milliseconds\" (Sidekiq 8 only), not {other:?}"
            ))),
        }
    }

    /// JSON text for the instant `secs` (epoch seconds) in this unit.
    pub fn encode(self, secs: f64) -> String {
        match self {
            Self::Seconds => float_json(secs),
            Self::Millis => format!("{}", (secs * 1000.0).round() as i64),
        }
    }
}

/// Current time in epoch seconds, microsecond precision.
pub fn now() -> f64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs() as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// A float as JSON that always reads back as a float (`1.0`, never `1`),
/// because Sidekiq 8 would take an integer for milliseconds.
pub fn float_json(v: f64) -> String {
    let mut out = String::new();
    push_float_json(&mut out, v);
    out
}

/// Appends [`float_json`]'s text to `out` (no allocation: args are encoded at every enqueue).
/// zmij is what `serde_json` writes floats with, so the text is the same.
pub fn push_float_json(out: &mut String, v: f64) {
    if v.is_finite() {
        out.push_str(zmij::Buffer::new().format_finite(v));
    } else {
        out.push_str("0.0");
    }
}

/// Reads a job timestamp the way Sidekiq 8 does: a float is seconds, an
/// integer is milliseconds. Returns epoch seconds.
pub fn decode(number: &serde_json::Number) -> Option<f64> {
    if number.is_f64() { number.as_f64() } else { number.as_f64().map(|ms| ms / 1000.0) }
}

/// Civil date (proleptic Gregorian, UTC) for a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC calendar time, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

impl Utc {
    pub fn at(secs: f64) -> Self {
        let s = secs.floor() as i64;
        let (year, month, day) = civil_from_days(s.div_euclid(86_400));
        let rem = s.rem_euclid(86_400);
        Self { year, month, day, hour: (rem / 3600) as u32, minute: (rem % 3600 / 60) as u32 }
    }
}

/// UTC `YYYY-MM-DD` of an epoch-seconds instant, the suffix of daily stat keys.
pub fn utc_date(secs: f64) -> String {
    let days = (secs.floor() as i64).div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_serde_json_writes_them() {
        for v in [0.0, -0.0, 1.0, 0.1, 1.25, -2.5e-7, 1e15, 1e16, 1e300, f64::MAX, f64::MIN_POSITIVE, 5e-324] {
            assert_eq!(float_json(v), serde_json::to_string(&v).unwrap(), "{v:e}");
        }
    }

    #[test]
    fn floats_stay_floats() {
        assert_eq!(float_json(1_700_000_000.0), "1700000000.0");
        assert_eq!(float_json(1_796_108_970.137_675_8), "1796108970.1376758");
        assert!(float_json(1e16).contains('e') || float_json(1e16).contains('.'));
    }

    #[test]
    fn units() {
        assert_eq!(TimestampUnit::Millis.encode(1_739_522_600.123), "1739522600123");
        assert_eq!(TimestampUnit::Seconds.encode(1.5), "1.5");
    }

    #[test]
    fn decode_by_json_type() {
        let f: serde_json::Number = serde_json::from_str("1700000000.5").unwrap();
        let i: serde_json::Number = serde_json::from_str("1739522600123").unwrap();
        assert_eq!(decode(&f), Some(1_700_000_000.5));
        assert!((decode(&i).unwrap() - 1_739_522_600.123).abs() < 1e-6);
    }

    #[test]
    fn utc_minutes() {
        let t = Utc::at(1_739_522_600.5); // 2025-02-14 08:43:20
        assert_eq!(t, Utc { year: 2025, month: 2, day: 14, hour: 8, minute: 43 });
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0.0), "1970-01-01");
        assert_eq!(utc_date(951_782_400.0), "2000-02-29");
        assert_eq!(utc_date(1_796_108_970.0), "2026-12-01");
        assert_eq!(utc_date(-1.0), "1969-12-31");
    }
}
