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
use crate::job::{NewJob, Template, field, json_string, new_jid, unique_token};
use crate::keys::Keys;
use crate::scripts;
use crate::timestamp::{self, TimestampUnit, float_json};

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

/// A unique job's lock, taken atomically with its push.
#[derive(Debug, Clone)]
pub struct Lock {
    pub key: String,
    pub ttl_ms: u64,
}

/// Payload fields as (name, JSON text).
type Fields = Vec<(String, String)>;

/// The fields a job's expiry and uniqueness add to its payload, and its lock.
fn extras(job: &NewJob, at: Option<f64>, now: f64, keys: &Keys) -> Result<(Fields, Option<Lock>)> {
    let mut fields = Vec::new();
    let base = at.unwrap_or(now);
    if let Some(secs) = job.expires_in {
        // Counted from the run time of a scheduled job, as Sidekiq Pro does.
        fields.push((field::EXPIRES_AT.to_owned(), float_json(base + secs)));
    }
    let mut lock = None;
    if let Some(u) = job.unique {
        let token = unique_token(&job.class, &job.queue, &job.args)?;
        fields.push((field::UNIQUE_TOKEN.to_owned(), json_string(&token)));
        fields.push((field::UNIQUE_UNTIL.to_owned(), json_string(u.until.as_str())));
        // A scheduled job holds its lock until its time plus unique_for.
        let ttl = (base - now).max(0.0) + u.for_secs;
        lock = Some(Lock { key: keys.unique(&token), ttl_ms: (ttl * 1000.0).ceil().max(1.0) as u64 });
    }
    Ok((fields, lock))
}

/// A job ready to push: its jid, the item, and the lock a unique job takes.
pub type Prepared = (String, PushItem, Option<Lock>);

/// Encodes a job with its expiry and unique fields; returns the jid, the item
/// and the lock to take (for unique jobs).
pub fn prepare_full(job: &NewJob, at: Option<f64>, now: f64, unit: TimestampUnit, keys: &Keys) -> Result<Prepared> {
    if let Some(seal) = &job.encrypt {
        if job.unique.is_some() {
            return Err(crate::error::KiqError::config(crate::job::UNIQUE_AND_ENCRYPT));
        }
        // Sealed afresh for every push: a new IV each time.
        let mut sealed = job.clone();
        sealed.args = seal.args(&job.args)?;
        return prepare_sealed(&sealed, at, now, unit, keys);
    }
    prepare_sealed(job, at, now, unit, keys)
}

fn prepare_sealed(job: &NewJob, at: Option<f64>, now: f64, unit: TimestampUnit, keys: &Keys) -> Result<Prepared> {
    let at = at.filter(|t| *t > now);
    let (fields, lock) = extras(job, at, now, keys)?;
    if fields.is_empty() {
        let (jid, item) = prepare(job, at, now, unit);
        return Ok((jid, item, None));
    }
    let mut with = job.clone();
    with.options.extend(fields);
    let (jid, item) = prepare(&with, at, now, unit);
    Ok((jid, item, lock))
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

/// Whether a unique push went in, or which jid holds the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Yes,
    /// Skipped: another job holds the lock (its jid, when it could be read).
    Held(Option<String>),
}

/// Pushes unique jobs, each atomically with its lock, in order.
pub async fn push_unique(
    conn: &mut (impl ConnectionLike + Send),
    keys: &Keys,
    jobs: &[(PushItem, Lock, String)],
) -> Result<Vec<Pushed>> {
    let mut out = Vec::with_capacity(jobs.len());
    for (item, lock, jid) in jobs {
        let target = if item.at.is_some() { keys.schedule() } else { keys.queue(&item.queue) };
        let score = item.at.map(float_json).unwrap_or_default();
        let reply: Vec<redis::Value> = scripts::UNIQUE_PUSH
            .key(&lock.key)
            .key(target)
            .key(keys.queues())
            .arg(jid)
            .arg(lock.ttl_ms)
            .arg(&item.payload)
            .arg(score)
            .arg(&*item.queue)
            .invoke_async(conn)
            .await?;
        let pushed = matches!(reply.first(), Some(redis::Value::Int(1)));
        out.push(if pushed {
            Pushed::Yes
        } else {
            Pushed::Held(reply.get(1).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()))
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_jobs_are_sealed_per_push_and_never_unique() {
        let keyring = std::sync::Arc::new(crate::crypto::Keyring::new(1, [(1, vec![3; 32])]).unwrap());
        let bag = crate::marshal::Value::Int(7);
        let (head, seal) = crate::crypto::Seal::split(keyring.clone(), 2, "[1]".into(), bag).unwrap();
        let mut job = NewJob::new("X", head);
        job.encrypt = Some(seal);
        let keys = Keys::default();
        let (_, a, _) = prepare_full(&job, None, 100.0, TimestampUnit::Seconds, &keys).unwrap();
        let (_, b, _) = prepare_full(&job, None, 100.0, TimestampUnit::Seconds, &keys).unwrap();
        assert!(a.payload.starts_with(r#"{"retry":true,"queue":"default","encrypt":true,"args":[1,"BAhT"#));
        assert_ne!(a.payload, b.payload, "a fresh IV per push");
        let args = crate::job::Payload::parse(a.payload).unwrap().args().unwrap().to_owned();
        assert_eq!(crate::crypto::open_last(Some(&keyring), &args).unwrap(), crate::marshal::Value::Int(7));
        job.unique = Some(crate::job::Unique { for_secs: 60.0, until: crate::job::UniqueUntil::Success });
        assert!(
            prepare_full(&job, None, 100.0, TimestampUnit::Seconds, &keys)
                .unwrap_err()
                .to_string()
                .contains("fresh IV")
        );
    }

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
