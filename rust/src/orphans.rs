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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::job::Payload;
use crate::keys::Keys;
use crate::leader::Leadership;
use crate::poison::{self, Outcome};
use crate::pool::Pool;
use crate::retry::RetryPolicy;

pub use crate::poison::POISON_ERROR;

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
    // The dead processes' lists, by identity.
    let mut dead: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut alive: HashMap<String, bool> = HashMap::new();
    for list in &lists {
        let Some((identity, queue)) = keys.parse_in_progress(list) else { continue };
        if !alive.contains_key(identity) {
            let exists: bool = redis::cmd("EXISTS").arg(keys.process(identity)).query_async(&mut conn).await?;
            alive.insert(identity.to_owned(), exists);
        }
        if !alive[identity] {
            dead.entry(identity.to_owned()).or_default().push((list.clone(), queue.to_owned()));
        }
    }
    for (identity, lists) in dead {
        let r = recover_process(pool, keys, policy, max_recoveries, &identity, &lists).await?;
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

/// Hands back every job a dead process held, judged together (`poison.rs`).
/// A list whose queue key holds the wrong kind of value keeps its jobs (the
/// next pass tries again), without holding up the rest.
pub async fn recover_process(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    max_recoveries: u32,
    identity: &str,
    lists: &[(String, String)],
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
    let verdicts = poison::judge(&payloads, isolated.as_deref());
    let mut complete = true;
    for ((list, queue, raw), verdict) in held.iter().zip(verdicts) {
        match poison::hand_back(pool, keys, policy, max_recoveries, list, queue, raw, verdict, identity, "died").await {
            Ok(Outcome::Requeued) => report.requeued += 1,
            Ok(Outcome::Poisoned) => report.poisoned += 1,
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
