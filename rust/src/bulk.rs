//! What a dashboard does to jobs, one or many at a time, the way Sidekiq's
//! Web UI does it to the keys.
//!
//! Jobs in a sorted set are addressed as Sidekiq's UI addresses them: by
//! score and jid (`ZRANGE set score score BYSCORE`, then the member with that
//! jid), so finding one never scans the set. Each change is atomic per batch
//! of members and skips a member already gone, so racing with a poller or
//! another operator never duplicates or loses a job:
//! - Retry now: `retry_count` goes down by one first (Sidekiq's
//!   `SortedEntry#retry`), then the job is pushed with a fresh `enqueued_at`;
//! - Add to queue: pushed as it is (`add_to_queue`);
//! - Kill: to the dead set, trimmed as `DeadSet#kill` trims;
//! - Delete: `ZREM`.
//!
//! "All matching" walks the set with `ZSCAN` in bounded steps, acting on each
//! step's matches, so Redis is never blocked by one long command.

use crate::batches::{BatchRef, KEEP_SECS};
use crate::browse::Filter;
use crate::error::{KiqError, Result};
use crate::job::{Payload, field};
use crate::jobview::JobView;
use crate::keys::Keys;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::scheduled::due_payload;
use crate::scripts;
use crate::timestamp::{self, float_json};

/// Members handled per script call (keeps each call short).
const BATCH: usize = 100;
/// `COUNT` hint of each `ZSCAN` / window size of each `LRANGE` step.
const SCAN_STEP: u64 = 500;
/// Seconds a signal waits for its process (Sidekiq's 60).
const SIGNAL_TTL_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RetryNow,
    AddToQueue,
    Kill,
    Delete,
}

impl Action {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "retry" => Ok(Self::RetryNow),
            "add_to_queue" => Ok(Self::AddToQueue),
            "kill" => Ok(Self::Kill),
            "delete" => Ok(Self::Delete),
            other => {
                Err(KiqError::config(format!("unknown action {other:?}: use retry, add_to_queue, kill or delete")))
            }
        }
    }
}

/// A job in a sorted set, as the UI addresses it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRef {
    pub score: f64,
    pub jid: String,
}

impl JobRef {
    /// Reads Sidekiq's `"<score>-<jid>"` form.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || KiqError::codec(format!("{text:?} is not a job key (<score>-<jid>)"));
        let (score, jid) = text.split_once('-').ok_or_else(bad)?;
        let score: f64 = score.parse().map_err(|_| bad())?;
        if !score.is_finite() || jid.is_empty() {
            return Err(bad());
        }
        Ok(Self { score, jid: jid.to_owned() })
    }
}

/// The member of `set` a reference names, if it is still there.
pub async fn fetch(pool: &Pool, set: &str, job: &JobRef) -> Result<Option<(String, f64)>> {
    Ok(fetch_all(pool, set, std::slice::from_ref(job)).await?.into_iter().next())
}

/// The members of `set` the references name (those still there), in one round trip.
pub async fn fetch_all(pool: &Pool, set: &str, jobs: &[JobRef]) -> Result<Vec<(String, f64)>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for j in jobs {
        let s = float_json(j.score);
        pipe.cmd("ZRANGE").arg(set).arg(&s).arg(&s).arg("BYSCORE").arg("WITHSCORES");
    }
    let found: Vec<Vec<(String, f64)>> = pipe.query_async(&mut pool.get()).await?;
    let mut out = Vec::new();
    for (j, same_score) in jobs.iter().zip(found) {
        out.extend(same_score.into_iter().filter(|(m, _)| m.contains(&j.jid) && jid_of(m) == j.jid).take(1));
    }
    Ok(out)
}

fn jid_of(member: &str) -> String {
    Payload::parse(member).ok().and_then(|p| p.jid()).unwrap_or_default()
}

/// Applies `action` to the referenced jobs of `set`; returns how many it acted on.
pub async fn act(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    set: &str,
    action: Action,
    jobs: &[JobRef],
) -> Result<u64> {
    let members: Vec<String> = fetch_all(pool, set, jobs).await?.into_iter().map(|(m, _)| m).collect();
    apply(pool, keys, policy, set, action, &members).await
}

