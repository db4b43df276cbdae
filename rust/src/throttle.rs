//! Declarative throttles: worker options that cap a class's jobs per key,
//! cluster-wide, checked when jobs are fetched, before any takes a thread.
//!
//! `concurrency=N`: at most N jobs of the class and key run at once (each
//! admitted job holds a token in `kiq:throttle|<class>|<key>`, refreshed
//! while it runs, given back when it ends, expiring `lock_timeout` after a
//! process dies). `rate=(count, period)`: at most `count` starts of the class
//! and key in any `period`. The fetcher checks a whole batch in one round
//! trip (`throttle_admit.lua`); a refused job does not take a thread or a
//! retry: it is parked in `schedule` (the same atomic step that takes it off
//! the in-progress list, `settle.lua`) for a short pause that grows each
//! time, and the jobs behind it in the queue go on. The end of a job under a
//! concurrency throttle moves the next job parked for its key back into its
//! queue, where new jobs join (`throttle_release.lua`), so parked jobs rarely
//! wait for their pause and never overtake the other jobs waiting there. A key function, when given, runs once per job (the only
//! Python call a throttle makes), on a blocking thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::error::{KiqError, Result};
use crate::keys::Keys;
use crate::lane::Delivery;
use crate::pool::Pool;
use crate::retry::Failure;
use crate::scripts;

/// The longest key a key function may return.
pub const MAX_KEY_LEN: usize = 1000;
/// The longest pause before a parked job is fetched again (without a wake-up).
const MAX_PAUSE_SECS: f64 = 60.0;

/// Computes the throttle key of jobs (the binding calls the user's `key(*args)`).
pub trait KeyFn: Send + Sync {
    /// One key or failure per job, in order.
    fn keys(&self, jobs: &[&Delivery]) -> Vec<std::result::Result<String, Failure>>;
}

/// One class's throttle.
#[derive(Clone)]
pub struct Spec {
    pub concurrency: Option<u32>,
    /// `(count, period ms)`.
    pub rate: Option<(u32, u64)>,
    pub lock_ms: u64,
    pub key: Option<Arc<dyn KeyFn>>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("concurrency", &self.concurrency)
            .field("rate", &self.rate)
            .field("lock_ms", &self.lock_ms)
            .field("key", &self.key.is_some())
            .finish()
    }
}

impl Spec {
    /// A throttle; every problem is an error naming the parameter.
    pub fn new(
        concurrency: Option<i64>,
        rate_count: Option<i64>,
        rate_period: Option<f64>,
        lock_timeout: f64,
        key: Option<Arc<dyn KeyFn>>,
    ) -> Result<Self> {
        let concurrency = match concurrency {
            None => None,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
            Some(n) => return Err(KiqError::config(format!("throttle concurrency must be at least 1, not {n}"))),
        };
        let rate = match (rate_count, rate_period) {
            (None, None) => None,
            (Some(c), Some(p)) => {
                if !(1..=i64::from(u32::MAX)).contains(&c) {
                    return Err(KiqError::config(format!("a throttle rate's count must be at least 1, not {c}")));
                }
                if !p.is_finite() || p < 0.001 {
                    return Err(KiqError::config(format!(
                        "a throttle rate's period must be a positive number of seconds, not {p}"
                    )));
                }
                Some((c as u32, (p * 1000.0).round() as u64))
            }
            _ => return Err(KiqError::config("a throttle rate is (count, period_seconds): give both")),
        };
        if concurrency.is_none() && rate.is_none() {
            return Err(KiqError::config("a throttle needs concurrency=N, rate=(count, period_seconds), or both"));
        }
        if !lock_timeout.is_finite() || lock_timeout < 1.0 {
            return Err(KiqError::config(format!(
                "a throttle's lock_timeout must be at least 1 second, not {lock_timeout}"
            )));
        }
        Ok(Self { concurrency, rate, lock_ms: (lock_timeout * 1000.0) as u64, key })
    }
}

/// A running job's hold on its key, given back when it ends.
#[derive(Debug, Clone)]
pub struct Held {
    pub token: String,
    pub holds_key: String,
    pub parked_key: String,
    pub queue_key: String,
    pub queue: String,
    pub concurrency: u32,
}

/// What the check decided for one job.
#[derive(Debug)]
pub enum Verdict {
    /// Run it; `at` is when it was admitted (epoch seconds, Redis's clock).
    Run { held: Option<Held>, at: f64 },
    /// Park it in `schedule` until `at`; with `parked_key` (a concurrency
    /// throttle) the end of a job of its key may move it back sooner.
    Park { at: f64, parked_key: Option<String> },
}

/// Counts of this process, per class.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClassCounts {
    pub admitted: u64,
    pub parked: u64,
}

/// The throttles of one process.
pub struct Throttles {
    specs: HashMap<String, Spec>,
    /// Holds of running jobs: token -> (holds key, lock ms), refreshed while they run.
    holds: Mutex<HashMap<String, (String, u64)>>,
    counts: Mutex<HashMap<String, ClassCounts>>,
}

