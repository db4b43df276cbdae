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
const MAX_BLOCK: Duration = crate::pool::MAX_THREAD_BLOCK;
/// Blocking connections kept for the next waiters.
const MAX_IDLE_CONNS: usize = 16;
/// How long the registry remembers a limiter nobody uses.
pub const REGISTRY_MS: u64 = 7 * 24 * 3600 * 1000;
/// A limiter's last use is written to the registry at most this often.
const REGISTRY_TOUCH_MS: u64 = 1000;
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

impl Attempt {
    fn parse(reply: &[i64]) -> Result<Self> {
        match *reply {
            [granted, now_ms, retry_ms, _] => Ok(Self { granted: granted == 1, now_ms, retry_ms }),
            _ => Err(KiqError::codec(format!("limit_acquire.lua answered {reply:?}"))),
        }
    }
}

/// What an acquire does next.
enum Next {
    Granted(Grant),
    /// No room in time: `leave` the waiters' set (the caller registered).
    Over {
        leave: bool,
    },
    /// Block on the wake list (a concurrent limiter) up to this long.
    Wake(Duration),
    /// Sleep until room comes back (a limiter that refills).
    Sleep(Duration),
}

/// The decisions of one acquire, whichever thread or task does its I/O.
struct Acquire<'a> {
    spec: &'a Spec,
    points: u64,
    token: String,
    started: Instant,
    deadline: Instant,
    registered: bool,
}

impl<'a> Acquire<'a> {
    fn new(spec: &'a Spec, points: u64) -> Self {
        let started = Instant::now();
        Self { spec, points, token: new_token(), started, deadline: started + spec.wait, registered: false }
    }

