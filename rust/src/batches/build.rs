//! Ending a batch's `jobs()` block, exactly once.
//!
//! While the block runs, its jobs collect in a [`Builder`]; every
//! [`CHUNK_JOBS`] jobs (or [`CHUNK_BYTES`]) a chunk is staged in Redis
//! (`batch_stage.lua`), so a huge batch never sits whole in memory, yet
//! nothing reaches a queue before the block ends: a block that raises pushes
//! nothing ([`discard`] drops what was staged). At the end, [`Plan::run`]
//! sends `batch_commit.lua` steps: the first creates or reopens the batch
//! (registering a new one with its parent), each moves up to [`MOVE_JOBS`]
//! staged jobs to their queues, the last pushes the rest and ends the block.
//! A block of several steps keeps the batch "open" until its last, so no
//! callback fires while its jobs arrive. Child batches whose blocks ended
//! inside this one are deferred and committed between its first step and its
//! others. Every step carries the builder's sequence number, so a step sent
//! again after a lost reply changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Callback, Event, KEEP_SECS, LIVE_SECS, member_fields};
use crate::client::{PushItem, Trouble, trouble};
use crate::error::{KiqError, Result};
use crate::job::{NewJob, new_jid};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::scripts;
use crate::timestamp::{self, TimestampUnit, float_json};

/// Jobs held in memory before a chunk is staged.
pub const CHUNK_JOBS: usize = 10_000;
/// Bytes of payloads held before a chunk is staged.
pub const CHUNK_BYTES: usize = 8 << 20;
/// Staged jobs one commit step moves (bounds how long one script runs).
pub const MOVE_JOBS: usize = 10_000;
/// How long a builder's step numbers and staged jobs outlive its last step.
const BUILDER_TTL_MS: u64 = 24 * 3600 * 1000;

/// What a `jobs()` block works on.
#[derive(Debug, Clone)]
pub struct Spec {
    pub bid: String,
    /// Ancestors, nearest first.
    pub up: Vec<String>,
    /// Create the batch (else reopen it).
    pub new: bool,
    pub description: Option<String>,
    pub callback_queue: Option<String>,
    pub callbacks: Vec<Callback>,
}

/// The jobs of one `jobs()` block, until it ends.
#[derive(Debug)]
pub struct Builder {
    spec: Spec,
    /// Names this builder's step numbers and staged list in Redis.
    id: String,
    seq: u64,
    pending: Vec<PushItem>,
    pending_bytes: usize,
    staged: usize,
    /// Queues of the jobs staged or pending (the commit declares their keys).
    queues: Vec<Arc<str>>,
    /// Child batches whose blocks ended inside this one.
    deferred: Vec<Builder>,
    /// The payload fields of its jobs (computed once).
    fields: Vec<(String, String)>,
}

/// A chunk to stage: one `batch_stage.lua` call.
#[derive(Debug)]
pub struct Stage {
    id: String,
    seq: u64,
    entries: Vec<String>,
}

/// One `batch_commit.lua` step.
#[derive(Debug)]
struct Step {
    id: String,
    seq: u64,
    mode: &'static str,
    last: bool,
    moves: usize,
    chain: Vec<String>,
    queues: Vec<Arc<str>>,
    meta: [String; 9],
    jobs: Vec<String>,
}

/// The steps that end a block (and the blocks deferred into it), in order.
#[derive(Debug)]
pub struct Plan {
    steps: Vec<Step>,
}

/// A job as staged or committed: `<queue>\n<score or empty>\n<payload>`.
fn entry(item: &PushItem) -> String {
    let score = item.at.map(float_json).unwrap_or_default();
    format!("{}\n{score}\n{}", item.queue, item.payload)
}

impl Builder {
    pub fn new(spec: Spec) -> Result<Self> {
        super::check_bid(&spec.bid)?;
        for bid in &spec.up {
            super::check_bid(bid)?;
        }
        if let Some(q) = &spec.callback_queue {
            crate::job::check_queue_name(q)?;
        }
        if !spec.new && !spec.callbacks.is_empty() {
            return Err(KiqError::config(format!(
                "batch {} exists already: callbacks are set before its first jobs() block",
                spec.bid
            )));
        }
        let mut chain = vec![spec.bid.clone()];
        chain.extend(spec.up.iter().cloned());
        Ok(Self {
            fields: member_fields(&chain),
            spec,
            id: format!("batch-{}", new_jid()),
            seq: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            staged: 0,
            queues: Vec::new(),
            deferred: Vec::new(),
        })
    }

