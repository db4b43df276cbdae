//! Settling finished jobs in Redis, in batches.
//!
//! A thread that finishes a job hands its settlement to this task and goes on
//! without waiting. The task writes everything that piled up meanwhile in one
//! MULTI/EXEC round trip: for each job, its retry or dead entry (if any) and
//! the `LREM` that takes it off the in-progress list, plus Sidekiq's
//! processed/failed counters. Because the write is atomic, a job is never in
//! neither place, and the counters never count a job still in progress. A
//! failed write is retried with backoff; nothing is dropped while the process
//! lives, and whatever a crash leaves in the in-progress list is re-run later.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::keys::{DAILY_STAT_TTL_SECS, Keys};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::scripts;
use crate::timestamp::{self, float_json};

/// Settlements written per round trip at most.
const MAX_BATCH: usize = 2000;

/// Where a finished job goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Done: just leave the in-progress list.
    Done,
    /// Into the `retry` set at `at` (epoch seconds).
    Retry { at: f64, payload: String },
    /// Into the `dead` set now, then trim it. Bytes, because an unreadable
    /// payload is buried exactly as it was found.
    Dead { payload: Vec<u8> },
    /// Dropped (`retry: false` or `dead: false`).
    Discard,
    /// Not run: it expired before it could start (counted in `kiq:stat:expired`).
    Expired,
}

#[derive(Debug)]
pub struct Settlement {
    /// The in-progress list that holds the job.
    pub wip_key: std::sync::Arc<str>,
    /// The job exactly as it is stored there.
    pub raw: Vec<u8>,
    pub settle: Settle,
    /// Counted in `stat:processed` (every job that ran, as Sidekiq counts).
    pub processed: bool,
    /// Counted in `stat:failed`.
    pub failed: bool,
    /// A unique job's lock to release with it: (key, jid).
    pub unlock: Option<(String, String)>,
}

pub enum Msg {
    Settle(Settlement),
    /// Release a unique job's lock (key, jid): `unique_until: start`.
    Unlock(String, String),
    /// Write what is pending (retrying until the deadline), then stop.
    Close {
        deadline: Instant,
        done: oneshot::Sender<usize>,
    },
}

/// Runs until told to close; the reply to `Close` is the number of
/// settlements that could not be written before the deadline.
pub async fn run(mut rx: mpsc::UnboundedReceiver<Msg>, pool: std::sync::Arc<Pool>, keys: Keys, policy: RetryPolicy) {
    let mut batch: Vec<Settlement> = Vec::new();
    let mut unlocks: Vec<(String, String)> = Vec::new();
    let mut close: Option<(Instant, oneshot::Sender<usize>)> = None;
    let mut failing = false;
    loop {
        if batch.is_empty() && unlocks.is_empty() && close.is_none() {
            match rx.recv().await {
                Some(Msg::Settle(s)) => batch.push(s),
                Some(Msg::Unlock(k, j)) => unlocks.push((k, j)),
                Some(Msg::Close { deadline, done }) => close = Some((deadline, done)),
                None => return,
            }
        }
        take_pending(&mut rx, &mut batch, &mut unlocks, &mut close);
        let mut delay = Duration::from_millis(20);
        while !batch.is_empty() {
            match write(&pool, &keys, &policy, &batch).await {
                Ok(()) => {
                    if failing {
                        log::warn!("writing job results to Redis works again");
                        failing = false;
                    }
                    unlocks.extend(batch.drain(..).filter_map(|s| s.unlock));
                }
                Err(e) => {
                    pool.note_error(&e);
                    if !failing {
                        log::error!("cannot write {} job results to Redis, will retry: {e}", batch.len());
                        failing = true;
                    }
                    // A stop may arrive while Redis is away: its deadline ends the retries.
                    take_pending(&mut rx, &mut batch, &mut unlocks, &mut close);
                    if close.as_ref().is_some_and(|(deadline, _)| Instant::now() >= *deadline) {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 3 / 2).min(Duration::from_secs(2));
                }
            }
        }
        // Locks go after the results that free them; a failure keeps them for the next round.
        if !unlocks.is_empty() {
            if let Err(e) = unlock(&pool, &unlocks).await {
                log::warn!("cannot release {} unique-job locks yet: {e}", unlocks.len());
                if close.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                unlocks.clear();
            }
        }
        if let Some((_, done)) = close.take() {
            if !batch.is_empty() {
                log::error!(
                    "{} job results were not written before the stop deadline; those jobs stay in the in-progress list and will run again",
                    batch.len()
                );
            }
            let _ = done.send(batch.len());
            return;
        }
    }
}

