//! What happens to a job that failed, decided the way Sidekiq's job retry does.
//!
//! The failed payload gains `queue` (rewritten to `retry_queue` when set),
//! `error_message`, `error_class`, then `failed_at` + `retry_count: 0` on the
//! first failure or `retried_at` + `retry_count + 1` later, then
//! `error_backtrace` when the job asks for one. It goes to the `retry` set
//! `count⁴ + 15 + jitter` seconds ahead until its retries run out, then to the
//! `dead` set, unless `retry: false` or `dead: false` say to drop it. Pure
//! logic: the caller supplies the clock and performs the Redis writes.

use crate::backtrace;
use crate::job::{Backtrace, Payload, Retry, field, json_string};
use crate::timestamp::TimestampUnit;
use crate::worker::WorkerOptions;

/// Sidekiq's default number of retries (`retry: true`).
pub const DEFAULT_MAX_RETRIES: u32 = 25;
/// Sidekiq truncates error messages to this many characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 10_000;
/// Dead-set trimming, as Sidekiq's `dead_max_jobs` / `dead_timeout_in_seconds`.
pub const DEFAULT_DEAD_LIMIT: u64 = 10_000;
pub const DEFAULT_DEAD_TIMEOUT_SECS: f64 = 180.0 * 24.0 * 3600.0;

/// Which Sidekiq version's jitter to use for the retry delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// 6.x/7.x: `rand(10) * (count + 1)`.
    #[default]
    Sidekiq7,
    /// 8.x: `rand(10 * (count + 1))`.
    Sidekiq8,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub unit: TimestampUnit,
    pub jitter: Jitter,
    pub dead_limit: u64,
    pub dead_timeout_secs: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            unit: TimestampUnit::Seconds,
            jitter: Jitter::Sidekiq7,
            dead_limit: DEFAULT_DEAD_LIMIT,
            dead_timeout_secs: DEFAULT_DEAD_TIMEOUT_SECS,
        }
    }
}

impl RetryPolicy {
    /// The two ARGV of the dead-set trim every burying script runs
    /// (`scripts/dead_lib.lua`): the oldest score kept, and `dead_limit`.
    pub fn dead_trim(&self, now: f64) -> (String, u64) {
        (crate::timestamp::float_json(now - self.dead_timeout_secs), self.dead_limit)
    }
}

/// The error a job raised.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    pub error_class: String,
    pub error_message: String,
    /// Backtrace lines, innermost call last; only kept when the job asks for it.
    pub backtrace: Vec<String>,
}

/// Where the failed job goes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// `ZADD retry <at> <payload>`.
    Retry { at: f64, payload: String },
    /// `ZADD dead <now> <payload>` and trim the set.
    Dead { payload: String },
    /// Gone: `retry: false` (a failure, never retried).
    Discard,
    /// Gone: `dead: false` once retries ran out (a death that keeps no entry).
    Dropped,
}

/// What became of a failed job, told to the code that ran it (its log line,
/// death handlers): where it went, its new `retry_count`, and its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fate {
    pub went: Went,
    /// The payload's `retry_count` after this failure (0 after the first).
    pub retry_count: i64,
    /// Retries it may have (`retry: false` is 0); None when a `retry_for`
    /// window limits it instead of a count.
    pub max_retries: Option<u32>,
    /// When the next retry runs (epoch seconds), for `Went::Retry`.
    pub retry_at: Option<f64>,
}

/// Where a failed job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Went {
    Retry,
    Dead,
    Discard,
}

impl Went {
    pub fn name(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Dead => "dead",
            Self::Discard => "discard",
        }
    }
}

