//! Execution metrics for Sidekiq's Metrics tab (7.x and 8.x).
//!
//! Per job class (the ActiveJob `wrapped` class when present, as Sidekiq
//! counts): executions, failures and the milliseconds of successful runs,
//! plus a 26-bucket histogram of successful run times. Counted in memory and
//! written by each heartbeat in both versions' layouts: Sidekiq 7's
//! `j|YYYYMMDD|H:M` hash and `<Class>-DD-HH:M` histogram, Sidekiq 8's
//! `j|YYMMDD|H:MM` and ten-minute `j|YYMMDD|H:M` hashes and `h|<Class>-D-H:M`
//! histogram, keyed by the minute of the write (UTC), with Sidekiq's TTLs.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use foldhash::fast::RandomState;

use crate::keys::Keys;
use crate::timestamp::Utc;

/// Upper bounds (ms) of the histogram buckets; the last one takes the rest.
const BUCKETS_MS: [u64; 25] = [
    20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750, 8500, 13000, 20000, 30000, 45000,
    65000, 100_000, 150_000, 225_000, 335_000,
];
const SHORT_TTL: i64 = 8 * 3600;
/// Field suffixes in a metrics hash: `<Class>|p` executions, `|f` failures, `|ms` time of successes.
pub const PROCESSED: &str = "p";
pub const FAILED: &str = "f";
pub const MILLIS: &str = "ms";
const MID_TTL: i64 = 72 * 3600;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClassStats {
    pub processed: u64,
    pub failed: u64,
    pub ms: u64,
    pub histogram: [u64; 26],
}

/// The histogram bucket of a run time: the first whose bound exceeds it.
pub fn bucket(ms: u64) -> usize {
    BUCKETS_MS.iter().position(|&b| ms < b).unwrap_or(BUCKETS_MS.len())
}

/// Counts by class, with a fast hasher: every finished job looks its class up.
pub type ByClass = HashMap<String, ClassStats, RandomState>;

#[derive(Default)]
pub struct Metrics {
    by_class: Mutex<ByClass>,
}

impl Metrics {
    /// Records one finished job; time is only kept for successes, as Sidekiq does.
    pub fn record(&self, class: &str, ok: bool, ms: u64) {
        let mut map = self.by_class.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = match map.get_mut(class) {
            Some(s) => s,
            None => map.entry(class.to_owned()).or_default(),
        };
        stats.processed += 1;
        if ok {
            stats.ms += ms;
            stats.histogram[bucket(ms)] += 1;
        } else {
            stats.failed += 1;
        }
    }

    /// Takes what was recorded since the last call.
    pub fn take(&self) -> ByClass {
        std::mem::take(&mut *self.by_class.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts counts back after a failed write, so none are lost.
    pub fn restore(&self, taken: ByClass) {
        let mut map = self.by_class.lock().unwrap_or_else(PoisonError::into_inner);
        for (class, s) in taken {
            let e = map.entry(class).or_default();
            e.processed += s.processed;
            e.failed += s.failed;
            e.ms += s.ms;
            for (a, b) in e.histogram.iter_mut().zip(s.histogram) {
                *a += b;
            }
        }
    }
}

/// The metrics hashes of the minute containing `now` (UTC), in each layout.
pub struct MinuteHashes {
    /// Sidekiq 7's `j|YYYYMMDD|H:M`.
    pub v7: String,
    /// Sidekiq 8's one-minute `j|YYMMDD|H:MM`.
    pub v8: String,
    /// Sidekiq 8's ten-minute `j|YYMMDD|H:M` (the minute minus its last digit).
    pub v8_ten: String,
}

pub fn minute_hashes(keys: &Keys, now: f64) -> MinuteHashes {
    let t = Utc::at(now);
    let minute8 = format!("{:02}{:02}{:02}|{}:{:02}", t.year.rem_euclid(100), t.month, t.day, t.hour, t.minute);
    MinuteHashes {
        v7: keys.metrics7(&format!("{:04}{:02}{:02}", t.year, t.month, t.day), &format!("{}:{}", t.hour, t.minute)),
        v8: keys.metrics8(&minute8),
        v8_ten: keys.metrics8(&minute8[..minute8.len() - 1]),
    }
}

/// Adds the commands writing `stats` at time `now` to a pipeline.
pub fn write(pipe: &mut redis::Pipeline, keys: &Keys, stats: &ByClass, now: f64) {
    if stats.is_empty() {
        return;
    }
    let t = Utc::at(now);
    let MinuteHashes { v7: hash7, v8: hash8, v8_ten: hash8_ten } = minute_hashes(keys, now);
    let window7 = format!("{:02}-{:02}:{}", t.day, t.hour, t.minute);
    let window8 = format!("{}-{}:{}", t.day, t.hour, t.minute);
    for (class, s) in stats {
        for hash in [&hash7, &hash8, &hash8_ten] {
            for (suffix, n) in [(PROCESSED, s.processed), (FAILED, s.failed), (MILLIS, s.ms)] {
                if n > 0 {
                    pipe.cmd("HINCRBY").arg(hash).arg(format!("{class}|{suffix}")).arg(n);
                }
            }
        }
        if s.histogram.iter().any(|&n| n > 0) {
            for key in [keys.histogram7(class, &window7), keys.histogram8(class, &window8)] {
                let mut cmd = redis::cmd("BITFIELD");
                cmd.arg(&key).arg("OVERFLOW").arg("SAT");
                for (i, &n) in s.histogram.iter().enumerate().filter(|(_, n)| **n > 0) {
                    cmd.arg("INCRBY").arg("u16").arg(format!("#{i}")).arg(n);
                }
                pipe.add_command(cmd);
                pipe.cmd("EXPIRE").arg(&key).arg(SHORT_TTL);
            }
        }
    }
    for (hash, ttl) in [(&hash7, SHORT_TTL), (&hash8, SHORT_TTL), (&hash8_ten, MID_TTL)] {
        pipe.cmd("EXPIRE").arg(hash).arg(ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_sidekiq() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(19), 0);
        assert_eq!(bucket(20), 1);
        assert_eq!(bucket(280), 7);
        assert_eq!(bucket(334_999), 24);
        assert_eq!(bucket(335_000), 25);
        assert_eq!(bucket(u64::MAX), 25);
    }

    #[test]
    fn records_and_restores() {
        let m = Metrics::default();
        m.record("A", true, 10);
        m.record("A", false, 5000);
        m.record("B", true, 300);
        let taken = m.take();
        assert_eq!(taken["A"].processed, 2);
        assert_eq!(taken["A"].failed, 1);
        assert_eq!(taken["A"].ms, 10);
        assert_eq!(taken["B"].histogram[7], 1);
        assert!(m.take().is_empty());
        m.restore(taken.clone());
        assert_eq!(m.take(), taken);
    }

    #[test]
    fn keys_for_both_versions() {
        let mut pipe = redis::pipe();
        let mut stats = ByClass::default();
        let mut histogram = [0; 26];
        histogram[0] = 1;
        stats.insert("HardJob".to_owned(), ClassStats { processed: 2, failed: 1, ms: 7, histogram });
        write(&mut pipe, &Keys::default(), &stats, 1_739_522_600.0); // 2025-02-14 08:43:20 UTC
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        for key in [
            "j|20250214|8:43",
            "j|250214|8:43",
            "j|250214|8:4\r",
            "HardJob|p",
            "HardJob|f",
            "HardJob|ms",
            "HardJob-14-08:43",
            "h|HardJob-14-8:43",
        ] {
            assert!(packed.contains(key), "{key} missing");
        }
    }
}
