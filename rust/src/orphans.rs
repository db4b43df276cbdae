//! Orphan recovery (Sidekiq Pro's "reliable server"): jobs left in the
//! in-progress lists of processes that died go back to their queues.
//!
//! The leader looks at startup and every `interval`. A process counts as dead
//! when its heartbeat hash is gone (60 s after its last beat), so the lists of
//! a live process are never touched. Each job moves atomically (`recover.lua`)
//! to the right end of its queue, where it runs next. A job recovered more
//! than `max_recoveries` times in 72 hours is a poison pill (it keeps killing
//! its workers) and goes to the dead set with an error saying so, or is
//! dropped when it has `dead: false`. Identities without a heartbeat are also
//! pruned from `processes`, as Sidekiq's `ProcessSet#cleanup` does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::job::{Payload, field};
use crate::keys::Keys;
use crate::leader::Leadership;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::scripts;
use crate::timestamp::{self, float_json};

/// The error class of a job sent to the dead set as a poison pill.
pub const POISON_ERROR: &str = "kiq.errors.PoisonPillError";
const RECOVERIES_TTL_SECS: i64 = 72 * 3600;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub requeued: usize,
    pub poisoned: usize,
    pub pruned: usize,
}

/// One pass: recovers every dead process's in-progress jobs.
pub async fn recover(pool: &Pool, keys: &Keys, policy: &RetryPolicy, max_recoveries: u32) -> Result<Recovery> {
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
    let mut alive: HashMap<String, bool> = HashMap::new();
    for list in &lists {
        let Some((identity, queue)) = keys.parse_in_progress(list) else { continue };
        if !alive.contains_key(identity) {
            let exists: bool = redis::cmd("EXISTS").arg(keys.process(identity)).query_async(&mut conn).await?;
            alive.insert(identity.to_owned(), exists);
        }
        if alive[identity] {
            continue;
        }
        let jobs: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(list).arg(0).arg(-1).query_async(&mut conn).await?;
        for job in jobs {
            if recover_one(pool, keys, policy, max_recoveries, list, identity, queue, &job).await? {
                report.requeued += 1;
            } else {
                report.poisoned += 1;
            }
        }
        // The dead fetcher's last-batch copy: every job of it is in the list above.
        let _: () = redis::cmd("UNLINK")
            .arg(keys.last_fetch(identity, queue))
            .arg(keys.last_fetch_token(identity, queue))
            .query_async(&mut conn)
            .await?;
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

/// Moves one orphaned job; true when it went back to its queue.
#[allow(clippy::too_many_arguments)]
async fn recover_one(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    max_recoveries: u32,
    list: &str,
    identity: &str,
    queue: &str,
    job: &[u8],
) -> Result<bool> {
    let mut conn = pool.get();
    let payload = std::str::from_utf8(job).ok().and_then(|s| Payload::parse(s).ok());
    let jid = payload.as_ref().and_then(Payload::jid);
    let count: i64 = match &jid {
        Some(jid) => {
            let (n,): (i64,) = redis::pipe()
                .cmd("HINCRBY")
                .arg(keys.recoveries())
                .arg(jid)
                .arg(1)
                .cmd("EXPIRE")
                .arg(keys.recoveries())
                .arg(RECOVERIES_TTL_SECS)
                .ignore()
                .query_async(&mut conn)
                .await?;
            n
        }
        None => 1,
    };
    let now = timestamp::now();
    let (mode, dead_payload) = match payload {
        Some(mut p) if count > i64::from(max_recoveries) => {
            let message = format!(
                "recovered {count} times from processes that died while running it (last {identity}); \
                 a job that keeps killing its workers goes to the dead set instead of running again"
            );
            log::error!("poison pill {}: {message}", jid.as_deref().unwrap_or("?"));
            p.set_str(field::ERROR_CLASS, POISON_ERROR);
            p.set_str(field::ERROR_MESSAGE, &message);
            if !p.contains(field::FAILED_AT) {
                p.set_json(field::FAILED_AT, policy.unit.encode(now));
            }
            let mode = if p.dead() == Some(false) { "drop" } else { "bury" };
            (mode, p.encode())
        }
        // Unreadable payloads go back as they are: the fetcher buries them.
        _ => ("requeue", String::new()),
    };
    let _: i64 = scripts::RECOVER
        .key(list)
        .key(keys.queue(queue))
        .key(keys.queues())
        .key(keys.dead())
        .arg(job)
        .arg(mode)
        .arg(dead_payload)
        .arg(float_json(now))
        .arg(float_json(now - policy.dead_timeout_secs))
        .arg(policy.dead_limit)
        .arg(queue)
        .invoke_async(&mut conn)
        .await?;
    Ok(mode == "requeue")
}

pub struct Recoverer {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub policy: RetryPolicy,
    pub interval: Duration,
    pub max_recoveries: u32,
    pub leadership: Arc<Leadership>,
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
            if let Err(e) = recover(&self.pool, &self.keys, &self.policy, self.max_recoveries).await {
                log::error!("orphan recovery failed, will retry: {e}");
            }
        }
    }
}