    /// How long the caller waits if the next attempt is refused (it is then a registered waiter).
    fn ask(&mut self) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.registered |= !left.is_zero();
        left
    }

    fn next(&self, a: &Attempt) -> Next {
        if a.granted {
            let acquired_at = a.now_ms as f64 / 1000.0;
            return Next::Granted(Grant { token: self.token.clone(), acquired_at, points: self.points });
        }
        let retry = Duration::from_millis(a.retry_ms.max(1) as u64);
        let left = self.deadline.saturating_duration_since(Instant::now());
        // Waiting for room that comes back after the deadline is pointless.
        if left.is_zero() || (self.spec.kind.refills() && retry > left) {
            return Next::Over { leave: self.registered };
        }
        let pause = retry.min(left);
        if self.spec.kind == Kind::Concurrent {
            Next::Wake(pause.min(MAX_BLOCK))
        } else {
            // A little jitter so callers woken by one refill do not all ask at once.
            Next::Sleep(pause + Duration::from_micros(rand::random::<u64>() % 3000))
        }
    }
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

    fn granted(&self, acq: &Acquire<'_>, grant: Grant) -> Grant {
        let waited = acq.started.elapsed().as_secs_f64();
        self.count(acq.spec, |u| {
            u.acquired += 1;
            u.waited += waited;
        });
        grant
    }

    fn over(&self, acq: &Acquire<'_>) -> KiqError {
        let waited = acq.started.elapsed().as_secs_f64();
        self.count(acq.spec, |u| {
            u.over += 1;
            u.waited += waited;
        });
        KiqError::OverLimit(format!(
            "{} is over its limit: no room within its wait_timeout of {}s",
            acq.spec,
            acq.spec.wait.as_secs_f64()
        ))
    }

    /// One attempt; `again` when it is sent anew after a failure (it may have been applied).
    fn acquire_script(&self, acq: &Acquire<'_>, wait: Duration, again: bool) -> redis::ScriptInvocation<'static> {
        let (spec, kind) = (acq.spec, acq.spec.kind.as_str());
        let mut inv = scripts::LIMIT_ACQUIRE.prepare_invoke();
        inv.key(self.keys.limiter(kind, &spec.name))
            .key(self.keys.limiter_waiting(kind, &spec.name))
            .key(self.keys.limiters())
            .arg(kind)
            .arg(&acq.token)
            .arg(spec.capacity)
            .arg(spec.interval_ms)
            .arg(acq.points)
            .arg(wait.as_millis() as u64)
            .arg(spec.registry_member())
            .arg(REGISTRY_MS)
            .arg(REGISTRY_TOUCH_MS)
            .arg(u8::from(again));
        inv
    }

    fn release_script(&self, spec: &Spec, grant: &Grant) -> redis::ScriptInvocation<'static> {
        let (kind, name) = (spec.kind.as_str(), &spec.name);
        let mut inv = scripts::LIMIT_RELEASE.prepare_invoke();
        inv.key(self.keys.limiter(kind, name))
            .key(self.keys.limiter_waiting(kind, name))
            .key(self.keys.limiter_wake(kind, name))
            .arg(&grant.token);
        inv
    }

    fn leave_cmd(&self, acq: &Acquire<'_>) -> redis::Cmd {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.keys.limiter_waiting(acq.spec.kind.as_str(), &acq.spec.name)).arg(&acq.token);
        cmd
    }

    fn wake_cmd(&self, spec: &Spec, pause: Duration) -> redis::Cmd {
        let mut cmd = redis::cmd("BLPOP");
        // 0 would block forever; Redis takes fractions of a second.
        cmd.arg(self.keys.limiter_wake(spec.kind.as_str(), &spec.name)).arg(pause.as_secs_f64().max(0.01));
        cmd
    }

    /// Blocks on the limiter's wake list up to `pause` (a release pushes to it).
    async fn wait_wake(&self, spec: &Spec, pause: Duration) {
        let conn = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut conn = conn.unwrap_or_else(|| self.pool.blocking(MAX_BLOCK));
        match conn.query::<Option<(String, String)>>(&self.wake_cmd(spec, pause)).await {
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
    /// For async callers: the I/O runs on the core runtime.
    pub async fn acquire(&self, points: i64) -> Result<Grant> {
        let points = self.spec.check_points(points)?;
        let Some(limits) = &self.limits else { return Ok(unlimited(points)) };
        let mut acq = Acquire::new(&self.spec, points);
        let mut again = false;
        loop {
            let wait = acq.ask();
            let sent = limits.acquire_script(&acq, wait, again).invoke_async::<Vec<i64>>(&mut limits.pool.get()).await;
            // The connection manager reconnects; an attempt that failed is sent once more, marked.
            let reply = match sent {
                Err(e) if !again && (e.is_io_error() || e.is_connection_dropped()) => {
                    again = true;
                    continue;
                }
                other => other?,
            };
            match acq.next(&Attempt::parse(&reply)?) {
                Next::Granted(grant) => return Ok(limits.granted(&acq, grant)),
                Next::Over { leave } => {
                    if leave {
                        let gone: redis::RedisResult<i64> =
                            limits.leave_cmd(&acq).query_async(&mut limits.pool.get()).await;
                        if let Err(e) = gone {
                            log::debug!("{}: a waiter could not unregister (it expires): {e}", self.spec);
                        }
                    }
                    return Err(limits.over(&acq));
                }
                Next::Wake(pause) => limits.wait_wake(&self.spec, pause).await,
                Next::Sleep(pause) => tokio::time::sleep(pause).await,
            }
        }
    }

    /// [`Limiter::acquire`] for a thread that waits anyway (call it without
    /// the GIL): its round trips and waits run on the calling thread, on a
    /// connection of its own, with no hand-off between threads.
    pub fn acquire_blocking(&self, points: i64) -> Result<Grant> {
        let points = self.spec.check_points(points)?;
        let Some(limits) = &self.limits else { return Ok(unlimited(points)) };
        let mut acq = Acquire::new(&self.spec, points);
        loop {
            let wait = acq.ask();
            let reply: Vec<i64> =
                limits.pool.on_thread(|c, again| limits.acquire_script(&acq, wait, again).invoke(c))?;
            match acq.next(&Attempt::parse(&reply)?) {
                Next::Granted(grant) => return Ok(limits.granted(&acq, grant)),
                Next::Over { leave } => {
                    if leave && let Err(e) = limits.pool.on_thread(|c, _| limits.leave_cmd(&acq).query::<i64>(c)) {
                        log::debug!("{}: a waiter could not unregister (it expires): {e}", self.spec);
                    }
                    return Err(limits.over(&acq));
                }
                Next::Wake(pause) => {
                    let woke = limits
                        .pool
                        .on_thread(|c, _| limits.wake_cmd(&self.spec, pause).query::<Option<(String, String)>>(c));
                    if let Err(e) = woke {
                        log::debug!("waiting for {}: {e}", self.spec);
                        std::thread::sleep(pause.min(Duration::from_millis(100)));
                    }
                }
                Next::Sleep(pause) => std::thread::sleep(pause),
            }
        }
    }

    /// Gives room back: a concurrent slot is freed and a waiter woken; the
    /// other kinds refill with time, so this does nothing for them.
    pub async fn release(&self, grant: &Grant) -> Result<()> {
        let Some(limits) = self.concurrent(grant) else { return Ok(()) };
        let held: i64 = limits.release_script(&self.spec, grant).invoke_async(&mut limits.pool.get()).await?;
        self.released(held);
        Ok(())
    }

    /// [`Limiter::release`] on the calling thread (see [`Limiter::acquire_blocking`]).
    pub fn release_blocking(&self, grant: &Grant) -> Result<()> {
        let Some(limits) = self.concurrent(grant) else { return Ok(()) };
        let held: i64 = limits.pool.on_thread(|c, _| limits.release_script(&self.spec, grant).invoke(c))?;
        self.released(held);
        Ok(())
    }

    /// The limits to release a grant in (only a concurrent slot is given back).
    fn concurrent(&self, grant: &Grant) -> Option<&Arc<Limits>> {
        self.limits.as_ref().filter(|_| self.spec.kind == Kind::Concurrent && !grant.token.is_empty())
    }

    fn released(&self, held: i64) {
        if held == 0 {
            log::warn!(
                "{}: a slot was held longer than its lock_timeout ({}s) and had been freed already",
                self.spec,
                self.spec.interval_ms as f64 / 1000.0
            );
        }
    }
}

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn unlimited(points: u64) -> Grant {
    Grant { token: String::new(), acquired_at: 0.0, points }
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
