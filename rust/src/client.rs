//! Pushing jobs, as Sidekiq's client does.
//!
//! Immediate jobs: `SADD queues <q>...` and `LPUSH queue:<q> <payload>...`,
//! grouped by queue. Scheduled jobs: `ZADD schedule <at> <payload>` with no
//! `enqueued_at` and no `SADD` (the poller does both when the job is due).
//! One call is one round trip, wrapped in MULTI/EXEC so a retried call can
//! never push half a batch twice.

use redis::aio::ConnectionLike;

use std::sync::Arc;

use crate::error::Result;
use crate::job::{NewJob, Template, new_jid};
use crate::keys::Keys;
use crate::timestamp::{self, TimestampUnit};

/// LPUSH at most this many payloads per command, so one huge bulk push does
/// not stall Redis for other clients in a single command.
const LPUSH_SLICE: usize = 1000;

/// One encoded job ready for Redis.
#[derive(Debug, Clone)]
pub struct PushItem {
    pub queue: Arc<str>,
    pub payload: String,
    /// Run time in epoch seconds; `None` pushes to the queue now.
    pub at: Option<f64>,
}

/// Encodes a new job. A time at or before `now` pushes immediately, as
/// Sidekiq's `perform_in`/`perform_at` do. Returns the jid and the item.
pub fn prepare(job: &NewJob, at: Option<f64>, now: f64, unit: TimestampUnit) -> (String, PushItem) {
    let jid = job.jid.clone().unwrap_or_else(new_jid);
    let at = at.filter(|t| *t > now);
    let payload = job.encode(&jid, now, unit, at.is_none());
    (jid, PushItem { queue: Arc::from(job.queue.as_str()), payload, at })
}

/// Many jobs of one class and options, differing only in their args (a bulk push).
pub struct Bulk {
    template: Template,
    queue: Arc<str>,
    stamp: String,
    at: Option<f64>,
}

impl Bulk {
    /// Jobs like `job` (whose own `args` and `jid` are ignored) at `at`, as [`prepare`] would time them.
    pub fn new(job: &NewJob, at: Option<f64>, now: f64, unit: TimestampUnit) -> Self {
        let at = at.filter(|t| *t > now);
        Self { template: job.template(), queue: Arc::from(job.queue.as_str()), stamp: unit.encode(now), at }
    }

    /// One job with these args (JSON text of an array): its jid and item.
    pub fn item(&self, args: &str) -> (String, PushItem) {
        let jid = new_jid();
        let payload = self.template.render(args, &jid, &self.stamp, self.at.is_none());
        (jid, PushItem { queue: self.queue.clone(), payload, at: self.at })
    }
}

/// Writes the items to Redis in one round trip.
pub async fn push<C: ConnectionLike>(conn: &mut C, keys: &Keys, items: &[PushItem]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut queues: Vec<&str> = Vec::new();
    for item in items.iter().filter(|i| i.at.is_none()) {
        if !queues.contains(&&*item.queue) {
            queues.push(&item.queue);
        }
    }
    if !queues.is_empty() {
        pipe.cmd("SADD").arg(keys.queues()).arg(&queues).ignore();
    }
    for queue in &queues {
        let payloads: Vec<&str> =
            items.iter().filter(|i| i.at.is_none() && &*i.queue == *queue).map(|i| i.payload.as_str()).collect();
        for slice in payloads.chunks(LPUSH_SLICE) {
            pipe.cmd("LPUSH").arg(keys.queue(queue)).arg(slice).ignore();
        }
    }
    let scheduled: Vec<(String, &str)> =
        items.iter().filter_map(|i| i.at.map(|at| (timestamp::float_json(at), i.payload.as_str()))).collect();
    for slice in scheduled.chunks(LPUSH_SLICE) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(keys.schedule());
        for (score, member) in slice {
            cmd.arg(score).arg(*member);
        }
        pipe.add_command(cmd).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_times_push_now() {
        let job = NewJob::new("X", "[]");
        let (jid, item) = prepare(&job, Some(99.0), 100.0, TimestampUnit::Seconds);
        assert_eq!(jid.len(), 24);
        assert!(item.at.is_none());
        assert!(item.payload.contains("enqueued_at"));
        let (_, later) = prepare(&job, Some(101.0), 100.0, TimestampUnit::Seconds);
        assert_eq!(later.at, Some(101.0));
        assert!(!later.payload.contains("enqueued_at"));
    }
}
