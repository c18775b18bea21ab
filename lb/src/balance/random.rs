//! Random: each pick independent, with probability proportional to weight among the eligible.

use super::rng::Rng;
use super::{usable, weight_of, Candidate, Pick};

/// Stateless apart from the seeded stream, so it needs no coordination between cores and has
/// no cursor to reset when the backend set changes.
#[derive(Clone, Debug)]
pub struct Random {
    rng: Rng,
}

impl Random {
    pub fn new(seed: u64) -> Random {
        Random {
            rng: Rng::new(seed),
        }
    }
}

impl Pick for Random {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        _key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        let total: u64 = candidates
            .iter()
            .enumerate()
            .filter(|&(i, _)| usable(candidates, i, exclude))
            .map(|(_, c)| weight_of(c))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.below(total);
        for (i, c) in candidates.iter().enumerate() {
            if !usable(candidates, i, exclude) {
                continue;
            }
            let w = weight_of(c);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        unreachable!("r < total, the sum of the weights walked")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(Random::new(0).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(Random::new(0).pick(&c, None), None);
    }

    #[test]
    fn equal_weights_spread_within_three_percent() {
        let c = Candidate::all_eligible(&specs(4));
        let counts = count_picks(&mut Random::new(1), &c, 100_000);
        for n in counts {
            assert!(n.abs_diff(25_000) < 750, "{n}");
        }
    }

    #[test]
    fn weights_are_honoured_within_three_percent() {
        let c = Candidate::all_eligible(&weighted(&[5, 1, 1, 3]));
        let counts = count_picks(&mut Random::new(2), &c, 100_000);
        for (got, w) in counts.into_iter().zip([5, 1, 1, 3]) {
            let want = 10_000 * w;
            assert!(got.abs_diff(want) * 100 < want * 3, "{got} vs {want}");
        }
    }

    #[test]
    fn ineligible_backends_are_never_picked() {
        let mut c = Candidate::all_eligible(&specs(4));
        c[0].eligible = false;
        c[3].eligible = false;
        let counts = count_picks(&mut Random::new(3), &c, 10_000);
        assert_eq!((counts[0], counts[3]), (0, 0));
        assert!(counts[1] > 4_500 && counts[2] > 4_500, "{counts:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_picks_and_another_seed_does_not() {
        let c = Candidate::all_eligible(&specs(8));
        let run = |seed| {
            let mut r = Random::new(seed);
            (0..200)
                .map(|_| r.pick(&c, None).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn excluded_backends_are_never_picked() {
        let c = Candidate::all_eligible(&specs(3));
        let mut r = Random::new(4);
        for _ in 0..1_000 {
            assert_eq!(r.pick_excluding(&c, None, &[0, 2]), Some(1));
        }
    }
}
