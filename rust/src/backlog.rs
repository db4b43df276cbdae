//! How many finished jobs wait for their results to be written to Redis,
//! and the fetchers' brake on it.
//!
//! A lane counts a job as out only until it finishes, so without a brake
//! the fetchers go on fetching while the result writer (`ack.rs`) falls
//! behind, and every finished job waits in memory, payload and all, and in
//! the in-progress list, where a crash would run it again. It happened with
//! 8 queues × c10 of no-op jobs on 2 cores: results waited by the hundred
//! thousand (RSS 76 MB after 100,000 jobs, 301 MB after 1,200,000), the
//! allocator's work on them slowed the core further, and each write of
//! 2,000 results took 5–30 ms instead of 1–2. Now fetching pauses while
//! [`LIMIT`] or more results wait, and resumes once the writer is back
//! under it. Results Redis refuses (a key of the wrong type) count too: a
//! process that cannot record what it ran stops taking more jobs, and its
//! queue keeps them for a process that can.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Results waiting to be written from which on no fetcher fetches: a few of
/// the writer's batches (`ack::MAX_BATCH`), so a writer that keeps up never
/// brakes a fetch.
pub const LIMIT: usize = 4 * crate::ack::MAX_BATCH;

#[derive(Default)]
pub struct Backlog {
    /// Results waiting, as the writer last counted them.
    waiting: AtomicUsize,
    room: Notify,
    /// Since when fetching has been paused without a break (a writer that
    /// merely lags pauses it for milliseconds; one whose writes fail or are
    /// refused, for as long as that lasts, which the process must say).
    full_since: Mutex<Option<Instant>>,
}

impl Backlog {
    /// The writer's count of results waiting (its channel, its batch and the results Redis refused).
    pub fn set(&self, waiting: usize) {
        let was = self.waiting.swap(waiting, Ordering::AcqRel);
        if was >= LIMIT && waiting < LIMIT {
            *self.full_since.lock().unwrap_or_else(PoisonError::into_inner) = None;
            self.room.notify_waiters();
        } else if was < LIMIT && waiting >= LIMIT {
            *self.full_since.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    /// Results waiting to be written, and how long fetching has been paused
    /// for them without a break (None while it is not).
    pub fn state(&self) -> (usize, Option<Duration>) {
        let since = *self.full_since.lock().unwrap_or_else(PoisonError::into_inner);
        (self.waiting.load(Ordering::Acquire), since.map(|t| t.elapsed()))
    }

    /// Whether fetching must wait.
    pub fn full(&self) -> bool {
        self.waiting.load(Ordering::Acquire) >= LIMIT
    }

    /// Returns once fewer than [`LIMIT`] results wait.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` in between wakes it.
            notified.as_mut().enable();
            if !self.full() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_backlog_holds_fetching_until_the_writer_catches_up() {
        let b = std::sync::Arc::new(Backlog::default());
        b.set(LIMIT - 1);
        assert!(!b.full());
        assert_eq!(b.state(), (LIMIT - 1, None));
        b.room().await;
        b.set(LIMIT);
        assert!(b.full());
        assert!(b.state().1.is_some(), "paused since now");
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.set(LIMIT + 500);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.set(10);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(b.state(), (10, None));
    }
}