    pub fn bid(&self) -> &str {
        &self.spec.bid
    }

    /// The batch, then its ancestors.
    pub fn chain(&self) -> Vec<String> {
        let mut chain = vec![self.spec.bid.clone()];
        chain.extend(self.spec.up.iter().cloned());
        chain
    }

    /// Makes `job` a job of this batch. Unique jobs are refused: a duplicate
    /// skipped at push would leave the batch waiting for it forever.
    pub fn tag(&self, job: &mut NewJob) -> Result<()> {
        if job.unique.is_some() {
            return Err(KiqError::config(format!(
                "{} is a unique job (unique_for): unique jobs cannot be part of a batch (a skipped duplicate would \
                 leave batch {} waiting for it forever)",
                job.class, self.spec.bid
            )));
        }
        job.options.extend(self.fields.iter().cloned());
        Ok(())
    }

    /// Number of jobs given so far (staged or held).
    pub fn len(&self) -> usize {
        self.staged + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes jobs in; returns a chunk to stage once enough are held.
    pub fn add(&mut self, items: Vec<PushItem>) -> Option<Stage> {
        for item in items {
            if item.at.is_none() && !self.queues.contains(&item.queue) {
                self.queues.push(item.queue.clone());
            }
            self.pending_bytes += item.payload.len();
            self.pending.push(item);
        }
        if self.pending.len() < CHUNK_JOBS && self.pending_bytes < CHUNK_BYTES {
            return None;
        }
        self.seq += 1;
        self.staged += self.pending.len();
        self.pending_bytes = 0;
        let entries = self.pending.drain(..).map(|i| entry(&i)).collect();
        Some(Stage { id: self.id.clone(), seq: self.seq, entries })
    }

    /// A child batch's block ended inside this one: it is committed with it.
    pub fn defer(&mut self, child: Builder) {
        self.deferred.push(child);
    }

    /// The builder ids whose staged jobs [`discard`] drops.
    pub fn staged_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.deferred.iter().flat_map(Builder::staged_ids).collect();
        if self.staged > 0 {
            ids.push(self.id.clone());
        }
        ids
    }

    fn meta(&self) -> Result<[String; 9]> {
        let chain = self.chain();
        let mut templates = [String::new(), String::new(), String::new()];
        let mut awaited = [0usize; 3];
        for cb in &self.spec.callbacks {
            let slot = match cb.event {
                Event::Complete => 0,
                Event::Success => 1,
                Event::Death => 2,
            };
            templates[slot].push_str(&cb.template(&chain)?);
            awaited[slot] += usize::from(cb.awaited);
        }
        let [complete, success, death] = templates;
        Ok([
            self.spec.description.clone().unwrap_or_default(),
            self.spec.callback_queue.clone().unwrap_or_default(),
            self.spec.up.join(" "),
            complete,
            success,
            death,
            awaited[0].to_string(),
            awaited[1].to_string(),
            awaited[2].to_string(),
        ])
    }

    /// The steps that end this block (children deferred into it included).
    pub fn plan(mut self) -> Result<Plan> {
        let mut steps = Vec::new();
        self.push_steps(&mut steps)?;
        Ok(Plan { steps })
    }

    fn step(&mut self, mode: &'static str, last: bool, moves: usize, meta: [String; 9], jobs: Vec<String>) -> Step {
        self.seq += 1;
        Step {
            id: self.id.clone(),
            seq: self.seq,
            mode,
            last,
            moves,
            chain: self.chain(),
            queues: self.queues.clone(),
            meta,
            jobs,
        }
    }

    fn push_steps(&mut self, steps: &mut Vec<Step>) -> Result<()> {
        let mut mode = if self.spec.new { "new" } else { "add" };
        let mut meta = if self.spec.new { self.meta()? } else { Default::default() };
        if !self.deferred.is_empty() {
            // Open first, so the children can register with this batch.
            steps.push(self.step(mode, false, 0, std::mem::take(&mut meta), Vec::new()));
            mode = "more";
            for mut child in std::mem::take(&mut self.deferred) {
                child.push_steps(steps)?;
            }
        }
        let mut left = self.staged;
        loop {
            let moves = left.min(MOVE_JOBS);
            left -= moves;
            let last = left == 0;
            let jobs = if last { self.pending.drain(..).map(|i| entry(&i)).collect() } else { Vec::new() };
            steps.push(self.step(mode, last, moves, std::mem::take(&mut meta), jobs));
            mode = "more";
            if last {
                return Ok(());
            }
        }
    }
}