/// Applies `action` to every job of `set` that `filter` keeps; returns how many.
/// Deleting everything is one `UNLINK` (Sidekiq's "Delete All").
pub async fn act_all(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    set: &str,
    action: Action,
    filter: &Filter,
) -> Result<u64> {
    if action == Action::Delete && filter.is_empty() {
        let (size,): (u64,) = redis::pipe()
            .atomic()
            .cmd("ZCARD")
            .arg(set)
            .cmd("UNLINK")
            .arg(set)
            .ignore()
            .query_async(&mut pool.get())
            .await?;
        return Ok(size);
    }
    let mut done = 0;
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<(String, f64)>) =
            redis::cmd("ZSCAN").arg(set).arg(cursor).arg("COUNT").arg(SCAN_STEP).query_async(&mut pool.get()).await?;
        let members: Vec<String> =
            page.into_iter().map(|(m, _)| m).filter(|m| filter.matches(&JobView::new(m.clone(), None))).collect();
        done += apply(pool, keys, policy, set, action, &members).await?;
        if next == 0 {
            return Ok(done);
        }
        cursor = next;
    }
}

/// Applies `action` to exact members of `set`, a batch per atomic step.
pub async fn apply(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    set: &str,
    action: Action,
    members: &[String],
) -> Result<u64> {
    let mut done = 0;
    for chunk in members.chunks(BATCH) {
        done += match action {
            Action::Delete => redis::cmd("ZREM").arg(set).arg(chunk).query_async::<u64>(&mut pool.get()).await?,
            Action::Kill => kill(pool, keys, policy, set, chunk).await?,
            Action::RetryNow | Action::AddToQueue => enqueue(pool, keys, policy, set, action, chunk).await?,
        };
    }
    Ok(done)
}

/// Moves members of `set` to the dead set (one atomic script call), each a
/// death for its batch if it is a batch job; returns how many moved.
pub async fn kill(pool: &Pool, keys: &Keys, policy: &RetryPolicy, set: &str, members: &[String]) -> Result<u64> {
    let now = timestamp::now();
    let batches: Vec<Option<BatchRef>> = members
        .iter()
        .map(|m| Payload::parse(m.as_str()).ok().and_then(|p| BatchRef::of(&p).filter(|b| b.callback.is_none())))
        .collect();
    let mut levels: Vec<&str> = Vec::new();
    for bid in batches.iter().flatten().flat_map(|b| &b.chain) {
        if !levels.contains(&bid.as_str()) {
            levels.push(bid);
        }
    }
    let mut inv = scripts::KILL_MANY.prepare_invoke();
    inv.key(set).key(keys.dead()).key(keys.schedule());
    for bid in &levels {
        inv.key(keys.batch(bid)).key(keys.batch_done(bid)).key(keys.batch_failed(bid));
    }
    inv.arg(float_json(now)).arg(policy.dead_trim(now)).arg(policy.unit.encode(now)).arg(KEEP_SECS).arg(levels.len());
    for bid in &levels {
        inv.arg(*bid);
    }
    for (m, b) in members.iter().zip(&batches) {
        let refs = b.as_ref().map(|b| {
            let at: Vec<String> =
                b.chain.iter().map(|bid| (levels.iter().position(|l| l == bid).unwrap_or(0) + 1).to_string()).collect();
            at.join(" ")
        });
        let jid = Payload::parse(m.as_str()).ok().and_then(|p| p.jid()).unwrap_or_default();
        inv.arg(m).arg(refs.unwrap_or_default()).arg(jid);
    }
    let reply: Vec<redis::Value> = inv.invoke_async(&mut pool.get()).await?;
    let moved = reply.first().and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok()).unwrap_or(0);
    let fired: Vec<String> =
        reply.iter().skip(1).filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok()).collect();
    if !fired.is_empty()
        && let Err(e) = crate::scheduled::release(pool, keys, policy.unit, fired).await
    {
        log::warn!("batch callbacks wait for the scheduler's next poll: {e}");
    }
    Ok(moved)
}

