//! What Sidekiq's Web UI does to jobs, for kiq's introspection API and the
//! `kiq` command: find a job in a sorted set by jid, list a set or queue page
//! by page (filtered by class or error), run jobs now, kill them, delete them.
//!
//! Each change is one atomic step that first checks the job is still where it
//! was seen, so racing with a poller or another operator never duplicates or
//! loses a job. Listings read bounded windows (`ZRANGE`/`LRANGE` of at most
//! `window` entries) and stop after `max_scan` entries, whatever the set's size.

use crate::error::{KiqError, Result};
use crate::job::{Payload, field, json_string};
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

/// The JSON text of a job's `args` as it may be shown: the last argument of
/// an encrypted job (`"encrypt": true`) is replaced by [`crate::crypto::REDACTED`], as
/// Sidekiq's Web UI does. `[]` when the payload has no args array.
pub fn display_args(job: &Payload) -> String {
    let args = job.args().unwrap_or("[]");
    if job.get(field::ENCRYPT).is_none_or(|v| matches!(v, "false" | "null")) {
        return args.to_owned();
    }
    match serde_json::from_str::<Vec<&serde_json::value::RawValue>>(args) {
        Ok(items) if !items.is_empty() => {
            let mut shown: Vec<&str> = items[..items.len() - 1].iter().map(|v| v.get()).collect();
            let masked = json_string(crate::crypto::REDACTED);
            shown.push(&masked);
            format!("[{}]", shown.join(","))
        }
        _ => args.to_owned(),
    }
}

/// A sorted set or a queue, read in the order the Web UI shows it.
#[derive(Debug, Clone)]
pub enum Source {
    /// `schedule` and `retry` soonest first; `dead` (with `newest_first`) latest death first.
    Set { key: String, newest_first: bool },
    /// A queue, next job to run first.
    Queue { key: String },
}

impl Source {
    /// A job set by name (`"schedule"`, `"retry"`, `"dead"`), or with `kind`
    /// `"queue"`, the queue `name`.
    pub fn named(keys: &Keys, kind: &str, name: Option<&str>) -> Result<Self> {
        match (kind, name) {
            ("queue", Some(q)) => Ok(Self::Queue { key: keys.queue(q) }),
            ("queue", None) => Err(KiqError::config("listing a queue needs its name")),
            (set, _) => Ok(Self::Set { key: job_set(keys, set)?, newest_first: set == "dead" }),
        }
    }
}

/// A job set's key by its name, or why the name is not one.
pub fn job_set(keys: &Keys, set: &str) -> Result<String> {
    keys.job_set(set).ok_or_else(|| KiqError::config(format!("{set:?} is not a job set: use schedule, retry or dead")))
}

/// Which jobs a listing keeps: all, or those of a class, or with an error
/// containing some text (case-insensitive, in `error_class: error_message`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub class: Option<String>,
    pub error: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.class.is_none() && self.error.is_none()
    }

    /// Whether a stored payload passes. An unparsable one passes only an empty filter.
    pub fn keeps(&self, member: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        let Ok(job) = Payload::parse(member) else { return false };
        let text = |k| job.get(k).and_then(|v| serde_json::from_str::<String>(v).ok());
        if let Some(class) = &self.class
            && ![field::CLASS, field::WRAPPED, field::DISPLAY_CLASS].iter().any(|&k| text(k).as_deref() == Some(class))
        {
            return false;
        }
        if let Some(needle) = &self.error {
            let error = format!(
                "{}: {}",
                text(field::ERROR_CLASS).unwrap_or_default(),
                text(field::ERROR_MESSAGE).unwrap_or_default()
            );
            if !error.to_lowercase().contains(&needle.to_lowercase()) {
                return false;
            }
        }
        true
    }
}

/// Bounds of a listing.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Entries read per round trip.
    pub window: usize,
    /// Entries read in all before giving up (matches or not).
    pub max_scan: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { window: 500, max_scan: 100_000 }
    }
}

/// A page of matching jobs.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// `(payload, score)` in display order; the score is None for a queue.
    pub jobs: Vec<(String, Option<f64>)>,
    /// Entries read.
    pub scanned: usize,
    /// Entries in the set or queue.
    pub size: u64,
    /// Position to continue from, or None when the end was reached.
    pub next: Option<usize>,
}

