//! Rate limiters in Redis, shared by every process that uses the same Redis
//! (`limiter.rs` defines them).
//!
//! An acquire is one round trip to `limit_acquire.lua` while there is room.
//! When there is none, the caller waits without polling: a limiter that
//! refills with time (bucket, window, leaky, points) says when room comes
//! back, and the caller sleeps until then (or gives up at once when that is
//! past its `wait_timeout`); a concurrent limiter's waiter is registered and
//! blocks in `BLPOP` on the limiter's wake list, to which every release
//! pushes one entry per waiter (`limit_release.lua`), so a freed slot is
//! taken within a round trip. Free slots go to registered waiters before
//! newcomers, and a slot whose holder died frees itself after `lock_timeout`.
//! Waiting never holds the GIL: the bindings call these from `py.detach` or
//! from a task on the core runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{KiqError, Result};
use crate::keys::Keys;
use crate::limiter::{Kind, Spec};
use crate::pool::{BlockingConn, Pool};
use crate::runtime;
use crate::scripts;

/// The longest single block on a wake list (then the state is read again).
const MAX_BLOCK: Duration = Duration::from_secs(2);
/// Blocking connections kept for the next waiters.
const MAX_IDLE_CONNS: usize = 16;
/// How long the registry remembers a limiter nobody uses.
pub const REGISTRY_MS: u64 = 7 * 24 * 3600 * 1000;
/// Limiters counted separately in this process's statistics; more are summed.
const MAX_STATS: usize = 1000;

/// Room taken in a limiter; give it back with [`Limiter::release`].
#[derive(Debug, Clone)]
pub struct Grant {
    pub token: String,
    /// Epoch seconds by Redis's clock (0 for an unlimited limiter).
    pub acquired_at: f64,
    pub points: u64,
}

/// This process's use of one limiter.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub acquired: u64,
    /// Acquires that ended in `OverLimit`.
    pub over: u64,
    /// Seconds spent waiting for room, all acquires together.
    pub waited: f64,
}

/// The limiters of one Redis: connections for waiting and this process's counts.
pub struct Limits {
    pool: Arc<Pool>,
    keys: Keys,
    idle: Mutex<Vec<BlockingConn>>,
    usage: Mutex<HashMap<(Kind, String), Usage>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("url", &self.pool.url()).finish_non_exhaustive()
    }
}

/// One limiter bound to its Redis (none: unlimited, as in sandbox mode).
#[derive(Debug)]
pub struct Limiter {
    pub spec: Spec,
    limits: Option<Arc<Limits>>,
}

struct Attempt {
    granted: bool,
    now_ms: i64,
    retry_ms: i64,
}

fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Limits {
    pub fn new(pool: Arc<Pool>, keys: Keys) -> Arc<Self> {
        Arc::new(Self { pool, keys, idle: Mutex::default(), usage: Mutex::default() })
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// This process's counts per limiter, `(kind, name)`; beyond a thousand
    /// limiters the rest are summed under the name `_other`.
    pub fn usage(&self) -> Vec<(Kind, String, Usage)> {
        let map = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map.iter().map(|((k, n), u)| (*k, n.clone(), *u)).collect();
        out.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        out
    }

    fn count(&self, spec: &Spec, f: impl FnOnce(&mut Usage)) {
        let mut map = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (spec.kind, spec.name.clone());
        if !map.contains_key(&key) && map.len() >= MAX_STATS {
            key.1 = "_other".into();
        }
        f(map.entry(key).or_default());
    }

    async fn attempt(&self, spec: &Spec, token: &str, points: u64, wait: Duration) -> Result<Attempt> {
        let kind = spec.kind.as_str();
        let reply: Vec<i64> = scripts::LIMIT_ACQUIRE
            .key(self.keys.limiter(kind, &spec.name))
            .key(self.keys.limiter_waiting(kind, &spec.name))
            .key(self.keys.limiters())
            .arg(kind)
            .arg(token)
            .arg(spec.capacity)
            .arg(spec.interval_ms)
            .arg(points)
            .arg(wait.as_millis() as u64)
            .arg(spec.registry_member())
            .arg(REGISTRY_MS)
            .invoke_async(&mut self.pool.get())
            .await?;
        match reply[..] {
            [granted, now_ms, retry_ms, _] => Ok(Attempt { granted: granted == 1, now_ms, retry_ms }),
            _ => Err(KiqError::codec(format!("limit_acquire.lua answered {reply:?}"))),
        }
    }

    /// Blocks on the limiter's wake list up to `pause` (a release pushes to it).
    async fn wait_wake(&self, spec: &Spec, pause: Duration) {
        let conn = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut conn = conn.unwrap_or_else(|| self.pool.blocking(MAX_BLOCK));
        let mut cmd = redis::cmd("BLPOP");
        // 0 would block forever; Redis takes fractions of a second.
        cmd.arg(self.keys.limiter_wake(spec.kind.as_str(), &spec.name)).arg(pause.as_secs_f64().max(0.01));
        match conn.query::<Option<(String, String)>>(&cmd).await {
            Ok(_) => {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_CONNS {
                    idle.push(conn);
                }
            }
            Err(e) => {
                self.pool.note_error(&e);
                log::debug!("waiting for {spec}: {e}");
                tokio::time::sleep(pause.min(Duration::from_millis(100))).await;
            }
        }
    }
}

impl Limiter {
    /// A limiter using `limits`' Redis, or unlimited without one.
    pub fn new(spec: Spec, limits: Option<Arc<Limits>>) -> Self {
        let limits = limits.filter(|_| spec.kind != Kind::Unlimited);
        Self { spec, limits }
    }

    /// Takes `points` of room (1 for a concurrent slot), waiting up to the
    /// limiter's `wait_timeout`; `KiqError::OverLimit` when there is none.
    pub async fn acquire(&self, points: i64) -> Result<Grant> {
        let points = self.spec.check_points(points)?;
        let Some(limits) = &self.limits else {
            return Ok(Grant { token: String::new(), acquired_at: 0.0, points });
        };
        let spec = &self.spec;
        let token = new_token();
        let started = Instant::now();
        let deadline = started + spec.wait;
        let mut registered = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let a = limits.attempt(spec, &token, points, left).await?;
            if a.granted {
                limits.count(spec, |u| {
                    u.acquired += 1;
                    u.waited += started.elapsed().as_secs_f64();
                });
                return Ok(Grant { token, acquired_at: a.now_ms as f64 / 1000.0, points });
            }
            registered |= !left.is_zero();
            let retry = Duration::from_millis(a.retry_ms.max(1) as u64);
            let left = deadline.saturating_duration_since(Instant::now());
            // Waiting for room that comes back after the deadline is pointless.
            if left.is_zero() || (spec.kind.refills() && retry > left) {
                if registered {
                    let key = limits.keys.limiter_waiting(spec.kind.as_str(), &spec.name);
                    let gone: redis::RedisResult<i64> =
                        redis::cmd("ZREM").arg(key).arg(&token).query_async(&mut limits.pool.get()).await;
                    if let Err(e) = gone {
                        log::debug!("{spec}: a waiter could not unregister (it expires): {e}");
                    }
                }
                limits.count(spec, |u| {
                    u.over += 1;
                    u.waited += started.elapsed().as_secs_f64();
                });
                return Err(KiqError::OverLimit(format!(
                    "{spec} is over its limit: no room within its wait_timeout of {}s",
                    spec.wait.as_secs_f64()
                )));
            }
            let pause = retry.min(left);
            if spec.kind == Kind::Concurrent {
                limits.wait_wake(spec, pause.min(MAX_BLOCK)).await;
            } else {
                // A little jitter so callers woken by one refill do not all ask at once.
                let jitter = Duration::from_micros(rand::random::<u64>() % 3000);
                tokio::time::sleep(pause + jitter).await;
            }
        }
    }

    /// Gives room back: a concurrent slot is freed and a waiter woken; the
    /// other kinds refill with time, so this does nothing for them.
    pub async fn release(&self, grant: &Grant) -> Result<()> {
        let Some(limits) = &self.limits else { return Ok(()) };
        if self.spec.kind != Kind::Concurrent || grant.token.is_empty() {
            return Ok(());
        }
        let (keys, name) = (&limits.keys, &self.spec.name);
        let kind = self.spec.kind.as_str();
        let held: i64 = scripts::LIMIT_RELEASE
            .key(keys.limiter(kind, name))
            .key(keys.limiter_waiting(kind, name))
            .key(keys.limiter_wake(kind, name))
            .arg(&grant.token)
            .invoke_async(&mut limits.pool.get())
            .await?;
        if held == 0 {
            log::warn!(
                "{}: a slot was held longer than its lock_timeout ({}s) and had been freed already",
                self.spec,
                self.spec.interval_ms as f64 / 1000.0
            );
        }
        Ok(())
    }
}

/// Runs an acquire on the core runtime and hands its result to `done` on a
/// blocking thread (asyncio callers: the event loop never waits).
pub fn spawn_acquire(limiter: Arc<Limiter>, points: i64, done: impl FnOnce(Result<Grant>) + Send + 'static) {
    runtime::get().spawn(async move {
        let r = limiter.acquire(points).await;
        drop(tokio::task::spawn_blocking(move || done(r)));
    });
}

/// [`spawn_acquire`] for a release.
pub fn spawn_release(limiter: Arc<Limiter>, grant: Grant, done: impl FnOnce(Result<()>) + Send + 'static) {
    runtime::get().spawn(async move {
        let r = limiter.release(&grant).await;
        drop(tokio::task::spawn_blocking(move || done(r)));
    });
}
