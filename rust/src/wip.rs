//! One of this process's in-progress lists, and what the process knows of
//! its order.
//!
//! Its fetcher is the only one that pushes jobs into it (on the left, oldest
//! first), so each job gets a position in fetch order and the list, read from
//! its right end, holds the positions not settled yet, lowest first. When a
//! batch of finished jobs are the lowest positions still there, but for a
//! few still running among them (a job that waited for the GIL, or a slow
//! one among quick ones), the result writer can cut them off the right end by
//! count (`LTRIM`), the running ones read and put back by their offsets,
//! instead of passing every payload to Redis to be found: `settle.lua` then
//! checks only two finished jobs of the cut against the payloads expected
//! there, and if the
//! list does not hold what this model says (another process recovered it, a
//! fetch whose reply was lost left jobs the model never saw, a key of the
//! wrong type), nothing is written, the model is distrusted for good and the
//! results are written the payload way. Positions leave the model only once
//! Redis removed their job, so the model can lag the list but never run ahead.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

/// The most jobs still running a cut passes over ([`WipList::right_end`]):
/// each costs `settle.lua` a read and a push back. Jobs a lane's threads
/// took and have not finished: with 64, 1 × c80 wrote 290–1,850 results per
/// 100,000 the payload way (80 threads woken at once, each holding a job
/// while it waits for the GIL).
pub const MAX_HOLES: usize = 1024;

/// A cut off a list's right end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// How many of the finished jobs it takes (the first ones given).
    pub covered: usize,
    /// How many jobs it takes off the right end, `covered` plus `holes`.
    pub width: usize,
    /// The offsets from the right end (1: the end) of the jobs in it still
    /// running, ascending: read before the cut and pushed back after it.
    pub holes: Vec<usize>,
}

impl Span {
    /// The offset from the right end of its first finished job: after the
    /// running jobs at the very end (offsets 1, 2, ...), if any.
    pub fn first_at(&self) -> usize {
        self.holes.iter().zip(1..).take_while(|(h, i)| **h == *i).count() + 1
    }
}

pub struct WipList {
    /// The list's Redis key.
    pub key: Arc<str>,
    state: Mutex<State>,
}

struct State {
    /// The position the next fetched job gets.
    next: u64,
    /// Positions of jobs in the list (fetched, not yet settled or handed back).
    live: BTreeSet<u64>,
    /// False once the list was found not to hold what `live` says.
    trusted: bool,
}

impl std::fmt::Debug for WipList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WipList").field("key", &self.key).finish_non_exhaustive()
    }
}

impl WipList {
    pub fn new(key: Arc<str>) -> Self {
        Self { key, state: Mutex::new(State { next: 1, live: BTreeSet::new(), trusted: true }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `n` jobs were just pushed, oldest first: returns the first one's position
    /// (the others follow it by one each).
    pub fn fetched(&self, n: usize) -> u64 {
        let mut s = self.state();
        let first = s.next;
        let end = first + n as u64;
        s.next = end;
        s.live.extend(first..end);
        first
    }

    /// These jobs left the list (settled, or handed back to their queue).
    pub fn gone(&self, positions: impl IntoIterator<Item = u64>) {
        let mut s = self.state();
        for p in positions {
            s.live.remove(&p);
        }
    }

    /// What of `finished` (positions, ascending) can be cut off the list's
    /// right end: its leading ones, among the lowest positions still in the
    /// list, with at most [`MAX_HOLES`] positions not finished between them.
    /// Nothing once the model is distrusted.
    pub fn right_end(&self, finished: &[u64]) -> Span {
        let s = self.state();
        if !s.trusted {
            return Span::default();
        }
        let (mut covered, mut width, mut holes, mut kept) = (0, 0, Vec::new(), 0);
        for (at, &live) in (1..).zip(&s.live) {
            match finished.get(covered) {
                Some(&f) if f == live => {
                    covered += 1;
                    (width, kept) = (at, holes.len());
                }
                Some(&f) if f > live && holes.len() < MAX_HOLES => holes.push(at),
                _ => break,
            }
        }
        // Running jobs past its last finished one are not in it.
        holes.truncate(kept);
        Span { covered, width, holes }
    }

    /// The list did not hold what the model said: it is not used again.
    /// Returns whether it was trusted until now.
    pub fn distrust(&self) -> bool {
        std::mem::replace(&mut self.state().trusted, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> WipList {
        WipList::new(Arc::from("kiq:wip|me|q"))
    }

    #[test]
    fn positions_follow_fetch_order() {
        let w = list();
        assert_eq!(w.fetched(3), 1);
        assert_eq!(w.fetched(2), 4);
        assert_eq!(w.fetched(0), 6);
        assert_eq!(w.fetched(1), 6);
    }

    fn span(covered: usize, width: usize, holes: &[usize]) -> Span {
        Span { covered, width, holes: holes.to_vec() }
    }

    #[test]
    fn a_cut_takes_the_lowest_positions_still_there_passing_over_running_ones() {
        let w = list();
        w.fetched(10);
        assert_eq!(w.right_end(&[1, 2, 3]), span(3, 3, &[]));
        // 1 still runs: the cut passes over it (read and pushed back).
        assert_eq!(w.right_end(&[2, 3]), span(2, 3, &[1]));
        // Stragglers (1, 4) among them; the cut ends at the last finished job, not at 9.
        assert_eq!(w.right_end(&[2, 3, 5, 6, 8]), span(5, 8, &[1, 4, 7]));
        assert_eq!(span(5, 8, &[1, 2, 4, 7]).first_at(), 3, "after the running jobs at the very end");
        assert_eq!(span(3, 3, &[]).first_at(), 1);
        assert_eq!(w.right_end(&[]), span(0, 0, &[]));
    }

    #[test]
    fn a_cut_passes_over_at_most_max_holes_running_jobs() {
        let (w, m) = (list(), MAX_HOLES as u64);
        w.fetched(2 * MAX_HOLES + 100);
        // Running: 1..=9 and 11..m, m - 1 in all; the cut ends at m + 2, the
        // last finished job before more than m running ones.
        let got = w.right_end(&[10, m + 1, m + 2, 2 * m]);
        assert_eq!((got.covered, got.width, got.holes.len()), (3, MAX_HOLES + 2, MAX_HOLES - 1));
        let all: Vec<usize> = (1..=MAX_HOLES).collect();
        assert_eq!(w.right_end(&[m + 1]), span(1, MAX_HOLES + 1, &all));
        assert_eq!(w.right_end(&[m + 2]), span(0, 0, &[]));
    }

    #[test]
    fn a_distrusted_model_cuts_nothing() {
        let w = list();
        w.fetched(5);
        assert!(w.distrust());
        assert!(!w.distrust());
        assert_eq!(w.right_end(&[1, 2]), span(0, 0, &[]));
    }
}
