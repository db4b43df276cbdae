//! The scheduler poller: moves due jobs from `retry` and `schedule` to their queues.
//!
//! Like Sidekiq's, each process polls at a random interval whose average is
//! `process count × average_scheduled_poll_interval` (5 s), so a cluster as a
//! whole looks about every 5 s however many processes it runs, without them
//! polling in step. A due job is moved with a fresh `enqueued_at`, a `retry`
//! field if it had none, and without any `at` (which would make Sidekiq
//! re-schedule it forever). An entry that is not a JSON object goes to the
//! dead set instead of being lost.

use std::sync::Arc;
use std::time::Duration;

use crate::control::{Control, RunState};
use crate::error::Result;
use crate::job::{DEFAULT_QUEUE, Payload, Retry, field};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::scripts;
use crate::timestamp::{self, TimestampUnit, float_json};

/// Due jobs moved per script call.
const BATCH: usize = 100;
/// Sidekiq's wait before the first poll, when no explicit interval is set.
const INITIAL_WAIT_SECS: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct PollConfig {
    /// Sidekiq's `average_scheduled_poll_interval`: seconds per process.
    pub average_scheduled_poll_interval: f64,
    /// Sidekiq's `poll_interval_average`: a fixed average, ignoring the process count.
    pub poll_interval_average: Option<f64>,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self { average_scheduled_poll_interval: 5.0, poll_interval_average: None }
    }
}

/// Seconds to sleep before the next poll: uniform in 0.5–1.5 × `average`
/// for fewer than 10 processes, else 0–2 × (Sidekiq 8.0.10+).
pub fn poll_wait(average: f64, process_count: u64, roll: f64) -> f64 {
    if process_count < 10 { average * roll + average / 2.0 } else { average * roll * 2.0 }
}

pub struct Poller {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub policy: RetryPolicy,
    pub config: PollConfig,
    pub control: Control,
}

/// What one pass over a set did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Due {
    pub moved: usize,
    /// Due jobs that stay in the set: their queue key (or `queues`) holds the
    /// wrong kind of value or refused the push; with each such key, the problem.
    pub stuck: usize,
    pub problems: Vec<(String, String)>,
}

/// Reads `enqueue_due.lua`'s reply: `{moved, stuck, key, problem, ...}`.
pub fn due_reply(reply: &[redis::Value]) -> Due {
    let int = |v: Option<&redis::Value>| v.and_then(|v| redis::from_redis_value::<usize>(v.clone()).ok()).unwrap_or(0);
    let text = |v: &redis::Value| redis::from_redis_value::<String>(v.clone()).unwrap_or_default();
    Due {
        moved: int(reply.first()),
        stuck: int(reply.get(1)),
        problems: reply
            .get(2..)
            .unwrap_or_default()
            .chunks(2)
            .map(|p| (text(&p[0]), p.get(1).map(text).unwrap_or_default()))
            .collect(),
    }
}

impl Poller {
    pub async fn run(self) {
        let first = if self.config.poll_interval_average.is_some() { 0.0 } else { INITIAL_WAIT_SECS };
        let first = first + rand::random::<f64>() * self.average(1).min(5.0);
        if !self.control.sleep(Duration::from_secs_f64(first)).await {
            return;
        }
        let mut failing = false;
        let mut reported = std::collections::HashSet::new();
        loop {
            if self.control.state() == RunState::Running {
                match self.enqueue_all(&mut reported).await {
                    Ok(()) if failing => {
                        log::warn!("the scheduler reaches Redis again");
                        failing = false;
                    }
                    Err(e) if !failing => {
                        log::error!("the scheduler cannot move due jobs: {e}");
                        failing = true;
                    }
                    Ok(()) | Err(_) => {}
                }
            }
            let count = self.process_count().await;
            let wait = poll_wait(self.average(count), count, rand::random());
            if !self.control.sleep(Duration::from_secs_f64(wait)).await {
                return;
            }
        }
    }

    fn average(&self, process_count: u64) -> f64 {
        self.config
            .poll_interval_average
            .unwrap_or(self.config.average_scheduled_poll_interval * process_count.max(1) as f64)
    }

    async fn process_count(&self) -> u64 {
        let n: redis::RedisResult<u64> =
            redis::cmd("SCARD").arg(self.keys.processes()).query_async(&mut self.pool.get()).await;
        n.unwrap_or(1).max(1)
    }

