//! What Sidekiq's Web UI does to jobs, for kiq's introspection API: find a
//! job in a sorted set by jid, run it now, kill it, delete it.
//!
//! Each change is one atomic step that first checks the job is still where it
//! was seen, so racing with a poller or another operator never duplicates or
//! loses a job.

use crate::error::{KiqError, Result};
use crate::job::{Payload, field};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::scheduled::due_payload;
use crate::scripts;
use crate::timestamp::{self, float_json};

/// Refuses text that cannot be a jid (it also goes into key names and Lua patterns).
fn check_jid(jid: &str) -> Result<()> {
    if jid.is_empty() || !jid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(KiqError::codec(format!("{jid:?} is not a job id")));
    }
    Ok(())
}

/// Members of sorted set `set` whose jid is `jid`, with their scores.
pub async fn find(pool: &Pool, set: &str, jid: &str) -> Result<Vec<(String, f64)>> {
    check_jid(jid)?;
    let mut conn = pool.get();
    let pattern = format!("*{jid}*");
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, page): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
            .arg(set)
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for (member, score) in page {
            if Payload::parse(member.as_str()).ok().and_then(|p| p.jid()).as_deref() == Some(jid) {
                out.push((member, score));
            }
        }
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Moves a member of `set` to its queue now. From the retry set the
/// `retry_count` goes down by one first, as Sidekiq's "Retry Now" does, so a
/// manual retry does not use up an attempt. Returns false if it was gone.
pub async fn enqueue_now(pool: &Pool, keys: &Keys, policy: &RetryPolicy, set: &str, member: &str) -> Result<bool> {
    let mut job = Payload::parse(member)?;
    if set == keys.retry()
        && let Some(count) = job.retry_count()
    {
        job.set_json(field::RETRY_COUNT, (count - 1).to_string());
    }
    let (queue, payload) = due_payload(job, policy.unit, timestamp::now());
    let reply: Vec<redis::Value> = scripts::ENQUEUE_DUE
        .key(set)
        .key(keys.queues())
        .key(keys.queue(&queue))
        .arg(member)
        .arg(payload)
        .arg(&queue)
        .invoke_async(&mut pool.get())
        .await?;
    let due = crate::scheduled::due_reply(&reply);
    if let Some((key, problem)) = due.problems.first() {
        return Err(KiqError::Undeliverable(format!("cannot move the job to {key:?}: {problem}")));
    }
    Ok(due.moved == 1)
}

/// Moves a member of `set` to the dead set (the Web UI's "Kill"). Returns false if it was gone.
pub async fn kill(pool: &Pool, keys: &Keys, policy: &RetryPolicy, set: &str, member: &str) -> Result<bool> {
    Ok(crate::bulk::kill(pool, keys, policy, set, &[member.to_owned()]).await? == 1)
}

/// The field of Sidekiq's iterable-job state hash that cancels the job.
pub const ITERATION_CANCELLED: &str = "cancelled";

/// How long a cancellation request waits for its job to be seen running.
pub const CANCEL_KEEP_SECS: f64 = 86_400.0;

/// How long Sidekiq keeps an iterable job's state hash (30 days).
const ITERATION_TTL_SECS: u64 = 2_592_000;

/// Asks the process running job `jid` to cancel it (seen at its next
/// heartbeat); requests older than a day are dropped on the way. Also marks
/// it the way Sidekiq 7.3+ cancels an iterable job, so a Ruby iterable job
/// with that jid stops too.
pub async fn request_cancel(pool: &Pool, keys: &Keys, jid: &str) -> Result<()> {
    check_jid(jid)?;
    let now = timestamp::now();
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(keys.cancelled())
        .arg(float_json(now))
        .arg(jid)
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.cancelled())
        .arg("-inf")
        .arg(float_json(now - CANCEL_KEEP_SECS))
        .cmd("HSETNX")
        .arg(keys.iteration(jid))
        .arg(ITERATION_CANCELLED)
        .arg(now as i64)
        .cmd("EXPIRE")
        .arg(keys.iteration(jid))
        .arg(ITERATION_TTL_SECS)
        .arg("NX");
    let applied = crate::exec::atomic(&mut pipe, &mut pool.get()).await?;
    if !applied.failed.is_empty() {
        // Asking again is harmless: every command here is idempotent.
        return Err(KiqError::Undeliverable(format!(
            "the cancel request for {jid} was only partly written: {}",
            applied.failed.join("; ")
        )));
    }
    Ok(())
}
