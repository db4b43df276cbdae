//! The jobs this process is running right now, for the heartbeat's work hash
//! (what Sidekiq's Busy page and `Sidekiq::Workers` list).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::job::json_string;

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
    pub jid: Arc<str>,
    /// Set when its cancellation was asked; the job reads it.
    pub cancel: Arc<AtomicBool>,
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

#[derive(Default)]
pub struct WorkSet {
    running: Mutex<HashMap<u64, Work>>,
}

impl WorkSet {
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

    /// The jids of the running jobs not cancelled yet.
    pub fn uncancelled_jids(&self) -> Vec<Arc<str>> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.values().filter(|w| !w.cancel.load(Ordering::Relaxed)).map(|w| w.jid.clone()).collect()
    }

    /// Marks the running jobs with this jid cancelled; returns how many there were.
    pub fn cancel(&self, jid: &str) -> usize {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        for w in running.values().filter(|w| &*w.jid == jid) {
            w.cancel.store(true, Ordering::Relaxed);
            n += 1;
        }
        n
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
            jid: "j".into(),
            cancel: Arc::default(),
        };
        assert_eq!(w.to_json(), r#"{"queue":"default","payload":"{\"class\":\"X\",\"args\":[1]}","run_at":17}"#);
    }

    #[test]
    fn cancelling_marks_the_running_job() {
        let set = WorkSet::default();
        let w = |jid: &str| Work {
            tid: "t".into(),
            queue: "q".into(),
            payload: "{}".into(),
            run_at: 0,
            jid: jid.into(),
            cancel: Arc::default(),
        };
        let (a, b) = (w("a"), w("b"));
        let flag = a.cancel.clone();
        set.insert(1, a);
        set.insert(2, b);
        assert_eq!(set.uncancelled_jids().len(), 2);
        assert_eq!((set.cancel("a"), set.cancel("zzz")), (1, 0));
        assert!(flag.load(Ordering::Relaxed));
        assert_eq!(set.uncancelled_jids(), vec![Arc::<str>::from("b")]);
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
