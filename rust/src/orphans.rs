//! Orphan recovery (Sidekiq Pro's "reliable server"): jobs left in the
//! in-progress lists of processes that died go back to their queues.
//!
//! The leader looks at startup and every `interval`. A process counts as dead
//! when its heartbeat hash is gone (60 s after its last beat), so the lists of
//! a live process are never touched. Each job moves atomically (`recover.lua`)
//! to the right end of its queue, where it runs next; which of a dead
//! process's jobs is blamed for its death (and buried as a poison pill after
//! `max_recoveries` deaths) is `poison.rs`'s rule. Identities without a
//! heartbeat are also pruned from `processes`, as Sidekiq's
//! `ProcessSet#cleanup` does.
//!
//! A swarm's parent knows the moment a child dies, and asks a living child to
//! recover it at once ([`recover_dead`]) rather than 60 s later; when it
//! killed the child because a job ran past its `hard_timeout`, that job fails
//! with `JobTimeoutError` through the retry path and its neighbours go back
//! untouched (none of them is suspected or blamed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::ack::Settle;
use crate::activejob;
use crate::batches::{BatchRef, KEEP_SECS, Outcome as BatchOutcome};
use crate::error::Result;
use crate::heartbeat;
use crate::job::{Payload, field};
use crate::keys::{DAILY_STAT_TTL_SECS, Keys};
use crate::leader::Leadership;
use crate::poison::{self, Outcome, Verdict};
use crate::pool::Pool;
use crate::retry::{self, Failure, RetryPolicy};
use crate::scripts;
use crate::timestamp::{self, float_json};
use crate::worker::{WorkerOptions, Workers};

pub use crate::poison::POISON_ERROR;

/// The error class of a job whose process was killed for its `hard_timeout`.
pub const TIMEOUT_ERROR: &str = "kiq.errors.JobTimeoutError";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub requeued: usize,
    pub poisoned: usize,
    pub pruned: usize,
    /// Jobs failed with `JobTimeoutError` (their process was killed for them).
    pub timed_out: usize,
}

/// Jobs a swarm's parent killed a process for, and how they fail.
#[derive(Debug, Clone, Default)]
pub struct TimedOut {
    /// jid → the `hard_timeout` (seconds) it ran past.
    pub limits: HashMap<String, f64>,
    /// The registered workers, whose options apply where the payload is silent.
    pub workers: Workers,
}

/// One pass: recovers every dead process's in-progress jobs; `me` (the
/// calling process, alive by definition) is never taken for dead, even while
/// its heartbeat does not reach Redis.
pub async fn recover(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    max_recoveries: u32,
    me: &str,
) -> Result<Recovery> {
    let mut conn = pool.get();
    let mut report = Recovery::default();
    let mut lists: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.in_progress_pattern())
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        lists.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // The dead processes' lists, by identity.
    let mut dead: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut alive: HashMap<String, bool> = HashMap::new();
    for list in &lists {
        let Some((identity, queue)) = keys.parse_in_progress(list) else { continue };
        if identity == me {
            continue;
        }
        if !alive.contains_key(identity) {
            let exists: bool = redis::cmd("EXISTS").arg(keys.process(identity)).query_async(&mut conn).await?;
            alive.insert(identity.to_owned(), exists);
        }
        if !alive[identity] {
            dead.entry(identity.to_owned()).or_default().push((list.clone(), queue.to_owned()));
        }
    }
    for (identity, lists) in dead {
        let r = recover_process(pool, keys, policy, max_recoveries, &identity, &lists, &TimedOut::default()).await?;
        report.requeued += r.requeued;
        report.poisoned += r.poisoned;
    }
    let members: BTreeSet<String> = redis::cmd("SMEMBERS").arg(keys.processes()).query_async(&mut conn).await?;
    for identity in members {
        let exists: bool = redis::cmd("EXISTS").arg(keys.process(&identity)).query_async(&mut conn).await?;
        if !exists {
            let _: i64 = redis::cmd("SREM").arg(keys.processes()).arg(&identity).query_async(&mut conn).await?;
            report.pruned += 1;
        }
    }
    if report.requeued + report.poisoned > 0 {
        log::warn!(
            "recovered {} jobs from dead processes ({} poison pills to the dead set)",
            report.requeued + report.poisoned,
            report.poisoned
        );
    }
    Ok(report)
}

