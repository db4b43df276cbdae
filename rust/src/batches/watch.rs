//! What a fetcher checks about batch jobs before a thread gets them.
//!
//! - Invalidation: a job of an invalidated batch (or of a batch whose ancestor
//!   was invalidated) is skipped. The marks are read from Redis at most once
//!   a second per batch and shared by the process's fetchers, so a batch of
//!   200,000 jobs costs one `HEXISTS` a second, not one per job.
//! - Sidekiq Pro's `bid`: a job carrying it that kiq did not create belongs to
//!   a Pro batch whose accounting only Pro's server middleware does. kiq runs
//!   it as usual and says so at WARNING, once per bid.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::job::{Payload, field};
use crate::keys::Keys;
use crate::pool::Pool;

/// How long an invalidation mark read from Redis is trusted.
const FRESH: Duration = Duration::from_secs(1);
/// Batches remembered at most (the memory is dropped past it).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub struct Watch {
    /// bid -> (invalidated, when read).
    marks: Mutex<HashMap<String, (bool, Instant)>>,
    /// Pro bids already warned about.
    warned: Mutex<HashSet<String>>,
}

impl Watch {
    /// Whether a job of `chain` must be skipped (its batch or an ancestor was
    /// invalidated). A Redis error is logged and the job runs.
    pub async fn skip(&self, pool: &Pool, keys: &Keys, chain: &[String]) -> bool {
        let now = Instant::now();
        let stale: Vec<String> = {
            let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
            if chain.iter().any(|b| marks.get(b).is_some_and(|(bad, at)| *bad && now - *at < FRESH)) {
                return true;
            }
            chain.iter().filter(|b| marks.get(*b).is_none_or(|(_, at)| now - *at >= FRESH)).cloned().collect()
        };
        if stale.is_empty() {
            return false;
        }
        match super::status::invalidated(pool, keys, &stale).await {
            Ok(found) => {
                let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
                if marks.len() > MAX_REMEMBERED {
                    marks.clear();
                }
                for (bid, bad) in stale.into_iter().zip(&found) {
                    marks.insert(bid, (*bad, now));
                }
                found.contains(&true)
            }
            Err(e) => {
                log::warn!("cannot read whether batch {} was invalidated (the job runs): {e}", chain[0]);
                false
            }
        }
    }

    /// Warns, once per bid, about a job of a Sidekiq Pro batch.
    pub fn note_foreign(&self, payload: &Payload, queue: &str) {
        if payload.contains(field::BATCH) {
            return;
        }
        let Some(bid) = payload.string(field::BID) else { return };
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.len() > MAX_REMEMBERED {
            warned.clear();
        }
        if warned.insert(bid.clone()) {
            log::warn!(
                "job {} from queue {queue:?} belongs to Sidekiq Pro batch {bid}: kiq runs it as usual, but Sidekiq Pro's \
                 batch accounting will not happen for it (only Pro's server middleware does it), so that batch's \
                 pending count never reaches zero and its callbacks never fire; route queues holding Pro batch jobs \
                 to Ruby Sidekiq Pro processes (kiq's own batches use the kiq_bid field instead)",
                payload.jid().unwrap_or_default()
            );
        }
    }
}
