//! The jobs this process is running right now, for the heartbeat's work hash
//! (what Sidekiq's Busy page and `Sidekiq::Workers` list).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use foldhash::fast::RandomState;

use crate::job::{Payload, json_string};
use crate::timestamp;

/// One running job.
#[derive(Debug, Clone)]
pub struct Work {
    /// Id of the thread running it (Sidekiq's `tid`).
    pub tid: Arc<str>,
    pub queue: Arc<str>,
    /// The job exactly as fetched.
    pub payload: Arc<str>,
    /// Epoch seconds it started.
    pub run_at: i64,
    /// Its cancellation was asked; the job reads this through `is_cancelled`.
    pub cancelled: bool,
}

impl Work {
    /// The work-hash value every Sidekiq version reads: the payload as a JSON string.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"queue\":{},\"payload\":{},\"run_at\":{}}}",
            json_string(&self.queue),
            json_string(&self.payload),
            self.run_at
        )
    }
}

pub struct WorkSet {
    running: Mutex<HashMap<u64, Work, RandomState>>,
    /// An instant and its epoch seconds, taken once: a job's start in epoch
    /// seconds is worked out from its `Instant`, so starting a job reads the
    /// clock once, not twice (the thread doing it holds the GIL).
    epoch: (Instant, f64),
}

impl Default for WorkSet {
    fn default() -> Self {
        Self { running: Mutex::default(), epoch: (Instant::now(), timestamp::now()) }
    }
}

impl WorkSet {
    /// Epoch seconds at `at` (Sidekiq's `run_at` of a job started then).
    pub fn epoch_secs(&self, at: Instant) -> i64 {
        let (then, epoch) = self.epoch;
        let since = at.checked_duration_since(then).map_or(0.0, |d| d.as_secs_f64());
        (epoch + since) as i64
    }

    pub fn insert(&self, id: u64, work: Work) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).insert(id, work);
    }

    pub fn remove(&self, id: u64) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(id, jid)` of the running jobs not cancelled yet. The jid is read
    /// from the payload here, every few seconds, to keep it off the per-job path.
    pub fn uncancelled(&self) -> Vec<(u64, String)> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running
            .iter()
            .filter(|(_, w)| !w.cancelled)
            .filter_map(|(id, w)| Payload::parse(w.payload.to_string()).ok()?.jid().map(|jid| (*id, jid)))
            .collect()
    }

    /// Marks a running job cancelled; false if it is no longer running.
    pub fn cancel(&self, id: u64) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.get_mut(&id).map(|w| w.cancelled = true).is_some()
    }

    pub fn is_cancelled(&self, id: u64) -> bool {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).get(&id).is_some_and(|w| w.cancelled)
    }

    /// The longest-running job: (seconds it has run, its class and jid).
    pub fn oldest(&self, now: f64) -> Option<(f64, String)> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let w = running.values().min_by_key(|w| w.run_at)?;
        let name = Payload::parse(w.payload.to_string())
            .ok()
            .map(|p| format!("{} jid={}", p.class().unwrap_or_default(), p.jid().unwrap_or_default()))
            .unwrap_or_default();
        Some(((now - w.run_at as f64).max(0.0), name))
    }

    /// `(tid, json)` pairs for the work hash.
    pub fn snapshot(&self) -> Vec<(Arc<str>, String)> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect::<Vec<_>>();
        running.into_iter().map(|w| (w.tid.clone(), w.to_json())).collect()
    }
}

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TID: Arc<str> = {
        let n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id());
        Arc::from(base36(n))
    };
}

/// This thread's Sidekiq-style thread id (base 36, unique within the process).
pub fn current_tid() -> Arc<str> {
    TID.with(Clone::clone)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_json_carries_the_payload_as_a_string() {
        let w = Work {
            tid: "t".into(),
            queue: "default".into(),
            payload: r#"{"class":"X","args":[1]}"#.into(),
            run_at: 17,
            cancelled: false,
        };
        assert_eq!(w.to_json(), r#"{"queue":"default","payload":"{\"class\":\"X\",\"args\":[1]}","run_at":17}"#);
    }

    #[test]
    fn a_start_instant_becomes_epoch_seconds() {
        let set = WorkSet::default();
        let now = timestamp::now();
        let at = set.epoch_secs(Instant::now());
        assert!((at as f64 - now).abs() <= 1.0, "{at} vs {now}");
        let later = set.epoch_secs(Instant::now() + std::time::Duration::from_secs(90));
        assert!((89..=91).contains(&(later - at)), "{later} - {at}");
    }

    #[test]
    fn cancelling_marks_the_running_job() {
        let set = WorkSet::default();
        let w = |jid: &str| Work {
            tid: "t".into(),
            queue: "q".into(),
            payload: format!(r#"{{"class":"X","args":[],"jid":"{jid}"}}"#).into(),
            run_at: 0,
            cancelled: false,
        };
        set.insert(1, w("a"));
        set.insert(2, w("b"));
        assert_eq!(set.uncancelled().len(), 2);
        assert!(set.cancel(1) && !set.cancel(9));
        assert!(set.is_cancelled(1) && !set.is_cancelled(2));
        assert_eq!(set.uncancelled(), vec![(2, "b".to_owned())]);
        set.remove(1);
        assert!(!set.is_cancelled(1));
    }

    #[test]
    fn thread_ids_differ_per_thread() {
        let here = current_tid();
        assert_eq!(here, current_tid());
        let there = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(here, there);
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
