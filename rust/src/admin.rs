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

/// Members of sorted set `set` whose jid is `jid`, with their scores.
pub async fn find(pool: &Pool, set: &str, jid: &str) -> Result<Vec<(String, f64)>> {
    if jid.is_empty() || !jid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(KiqError::codec(format!("{jid:?} is not a job id")));
    }
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
    let moved: i64 = scripts::ENQUEUE_DUE
        .key(set)
        .key(keys.queues())
        .key(keys.queue(&queue))
        .arg(member)
        .arg(payload)
        .arg(&queue)
        .invoke_async(&mut pool.get())
        .await?;
    Ok(moved == 1)
}

/// Moves a member of `set` to the dead set (the Web UI's "Kill"). Returns false if it was gone.
pub async fn kill(pool: &Pool, keys: &Keys, policy: &RetryPolicy, set: &str, member: &str) -> Result<bool> {
    let now = timestamp::now();
    let moved: i64 = scripts::BURY
        .key(set)
        .key(keys.dead())
        .arg(member)
        .arg(float_json(now))
        .arg(float_json(now - policy.dead_timeout_secs))
        .arg(policy.dead_limit)
        .invoke_async(&mut pool.get())
        .await?;
    Ok(moved == 1)
}