/// Decides a failed job's fate and writes the failure fields into its payload;
/// also says what it decided, for the code that ran the job. `queue` is the
/// queue the job was taken from; `roll` is a uniform random number in `[0, 1)`
/// for the jitter.
pub fn on_failure(
    mut job: Payload,
    queue: &str,
    failure: &Failure,
    worker: &WorkerOptions,
    policy: &RetryPolicy,
    now: f64,
    roll: f64,
) -> (Disposition, Fate) {
    // Where the payload is silent the worker's options apply (Sidekiq merges the
    // class's `sidekiq_options` the same way); a job no worker knows gets the
    // defaults, so a missing `retry` still retries (see `Workers::of`).
    let retry = job.retry().unwrap_or(worker.retry);
    let max = match retry {
        Retry::Never => {
            let count = job.retry_count().map_or(0, |c| c + 1);
            let fate = Fate { went: Went::Discard, retry_count: count, max_retries: Some(0), retry_at: None };
            return (Disposition::Discard, fate);
        }
        Retry::Default => policy.max_retries,
        Retry::Times(n) => n,
    };
    let target = job.retry_queue().or_else(|| worker.retry_queue.clone()).unwrap_or_else(|| queue.to_owned());
    // It ran to a failure: whatever killed a process before, it was not this run.
    job.remove(field::SUSPECT);
    // A throttle's pause starts over with the next attempt.
    job.remove(field::THROTTLED);
    job.set_str(field::QUEUE, &target);
    job.set_str(field::ERROR_MESSAGE, &truncate_chars(&failure.error_message, MAX_ERROR_MESSAGE_CHARS));
    job.set_str(field::ERROR_CLASS, &failure.error_class);
    let stamp = policy.unit.encode(now);
    let count = if let Some(previous) = job.retry_count() {
        job.set_json(field::RETRIED_AT, stamp);
        // A count past any retry limit (1e308, i64::MAX) stays past it: the job dies, never wraps around.
        previous.saturating_add(1)
    } else {
        job.set_json(field::FAILED_AT, stamp);
        0
    };
    job.set_json(field::RETRY_COUNT, count.to_string());
    let kept = match job.backtrace().unwrap_or(worker.backtrace) {
        Backtrace::Off => None,
        Backtrace::All => Some(&failure.backtrace[..]),
        Backtrace::Lines(n) => Some(&failure.backtrace[..n.min(failure.backtrace.len())]),
    };
    if let Some(lines) = kept {
        job.set_json(field::ERROR_BACKTRACE, json_string(&backtrace::encode(lines)));
    }

    let window = job.retry_for();
    let exhausted = match window {
        // Sidekiq 8.1: a time window, when given, replaces the count limit.
        Some(window) => job.failed_at().unwrap_or(now) + window < now,
        None => count >= i64::from(max),
    };
    let fate =
        |went, retry_at| Fate { went, retry_count: count, max_retries: window.is_none().then_some(max), retry_at };
    if exhausted {
        return if job.dead().unwrap_or(worker.dead) {
            (Disposition::Dead { payload: job.encode() }, fate(Went::Dead, None))
        } else {
            (Disposition::Dropped, fate(Went::Discard, None))
        };
    }
    let delay = backoff(count) + jitter(policy.jitter, count, roll);
    (Disposition::Retry { at: now + delay, payload: job.encode() }, fate(Went::Retry, Some(now + delay)))
}

/// Sidekiq's base delay before retry number `count + 1`: `count⁴ + 15` seconds.
pub fn backoff(count: i64) -> f64 {
    let c = count.max(0) as f64;
    c.powi(4) + 15.0
}

