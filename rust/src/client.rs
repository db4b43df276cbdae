//! Pushing jobs, as Sidekiq's client does.
//!
//! Immediate jobs: `LPUSH queue:<q> <payload>...` and `SADD queues <q>`,
//! grouped by queue. Scheduled jobs: `ZADD schedule <at> <payload>` with no
//! `enqueued_at` and no `SADD` (the poller does both when the job is due).
//! One call is one round trip to `push.lua`, which checks key types before
//! writing anything and records the producer's sequence numbers with the
//! jobs, so a call retried after a lost reply never pushes a job twice.

use redis::aio::ConnectionLike;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{KiqError, Result};
use crate::job::{NewJob, Template, field, json_string, new_jid, unique_token};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::scripts;
use crate::timestamp::{self, TimestampUnit, float_json};

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

/// What Redis did with a batch (see `scripts/push.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushReply {
    /// In Redis, except the jobs Redis refused: (sequence number, error).
    Done { refused: Vec<(u64, String)> },
    /// Nothing was written: these keys hold the wrong kind of value (key, its type).
    WrongType(Vec<(String, String)>),
}

/// A job to push with its producer's sequence number.
pub type Numbered<'a> = (u64, &'a PushItem);

/// Pushes jobs numbered by their producer (see [`Keys::pushed`]), exactly
/// once: a replay of jobs that landed before (a lost reply) pushes nothing
/// again. One round trip.
pub async fn push_numbered<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    producer: &str,
    ttl: std::time::Duration,
    items: &[Numbered<'_>],
) -> Result<PushReply> {
    if items.is_empty() {
        return Ok(PushReply::Done { refused: Vec::new() });
    }
    let mut queues: Vec<&str> = Vec::new();
    for (_, item) in items.iter().filter(|(_, i)| i.at.is_none()) {
        if !queues.contains(&&*item.queue) {
            queues.push(&item.queue);
        }
    }
    // Each job's target (0: the schedule, i: the i-th queue), then runs of
    // consecutive numbers and one target (see `push.lua`).
    let targets: Vec<usize> = items
        .iter()
        .map(|(_, item)| match item.at {
            Some(_) => 0,
            None => queues.iter().position(|q| **q == *item.queue).unwrap_or(0) + 1,
        })
        .collect();
    let mut runs: Vec<(u64, usize, usize)> = Vec::new();
    for ((seq, _), &target) in items.iter().zip(&targets) {
        match runs.last_mut() {
            Some((first, count, t)) if *t == target && *first + *count as u64 == *seq => *count += 1,
            _ => runs.push((*seq, 1, target)),
        }
    }
    let bytes: usize = items.iter().map(|(_, item)| item.payload.len() + 24).sum();
    let args = 5 + 2 * queues.len() + 3 * runs.len() + 2 * items.len();
    let mut cmd = scripts::evalsha(&scripts::PUSH, 3 + queues.len(), args, bytes + 192);
    cmd.arg(keys.pushed(producer)).arg(keys.queues()).arg(keys.schedule());
    for q in &queues {
        cmd.arg(keys.queue(q));
    }
    cmd.arg(ttl.as_millis() as u64).arg(runs.len());
    for q in &queues {
        cmd.arg(*q);
    }
    for (first, count, target) in &runs {
        cmd.arg(*first).arg(*count).arg(*target);
    }
    for (_, item) in items {
        if let Some(at) = item.at {
            cmd.arg(timestamp::float_json(at));
        }
        cmd.arg(&item.payload);
    }
    let reply: Vec<String> = scripts::eval(&cmd, &scripts::PUSH, conn).await?;
    Ok(match reply.split_first() {
        Some((head, rest)) if head == "wrongtype" => PushReply::WrongType(key_types(rest)),
        Some((_, rest)) => PushReply::Done {
            refused: rest
                .chunks(2)
                .filter_map(|p| Some((p[0].parse().ok()?, p.get(1).cloned().unwrap_or_default())))
                .collect(),
        },
        None => PushReply::Done { refused: Vec::new() },
    })
}

/// The (key, type) pairs after a script's `"wrongtype"` reply (`push.lua`, `push_mark.lua`).
pub fn key_types(rest: &[String]) -> Vec<(String, String)> {
    rest.chunks(2).map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default())).collect()
}