impl Stage {
    /// Stages the chunk (retrying a lost reply until `deadline`).
    pub async fn send(&self, pool: &Pool, keys: &Keys, deadline: Instant) -> Result<()> {
        let mut inv = scripts::BATCH_STAGE.prepare_invoke();
        inv.key(keys.pushed(&self.id)).key(keys.batch_staged(&self.id));
        inv.arg(BUILDER_TTL_MS).arg(self.seq).arg(BUILDER_TTL_MS);
        for e in &self.entries {
            inv.arg(e);
        }
        let _: i64 = once(pool, deadline, "stage a batch's jobs", &inv).await?;
        Ok(())
    }
}

impl Plan {
    /// Sends the steps in order; returns the callback jobs that fired (an
    /// empty batch's, or a batch whose jobs all ran meanwhile), already moved
    /// to their queues.
    pub async fn run(self, pool: &Pool, keys: &Keys, unit: TimestampUnit, deadline: Instant) -> Result<usize> {
        let mut fired = Vec::new();
        for step in &self.steps {
            fired.extend(step.send(pool, keys, unit, deadline).await?);
        }
        let n = fired.len();
        if n > 0 {
            crate::scheduled::release(pool, keys, unit, fired).await?;
        }
        Ok(n)
    }
}

impl Step {
    async fn send(&self, pool: &Pool, keys: &Keys, unit: TimestampUnit, deadline: Instant) -> Result<Vec<String>> {
        let now = timestamp::now();
        let mut inv = scripts::BATCH_COMMIT.prepare_invoke();
        inv.key(keys.pushed(&self.id))
            .key(keys.queues())
            .key(keys.schedule())
            .key(keys.batches())
            .key(keys.batch_staged(&self.id));
        for bid in &self.chain {
            inv.key(keys.batch(bid)).key(keys.batch_done(bid)).key(keys.batch_failed(bid));
        }
        for q in &self.queues {
            inv.key(keys.queue(q));
        }
        inv.arg(BUILDER_TTL_MS)
            .arg(self.seq)
            .arg(self.mode)
            .arg(if self.last { "1" } else { "0" })
            .arg(self.moves)
            .arg(float_json(now))
            .arg(unit.encode(now))
            .arg(KEEP_SECS)
            .arg(LIVE_SECS)
            .arg(self.chain.len());
        for bid in &self.chain {
            inv.arg(bid);
        }
        inv.arg(self.queues.len());
        for q in &self.queues {
            inv.arg(&**q);
        }
        for m in &self.meta {
            inv.arg(m);
        }
        inv.arg(self.jobs.len());
        for j in &self.jobs {
            inv.arg(j);
        }
        let reply: Vec<String> = once(pool, deadline, "end a batch's jobs() block", &inv).await?;
        let bid = &self.chain[0];
        match reply.split_first() {
            Some((head, fired)) if head == "ok" => Ok(fired.to_vec()),
            Some((head, _)) if head == "dup" => Ok(Vec::new()),
            Some((head, rest)) if head == "wrongtype" => Err(KiqError::Undeliverable(format!(
                "WRONGTYPE: {}; fix or delete the key (batch {bid} was not written)",
                rest.join(", ")
            ))),
            Some((head, _)) if head == "gone" => Err(KiqError::Batch(format!(
                "batch {bid} does not exist: it expired (30 days after its last jobs were added, 24 hours after \
                 it succeeded) or never existed"
            ))),
            Some((head, _)) if head == "succeeded" => Err(KiqError::Batch(format!(
                "batch {bid} already succeeded (its callbacks fired): no jobs can be added; start a new batch"
            ))),
            Some((head, _)) if head == "exists" => {
                Err(KiqError::Batch(format!("a batch with bid {bid} exists already: a new batch needs a new bid")))
            }
            Some((head, _)) if head == "noparent" => Err(KiqError::Batch(format!(
                "batch {bid}'s parent {} is gone (expired or unknown) or already succeeded: a child batch cannot \
                 be added to it",
                self.chain.get(1).map_or("?", String::as_str)
            ))),
            other => Err(KiqError::codec(format!("unexpected reply from batch_commit.lua: {other:?}"))),
        }
    }
}

/// Drops what the builders `ids` staged (a block that raised).
pub async fn discard(pool: &Pool, keys: &Keys, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("UNLINK");
    for id in ids {
        cmd.arg(keys.batch_staged(id)).arg(keys.pushed(id));
    }
    let _: i64 = cmd.query_async(&mut pool.get()).await?;
    Ok(())
}

