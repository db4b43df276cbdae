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
//! wait for their pause and never overtake the other jobs waiting there.
//!
//! Where the check runs: a class without a key function is checked by its
//! queue's fetcher, a batch per round trip (`admit.rs`). A class with a key
//! function (the only Python call a throttle makes, once per job) is checked
//! by the worker thread that takes the job, which holds the GIL already, on a
//! connection of its own, before the job starts: asking for the GIL from a
//! core thread would wait for the interpreter's switch interval instead. A key function, when given, runs once per job (the only
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

/// One class's throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub concurrency: Option<u32>,
    /// `(count, period ms)`.
    pub rate: Option<(u32, u64)>,
    pub lock_ms: u64,
    /// Keyed by a function of the job's arguments (else one key for the class).
    pub keyed: bool,
}

/// Checks a key a key function returned.
pub fn check_key(key: String) -> std::result::Result<String, Failure> {
    if key.chars().count() > MAX_KEY_LEN {
        return Err(Failure {
            error_class: "kiq.errors.ConfigError".into(),
            error_message: format!("the throttle key function returned a key longer than {MAX_KEY_LEN} characters"),
            ..Failure::default()
        });
    }
    Ok(key)
}

impl Spec {
    /// A throttle; every problem is an error naming the parameter.
    pub fn new(
        concurrency: Option<i64>,
        rate_count: Option<i64>,
        rate_period: Option<f64>,
        lock_timeout: f64,
        keyed: bool,
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
        Ok(Self { concurrency, rate, lock_ms: (lock_timeout * 1000.0) as u64, keyed })
    }
}

/// A running job's hold on its key, given back when it ends.
#[derive(Debug, Clone)]
pub struct Held {
    pub token: String,
    pub key: Arc<HeldKey>,
}

/// What the holds of one class, key and queue share.
#[derive(Debug)]
pub struct HeldKey {
    pub holds_key: String,
    pub parked_key: String,
    pub queue_key: String,
    pub queue: String,
    pub concurrency: u32,
    pub lock_ms: u64,
}

/// A new hold token.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A throttled job to check: its class and key, the token its hold would
/// have, and how many times it was parked before.
pub struct Candidate<'a> {
    pub class: &'a str,
    pub key: String,
    pub token: String,
    pub parked_before: u32,
}

impl<'a> Candidate<'a> {
    pub fn of(d: &'a Delivery, key: String) -> Self {
        let parked_before =
            d.payload.get(crate::job::field::THROTTLED).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        Self { class: &d.class, key, token: new_token(), parked_before }
    }
}

/// One check's script call, and what its reply needs: each key group's
/// shared hold data and each job's group.
struct Invocation {
    inv: redis::ScriptInvocation<'static>,
    groups: Vec<Option<Arc<HeldKey>>>,
    group_of: Vec<usize>,
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
    /// Holds of running jobs by token, refreshed while they run.
    holds: Mutex<HashMap<String, Arc<HeldKey>>>,
    counts: Mutex<HashMap<String, ClassCounts>>,
}

impl Throttles {
    pub fn new(specs: HashMap<String, Spec>) -> Self {
        Self { specs, holds: Mutex::default(), counts: Mutex::default() }
    }

    /// How often running jobs' holds are refreshed: a third of the shortest lock.
    pub fn refresh_every(&self) -> Option<Duration> {
        self.specs.values().filter(|s| s.concurrency.is_some()).map(|s| Duration::from_millis(s.lock_ms / 3)).min()
    }

