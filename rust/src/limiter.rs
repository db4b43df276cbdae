//! A rate limiter's definition: its kind, name and parameters, checked once
//! here, whatever builds it (`app.limiter.concurrent(...)`, a test, the
//! dashboard). The kinds and options are Sidekiq Enterprise's; the Redis side
//! is `limits.rs`, and the limiters are kiq's own (never shared with Ruby).
//!
//! - `concurrent(name, size, wait_timeout, lock_timeout)`: at most `size`
//!   holders at once; a holder that dies frees its slot after `lock_timeout`.
//! - `bucket(name, count, interval)`: at most `count` per calendar second,
//!   minute, hour or day (UTC, by Redis's clock).
//! - `window(name, count, interval)`: at most `count` in any `interval`
//!   (a sliding window of any length).
//! - `leaky(name, size, interval)`: bursts of up to `size`, then `size` per
//!   `interval` as the bucket drains.
//! - `points(name, points, interval)`: a budget of `points`, refilled at
//!   `points` per `interval`; each use takes the points it says.
//! - `unlimited`: always has room (tests, or a limiter switched off).

use std::fmt;
use std::time::Duration;

use crate::error::{KiqError, Result};

/// The longest limiter name (a Redis key part).
pub const MAX_NAME_LEN: usize = 200;

/// The calendar intervals (a bucket's, or a shorthand for the others).
const NAMED: [(&str, u64); 4] = [("second", 1_000), ("minute", 60_000), ("hour", 3_600_000), ("day", 86_400_000)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Concurrent,
    Bucket,
    Window,
    Leaky,
    Points,
    Unlimited,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "concurrent" => Self::Concurrent,
            "bucket" => Self::Bucket,
            "window" => Self::Window,
            "leaky" => Self::Leaky,
            "points" => Self::Points,
            "unlimited" => Self::Unlimited,
            other => {
                return Err(KiqError::config(format!(
                    "unknown limiter kind {other:?}: use concurrent, bucket, window, leaky, points or unlimited"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrent => "concurrent",
            Self::Bucket => "bucket",
            Self::Window => "window",
            Self::Leaky => "leaky",
            Self::Points => "points",
            Self::Unlimited => "unlimited",
        }
    }

    /// Whether room comes back with time alone (so a caller can sleep until then).
    pub fn refills(self) -> bool {
        !matches!(self, Self::Concurrent | Self::Unlimited)
    }
}

/// An interval as given: a calendar name or a number of seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum IntervalArg {
    Named(String),
    Seconds(f64),
}

/// A validated limiter definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub kind: Kind,
    pub name: String,
    /// `size` (concurrent, leaky), `count` (bucket, window) or `points`.
    pub capacity: u64,
    /// Milliseconds: a bucket's calendar period, a window's length, the time
    /// a full leaky or points bucket takes to drain, a concurrent slot's lock.
    pub interval_ms: u64,
    /// How long an acquire waits for room before `OverLimit`.
    pub wait: Duration,
}

/// A duration option in seconds: finite and not negative (`positive` also excludes 0).
fn seconds(value: f64, what: &str, positive: bool) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 || (positive && value < 0.001) {
        let want = if positive { "a positive" } else { "a non-negative" };
        return Err(KiqError::config(format!("{what} must be {want} number of seconds, not {value}")));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Checks a limiter name: 1 to 200 letters, digits, `-` and `_` (Sidekiq Enterprise's rule).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(KiqError::config("a limiter needs a name (letters, digits, \"-\" and \"_\")"));
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(KiqError::config(format!(
            "limiter name {:?}... is {len} characters long; the most is {MAX_NAME_LEN}",
            name.chars().take(20).collect::<String>()
        )));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        let shown = if bad == ' ' { "a space".to_owned() } else { format!("{bad:?}") };
        return Err(KiqError::config(format!(
            "limiter name {name:?} contains {shown}: names use letters, digits, \"-\" and \"_\" only (e.g. \
             \"stripe-42\")"
        )));
    }
    Ok(())
}