/// Invokes a step until it gets a reply: a lost one (a dropped connection, a
/// timeout) is sent again, unchanged, until `deadline`; the step's sequence
/// number makes the repeat harmless.
async fn once<T: redis::FromRedisValue>(
    pool: &Pool,
    deadline: Instant,
    what: &str,
    inv: &redis::ScriptInvocation<'_>,
) -> Result<T> {
    let mut pause = Duration::from_millis(20);
    loop {
        match inv.invoke_async(&mut pool.get()).await.map_err(KiqError::from) {
            Ok(v) => return Ok(v),
            Err(e) if trouble(&e) != Trouble::Permanent && Instant::now() + pause < deadline => {
                if let KiqError::Redis(re) = &e {
                    pool.note_error(re);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) if trouble(&e) == Trouble::Permanent => {
                return Err(KiqError::Undeliverable(format!("cannot {what}: {e}")));
            }
            Err(KiqError::Redis(e)) => {
                return Err(KiqError::Timeout(format!("could not {what} before the deadline (Redis: {e})")));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Retry;

    fn item(i: usize) -> PushItem {
        PushItem {
            queue: Arc::from(if i.is_multiple_of(2) { "a" } else { "b" }),
            payload: format!("{{\"n\":{i}}}"),
            at: None,
        }
    }

    fn spec(bid: &str, new: bool) -> Spec {
        Spec {
            bid: bid.into(),
            up: vec!["P".into()],
            new,
            description: Some("d".into()),
            callback_queue: None,
            callbacks: vec![Callback::new("success", "Done", "default", Retry::Default, "{}").unwrap()],
        }
    }

    #[test]
    fn big_blocks_stage_in_chunks_and_commit_in_steps() {
        let mut b = Builder::new(spec("B", true)).unwrap();
        let mut stages = 0;
        for i in 0..(CHUNK_JOBS * 2 + 5) {
            if let Some(stage) = b.add(vec![item(i)]) {
                assert_eq!(stage.entries.len(), CHUNK_JOBS);
                assert_eq!(stage.seq, stages + 1);
                stages += 1;
            }
        }
        assert_eq!((stages, b.len()), (2, CHUNK_JOBS * 2 + 5));
        let plan = b.plan().unwrap();
        let shape: Vec<_> = plan.steps.iter().map(|s| (s.seq, s.mode, s.last, s.moves, s.jobs.len())).collect();
        assert_eq!(shape, vec![(3, "new", false, MOVE_JOBS, 0), (4, "more", true, MOVE_JOBS, 5)]);
        assert!(plan.steps[0].meta[3].is_empty() && plan.steps[0].meta[4].contains("\"class\":\"Done\""));
        assert_eq!(plan.steps[0].meta[2], "P");
        assert!(plan.steps[1].meta.iter().all(String::is_empty));
        assert_eq!(plan.steps[1].queues.len(), 2);
    }

    #[test]
    fn children_commit_between_the_parents_first_step_and_the_rest() {
        let mut parent = Builder::new(spec("P", true)).unwrap();
        parent.add(vec![item(1)]);
        let mut child = Builder::new(Spec { up: vec!["P".into()], ..spec("C", true) }).unwrap();
        child.add(vec![item(2)]);
        parent.defer(child);
        let plan = parent.plan().unwrap();
        let shape: Vec<_> = plan.steps.iter().map(|s| (s.chain[0].as_str(), s.mode, s.last, s.jobs.len())).collect();
        assert_eq!(shape, vec![("P", "new", false, 0), ("C", "new", true, 1), ("P", "more", true, 1)]);
    }

    #[test]
    fn unique_jobs_and_late_callbacks_are_refused() {
        let b = Builder::new(spec("B", true)).unwrap();
        let mut job = NewJob::new("X", "[]");
        job.unique = Some(crate::job::Unique { for_secs: 5.0, until: crate::job::UniqueUntil::Success });
        assert!(b.tag(&mut job).unwrap_err().to_string().contains("unique jobs cannot be part of a batch"));
        assert!(Builder::new(spec("B", false)).is_err());
        let mut plain = NewJob::new("X", "[]");
        b.tag(&mut plain).unwrap();
        assert_eq!(plain.options, vec![("kiq_bid".into(), "\"B\"".into()), ("kiq_bid_up".into(), "[\"P\"]".into())]);
    }
}