    /// Admitted and parked jobs of each class, in this process.
    pub fn counts(&self) -> Vec<(String, ClassCounts)> {
        let mut v: Vec<_> =
            self.counts.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether jobs of `class` are checked at fetch (throttled, without a key function).
    pub fn at_fetch(&self, class: &str) -> bool {
        self.specs.get(class).is_some_and(|s| !s.keyed)
    }

    /// Whether some class is checked at fetch.
    pub fn any_at_fetch(&self) -> bool {
        self.specs.values().any(|s| !s.keyed)
    }

    /// Whether jobs of `class` are checked at dispatch (their key comes from a function).
    pub fn keyed(&self, class: &str) -> bool {
        self.specs.get(class).is_some_and(|s| s.keyed)
    }

    fn invocation(&self, keys: &Keys, queue: &str, jobs: &[Candidate<'_>], again: bool) -> Invocation {
        let mut named: Vec<(&str, &str)> = Vec::new();
        let mut groups = Vec::new();
        let mut group_of = Vec::with_capacity(jobs.len());
        let mut inv = scripts::THROTTLE_ADMIT.prepare_invoke();
        let mut per_group = Vec::new();
        for c in jobs {
            let key = c.key.as_str();
            let g = if let Some(g) = named.iter().position(|(class, k)| *class == c.class && *k == key) {
                g
            } else {
                let spec = &self.specs[c.class];
                groups.push(spec.concurrency.map(|n| {
                    Arc::new(HeldKey {
                        holds_key: keys.throttle(c.class, key),
                        parked_key: keys.parked(queue, c.class, key),
                        queue_key: keys.queue(queue),
                        queue: queue.to_owned(),
                        concurrency: n,
                        lock_ms: spec.lock_ms,
                    })
                }));
                named.push((c.class, key));
                inv.key(keys.throttle(c.class, key)).key(keys.throttle_rate(c.class, key));
                let (count, period) = spec.rate.unwrap_or((0, 0));
                per_group.push((spec.concurrency.unwrap_or(0), spec.lock_ms, count, period));
                named.len() - 1
            };
            group_of.push(g);
        }
        inv.arg(jobs.len()).arg(u8::from(again)).arg(per_group.len());
        for (conc, lock, count, period) in per_group {
            inv.arg(conc).arg(lock).arg(count).arg(period);
        }
        for (c, g) in jobs.iter().zip(&group_of) {
            inv.arg(&c.token).arg(g + 1);
        }
        Invocation { inv, groups, group_of }
    }

    fn verdicts(&self, jobs: &[Candidate<'_>], call: Invocation, reply: &[i64]) -> Vec<Verdict> {
        let now = reply.first().copied().unwrap_or(0) as f64 / 1000.0;
        let mut out = Vec::with_capacity(jobs.len());
        // Refused jobs of one key are spread over the times their turns may come.
        let mut queued: HashMap<usize, u32> = HashMap::new();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut holds = self.holds.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, (c, g)) in jobs.iter().zip(call.group_of).enumerate() {
            let r = reply.get(1 + 3 * i..4 + 3 * i).unwrap_or(&[0, 1, 0]);
            let (admitted, retry_ms, by_conc) = (r[0] == 1, r[1], r[2] == 1);
            if !counts.contains_key(c.class) {
                counts.insert(c.class.to_owned(), ClassCounts::default());
            }
            let n = counts.get_mut(c.class).expect("inserted above");
            if admitted {
                n.admitted += 1;
                let held = call.groups[g].as_ref().map(|key| {
                    holds.insert(c.token.clone(), key.clone());
                    Held { token: c.token.clone(), key: key.clone() }
                });
                out.push(Verdict::Run { held, at: now });
                continue;
            }
            n.parked += 1;
            let k = queued.entry(g).or_insert(0);
            let spread = match self.specs[c.class].rate {
                Some((count, period)) if !by_conc => f64::from(*k) * period as f64 / f64::from(count) / 1000.0,
                _ => 0.0,
            };
            *k += 1;
            let base = if by_conc { 0.0 } else { retry_ms as f64 / 1000.0 + spread };
            out.push(Verdict::Park {
                at: now + pause(base, c.parked_before, rand::random()),
                parked_key: call.groups[g].as_ref().filter(|_| by_conc).map(|k| k.parked_key.clone()),
            });
        }
        out
    }

    /// Checks throttled jobs in one round trip; `again` when the same check
    /// (the same tokens) is sent anew after a failure.
    pub async fn check(
        &self,
        pool: &Pool,
        keys: &Keys,
        queue: &str,
        jobs: &[Candidate<'_>],
        again: bool,
    ) -> redis::RedisResult<Vec<Verdict>> {
        let call = self.invocation(keys, queue, jobs, again);
        let reply: Vec<i64> = call.inv.invoke_async(&mut pool.get()).await?;
        Ok(self.verdicts(jobs, call, &reply))
    }

    /// [`Throttles::check`] on the calling thread's own connection (a worker
    /// thread at dispatch, without the GIL).
    pub fn check_blocking(
        &self,
        pool: &Pool,
        keys: &Keys,
        queue: &str,
        jobs: &[Candidate<'_>],
    ) -> redis::RedisResult<Vec<Verdict>> {
        let mut sent = None;
        let reply: Vec<i64> = pool.on_thread(|conn, again| {
            let call = self.invocation(keys, queue, jobs, again);
            let reply = call.inv.invoke(conn);
            sent = Some(call);
            reply
        })?;
        Ok(self.verdicts(jobs, sent.expect("the call was made"), &reply))
    }

    /// A running job's hold is no longer refreshed (it is being given back).
    pub fn forget(&self, held: &Held) {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner).remove(&held.token);
    }

    /// Extends the holds of this process's running jobs.
    pub async fn refresh(&self, pool: &Pool) -> redis::RedisResult<()> {
        let holds: Vec<(String, Arc<HeldKey>)> = self
            .holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(t, k)| (t.clone(), k.clone()))
            .collect();
        for chunk in holds.chunks(500) {
            let mut inv = scripts::THROTTLE_REFRESH.prepare_invoke();
            for (token, key) in chunk {
                inv.key(&key.holds_key).arg(token).arg(key.lock_ms);
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
    // Holds of one key and queue go together: their keys are sent once.
    let mut groups: Vec<(&Arc<HeldKey>, Vec<&str>)> = Vec::new();
    for h in held {
        let same =
            |k: &Arc<HeldKey>| Arc::ptr_eq(k, &h.key) || (k.holds_key == h.key.holds_key && k.queue == h.key.queue);
        match groups.iter_mut().find(|(k, _)| same(k)) {
            Some((_, tokens)) => tokens.push(&h.token),
            None => groups.push((&h.key, vec![&h.token])),
        }
    }
    let mut moved = 0;
    for chunk in groups.chunks(100) {
        let mut inv = scripts::THROTTLE_RELEASE.prepare_invoke();
        inv.key(keys.schedule()).key(keys.queues());
        for (k, tokens) in chunk {
            inv.key(&k.holds_key).key(&k.parked_key).key(&k.queue_key);
            inv.arg(k.concurrency).arg(&k.queue).arg(tokens.len());
            for t in tokens {
                inv.arg(*t);
            }
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
        let s = Spec::new(Some(1), None, None, 60.0, false).unwrap();
        assert_eq!((s.concurrency, s.rate, s.lock_ms), (Some(1), None, 60_000));
        let s = Spec::new(None, Some(5), Some(0.5), 60.0, true).unwrap();
        assert_eq!(s.rate, Some((5, 500)));
        let err = |r: Result<Spec>| r.unwrap_err().to_string();
        assert!(err(Spec::new(Some(0), None, None, 60.0, false)).contains("at least 1, not 0"));
        assert!(err(Spec::new(None, None, None, 60.0, false)).contains("needs concurrency=N"));
        assert!(err(Spec::new(None, Some(5), None, 60.0, false)).contains("give both"));
        assert!(err(Spec::new(None, Some(5), Some(-1.0), 60.0, false)).contains("positive number of seconds"));
        assert!(err(Spec::new(Some(2), None, None, 0.5, false)).contains("at least 1 second"));
        assert!(check_key("x".repeat(1001)).is_err() && check_key("user-1".into()).is_ok());
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
