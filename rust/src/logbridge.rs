//! Log records from the core, kept until the Python side collects them.
//!
//! Core threads must never wait for the GIL (a Python job may hold it for
//! seconds), so they do not call into Python's `logging` themselves: records
//! go into a bounded in-memory queue that a Python thread drains and re-emits
//! under the `kiq` logger. When nobody drains, the oldest records are dropped
//! and counted.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

const CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Record {
    pub level: log::Level,
    pub target: String,
    pub message: String,
}

struct Queue {
    records: Mutex<(VecDeque<Record>, u64)>,
    ready: Condvar,
}

struct Bridge(&'static Queue);

static QUEUE: OnceLock<Queue> = OnceLock::new();

fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| Queue { records: Mutex::new((VecDeque::new(), 0)), ready: Condvar::new() })
}

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let rec =
            Record { level: record.level(), target: record.target().to_owned(), message: record.args().to_string() };
        let mut g = self.0.records.lock().unwrap_or_else(PoisonError::into_inner);
        if g.0.len() >= CAPACITY {
            g.0.pop_front();
            g.1 += 1;
        }
        g.0.push_back(rec);
        drop(g);
        self.0.ready.notify_one();
    }

    fn flush(&self) {}
}

/// Installs the bridge as the process's `log` logger (once) and sets the level.
pub fn install(level: log::LevelFilter) {
    let _ = log::set_boxed_logger(Box::new(Bridge(queue())));
    log::set_max_level(level);
}

/// Wakes every thread waiting in [`drain`] (it returns what there is, maybe nothing).
pub fn wake() {
    queue().ready.notify_all();
}

/// Waits up to `timeout` for records (or a [`wake`]); returns them and how many were dropped.
pub fn drain(timeout: Duration) -> (Vec<Record>, u64) {
    let q = queue();
    let mut g = q.records.lock().unwrap_or_else(PoisonError::into_inner);
    if g.0.is_empty() {
        g = q.ready.wait_timeout(g, timeout).unwrap_or_else(PoisonError::into_inner).0;
    }
    let dropped = std::mem::take(&mut g.1);
    (g.0.drain(..).collect(), dropped)
}