/// Pushes members of `set` to their queues now (one atomic script call).
async fn enqueue(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    set: &str,
    action: Action,
    members: &[String],
) -> Result<u64> {
    let now = timestamp::now();
    let mut inv = scripts::ENQUEUE_DUE.prepare_invoke();
    inv.key(set).key(keys.queues());
    let mut ready = 0;
    for member in members {
        // A member that is not a JSON job cannot be pushed; it stays for Delete.
        let Ok(mut job) = Payload::parse(member.as_str()) else { continue };
        if action == Action::RetryNow
            && let Some(count) = job.retry_count()
        {
            job.set_json(field::RETRY_COUNT, (count - 1).to_string());
        }
        let (queue, payload) = due_payload(job, policy.unit, now);
        inv.key(keys.queue(&queue)).arg(member).arg(payload).arg(&queue);
        ready += 1;
    }
    if ready == 0 {
        return Ok(0);
    }
    let reply: Vec<redis::Value> = inv.invoke_async(&mut pool.get()).await?;
    let due = crate::scheduled::due_reply(&reply);
    if let Some((key, problem)) = due.problems.first() {
        return Err(crate::error::KiqError::Undeliverable(format!(
            "{} of the jobs stay in {set:?}: they cannot move to {key:?} ({problem})",
            due.stuck
        )));
    }
    Ok(due.moved as u64)
}

/// Deletes the job `jid` from queue `name` (`LREM` of its exact text), reading
/// the list in windows until found. Returns false if it is not there.
pub async fn queue_delete(pool: &Pool, keys: &Keys, name: &str, jid: &str) -> Result<bool> {
    let key = keys.queue(name);
    let mut start = 0;
    loop {
        let window: Vec<String> =
            redis::cmd("LRANGE").arg(&key).arg(start).arg(start + SCAN_STEP - 1).query_async(&mut pool.get()).await?;
        if let Some(m) = window.iter().find(|m| m.contains(jid) && jid_of(m) == jid) {
            let removed: u64 = redis::cmd("LREM").arg(&key).arg(1).arg(m).query_async(&mut pool.get()).await?;
            return Ok(removed == 1);
        }
        if (window.len() as u64) < SCAN_STEP {
            return Ok(false);
        }
        start += SCAN_STEP;
    }
}

/// Removes queue `name` and its jobs (Sidekiq's `Queue#clear`); returns how many jobs it held.
pub async fn queue_clear(pool: &Pool, keys: &Keys, name: &str) -> Result<u64> {
    let key = keys.queue(name);
    let (size,): (u64,) = redis::pipe()
        .atomic()
        .cmd("LLEN")
        .arg(&key)
        .cmd("UNLINK")
        .arg(&key)
        .ignore()
        .cmd("SREM")
        .arg(keys.queues())
        .arg(name)
        .ignore()
        .query_async(&mut pool.get())
        .await?;
    Ok(size)
}

/// Sends a process a signal (`TSTP` quiet, `TERM` stop, `TTIN` dump threads)
/// that its next heartbeat picks up, as Sidekiq's Busy page buttons do.
pub async fn signal(pool: &Pool, keys: &Keys, identity: &str, signal: &str) -> Result<()> {
    if !matches!(signal, "TSTP" | "TERM" | "TTIN") {
        return Err(KiqError::config(format!("unknown signal {signal:?}: use TSTP, TERM or TTIN")));
    }
    let key = keys.signals(identity);
    redis::pipe()
        .atomic()
        .cmd("LPUSH")
        .arg(&key)
        .arg(signal)
        .ignore()
        .cmd("EXPIRE")
        .arg(&key)
        .arg(SIGNAL_TTL_SECS)
        .ignore()
        .query_async::<()>(&mut pool.get())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_refs() {
        assert_eq!(
            JobRef::parse("1796108995.4743598-0895ff12a0bb053e87f6f620").unwrap(),
            JobRef { score: 1_796_108_995.474_359_8, jid: "0895ff12a0bb053e87f6f620".into() }
        );
        assert_eq!(JobRef::parse("5-a-b").unwrap().jid, "a-b");
        for bad in ["", "x-abc", "1.5", "1.5-", "inf-a", "NaN-a"] {
            assert!(JobRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Action::parse("add_to_queue").unwrap(), Action::AddToQueue);
        assert!(Action::parse("explode").is_err());
    }
}