/// Entries in `source`.
pub async fn size(pool: &Pool, source: &Source) -> Result<u64> {
    let cmd = match source {
        Source::Set { key, .. } => redis::cmd("ZCARD").arg(key).clone(),
        Source::Queue { key } => redis::cmd("LLEN").arg(key).clone(),
    };
    Ok(cmd.query_async(&mut pool.get()).await?)
}

/// Entries `start..start + count` of `source` in display order.
pub async fn window(pool: &Pool, source: &Source, start: usize, count: usize) -> Result<Vec<(String, Option<f64>)>> {
    let (first, last) = (start as i64, (start + count) as i64 - 1);
    let mut conn = pool.get();
    Ok(match source {
        Source::Set { key, newest_first } => {
            let cmd = if *newest_first { "ZREVRANGE" } else { "ZRANGE" };
            let page: Vec<(String, f64)> =
                redis::cmd(cmd).arg(key).arg(first).arg(last).arg("WITHSCORES").query_async(&mut conn).await?;
            page.into_iter().map(|(m, s)| (m, Some(s))).collect()
        }
        Source::Queue { key } => {
            // Pushed at the head, run from the tail: the next to run is index -1.
            let page: Vec<String> =
                redis::cmd("LRANGE").arg(key).arg(-last - 1).arg(-first - 1).query_async(&mut conn).await?;
            page.into_iter().rev().map(|m| (m, None)).collect()
        }
    })
}

/// Removes one entry equal to `member` from `source`; false if there was none.
pub async fn remove(pool: &Pool, source: &Source, member: &str) -> Result<bool> {
    let cmd = match source {
        Source::Set { key, .. } => redis::cmd("ZREM").arg(key).arg(member).clone(),
        Source::Queue { key } => redis::cmd("LREM").arg(key).arg(1).arg(member).clone(),
    };
    let removed: u64 = cmd.query_async(&mut pool.get()).await?;
    Ok(removed > 0)
}

/// Deletes a sorted set (a queue is cleared with `bulk::queue_clear`, which also forgets its name).
pub async fn clear_set(pool: &Pool, key: &str) -> Result<()> {
    redis::cmd("UNLINK").arg(key).query_async::<()>(&mut pool.get()).await?;
    Ok(())
}

/// The known queue names, sorted.
pub async fn queue_names(pool: &Pool, keys: &Keys) -> Result<Vec<String>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS").arg(keys.queues()).query_async(&mut pool.get()).await?;
    names.sort();
    Ok(names)
}

/// `(processed, failed)`: the all-time counters (0 when unset).
pub async fn totals(pool: &Pool, keys: &Keys) -> Result<(u64, u64)> {
    let (p, f): (Option<u64>, Option<u64>) = redis::pipe()
        .cmd("GET")
        .arg(keys.stat_processed())
        .cmd("GET")
        .arg(keys.stat_failed())
        .query_async(&mut pool.get())
        .await?;
    Ok((p.unwrap_or(0), f.unwrap_or(0)))
}

/// Walks `source` from display position `start`, window by window, handing
/// each entry the filter keeps to `keep` until it has taken `limit` of them
/// (or `bounds.max_scan` entries were read, or the end). Returns entries
/// read and the position to continue from (None at the end).
async fn walk(
    pool: &Pool,
    source: &Source,
    filter: &Filter,
    start: usize,
    limit: usize,
    bounds: Bounds,
    mut keep: impl FnMut(String, Option<f64>),
) -> Result<(usize, Option<usize>)> {
    let (mut scanned, mut taken, mut pos) = (0, 0, start);
    loop {
        if taken == limit || scanned >= bounds.max_scan {
            return Ok((scanned, Some(pos)));
        }
        let want = bounds.window.min(bounds.max_scan - scanned).max(1);
        let page = window(pool, source, pos, want).await?;
        let got = page.len();
        for (member, score) in page {
            if taken == limit {
                return Ok((scanned, Some(pos)));
            }
            scanned += 1;
            pos += 1;
            if filter.keeps(&member) {
                taken += 1;
                keep(member, score);
            }
        }
        if got < want {
            return Ok((scanned, None));
        }
    }
}

/// Up to `limit` jobs of `source` that `filter` keeps, from display position `start`.
pub async fn list(
    pool: &Pool,
    source: &Source,
    filter: &Filter,
    start: usize,
    limit: usize,
    bounds: Bounds,
) -> Result<Listing> {
    let size = size(pool, source).await?;
    let mut jobs = Vec::new();
    let (scanned, next) = walk(pool, source, filter, start, limit, bounds, |m, s| jobs.push((m, s))).await?;
    Ok(Listing { jobs, scanned, size, next })
}