/// An interval in milliseconds; `calendar` limits it to the four names.
fn interval_ms(arg: Option<&IntervalArg>, kind: Kind, calendar: bool) -> Result<u64> {
    let names = "\"second\", \"minute\", \"hour\" or \"day\"";
    let what = if calendar { names.to_owned() } else { format!("{names}, or a number of seconds") };
    match arg {
        None => Err(KiqError::config(format!("a {} limiter needs an interval: {what}", kind.as_str()))),
        Some(IntervalArg::Named(n)) => {
            let lower = n.trim().to_ascii_lowercase();
            let lower = lower.strip_prefix(':').unwrap_or(&lower);
            NAMED.iter().find(|(name, _)| *name == lower).map(|(_, ms)| *ms).ok_or_else(|| {
                KiqError::config(format!("unknown interval {n:?} for a {} limiter: use {what}", kind.as_str()))
            })
        }
        Some(IntervalArg::Seconds(_)) if calendar => Err(KiqError::config(format!(
            "a bucket limiter counts per calendar interval: use {names} (window takes a number of seconds)"
        ))),
        Some(IntervalArg::Seconds(s)) => {
            let d = seconds(*s, &format!("the interval of a {} limiter", kind.as_str()), true)?;
            Ok((d.as_secs_f64() * 1000.0).round().max(1.0) as u64)
        }
    }
}

impl Spec {
    /// A limiter of `kind` (see the module docs); `capacity` is its size,
    /// count or points. Every problem is an error naming the parameter.
    pub fn new(
        kind: Kind,
        name: &str,
        capacity: Option<i64>,
        interval: Option<&IntervalArg>,
        wait_timeout: f64,
        lock_timeout: f64,
    ) -> Result<Self> {
        let wait = seconds(wait_timeout, "wait_timeout", false)?;
        if kind == Kind::Unlimited {
            let name = if name.is_empty() { "unlimited" } else { name };
            check_name(name)?;
            return Ok(Self { kind, name: name.to_owned(), capacity: 0, interval_ms: 0, wait });
        }
        check_name(name)?;
        let what = match kind {
            Kind::Concurrent | Kind::Leaky => "a size",
            Kind::Points => "points",
            _ => "a count",
        };
        let capacity = match capacity {
            Some(n) if n >= 1 => n as u64,
            Some(n) => {
                return Err(KiqError::config(format!(
                    "{} limiter {name:?} needs {what} of at least 1, not {n}",
                    kind.as_str()
                )));
            }
            None => return Err(KiqError::config(format!("{} limiter {name:?} needs {what}", kind.as_str()))),
        };
        let interval_ms = match kind {
            Kind::Concurrent => {
                let lock = seconds(lock_timeout, "lock_timeout", true)?;
                lock.as_millis().max(1) as u64
            }
            Kind::Bucket => interval_ms(interval, kind, true)?,
            _ => interval_ms(interval, kind, false)?,
        };
        Ok(Self { kind, name: name.to_owned(), capacity, interval_ms, wait })
    }

    /// Checks the points one `within_limit` takes.
    pub fn check_points(&self, points: i64) -> Result<u64> {
        match self.kind {
            Kind::Unlimited => Ok(points.max(1) as u64),
            Kind::Concurrent if points != 1 => Err(KiqError::config(format!(
                "concurrent limiter {:?} counts holders: within_limit takes no points (got {points})",
                self.name
            ))),
            _ if points < 1 => Err(KiqError::config(format!("points must be at least 1, not {points}"))),
            _ if points as u64 > self.capacity => Err(KiqError::config(format!(
                "{} limiter {:?} holds {} at most, so {points} points could never fit",
                self.kind.as_str(),
                self.name,
                self.capacity
            ))),
            _ => Ok(points as u64),
        }
    }

    /// How the registry (`Keys::limiters`) names this limiter: `kind|name|capacity|interval_ms`.
    pub fn registry_member(&self) -> String {
        format!("{}|{}|{}|{}", self.kind.as_str(), self.name, self.capacity, self.interval_ms)
    }

    /// Reads a registry member back.
    pub fn from_registry(member: &str) -> Option<Self> {
        let mut parts = member.split('|');
        let kind = Kind::parse(parts.next()?).ok()?;
        let name = parts.next()?.to_owned();
        let capacity = parts.next()?.parse().ok()?;
        let interval_ms = parts.next()?.parse().ok()?;
        Some(Self { kind, name, capacity, interval_ms, wait: Duration::ZERO })
    }

    /// The limit in words, for errors and logs: "3 at once", "10 per second".
    pub fn describe(&self) -> String {
        let per = match NAMED.iter().find(|(_, ms)| *ms == self.interval_ms) {
            Some((name, _)) => (*name).to_owned(),
            None => format!("{}s", self.interval_ms as f64 / 1000.0),
        };
        match self.kind {
            Kind::Concurrent => format!("{} at once", self.capacity),
            Kind::Unlimited => "no limit".into(),
            Kind::Points => format!("{} points per {per}", self.capacity),
            Kind::Leaky => format!("bursts of {}, draining {} per {per}", self.capacity, self.capacity),
            _ => format!("{} per {per}", self.capacity),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} limiter {:?} ({})", self.kind.as_str(), self.name, self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(s: &str) -> IntervalArg {
        IntervalArg::Named(s.into())
    }