/// How long a one-off push ([`push`]) is remembered for its retries.
const ONE_OFF_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Pushes jobs now, exactly once: a call whose reply is lost (a dropped
/// connection, a timeout) is retried until `deadline` without pushing
/// twice. A key of the wrong type or a refusal is an error naming it.
pub async fn push(pool: &Pool, keys: &Keys, items: &[PushItem], deadline: Instant) -> Result<()> {
    let producer = format!("once-{}", new_jid());
    let numbered: Vec<Numbered<'_>> = items.iter().enumerate().map(|(i, item)| (i as u64 + 1, item)).collect();
    let mut pause = Duration::from_millis(20);
    loop {
        match push_numbered(&mut pool.get(), keys, &producer, ONE_OFF_TTL, &numbered).await {
            Ok(PushReply::Done { refused }) if refused.is_empty() => return Ok(()),
            Ok(PushReply::Done { refused }) => {
                let (_, why) = &refused[0];
                return Err(KiqError::Undeliverable(format!(
                    "Redis refused {} of {} jobs: {why}",
                    refused.len(),
                    items.len()
                )));
            }
            Ok(PushReply::WrongType(wrong)) => return Err(KiqError::Undeliverable(wrong_type_message(&wrong))),
            Err(e) if trouble(&e) != Trouble::Permanent && Instant::now() + pause < deadline => {
                if let KiqError::Redis(re) = &e {
                    pool.note_error(re);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why keys of the wrong type stop a push, naming each.
pub fn wrong_type_message(wrong: &[(String, String)]) -> String {
    let named: Vec<String> = wrong
        .iter()
        .map(|(key, kind)| {
            let want = if key.ends_with("schedule") {
                "a sorted set"
            } else if key.ends_with("queues") && !key.contains("queue:") {
                "a set"
            } else {
                "a list"
            };
            format!("{key:?} holds a {kind}, not {want}")
        })
        .collect();
    format!("WRONGTYPE: {}; fix or delete the key (retrying cannot help)", named.join(", "))
}

/// Whether a failed push may succeed when sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Redis is away, slow or failing over: keep the jobs and retry, however long.
    Away,
    /// Redis refused it for now (out of memory, say): retry for a while.
    Refused,
    /// It never will (NOPERM, WRONGTYPE): retrying cannot help.
    Permanent,
}

pub fn trouble(e: &KiqError) -> Trouble {
    let KiqError::Redis(re) = e else { return Trouble::Permanent };
    match re.code() {
        Some("NOPERM" | "WRONGTYPE") => Trouble::Permanent,
        Some("OOM" | "ERR" | "EXECABORT" | "BUSY") => Trouble::Refused,
        _ => Trouble::Away,
    }
}

/// Whether a unique push went in, or which jid holds the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Yes,
    /// Skipped: another job holds the lock (its jid, when it could be read).
    Held(Option<String>),
}

/// Pushes unique jobs, each atomically with its lock, in order; a call
/// whose reply is lost is sent again (until `deadline`), which the script
/// recognises by the lock its own job holds.
pub async fn push_unique(
    pool: &Pool,
    keys: &Keys,
    jobs: &[(PushItem, Lock, String)],
    deadline: Instant,
) -> Result<Vec<Pushed>> {
    let mut out = Vec::with_capacity(jobs.len());
    for (item, lock, jid) in jobs {
        let target = if item.at.is_some() { keys.schedule() } else { keys.queue(&item.queue) };
        let score = item.at.map(float_json).unwrap_or_default();
        let mut pause = Duration::from_millis(20);
        let reply: Vec<redis::Value> = loop {
            let sent = scripts::UNIQUE_PUSH
                .key(&lock.key)
                .key(&target)
                .key(keys.queues())
                .arg(jid)
                .arg(lock.ttl_ms)
                .arg(&item.payload)
                .arg(&score)
                .arg(&*item.queue)
                .invoke_async(&mut pool.get())
                .await
                .map_err(KiqError::from);
            match sent {
                Ok(reply) => break reply,
                Err(e) => match trouble(&e) {
                    Trouble::Permanent => return Err(KiqError::Undeliverable(e.to_string())),
                    _ if Instant::now() + pause < deadline => {
                        if let KiqError::Redis(re) = &e {
                            pool.note_error(re);
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    _ => return Err(e),
                },
            }
        };
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