/// Recovers a process known to be dead (its swarm parent reaped it), whatever
/// its heartbeat says: its in-progress jobs go back as [`recover_process`]
/// decides, then it leaves the Busy page and `processes`, and gives up the
/// leadership if it held it (so another process leads within moments, not
/// a lease later). Safe to run again: a job already handed back is skipped.
pub async fn recover_dead(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    max_recoveries: u32,
    identity: &str,
    timed_out: &TimedOut,
) -> Result<Recovery> {
    let mut conn = pool.get();
    let mut lists: Vec<(String, String)> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.in_progress_pattern_of(identity))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for list in page {
            if let Some((owner, queue)) = keys.parse_in_progress(&list)
                && owner == identity
            {
                let queue = queue.to_owned();
                lists.push((list, queue));
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    lists.sort();
    lists.dedup();
    // Its heartbeat stays until the jobs are back, so the leader's own pass
    // (which only touches processes without one) does not race this one.
    let report = recover_process(pool, keys, policy, max_recoveries, identity, &lists, timed_out).await?;
    heartbeat::clear(pool, keys, identity).await?;
    let _: i64 = scripts::RESIGN.key(keys.leader()).arg(identity).invoke_async(&mut conn).await?;
    if report.requeued + report.poisoned + report.timed_out > 0 {
        log::warn!(
            "recovered {} jobs of the dead process {identity}: {} back in their queues, {} poison pills to the dead \
             set, {} failed for their hard_timeout",
            report.requeued + report.poisoned + report.timed_out,
            report.requeued,
            report.poisoned,
            report.timed_out
        );
    }
    Ok(report)
}

/// Hands back every job a dead process held, judged together (`poison.rs`);
/// jobs in `timed_out` instead fail with `JobTimeoutError`, and then nothing
/// else is suspected (the process died for them). A list whose queue key
/// holds the wrong kind of value keeps its jobs (the next pass tries again),
/// without holding up the rest.
pub async fn recover_process(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    max_recoveries: u32,
    identity: &str,
    lists: &[(String, String)],
    timed_out: &TimedOut,
) -> Result<Recovery> {
    let mut conn = pool.get();
    let mut report = Recovery::default();
    let isolated: Option<String> = redis::cmd("GET").arg(keys.isolated(identity)).query_async(&mut conn).await?;
    let mut held: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    for (list, queue) in lists {
        let jobs: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(list).arg(0).arg(-1).query_async(&mut conn).await?;
        held.extend(jobs.into_iter().map(|raw| (list.as_str(), queue.as_str(), raw)));
    }
    let payloads: Vec<Option<Payload>> =
        held.iter().map(|(_, _, raw)| std::str::from_utf8(raw).ok().and_then(|s| Payload::parse(s).ok())).collect();
    let verdicts = if timed_out.limits.is_empty() {
        poison::judge(&payloads, isolated.as_deref())
    } else {
        vec![Verdict::Innocent; payloads.len()]
    };
    let mut complete = true;
    for (((list, queue, raw), verdict), payload) in held.iter().zip(verdicts).zip(payloads) {
        let limit = payload.as_ref().and_then(Payload::jid).and_then(|jid| timed_out.limits.get(&jid).copied());
        let handled = match (payload, limit) {
            (Some(p), Some(limit)) => {
                let worker = timed_out.workers.of(&activejob::runs_as(&p).unwrap_or_default());
                fail_timed_out(pool, keys, policy, worker, identity, list, queue, raw, p, limit).await
            }
            _ => {
                poison::hand_back(pool, keys, policy, max_recoveries, list, queue, raw, verdict, identity, "died").await
            }
        };
        match handled {
            Ok(Outcome::Requeued) => report.requeued += 1,
            Ok(Outcome::Poisoned) => report.poisoned += 1,
            Ok(Outcome::TimedOut) => report.timed_out += 1,
            Ok(Outcome::Gone) => {}
            Err(e) => {
                log::error!("cannot hand back a job of the dead process {identity} from {list:?}: {e}");
                complete = false;
            }
        }
    }
    if complete {
        // The dead fetchers' last-batch copies: every job of them was in the lists above.
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(keys.isolated(identity));
        for (_, queue) in lists {
            unlink.arg(keys.last_fetch(identity, queue)).arg(keys.last_fetch_token(identity, queue));
        }
        let _: () = unlink.query_async(&mut conn).await?;
    }
    Ok(report)
}

/// Fails a job its process was killed for (it ran past `limit`, its
/// `hard_timeout`) through the retry path, as if it had raised `JobTimeoutError`.
#[allow(clippy::too_many_arguments)]
async fn fail_timed_out(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    worker: &WorkerOptions,
    identity: &str,
    list: &str,
    queue: &str,
    raw: &[u8],
    payload: Payload,
    limit: f64,
) -> Result<Outcome> {
    let now = timestamp::now();
    let jid = payload.jid().unwrap_or_default();
    let lock = payload.get(field::UNIQUE_TOKEN).and_then(|t| serde_json::from_str::<String>(t).ok());
    let failure = Failure {
        error_class: TIMEOUT_ERROR.into(),
        error_message: format!(
            "the job ran past its hard_timeout of {limit}s: the swarm killed its process {identity} and started a \
             new one"
        ),
        ..Failure::default()
    };
    // A batch member failed here counts for its batch in the same step (callbacks count only successes).
    let batch = BatchRef::of(&payload).filter(|b| b.callback.is_none()).map(|b| b.chain);
    let (disposition, _) = retry::on_failure(payload, queue, &failure, worker, policy, now, rand::random());
    let outcome = BatchOutcome::of(&disposition);
    let (settle, frees_lock) = Settle::of_failure(disposition);
    let (kind, score, failed) = match settle {
        Settle::Retry { at, payload } => ("retry", float_json(at), payload.into_bytes()),
        Settle::Dead { payload } => ("dead", String::new(), payload),
        // Discard: of_failure makes no other settlement.
        _ => ("discard", String::new(), Vec::new()),
    };
    let day = timestamp::utc_date(now);
    let mut inv = scripts::FAIL_ORPHAN.prepare_invoke();
    inv.key(list)
        .key(keys.retry())
        .key(keys.dead())
        .key(keys.stat_processed())
        .key(keys.stat_failed())
        .key(keys.stat_processed_day(&day))
        .key(keys.stat_failed_day(&day))
        .arg(raw)
        .arg(kind)
        .arg(score)
        .arg(failed)
        .arg(float_json(now))
        .arg(policy.dead_trim(now))
        .arg(DAILY_STAT_TTL_SECS);
    if let Some(chain) = &batch {
        inv.key(keys.schedule());
        for bid in chain {
            inv.key(keys.batch(bid)).key(keys.batch_done(bid)).key(keys.batch_failed(bid));
        }
        inv.arg(policy.unit.encode(now)).arg(KEEP_SECS).arg(&jid).arg(outcome.as_str()).arg(chain.len());
        for bid in chain {
            inv.arg(bid);
        }
    }
    let reply: Vec<redis::Value> = inv.invoke_async(&mut pool.get()).await?;
    if reply.first().and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok()) != Some(1) {
        return Ok(Outcome::Gone);
    }
    let fired: Vec<String> =
        reply.iter().skip(1).filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok()).collect();
    if !fired.is_empty()
        && let Err(e) = crate::scheduled::release(pool, keys, policy.unit, fired).await
    {
        log::warn!("batch callbacks wait for the scheduler's next poll: {e}");
    }
    log::warn!("job {jid} ran past its hard_timeout of {limit}s and was failed with JobTimeoutError ({kind})");
    // A unique job that failed for good frees its lock, as a failure in a worker does.
    if let Some(token) = lock.filter(|_| frees_lock) {
        let _: i64 = scripts::UNLOCK.key(keys.unique(&token)).arg(&jid).invoke_async(&mut pool.get()).await?;
    }
    Ok(Outcome::TimedOut)
}

pub struct Recoverer {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub policy: RetryPolicy,
    pub interval: Duration,
    pub max_recoveries: u32,
    pub leadership: Arc<Leadership>,
    /// This process's identity (never recovered by itself).
    pub identity: String,
}

impl Recoverer {
    /// Checks soon after start, then every `interval`, while leading.
    pub async fn run(self, mut halt: watch::Receiver<bool>) {
        let mut wait = Duration::from_millis(200);
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = halt.wait_for(|h| *h) => return,
            }
            wait = self.interval;
            if !self.leadership.is_leader() {
                // Not leading yet: look again shortly, so a new leader checks at once.
                wait = self.interval.min(Duration::from_secs(1));
                continue;
            }
            if let Err(e) = recover(&self.pool, &self.keys, &self.policy, self.max_recoveries, &self.identity).await {
                log::error!("orphan recovery failed, will retry: {e}");
            }
        }
    }
}