    /// One poll: the retry set first, then the schedule, as Sidekiq orders them.
    pub async fn enqueue_all(&self, reported: &mut std::collections::HashSet<String>) -> Result<()> {
        for set in [self.keys.retry(), self.keys.schedule()] {
            if self.control.state() == RunState::Stopping {
                break;
            }
            let due = enqueue_due(&self.pool, &self.keys, &self.policy, &set, timestamp::now()).await?;
            for (key, problem) in &due.problems {
                if reported.insert(format!("{key} {problem}")) {
                    log::error!(
                        "due jobs of {set:?} cannot move to {key:?} ({problem}); they stay in {set:?} until the key \
                         is fixed or deleted"
                    );
                }
            }
        }
        Ok(())
    }
}

/// Moves every member of `set` due at `now` to its queue. Jobs that cannot
/// move (a key of the wrong type) stay, counted and named, and never hold up
/// the ones behind them.
pub async fn enqueue_due(pool: &Pool, keys: &Keys, policy: &RetryPolicy, set: &str, now: f64) -> Result<Due> {
    let mut total = Due::default();
    loop {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(set)
            .arg("-inf")
            .arg(float_json(now))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(total.stuck)
            .arg(BATCH)
            .query_async(&mut pool.get())
            .await?;
        if members.is_empty() {
            return Ok(total);
        }
        let full = members.len() == BATCH;
        let due = move_members(pool, keys, policy, set, members, now).await?;
        total.moved += due.moved;
        total.stuck += due.stuck;
        total.problems.extend(due.problems);
        if !full {
            return Ok(total);
        }
    }
}

/// Moves batch callback jobs just written to the schedule set (due now) to
/// their queues at once, rather than at the next poll; one the poller (or
/// another process) moved first is skipped, so each is pushed once.
pub async fn release(pool: &Pool, keys: &Keys, unit: TimestampUnit, members: Vec<String>) -> Result<Due> {
    let policy = RetryPolicy { unit, ..RetryPolicy::default() };
    let mut total = Due::default();
    let mut members: Vec<Vec<u8>> = members.into_iter().map(String::into_bytes).collect();
    while !members.is_empty() {
        let rest = members.split_off(members.len().min(BATCH));
        let due = move_members(pool, keys, &policy, &keys.schedule(), members, timestamp::now()).await?;
        total.moved += due.moved;
        total.stuck += due.stuck;
        total.problems.extend(due.problems);
        members = rest;
    }
    Ok(total)
}

/// Moves these members of `set` to their queues (`enqueue_due.lua`); an
/// entry that is not a JSON job goes to the dead set.
async fn move_members(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    set: &str,
    members: Vec<Vec<u8>>,
    now: f64,
) -> Result<Due> {
    let mut inv = scripts::ENQUEUE_DUE.prepare_invoke();
    inv.key(set).key(keys.queues());
    let mut ready = 0;
    for member in members {
        if let Some(job) = std::str::from_utf8(&member).ok().and_then(|s| Payload::parse(s).ok()) {
            let (queue, payload) = due_payload(job, policy.unit, now);
            inv.key(keys.queue(&queue)).arg(&member).arg(payload).arg(&queue);
            ready += 1;
        } else {
            log::error!("an entry of {set:?} is not a JSON job; moved to the dead set");
            let _: i64 = scripts::BURY
                .key(set)
                .key(keys.dead())
                .arg(&member)
                .arg(float_json(now))
                .arg(policy.dead_trim(now))
                .invoke_async(&mut pool.get())
                .await?;
        }
    }
    if ready == 0 {
        return Ok(Due::default());
    }
    let reply: Vec<redis::Value> = inv.invoke_async(&mut pool.get()).await?;
    Ok(due_reply(&reply))
}

/// A due job's queue and the payload to push there: a fresh `enqueued_at`,
/// `retry` added if missing, and no `at`.
pub fn due_payload(mut job: Payload, unit: TimestampUnit, now: f64) -> (String, String) {
    let queue = job.queue().unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
    job.remove(field::AT);
    job.insert_front_if_absent(field::RETRY, Retry::Default.to_json());
    job.set_json(field::ENQUEUED_AT, unit.encode(now));
    (queue, job.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_spread_around_the_average() {
        assert_eq!(poll_wait(5.0, 1, 0.0), 2.5);
        assert_eq!(poll_wait(5.0, 1, 1.0), 7.5);
        assert_eq!(poll_wait(50.0, 10, 0.5), 50.0);
        assert_eq!(poll_wait(50.0, 10, 0.0), 0.0);
    }
}
