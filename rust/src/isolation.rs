//! Running a suspect job alone.
//!
//! A job that was in flight when a process died is a *suspect* (payload
//! field `kiq_suspect`): it may be what killed the process, or an innocent
//! neighbour. A process runs a suspect with nothing else running, after
//! recording it in Redis (`kiq:isolated|<identity>`), so if the process dies
//! again the blame is certain and falls on that job alone (see `orphans.rs`).
//!
//! The gate is a reader-writer lock over job starts: ordinary jobs share it
//! (a pair of atomic operations on the per-job path), a suspect takes it
//! exclusively. While a suspect waits, no new job starts; if the jobs already
//! running do not end within [`MAX_WAIT`], the suspect runs alongside them
//! (not isolated: a crash then blames nobody and the jobs stay suspects).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a suspect waits for the running jobs to end before it runs anyway.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Run the job (alone, for a suspect that got the gate).
    Run { alone: bool },
    /// The process is stopping: hand the job back.
    Stopping,
}

#[derive(Default)]
struct Exclusive {
    /// Suspects waiting for, or holding, the gate.
    wanted: usize,
    held: bool,
    closed: bool,
}

#[derive(Default)]
pub struct Gate {
    /// Ordinary jobs running.
    running: AtomicUsize,
    /// Mirrors `exclusive.wanted > 0 || exclusive.held`, for the fast path.
    blocked: AtomicBool,
    exclusive: Mutex<Exclusive>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Exclusive> {
        self.exclusive.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits an ordinary job without waiting, if no suspect waits or runs.
    pub fn try_enter(&self) -> bool {
        if !self.blocked.load(Ordering::Acquire) {
            self.running.fetch_add(1, Ordering::AcqRel);
            if !self.blocked.load(Ordering::Acquire) {
                return true;
            }
            self.leave();
        }
        false
    }

    /// Admits an ordinary job, waiting while a suspect waits or runs.
    pub fn enter(&self) -> Admission {
        if self.try_enter() {
            return Admission::Run { alone: false };
        }
        let mut ex = self.lock();
        loop {
            if ex.closed {
                return Admission::Stopping;
            }
            if ex.wanted == 0 && !ex.held {
                self.running.fetch_add(1, Ordering::AcqRel);
                return Admission::Run { alone: false };
            }
            ex = self.changed.wait(ex).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// An ordinary job ended.
    pub fn leave(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 && self.blocked.load(Ordering::Acquire) {
            let _guard = self.lock();
            self.changed.notify_all();
        }
    }

    /// Admits a suspect: alone once every other job has ended, or alongside
    /// them after `max_wait`.
    pub fn enter_alone(&self, max_wait: Duration) -> Admission {
        let deadline = Instant::now() + max_wait;
        let mut ex = self.lock();
        ex.wanted += 1;
        self.blocked.store(true, Ordering::Release);
        loop {
            if ex.closed {
                ex.wanted -= 1;
                self.unblock(&ex);
                return Admission::Stopping;
            }
            if !ex.held && self.running.load(Ordering::Acquire) == 0 {
                ex.wanted -= 1;
                ex.held = true;
                return Admission::Run { alone: true };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ex.wanted -= 1;
                self.unblock(&ex);
                drop(ex);
                self.running.fetch_add(1, Ordering::AcqRel);
                return Admission::Run { alone: false };
            }
            ex = self
                .changed
                .wait_timeout(ex, left.min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A job admitted by `enter_alone` ended.
    pub fn leave_alone(&self, alone: bool) {
        if !alone {
            self.leave();
            return;
        }
        let mut ex = self.lock();
        ex.held = false;
        self.unblock(&ex);
        self.changed.notify_all();
    }

    fn unblock(&self, ex: &Exclusive) {
        if ex.wanted == 0 && !ex.held && !ex.closed {
            self.blocked.store(false, Ordering::Release);
        }
        self.changed.notify_all();
    }

    /// A stop: every waiter hands its job back.
    pub fn close(&self) {
        let mut ex = self.lock();
        ex.closed = true;
        self.blocked.store(true, Ordering::Release);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_suspect_waits_for_the_running_and_blocks_new_starts() {
        let gate = Arc::new(Gate::default());
        assert_eq!(gate.enter(), Admission::Run { alone: false });
        let g = gate.clone();
        let suspect = std::thread::spawn(move || {
            let a = g.enter_alone(Duration::from_secs(5));
            (a, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50));
        let g = gate.clone();
        let ordinary = std::thread::spawn(move || {
            let a = g.enter();
            (a, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50));
        let released = Instant::now();
        gate.leave();
        let (a, started) = suspect.join().unwrap();
        assert_eq!(a, Admission::Run { alone: true });
        assert!(started >= released);
        std::thread::sleep(Duration::from_millis(50));
        let alone_ended = Instant::now();
        gate.leave_alone(true);
        let (b, started) = ordinary.join().unwrap();
        assert_eq!(b, Admission::Run { alone: false });
        assert!(started >= alone_ended, "no job starts while the suspect runs");
        gate.leave();
    }

    #[test]
    fn a_suspect_runs_anyway_after_the_wait_and_close_frees_waiters() {
        let gate = Arc::new(Gate::default());
        assert_eq!(gate.enter(), Admission::Run { alone: false });
        assert_eq!(gate.enter_alone(Duration::from_millis(30)), Admission::Run { alone: false });
        assert_eq!(gate.enter(), Admission::Run { alone: false }, "not blocked once the suspect gave up waiting");
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.enter_alone(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(30));
        gate.close();
        assert_eq!(waiter.join().unwrap(), Admission::Stopping);
        assert_eq!(gate.enter(), Admission::Stopping);
    }
}
