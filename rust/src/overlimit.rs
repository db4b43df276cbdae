//! A job over a rate limiter's limit is rescheduled, not failed, as Sidekiq
//! Enterprise does: when `OverLimit` escapes `perform`, the job goes to the
//! `schedule` set with `overrated` counting the reschedules, after
//! `300 × overrated + rand(300) + 1` seconds (`overrated` as it was before
//! this one: 1–300 s, then 301–600 s...; a callable may choose instead). It
//! is not counted in `stat:failed`. After `max` reschedules (20 by default;
//! 0: never) the OverLimit takes the normal retry path. Pure logic: the
//! server writes the result (`Settle::Schedule`, exactly once with the job
//! leaving the in-progress list).

use crate::job::{Payload, field};

/// Sidekiq Enterprise's default number of reschedules before the retry path.
pub const DEFAULT_MAX_RESCHEDULES: u32 = 20;

/// Where a rescheduled job goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescheduled {
    /// Epoch seconds.
    pub at: f64,
    pub payload: String,
    /// `overrated` after this reschedule.
    pub overrated: u64,
}

/// The delay Sidekiq Enterprise's default backoff gives: `roll` in `[0, 1)`.
pub fn default_delay(overrated_before: u64, roll: f64) -> f64 {
    300.0 * overrated_before as f64 + (roll * 300.0).floor().min(299.0) + 1.0
}

/// The job rescheduled, or None when it was rescheduled `max` times already
/// (or `max` is 0): then the OverLimit is an ordinary failure. `delay` (a
/// custom backoff's, in seconds) replaces the default when finite and not negative.
pub fn reschedule(mut job: Payload, max: u32, delay: Option<f64>, now: f64, roll: f64) -> Option<Rescheduled> {
    let before = job.overrated();
    if before >= u64::from(max) {
        return None;
    }
    let delay = delay.filter(|d| d.is_finite() && *d >= 0.0).unwrap_or_else(|| default_delay(before, roll));
    let overrated = before + 1;
    job.set_json(field::OVERRATED, overrated.to_string());
    // It ran (and stopped itself) without killing its process; a throttle's pause starts over.
    job.remove(field::SUSPECT);
    job.remove(field::THROTTLED);
    Some(Rescheduled { at: now + delay, payload: job.encode(), overrated })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> Payload {
        Payload::parse(format!(r#"{{"class":"Sync","args":[1],"jid":"abc","future":{{"x":1}}{extra}}}"#)).unwrap()
    }

    #[test]
    fn counts_reschedules_with_sidekiq_enterprises_delay() {
        let r = reschedule(job(""), 20, None, 1000.0, 0.0).unwrap();
        assert_eq!((r.at, r.overrated), (1001.0, 1));
        assert_eq!(r.payload, r#"{"class":"Sync","args":[1],"jid":"abc","future":{"x":1},"overrated":1}"#);
        let r = reschedule(Payload::parse(r.payload).unwrap(), 20, None, 1000.0, 0.999_999).unwrap();
        assert_eq!((r.at, r.overrated), (1000.0 + 300.0 + 299.0 + 1.0, 2));
        assert_eq!(default_delay(0, 0.5), 151.0);
    }

    #[test]
    fn the_cap_hands_over_to_the_retry_path() {
        assert!(reschedule(job(r#","overrated":20"#), 20, None, 0.0, 0.0).is_none());
        assert!(reschedule(job(""), 0, None, 0.0, 0.0).is_none(), "0 turns rescheduling off");
        let r = reschedule(job(r#","overrated":2,"kiq_suspect":true"#), 3, Some(7.5), 100.0, 0.3).unwrap();
        assert_eq!((r.at, r.overrated), (107.5, 3));
        assert!(!r.payload.contains("kiq_suspect"));
        let r = reschedule(job(""), 3, Some(f64::NAN), 0.0, 0.0).unwrap();
        assert_eq!(r.at, 1.0, "a bad custom delay falls back to the default");
    }
}
