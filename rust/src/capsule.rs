//! A capsule: queues that share one set of threads (Sidekiq 7's capsules).
//!
//! `queues={"default": 25}` makes one capsule per queue. A capsule of several
//! queues has one fetcher and one lane, and each fetch takes jobs from its
//! queues in an order chosen per fetch, as Sidekiq's fetch does: strict (the
//! listed order: a later queue gets jobs only while the earlier ones are
//! empty) when no queue has a weight, else weighted (a random order in which
//! a queue comes first with a chance in proportion to its weight; all
//! weights 1 is Sidekiq's "random" mode).

use rand::Rng;

/// How a capsule orders its queues for each fetch (Sidekiq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Random,
    Weighted,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Random => "random",
            Mode::Weighted => "weighted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// Queue names and weights (0: none given), in the listed order.
    pub queues: Vec<(String, u32)>,
    /// The most jobs of these queues run at once.
    pub concurrency: usize,
}

impl Capsule {
    pub fn new(queues: Vec<(String, u32)>, concurrency: usize) -> Self {
        Self { queues, concurrency }
    }

    /// A capsule of one queue.
    pub fn single(queue: impl Into<String>, concurrency: usize) -> Self {
        Self::new(vec![(queue.into(), 0)], concurrency)
    }

    /// Its name: the queue names, comma-separated (one queue: its name).
    pub fn name(&self) -> String {
        self.queues.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>().join(",")
    }

    pub fn mode(&self) -> Mode {
        if self.queues.iter().all(|(_, w)| *w == 0) {
            Mode::Strict
        } else if self.queues.iter().all(|(_, w)| *w == 1) {
            Mode::Random
        } else {
            Mode::Weighted
        }
    }

    /// Whether each fetch draws its order (else it is the listed one).
    pub fn drawn(&self) -> bool {
        self.queues.len() > 1 && self.mode() != Mode::Strict
    }

    /// The order of the next fetch, as indexes into `queues`.
    pub fn order(&self, rng: &mut impl Rng) -> Vec<usize> {
        let n = self.queues.len();
        if !self.drawn() {
            return (0..n).collect();
        }
        // A weighted draw without replacement: each pick takes a queue with a
        // chance in proportion to its weight among those left (a weight of 0
        // beside weighted queues counts as 1, as in Sidekiq).
        let mut left: Vec<(usize, u64)> =
            self.queues.iter().enumerate().map(|(i, (_, w))| (i, u64::from((*w).max(1)))).collect();
        let mut order = Vec::with_capacity(n);
        while !left.is_empty() {
            let total: u64 = left.iter().map(|(_, w)| w).sum();
            let mut pick = rng.random_range(0..total);
            let at = left
                .iter()
                .position(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            order.push(left.remove(at).0);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(queues: &[(&str, u32)]) -> Capsule {
        Capsule::new(queues.iter().map(|(q, w)| ((*q).to_owned(), *w)).collect(), 10)
    }

    #[test]
    fn modes_follow_the_weights() {
        assert_eq!(capsule(&[("a", 0), ("b", 0)]).mode(), Mode::Strict);
        assert_eq!(capsule(&[("a", 1), ("b", 1)]).mode(), Mode::Random);
        assert_eq!(capsule(&[("a", 3), ("b", 1)]).mode(), Mode::Weighted);
        assert_eq!(capsule(&[("a", 0), ("b", 0)]).name(), "a,b");
    }

    #[test]
    fn strict_keeps_the_listed_order() {
        let c = capsule(&[("a", 0), ("b", 0), ("c", 0)]);
        let mut rng = rand::rng();
        for _ in 0..20 {
            assert_eq!(c.order(&mut rng), vec![0, 1, 2]);
        }
    }

    #[test]
    fn weighted_puts_a_queue_first_in_proportion_to_its_weight() {
        let c = capsule(&[("a", 3), ("b", 1)]);
        let mut rng = rand::rng();
        let n = 20_000;
        let mut first_a = 0;
        for _ in 0..n {
            let o = c.order(&mut rng);
            assert_eq!(o.len(), 2);
            assert_ne!(o[0], o[1]);
            if o[0] == 0 {
                first_a += 1;
            }
        }
        let share = f64::from(first_a) / f64::from(n);
        assert!((0.72..0.78).contains(&share), "a first in {share} of fetches, expected 0.75");
    }
}