    #[test]
    fn valid_specs() {
        let c = Spec::new(Kind::Concurrent, "stripe-42", Some(3), None, 5.0, 30.0).unwrap();
        assert_eq!((c.capacity, c.interval_ms, c.wait), (3, 30_000, Duration::from_secs(5)));
        assert_eq!(c.to_string(), "concurrent limiter \"stripe-42\" (3 at once)");
        let b = Spec::new(Kind::Bucket, "api", Some(10), Some(&named("second")), 0.0, 30.0).unwrap();
        assert_eq!((b.interval_ms, b.describe()), (1000, "10 per second".into()));
        let w = Spec::new(Kind::Window, "w_1", Some(20), Some(&IntervalArg::Seconds(2.0)), 5.0, 0.0).unwrap();
        assert_eq!((w.interval_ms, w.describe()), (2000, "20 per 2s".into()));
        assert_eq!(Spec::new(Kind::Leaky, "l", Some(6), Some(&named("Minute")), 5.0, 0.0).unwrap().interval_ms, 60_000);
        let u = Spec::new(Kind::Unlimited, "", None, None, 5.0, 0.0).unwrap();
        assert_eq!(u.name, "unlimited");
        let back = Spec::from_registry(&w.registry_member()).unwrap();
        assert_eq!((back.kind, back.name.as_str(), back.capacity, back.interval_ms), (Kind::Window, "w_1", 20, 2000));
    }

    #[test]
    fn bad_input_is_named() {
        let err = |r: Result<Spec>| r.unwrap_err().to_string();
        let e = err(Spec::new(Kind::Bucket, "api", Some(10), Some(&named("fortnight")), 5.0, 30.0));
        assert!(e.contains("unknown interval \"fortnight\"") && e.contains("\"second\""), "{e}");
        let e = err(Spec::new(Kind::Bucket, "api", Some(10), Some(&IntervalArg::Seconds(3.0)), 5.0, 30.0));
        assert!(e.contains("calendar interval"), "{e}");
        let e = err(Spec::new(Kind::Concurrent, "api", Some(0), None, 5.0, 30.0));
        assert!(e.contains("needs a size of at least 1, not 0"), "{e}");
        let e = err(Spec::new(Kind::Concurrent, "my api", Some(1), None, 5.0, 30.0));
        assert!(e.contains("contains a space"), "{e}");
        let e = err(Spec::new(Kind::Concurrent, &"x".repeat(201), Some(1), None, 5.0, 30.0));
        assert!(e.contains("201 characters long; the most is 200"), "{e}");
        assert!(Spec::new(Kind::Concurrent, &"x".repeat(200), Some(1), None, 5.0, 30.0).is_ok());
        let e = err(Spec::new(Kind::Concurrent, "a", Some(1), None, -1.0, 30.0));
        assert!(e.contains("wait_timeout must be a non-negative number of seconds"), "{e}");
        let e = err(Spec::new(Kind::Concurrent, "a", Some(1), None, 1.0, 0.0));
        assert!(e.contains("lock_timeout must be a positive"), "{e}");
        let e = err(Spec::new(Kind::Window, "a", Some(1), None, 1.0, 0.0));
        assert!(e.contains("needs an interval"), "{e}");
        let e = err(Spec::new(Kind::Window, "a", Some(1), Some(&IntervalArg::Seconds(f64::NAN)), 1.0, 0.0));
        assert!(e.contains("interval of a window limiter must be a positive"), "{e}");
        let e = Kind::parse("semaphore").unwrap_err().to_string();
        assert!(e.contains("unknown limiter kind"), "{e}");
        let p = Spec::new(Kind::Points, "gql", Some(100), Some(&named("second")), 1.0, 0.0).unwrap();
        assert_eq!(p.check_points(40).unwrap(), 40);
        assert!(p.check_points(101).unwrap_err().to_string().contains("could never fit"));
        assert!(p.check_points(0).is_err());
        let c = Spec::new(Kind::Concurrent, "c", Some(2), None, 1.0, 1.0).unwrap();
        assert!(c.check_points(2).unwrap_err().to_string().contains("takes no points"));
    }
}