/// How many jobs of `source` the filter keeps, reading at most `bounds.max_scan`
/// entries: `(matches, scanned, size)`. Without a filter, the size alone.
pub async fn count(pool: &Pool, source: &Source, filter: &Filter, bounds: Bounds) -> Result<(u64, usize, u64)> {
    let size = size(pool, source).await?;
    if filter.is_empty() {
        return Ok((size, 0, size));
    }
    let mut matches = 0;
    let (scanned, _) = walk(pool, source, filter, 0, usize::MAX, bounds, |_, _| matches += 1).await?;
    Ok((matches, scanned, size))
}

/// What to do to each job of a bulk action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run now (a set member to its queue).
    Retry,
    Delete,
}

impl Action {
    /// `"retry"` or `"delete"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "retry" => Ok(Self::Retry),
            "delete" => Ok(Self::Delete),
            other => Err(KiqError::config(format!("action must be \"retry\" or \"delete\", not {other:?}"))),
        }
    }
}

/// What a bulk action did: jobs acted on, jobs already gone when their turn came, entries read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    pub done: u64,
    pub gone: u64,
    pub scanned: usize,
}

/// Applies `action` to every job of `source` that `filter` keeps, window by
/// window, each job in its own atomic step; stops after `bounds.max_scan` entries.
pub async fn act_on_all(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    source: &Source,
    filter: &Filter,
    action: Action,
    bounds: Bounds,
) -> Result<Done> {
    let mut report = Done::default();
    let mut pos = 0;
    while report.scanned < bounds.max_scan {
        let want = bounds.window.min(bounds.max_scan - report.scanned);
        let page = window(pool, source, pos, want).await?;
        let got = page.len();
        let mut removed = 0;
        for (member, _) in page {
            report.scanned += 1;
            if !filter.keeps(&member) {
                continue;
            }
            let acted = match (action, source) {
                (Action::Retry, Source::Set { key, .. }) => enqueue_now(pool, keys, policy, key, &member).await?,
                (Action::Delete, Source::Set { key, .. }) => {
                    redis::cmd("ZREM").arg(key).arg(&member).query_async::<i64>(&mut pool.get()).await? == 1
                }
                (Action::Delete, Source::Queue { key }) => {
                    redis::cmd("LREM").arg(key).arg(1).arg(&member).query_async::<i64>(&mut pool.get()).await? == 1
                }
                (Action::Retry, Source::Queue { .. }) => {
                    return Err(KiqError::config("a queued job is already waiting to run; retry takes a job set"));
                }
            };
            if acted {
                report.done += 1;
                removed += 1;
            } else {
                report.gone += 1;
            }
        }
        // What was acted on left the set, so the next window starts that much earlier.
        pos += got - removed;
        if got < want {
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_jobs_show_their_last_argument_masked() {
        let shown = |p: &str| display_args(&Payload::parse(p).unwrap());
        assert_eq!(shown(r#"{"class":"X","args":[1,"c2VjcmV0"],"encrypt":true}"#), r#"[1,"[encrypted data]"]"#);
        assert_eq!(shown(r#"{"class":"X","args":[1,{"a":2}],"encrypt":false}"#), r#"[1,{"a":2}]"#);
        assert_eq!(shown(r#"{"class":"X","args":[1, 2]}"#), "[1, 2]");
        assert_eq!(shown(r#"{"class":"X","args":[],"encrypt":true}"#), "[]");
        assert_eq!(shown(r#"{"class":"X"}"#), "[]");
    }

    #[test]
    fn filters_match_class_or_error_text() {
        let job = r#"{"class":"ActiveJob::Wrapper","wrapped":"Mailer","args":[],"error_class":"Net::ReadTimeout","error_message":"slow"}"#;
        let f = |class: Option<&str>, error: Option<&str>| Filter {
            class: class.map(Into::into),
            error: error.map(Into::into),
        };
        assert!(f(None, None).keeps("not json"));
        assert!(!f(Some("X"), None).keeps("not json"));
        assert!(f(Some("Mailer"), None).keeps(job) && f(Some("ActiveJob::Wrapper"), None).keeps(job));
        assert!(!f(Some("Mail"), None).keeps(job));
        assert!(f(None, Some("readtimeout: SLOW")).keeps(job) && !f(None, Some("KeyError")).keeps(job));
        assert!(f(Some("Mailer"), Some("slow")).keeps(job) && !f(Some("Other"), Some("slow")).keeps(job));
    }
}
