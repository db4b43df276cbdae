//! Poison pills: blaming the job that kills processes, not its neighbours.
//!
//! When a process dies (or is recycled for memory) with jobs in flight, the
//! jobs go back to their queues; which of them caused it?
//! - A job that ran *alone* (a suspect with the isolation gate, recorded in
//!   `kiq:isolated|<identity>`) is blamed for sure; the others the process
//!   held were not running and go back untouched.
//! - A job the process held on its own is blamed too: nothing else could have done it.
//! - Otherwise nobody is blamed: every job goes back marked `kiq_suspect`,
//!   so each next runs alone somewhere (`isolation.rs`) and the next death,
//!   if any, names the culprit.
//!
//! A job blamed more than `max_recoveries` times in 72 hours is a poison pill
//! and goes to the dead set (`kiq.errors.PoisonPillError`), or is dropped with
//! `dead: false`. A payload without a jid is known by a digest of its text.

use crate::batches::{BatchRef, KEEP_SECS};
use crate::error::Result;
use crate::job::{Payload, canonical_sha256, field};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::scripts;
use crate::timestamp::{self, float_json};

/// The error class of a job sent to the dead set as a poison pill.
pub const POISON_ERROR: &str = "kiq.errors.PoisonPillError";
const RECOVERIES_TTL_SECS: i64 = 72 * 3600;

/// How one handed-back job is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This death counts against it.
    Blame,
    /// It may have done it: back as a suspect, to run alone next time.
    Suspect,
    /// It was not running (another job ran alone): back as it was.
    Innocent,
}

/// What a handed-back job became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Requeued,
    /// Buried as a poison pill (or dropped, with `dead: false`).
    Poisoned,
    /// No longer in the list (another recovery took it).
    Gone,
    /// Failed with `JobTimeoutError`: its process was killed for it (`orphans.rs`).
    TimedOut,
}

/// The name a job's deaths are counted under: its jid, else a digest of the
/// payload without kiq's own suspect mark (so the mark does not change it).
pub fn blame_key(payload: &Payload) -> String {
    if let Some(jid) = payload.jid().filter(|j| !j.is_empty()) {
        return jid;
    }
    let mut p = payload.clone();
    p.remove(field::SUSPECT);
    let text = p.encode();
    let digest = canonical_sha256(&text).unwrap_or_else(|_| text.len().to_string());
    format!("sha256:{digest}")
}

/// The verdict for each of `held` jobs (payloads where readable) of a process
/// that died, given the job it ran alone (`isolated`, a blame key), if any.
pub fn judge(held: &[Option<Payload>], isolated: Option<&str>) -> Vec<Verdict> {
    let alone = isolated.filter(|key| held.iter().flatten().any(|p| blame_key(p) == *key));
    held.iter()
        .map(|p| match (p, alone) {
            (Some(p), Some(key)) if blame_key(p) == key => Verdict::Blame,
            (_, Some(_)) => Verdict::Innocent,
            _ if held.len() == 1 => Verdict::Blame,
            _ => Verdict::Suspect,
        })
        .collect()
}