/// Sidekiq's jitter in whole seconds, from a uniform `roll` in `[0, 1)`.
pub fn jitter(kind: Jitter, count: i64, roll: f64) -> f64 {
    let c = count.max(0) as f64 + 1.0;
    let roll = roll.clamp(0.0, 0.999_999_999);
    match kind {
        Jitter::Sidekiq7 => (roll * 10.0).floor() * c,
        Jitter::Sidekiq8 => (roll * 10.0 * c).floor(),
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    fn fail(payload: &str, worker: &WorkerOptions) -> Disposition {
        let failure = Failure {
            error_class: "ValueError".into(),
            error_message: "boom".into(),
            backtrace: vec!["a.py:1:in `perform'".into(), "b.py:2:in `x'".into()],
        };
        on_failure(Payload::parse(payload).unwrap(), "default", &failure, worker, &RetryPolicy::default(), NOW, 0.0).0
    }

    #[test]
    fn huge_retry_counts_die_instead_of_wrapping() {
        for count in ["1e308", "9223372036854775807", "99999999999999999999999", "1e400"] {
            let d = fail(
                &format!(
                    r#"{{"retry":true,"queue":"default","class":"X","args":[],"failed_at":1.5,"retry_count":{count}}}"#
                ),
                &WorkerOptions::default(),
            );
            let Disposition::Dead { payload } = d else { panic!("{count}: {d:?}") };
            assert!(payload.contains(r#""retry_count":9223372036854775807"#), "{payload}");
        }
        let d =
            fail(r#"{"retry":true,"class":"X","args":[],"failed_at":1.5,"retry_count":-1}"#, &WorkerOptions::default());
        let Disposition::Retry { payload, .. } = d else { panic!("{d:?}") };
        assert!(payload.contains(r#""retry_count":0"#), "after Retry Now of a first failure: {payload}");
    }

    #[test]
    fn first_failure_sets_failed_at_and_count_zero() {
        let d = fail(r#"{"retry":true,"queue":"default","args":[],"class":"X","jid":"j"}"#, &WorkerOptions::default());
        let Disposition::Retry { at, payload } = d else { panic!("{d:?}") };
        assert_eq!(at, NOW + 15.0);
        assert_eq!(
            payload,
            r#"{"retry":true,"queue":"default","args":[],"class":"X","jid":"j","error_message":"boom","error_class":"ValueError","failed_at":1800000000.0,"retry_count":0}"#
        );
    }

    #[test]
    fn later_failures_set_retried_at_and_keep_failed_at() {
        let d = fail(
            r#"{"retry":true,"queue":"default","class":"X","args":[],"failed_at":1.5,"retry_count":3,"backtrace":1}"#,
            &WorkerOptions::default(),
        );
        let Disposition::Retry { at, payload } = d else { panic!() };
        assert_eq!(at, NOW + 4f64.powi(4) + 15.0);
        let p = Payload::parse(payload).unwrap();
        assert_eq!(p.retry_count(), Some(4));
        assert_eq!(p.failed_at(), Some(1.5));
        assert_eq!(p.time(field::RETRIED_AT), Some(NOW));
        let bt: String = serde_json::from_str(p.get(field::ERROR_BACKTRACE).unwrap()).unwrap();
        assert_eq!(backtrace::decode(&bt).unwrap(), vec!["a.py:1:in `perform'".to_owned()]);
    }

    #[test]
    fn exhaustion_goes_dead_or_is_dropped() {
        let d = fail(r#"{"retry":2,"class":"X","args":[],"retry_count":1}"#, &WorkerOptions::default());
        assert!(matches!(d, Disposition::Dead { .. }));
        let d = fail(r#"{"retry":0,"class":"X","args":[]}"#, &WorkerOptions::default());
        let Disposition::Dead { payload } = d else { panic!() };
        assert_eq!(Payload::parse(payload).unwrap().retry_count(), Some(0));
        let d = fail(r#"{"retry":0,"dead":false,"class":"X","args":[]}"#, &WorkerOptions::default());
        assert_eq!(d, Disposition::Dropped);
        assert_eq!(fail(r#"{"retry":false,"class":"X","args":[]}"#, &WorkerOptions::default()), Disposition::Discard);
    }

    #[test]
    fn default_max_is_25() {
        let d = fail(r#"{"retry":true,"class":"X","args":[],"retry_count":23}"#, &WorkerOptions::default());
        assert!(matches!(d, Disposition::Retry { .. }));
        let d = fail(r#"{"retry":true,"class":"X","args":[],"retry_count":24}"#, &WorkerOptions::default());
        assert!(matches!(d, Disposition::Dead { .. }));
    }

    #[test]
    fn worker_options_fill_in_and_retry_queue_moves_the_job() {
        let w = WorkerOptions { retry: Retry::Never, ..Default::default() };
        assert_eq!(fail(r#"{"class":"X","args":[]}"#, &w), Disposition::Discard);
        // Missing retry and no worker: retried, never silently dropped.
        assert!(matches!(fail(r#"{"class":"X","args":[]}"#, &WorkerOptions::default()), Disposition::Retry { .. }));
        let w = WorkerOptions { retry_queue: Some("slow".into()), ..Default::default() };
        let Disposition::Retry { payload, .. } = fail(r#"{"class":"X","args":[],"queue":"default"}"#, &w) else {
            panic!()
        };
        assert_eq!(Payload::parse(payload).unwrap().queue().as_deref(), Some("slow"));
    }

    #[test]
    fn retry_for_window() {
        let d = fail(
            r#"{"class":"X","args":[],"retry_count":40,"failed_at":1799999990.0,"retry_for":60}"#,
            &WorkerOptions::default(),
        );
        assert!(matches!(d, Disposition::Retry { .. }));
        let d = fail(
            r#"{"class":"X","args":[],"retry_count":0,"failed_at":1799990000.0,"retry_for":60}"#,
            &WorkerOptions::default(),
        );
        assert!(matches!(d, Disposition::Dead { .. }));
    }

    #[test]
    fn the_fate_says_where_the_job_went_and_its_count() {
        let failure = Failure { error_class: "E".into(), ..Default::default() };
        let decide = |payload: &str| {
            let job = Payload::parse(payload).unwrap();
            on_failure(job, "default", &failure, &WorkerOptions::default(), &RetryPolicy::default(), NOW, 0.0).1
        };
        let f = decide(r#"{"class":"X","args":[],"retry":3}"#);
        assert_eq!(f, Fate { went: Went::Retry, retry_count: 0, max_retries: Some(3), retry_at: Some(NOW + 15.0) });
        let f = decide(r#"{"class":"X","args":[],"retry":3,"retry_count":2}"#);
        assert_eq!(f, Fate { went: Went::Dead, retry_count: 3, max_retries: Some(3), retry_at: None });
        let f = decide(r#"{"class":"X","args":[],"retry":false,"retry_count":0}"#);
        assert_eq!(f, Fate { went: Went::Discard, retry_count: 1, max_retries: Some(0), retry_at: None });
        let f = decide(r#"{"class":"X","args":[],"retry_for":60}"#);
        assert_eq!((f.went, f.max_retries), (Went::Retry, None));
    }

    #[test]
    fn backoff_and_jitter_match_sidekiq() {
        assert_eq!(backoff(0), 15.0);
        assert_eq!(backoff(1), 16.0);
        assert_eq!(backoff(5), 640.0);
        assert_eq!(backoff(24), 331_791.0);
        assert_eq!(jitter(Jitter::Sidekiq7, 2, 0.95), 27.0);
        assert_eq!(jitter(Jitter::Sidekiq8, 2, 0.95), 28.0);
        assert_eq!(jitter(Jitter::Sidekiq7, 0, 0.0), 0.0);
    }

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(truncate_chars("ééé", 2), "éé");
        assert_eq!(truncate_chars("ab", 5), "ab");
    }
}