impl Throttles {
    pub fn new(specs: HashMap<String, Spec>) -> Self {
        Self { specs, holds: Mutex::default(), counts: Mutex::default() }
    }

    pub fn spec(&self, class: &str) -> Option<&Spec> {
        self.specs.get(class)
    }

    /// How often running jobs' holds are refreshed: a third of the shortest lock.
    pub fn refresh_every(&self) -> Option<Duration> {
        self.specs
            .values()
            .filter(|s| s.concurrency.is_some())
            .map(|s| Duration::from_millis(s.lock_ms / 3))
            .min()
    }

    /// Admitted and parked jobs of each class, in this process.
    pub fn counts(&self) -> Vec<(String, ClassCounts)> {
        let mut v: Vec<_> =
            self.counts.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The keys of the throttled jobs among `jobs` (None: not throttled),
    /// running key functions once per job on a blocking thread.
    pub async fn keys_of(
        self: &Arc<Self>,
        jobs: Vec<Delivery>,
    ) -> (Vec<Delivery>, Vec<Option<std::result::Result<String, Failure>>>) {
        let needs_python = jobs.iter().any(|d| self.spec(&d.class).is_some_and(|s| s.key.is_some()));
        if !needs_python {
            let keys = jobs.iter().map(|d| self.spec(&d.class).map(|_| Ok(String::new()))).collect();
            return (jobs, keys);
        }
        let me = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let keys = me.compute_keys(&jobs);
            (jobs, keys)
        })
        .await;
        joined.unwrap_or_else(|e| panic!("a throttle key function panicked: {e}"))
    }

    fn compute_keys(&self, jobs: &[Delivery]) -> Vec<Option<std::result::Result<String, Failure>>> {
        let mut out: Vec<Option<std::result::Result<String, Failure>>> =
            jobs.iter().map(|d| self.spec(&d.class).map(|_| Ok(String::new()))).collect();
        // One call per class, so the binding takes the GIL once per class and batch.
        let mut by_class: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, d) in jobs.iter().enumerate() {
            if self.spec(&d.class).is_some_and(|s| s.key.is_some()) {
                by_class.entry(&d.class).or_default().push(i);
            }
        }
        for (class, idx) in by_class {
            let Some(f) = self.spec(class).and_then(|s| s.key.as_ref()) else { continue };
            let batch: Vec<&Delivery> = idx.iter().map(|&i| &jobs[i]).collect();
            for (i, key) in idx.iter().zip(f.keys(&batch)) {
                out[*i] = Some(key.and_then(|k| {
                    if k.chars().count() > MAX_KEY_LEN {
                        Err(Failure {
                            error_class: "kiq.errors.ConfigError".into(),
                            error_message: format!(
                                "the throttle key function returned a key longer than {MAX_KEY_LEN} characters"
                            ),
                            ..Failure::default()
                        })
                    } else {
                        Ok(k)
                    }
                }));
            }
        }
        out
    }

    /// Checks throttled jobs (with their keys) in one round trip.
    pub async fn check(
        &self,
        pool: &Pool,
        keys: &Keys,
        queue: &str,
        jobs: &[&Delivery],
        job_keys: &[String],
    ) -> redis::RedisResult<Vec<Verdict>> {
        let mut groups: Vec<(&str, &str)> = Vec::new();
        let mut inv = scripts::THROTTLE_ADMIT.prepare_invoke();
        inv.arg(jobs.len());
        let tokens: Vec<String> = jobs.iter().map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
        for ((d, key), token) in jobs.iter().zip(job_keys).zip(&tokens) {
            let spec = &self.specs[&d.class];
            let g = if let Some(g) = groups.iter().position(|(c, k)| *c == d.class && *k == key) {
                g
            } else {
                groups.push((&d.class, key));
                inv.key(keys.throttle(&d.class, key)).key(keys.throttle_rate(&d.class, key));
                groups.len() - 1
            };
            let (count, period) = spec.rate.unwrap_or((0, 0));
            inv.arg(token).arg(g + 1).arg(spec.concurrency.unwrap_or(0)).arg(spec.lock_ms).arg(count).arg(period);
        }
        let reply: Vec<i64> = inv.invoke_async(&mut pool.get()).await?;
        let now_ms = reply.first().copied().unwrap_or(0);
        let now = now_ms as f64 / 1000.0;
        let mut out = Vec::with_capacity(jobs.len());
        // Refused jobs of one key are spread over the times their turns may come.
        let mut queued: HashMap<(&str, &str), u32> = HashMap::new();
        for (i, ((d, key), token)) in jobs.iter().zip(job_keys).zip(tokens).enumerate() {
            let spec = &self.specs[&d.class];
            let r = &reply[1 + 3 * i..4 + 3 * i];
            let (admitted, retry_ms, by_conc) = (r[0] == 1, r[1], r[2] == 1);
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let c = counts.entry(d.class.clone()).or_default();
            if admitted {
                c.admitted += 1;
                drop(counts);
                let held = spec.concurrency.map(|n| {
                    let holds_key = keys.throttle(&d.class, key);
                    self.holds
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(token.clone(), (holds_key.clone(), spec.lock_ms));
                    Held {
                        token,
                        holds_key,
                        parked_key: keys.parked(queue, &d.class, key),
                        queue_key: keys.queue(queue),
                        queue: queue.to_owned(),
                        concurrency: n,
                    }
                });
                out.push(Verdict::Run { held, at: now });
                continue;
            }
            c.parked += 1;
            drop(counts);
            let before = d.payload.get(crate::job::field::THROTTLED).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
            let k = queued.entry((&d.class, key)).or_insert(0);
            let spread = match spec.rate {
                Some((count, period)) if !by_conc => f64::from(*k) * period as f64 / f64::from(count) / 1000.0,
                _ => 0.0,
            };
            *k += 1;
            let base = if by_conc { 0.0 } else { retry_ms as f64 / 1000.0 + spread };
            out.push(Verdict::Park {
                at: now + pause(base, before, rand::random()),
                parked_key: by_conc.then(|| keys.parked(queue, &d.class, key)),
            });
        }
        Ok(out)
    }

    /// A running job's hold is no longer refreshed (it is being given back).
    pub fn forget(&self, held: &Held) {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner).remove(&held.token);
    }

    /// Extends the holds of this process's running jobs.
    pub async fn refresh(&self, pool: &Pool) -> redis::RedisResult<()> {
        let holds: Vec<(String, String, u64)> = self
            .holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(t, (k, l))| (t.clone(), k.clone(), *l))
            .collect();
        for chunk in holds.chunks(500) {
            let mut inv = scripts::THROTTLE_REFRESH.prepare_invoke();
            for (token, key, lock) in chunk {
                inv.key(key).arg(token).arg(*lock);
            }
            let _: i64 = inv.invoke_async(&mut pool.get()).await?;
        }
        Ok(())
    }
}