/// Hands back one job of in-progress list `list` (queue `queue`) of the
/// process `identity`, as `verdict` says; `why` says what happened to the
/// process ("died", "was recycled for memory").
#[allow(clippy::too_many_arguments)]
pub async fn hand_back(
    pool: &Pool,
    keys: &Keys,
    policy: &RetryPolicy,
    max_recoveries: u32,
    list: &str,
    queue: &str,
    raw: &[u8],
    verdict: Verdict,
    identity: &str,
    why: &str,
) -> Result<Outcome> {
    let payload = std::str::from_utf8(raw).ok().and_then(|s| Payload::parse(s).ok());
    // A batch member buried as a poison pill dies for its batch, in the same step.
    let batch = payload.as_ref().and_then(|p| {
        let b = BatchRef::of(p)?;
        (b.callback.is_none()).then(|| (b.chain, p.jid().unwrap_or_default()))
    });
    let now = timestamp::now();
    // Unreadable payloads go back as they are: the fetcher buries them.
    let (requeue, blame, poisoned, mode) = match payload {
        Some(p) => {
            let key = blame_key(&p);
            let mut suspect = p.clone();
            if verdict != Verdict::Innocent {
                suspect.set_json(field::SUSPECT, "true".to_owned());
            }
            let mut dead = p.clone();
            dead.remove(field::SUSPECT);
            let message = format!(
                "it was blamed for {} process deaths (last: {identity}, which {why} while it ran{}): a job \
                 that keeps killing its workers goes to the dead set instead of running again",
                max_recoveries + 1,
                if verdict == Verdict::Blame { " with nothing else running" } else { "" }
            );
            dead.set_str(field::ERROR_CLASS, POISON_ERROR);
            dead.set_str(field::ERROR_MESSAGE, &message);
            if !dead.contains(field::FAILED_AT) {
                dead.set_json(field::FAILED_AT, policy.unit.encode(now));
            }
            let mode = if p.dead() == Some(false) { "drop" } else { "bury" };
            let blame = if verdict == Verdict::Blame { key } else { String::new() };
            (suspect.encode().into_bytes(), blame, dead.encode(), mode)
        }
        None => (raw.to_vec(), String::new(), String::new(), "bury"),
    };
    let mut inv = scripts::RECOVER.prepare_invoke();
    inv.key(list).key(keys.queue(queue)).key(keys.queues()).key(keys.dead()).key(keys.recoveries());
    inv.arg(raw)
        .arg(requeue)
        .arg(&blame)
        .arg(max_recoveries)
        .arg(poisoned)
        .arg(mode)
        .arg(float_json(now))
        .arg(policy.dead_trim(now))
        .arg(queue)
        .arg(RECOVERIES_TTL_SECS);
    if let Some((chain, jid)) = &batch {
        inv.key(keys.schedule());
        for bid in chain {
            inv.key(keys.batch(bid)).key(keys.batch_done(bid)).key(keys.batch_failed(bid));
        }
        inv.arg(policy.unit.encode(now)).arg(KEEP_SECS).arg(jid).arg(chain.len());
        for bid in chain {
            inv.arg(bid);
        }
    }
    let reply: Vec<redis::Value> = inv.invoke_async(&mut pool.get()).await?;
    let fired: Vec<String> =
        reply.iter().skip(3).filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok()).collect();
    if !fired.is_empty()
        && let Err(e) = crate::scheduled::release(pool, keys, policy.unit, fired).await
    {
        log::warn!("batch callbacks wait for the scheduler's next poll: {e}");
    }
    let outcome = reply.get(1).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
    Ok(match outcome.as_deref() {
        None => Outcome::Gone,
        Some("requeued") => Outcome::Requeued,
        Some(_) => {
            log::error!("poison pill {blame}: buried after {} process deaths blamed on it", max_recoveries + 1);
            Outcome::Poisoned
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Option<Payload> {
        Payload::parse(text).ok()
    }

    #[test]
    fn blame_falls_on_the_job_that_ran_alone_or_on_a_lone_job() {
        let a = p(r#"{"class":"A","args":[],"jid":"a"}"#);
        let b = p(r#"{"class":"B","args":[],"jid":"b"}"#);
        let held = vec![a.clone(), b.clone()];
        assert_eq!(judge(&held, Some("b")), vec![Verdict::Innocent, Verdict::Blame]);
        assert_eq!(judge(&held, None), vec![Verdict::Suspect, Verdict::Suspect]);
        assert_eq!(judge(&held, Some("gone")), vec![Verdict::Suspect, Verdict::Suspect], "a stale mark blames nobody");
        assert_eq!(judge(&[a], None), vec![Verdict::Blame]);
    }

    #[test]
    fn jobs_without_a_jid_are_known_by_their_text_whatever_the_mark() {
        let plain = Payload::parse(r#"{"class":"A","args":[1]}"#).unwrap();
        let mut marked = plain.clone();
        marked.set_json(field::SUSPECT, "true".into());
        assert_eq!(blame_key(&plain), blame_key(&marked));
        assert!(blame_key(&plain).starts_with("sha256:"));
        assert_ne!(blame_key(&plain), blame_key(&Payload::parse(r#"{"class":"A","args":[2]}"#).unwrap()));
    }
}
