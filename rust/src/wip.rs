//! One of this process's in-progress lists, and what the process knows of
//! its order.
//!
//! Its fetcher is the only one that pushes jobs into it (on the left, oldest
//! first), so each job gets a position in fetch order and the list, read from
//! its right end, holds the positions not settled yet, lowest first. When a
//! batch of finished jobs are exactly the lowest positions still there, the
//! result writer can cut them off the right end by count (`LTRIM`) instead of
//! passing every payload to Redis to be found: `settle.lua` then checks only
//! the two ends of the cut against the payloads expected there, and if the
//! list does not hold what this model says (another process recovered it, a
//! fetch whose reply was lost left jobs the model never saw, a key of the
//! wrong type), nothing is written, the model is distrusted for good and the
//! results are written the payload way. Positions leave the model only once
//! Redis removed their job, so the model can lag the list but never run ahead.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

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

    /// How many of `finished` (positions, ascending) are the list's right end:
    /// the leading ones equal to the lowest positions still in the list.
    /// 0 once the model is distrusted.
    pub fn right_end(&self, finished: &[u64]) -> usize {
        let s = self.state();
        if !s.trusted {
            return 0;
        }
        finished.iter().zip(&s.live).take_while(|(f, l)| f == l).count()
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

    #[test]
    fn only_the_lowest_positions_still_there_are_the_right_end() {
        let w = list();
        w.fetched(10);
        assert_eq!(w.right_end(&[1, 2, 3]), 3);
        // 1 still runs: nothing of these is at the right end.
        assert_eq!(w.right_end(&[2, 3]), 0);
        // A straggler (4) stops the run at it.
        assert_eq!(w.right_end(&[1, 2, 3, 5, 6]), 3);
        assert_eq!(w.right_end(&[]), 0);
    }

    #[test]
    fn settled_and_handed_back_positions_leave_the_model() {
        let w = list();
        w.fetched(10);
        w.gone([1, 2, 4]);
        assert_eq!(w.right_end(&[3, 5, 6]), 3);
        assert_eq!(w.right_end(&[3, 4]), 1, "4 is gone, so it is not in the list to be cut");
        w.gone([3, 5, 6, 7, 8, 9, 10]);
        assert_eq!(w.right_end(&[11]), 0, "never fetched");
        assert_eq!(w.fetched(2), 11);
        assert_eq!(w.right_end(&[11, 12]), 2);
    }

    #[test]
    fn a_distrusted_model_cuts_nothing() {
        let w = list();
        w.fetched(5);
        assert!(w.distrust());
        assert!(!w.distrust());
        assert_eq!(w.right_end(&[1, 2]), 0);
    }
}