/// Moves whatever is waiting in the channel into the batch (up to its cap).
fn take_pending(
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    batch: &mut Vec<Settlement>,
    unlocks: &mut Vec<(String, String)>,
    close: &mut Option<(Instant, oneshot::Sender<usize>)>,
) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Msg::Settle(s)) => batch.push(s),
            Ok(Msg::Unlock(k, j)) => unlocks.push((k, j)),
            Ok(Msg::Close { deadline, done }) => *close = Some((deadline, done)),
            Err(_) => break,
        }
    }
}

async fn unlock(pool: &Pool, locks: &[(String, String)]) -> redis::RedisResult<()> {
    let mut inv = scripts::UNLOCK.prepare_invoke();
    for (key, jid) in locks {
        inv.key(key).arg(jid);
    }
    inv.invoke_async::<i64>(&mut pool.get()).await.map(|_| ())
}

async fn write(pool: &Pool, keys: &Keys, policy: &RetryPolicy, batch: &[Settlement]) -> redis::RedisResult<()> {
    let now = timestamp::now();
    let mut pipe = redis::pipe();
    pipe.atomic();
    let (mut processed, mut failed, mut expired, mut buried) = (0i64, 0i64, 0i64, false);
    for s in batch {
        match &s.settle {
            Settle::Retry { at, payload } => {
                pipe.cmd("ZADD").arg(keys.retry()).arg(float_json(*at)).arg(payload).ignore();
            }
            Settle::Dead { payload } => {
                pipe.cmd("ZADD").arg(keys.dead()).arg(float_json(now)).arg(payload).ignore();
                buried = true;
            }
            Settle::Expired => expired += 1,
            Settle::Done | Settle::Discard => {}
        }
        // Ack from the tail: the in-progress list is pushed on the left, so
        // the oldest jobs (the usual ones to finish) are found first.
        pipe.cmd("LREM").arg(&*s.wip_key).arg(-1).arg(&s.raw).ignore();
        processed += i64::from(s.processed);
        failed += i64::from(s.failed);
    }
    if buried {
        trim_dead(&mut pipe, keys, policy, now);
    }
    if expired > 0 {
        pipe.cmd("INCRBY").arg(keys.stat_expired()).arg(expired).ignore();
    }
    let day = timestamp::utc_date(now);
    for (n, total, daily) in [
        (processed, keys.stat_processed(), keys.stat_processed_day(&day)),
        (failed, keys.stat_failed(), keys.stat_failed_day(&day)),
    ] {
        if n > 0 {
            pipe.cmd("INCRBY").arg(total).arg(n).ignore();
            pipe.cmd("INCRBY").arg(&daily).arg(n).ignore();
            pipe.cmd("EXPIRE").arg(&daily).arg(DAILY_STAT_TTL_SECS).ignore();
        }
    }
    pipe.query_async::<()>(&mut pool.get()).await
}

/// Sidekiq's dead-set trim: entries older than `dead_timeout`, then all but
/// the newest `dead_limit - 1` (`ZREMRANGEBYRANK dead 0 -dead_limit`).
pub fn trim_dead(pipe: &mut redis::Pipeline, keys: &Keys, policy: &RetryPolicy, now: f64) {
    pipe.cmd("ZREMRANGEBYSCORE").arg(keys.dead()).arg("-inf").arg(float_json(now - policy.dead_timeout_secs)).ignore();
    pipe.cmd("ZREMRANGEBYRANK").arg(keys.dead()).arg(0).arg(-(policy.dead_limit as i64)).ignore();
}
