//! Round robin: each eligible backend in turn, ignoring weight and load.

use super::{usable, Candidate, Pick};

#[derive(Clone, Debug)]
pub struct RoundRobin {
    /// Index to try first on the next pick.
    next: usize,
}

impl RoundRobin {
    /// Starts at `seed % n`: cores seeded with their index then open on different backends
    /// instead of all sending their first connection to backend 0.
    pub fn new(n: usize, seed: u64) -> RoundRobin {
        let next = super::start_cursor(n, seed);
        RoundRobin { next }
    }
}

impl Pick for RoundRobin {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        _key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let found = (start..n)
            .chain(0..start)
            .find(|&i| usable(candidates, i, exclude))?;
        self.next = found + 1;
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(RoundRobin::new(0, 0).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(RoundRobin::new(3, 0).pick(&c, None), None);
    }

    #[test]
    fn three_backends_are_visited_in_order_and_wrap() {
        let c = Candidate::all_eligible(&specs(3));
        let mut rr = RoundRobin::new(3, 0);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(&c, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn the_seed_sets_the_starting_backend() {
        let c = Candidate::all_eligible(&specs(3));
        assert_eq!(RoundRobin::new(3, 1).pick(&c, None), Some(1));
        assert_eq!(RoundRobin::new(3, 5).pick(&c, None), Some(2));
    }

    #[test]
    fn ineligible_backends_are_skipped_without_doubling_the_next_one() {
        let mut c = Candidate::all_eligible(&specs(4));
        c[1].eligible = false;
        let mut rr = RoundRobin::new(4, 0);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&c, None).unwrap()).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn weights_are_ignored_and_load_spreads_evenly() {
        let c = Candidate::all_eligible(&weighted(&[5, 1, 1]));
        let counts = count_picks(&mut RoundRobin::new(3, 0), &c, 300);
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn excluded_indices_are_skipped_and_the_cursor_moves_on() {
        let c = Candidate::all_eligible(&specs(3));
        let mut rr = RoundRobin::new(3, 0);
        assert_eq!(rr.pick_excluding(&c, None, &[0]), Some(1));
        assert_eq!(rr.pick_excluding(&c, None, &[1, 2]), Some(0));
        assert_eq!(rr.pick_excluding(&c, None, &[0, 1, 2]), None);
        assert_eq!(rr.pick(&c, None), Some(1));
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let c = Candidate::all_eligible(&specs(5));
        let mut a = RoundRobin::new(5, 3);
        let mut b = RoundRobin::new(5, 3);
        for _ in 0..50 {
            assert_eq!(a.pick(&c, None), b.pick(&c, None));
        }
    }
}