/// How long a refused job stays parked: at least `base` (when room comes
/// back under a rate), growing with the times it was parked before
/// (0.5 s, 1 s, 2 s ... up to a minute), a quarter more at random.
pub fn pause(base: f64, parked_before: u32, roll: f64) -> f64 {
    let grown = (0.5 * 2f64.powi(parked_before.min(16) as i32)).min(MAX_PAUSE_SECS);
    base.max(grown) * (1.0 + 0.25 * roll)
}

/// Gives holds back (jobs ended) and moves parked jobs of their keys back to
/// their queues; returns how many parked jobs moved.
pub async fn release(pool: &Pool, keys: &Keys, held: &[Held]) -> redis::RedisResult<i64> {
    let mut moved = 0;
    for chunk in held.chunks(300) {
        let mut inv = scripts::THROTTLE_RELEASE.prepare_invoke();
        inv.key(keys.schedule()).key(keys.queues());
        for h in chunk {
            inv.key(&h.holds_key).key(&h.parked_key).key(&h.queue_key);
            inv.arg(&h.token).arg(h.concurrency).arg(&h.queue);
        }
        let (m, skipped): (i64, i64) = inv.invoke_async(&mut pool.get()).await?;
        if skipped > 0 {
            log::error!("{skipped} throttle holds could not be given back: a key holds the wrong type (they expire)");
        }
        moved += m;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let s = Spec::new(Some(1), None, None, 60.0, None).unwrap();
        assert_eq!((s.concurrency, s.rate, s.lock_ms), (Some(1), None, 60_000));
        let s = Spec::new(None, Some(5), Some(0.5), 60.0, None).unwrap();
        assert_eq!(s.rate, Some((5, 500)));
        let err = |r: Result<Spec>| r.unwrap_err().to_string();
        assert!(err(Spec::new(Some(0), None, None, 60.0, None)).contains("at least 1, not 0"));
        assert!(err(Spec::new(None, None, None, 60.0, None)).contains("needs concurrency=N"));
        assert!(err(Spec::new(None, Some(5), None, 60.0, None)).contains("give both"));
        assert!(err(Spec::new(None, Some(5), Some(-1.0), 60.0, None)).contains("positive number of seconds"));
        assert!(err(Spec::new(Some(2), None, None, 0.5, None)).contains("at least 1 second"));
    }

    #[test]
    fn pauses_grow_and_respect_the_rate() {
        assert_eq!(pause(0.0, 0, 0.0), 0.5);
        assert_eq!(pause(0.0, 3, 0.0), 4.0);
        assert_eq!(pause(0.0, 30, 0.0), 60.0);
        assert_eq!(pause(2.5, 0, 0.0), 2.5, "not before the rate has room");
        assert_eq!(pause(0.0, 1, 1.0), 1.25);
    }
}
