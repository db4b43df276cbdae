//! Throttle admission of fetched batches, beside the fetch loop.
//!
//! A fetcher whose queue holds throttled jobs hands each batch that has one
//! to its admitter and fetches on: the batch's slots count as taken
//! meanwhile (`Lane::reserve`), so the process never holds more jobs than it
//! runs. The admitter checks the batch's jobs of classes throttled without a
//! key function in one round trip (`throttle.rs`; keyed classes are checked
//! at dispatch), offers the admitted jobs and the others to the threads, and
//! parks the refused ones in `schedule` through the result writer
//! (`settle.lua`, exactly once with leaving the in-progress list). Batches
//! are checked in the order they were fetched.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ack::{Msg, Settle, Settlement};
use crate::control::Control;
use crate::job::field;
use crate::keys::Keys;
use crate::lane::{Delivery, Lane};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::throttle::{Candidate, Throttles, Verdict};
use crate::wip::WipList;

pub struct Admitter {
    pub throttles: Arc<Throttles>,
    pub lane: Arc<Lane>,
    /// Every queue of the process by its number (`Delivery::queue`): its name and in-progress list.
    pub queues: Arc<[(Arc<str>, Arc<WipList>)]>,
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub policy: RetryPolicy,
    pub acks: mpsc::UnboundedSender<Msg>,
    pub control: Control,
}

impl Admitter {
    /// Checks batches until the fetcher is gone.
    pub async fn run(self, mut batches: mpsc::UnboundedReceiver<Vec<Box<Delivery>>>) {
        while let Some(batch) = batches.recv().await {
            let n = batch.len();
            let ready = self.admit(batch).await;
            self.lane.unreserve(n - ready.len());
            // Jobs offered after a stop began stay in the in-progress list,
            // which the stop hands back to the queue; their holds go back now.
            for d in self.lane.offer_reserved(ready).unwrap_or_default() {
                if let Some(held) = d.held {
                    self.throttles.forget(&held);
                    let _ = self.acks.send(Msg::Release(held));
                }
            }
        }
    }

    /// The jobs that may run now; throttled ones over their limit are parked
    /// (their settlement takes them off the in-progress list).
    async fn admit(&self, jobs: Vec<Box<Delivery>>) -> Vec<Box<Delivery>> {
        let (mut checked, mut ready): (Vec<Box<Delivery>>, Vec<Box<Delivery>>) =
            jobs.into_iter().partition(|d| self.throttles.at_fetch(&d.class));
        // One check per queue (a capsule of several queues fetches from each).
        while let Some(queue) = checked.first().map(|d| d.queue) {
            let (these, rest): (Vec<Box<Delivery>>, Vec<Box<Delivery>>) =
                checked.into_iter().partition(|d| d.queue == queue);
            checked = rest;
            let (name, wip) = &self.queues[queue];
            match self.admit_queue(name, wip, these).await {
                Ok(run) => ready.extend(run),
                Err(unchecked) => {
                    // Stopping: the jobs stay in progress and go back to their queues.
                    ready.extend(unchecked);
                    ready.extend(checked);
                    return ready;
                }
            }
        }
        ready
    }

    /// [`Admitter::admit`] for jobs of one queue; a stop while Redis does not
    /// answer gives them back unchecked (`Err`).
    async fn admit_queue(
        &self,
        name: &str,
        wip: &Arc<WipList>,
        checked: Vec<Box<Delivery>>,
    ) -> Result<Vec<Box<Delivery>>, Vec<Box<Delivery>>> {
        // The same tokens if the check is sent again: it then finds the holds it took.
        let candidates: Vec<Candidate<'_>> = checked.iter().map(|d| Candidate::of(d, String::new())).collect();
        let mut delay = Duration::from_millis(50);
        let mut again = false;
        let verdicts = loop {
            match self.throttles.check(&self.pool, &self.keys, name, &candidates, again).await {
                Ok(v) => break v,
                Err(e) => {
                    self.pool.note_error(&e);
                    let n = candidates.len();
                    log::warn!("cannot check the throttles of {n} jobs of queue {name:?} yet: {e}");
                    again = true;
                    if !self.control.sleep(delay).await {
                        drop(candidates);
                        return Err(checked);
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        drop(candidates);
        Ok(checked.into_iter().zip(verdicts).filter_map(|(d, verdict)| apply(d, verdict, wip, &self.acks)).collect())
    }
}

/// Carries a verdict out: the job to run (with its hold), or None when it
/// was parked (its settlement sent to the result writer).
pub fn apply(
    mut d: Box<Delivery>,
    verdict: Verdict,
    list: &Arc<WipList>,
    acks: &mpsc::UnboundedSender<Msg>,
) -> Option<Box<Delivery>> {
    match verdict {
        Verdict::Run { held, at } => {
            d.held = held.map(Box::new);
            d.throttle_at = Some(at);
            Some(d)
        }
        Verdict::Park { at, parked_key } => {
            let raw = d.payload.source().as_bytes().to_vec();
            let before = d.payload.get(field::THROTTLED).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let mut payload = d.payload;
            payload.set_json(field::THROTTLED, (before + 1).to_string());
            let s = Settlement {
                list: list.clone(),
                pos: d.pos,
                raw: raw.into(),
                settle: Settle::Schedule { at, payload: payload.encode(), parked: parked_key },
                processed: false,
                failed: false,
                unlock: None,
                held: None,
                // Parked, not finished: its batch counts it when it runs.
                batch: None,
            };
            let _ = acks.send(Msg::Settle(s));
            None
        }
    }
}
