//! Power of two choices: sample two distinct eligible backends, keep the less loaded.

use super::rng::Rng;
use super::{less_loaded, usable, Candidate, Pick};

/// Comparing only two random backends avoids the herd that least connections causes when many
/// cores act on the same stale counts, while still steering away from overloaded backends.
/// The two are sampled uniformly; weight enters through the load comparison
/// (`active / weight`), and an exact tie keeps the first sample, which is itself random.
#[derive(Clone, Debug)]
pub struct PowerOfTwo {
    rng: Rng,
}

impl PowerOfTwo {
    pub fn new(seed: u64) -> PowerOfTwo {
        PowerOfTwo {
            rng: Rng::new(seed),
        }
    }

    /// The two sampled indices, always distinct; `(i, i)` only when `i` is the one usable
    /// backend; `None` when there is none.
    pub(crate) fn choose_two(
        &mut self,
        candidates: &[Candidate],
        exclude: &[usize],
    ) -> Option<(usize, usize)> {
        let usable_at = |k: u64| {
            (0..candidates.len())
                .filter(|&i| usable(candidates, i, exclude))
                .nth(k as usize)
                .expect("k < number usable")
        };
        let n = (0..candidates.len())
            .filter(|&i| usable(candidates, i, exclude))
            .count() as u64;
        match n {
            0 => None,
            1 => {
                let only = usable_at(0);
                Some((only, only))
            }
            _ => {
                let a = self.rng.below(n);
                // Draw from the n - 1 others and step over `a`: distinct without a retry loop.
                let mut b = self.rng.below(n - 1);
                if b >= a {
                    b += 1;
                }
                Some((usable_at(a), usable_at(b)))
            }
        }
    }
}

impl Pick for PowerOfTwo {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        _key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        let (a, b) = self.choose_two(candidates, exclude)?;
        if less_loaded(&candidates[b], &candidates[a]) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(PowerOfTwo::new(0).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(PowerOfTwo::new(0).pick(&c, None), None);
    }

    #[test]
    fn the_two_choices_are_never_the_same_index_and_cover_every_pair() {
        let mut c = Candidate::all_eligible(&specs(5));
        c[2].eligible = false;
        let mut p = PowerOfTwo::new(1);
        let mut pairs = std::collections::BTreeSet::new();
        for _ in 0..5_000 {
            let (a, b) = p.choose_two(&c, &[]).unwrap();
            assert_ne!(a, b);
            assert!(a != 2 && b != 2);
            pairs.insert((a.min(b), a.max(b)));
        }
        assert_eq!(pairs.len(), 6, "{pairs:?}");
    }

    #[test]
    fn the_less_loaded_of_the_two_choices_wins() {
        let mut c = Candidate::all_eligible(&specs(6));
        for (i, c) in c.iter_mut().enumerate() {
            c.active = [7, 3, 9, 1, 4, 6][i];
        }
        let mut p = PowerOfTwo::new(2);
        let mut check = PowerOfTwo::new(2);
        for _ in 0..1_000 {
            let (a, b) = check.choose_two(&c, &[]).unwrap();
            let want = if c[a].active <= c[b].active { a } else { b };
            assert_eq!(p.pick(&c, None), Some(want));
        }
    }

    #[test]
    fn with_two_eligible_the_less_loaded_always_wins() {
        let mut c = Candidate::all_eligible(&specs(3));
        c[0].eligible = false;
        c[1].active = 10;
        c[2].active = 3;
        let counts = count_picks(&mut PowerOfTwo::new(3), &c, 1_000);
        assert_eq!(counts, [0, 0, 1_000]);
    }

    #[test]
    fn a_single_eligible_backend_is_always_chosen() {
        let mut c = Candidate::all_eligible(&specs(3));
        c[0].eligible = false;
        c[2].eligible = false;
        c[1].active = 1_000;
        let mut p = PowerOfTwo::new(4);
        assert_eq!(p.choose_two(&c, &[]), Some((1, 1)));
        assert_eq!(p.pick(&c, None), Some(1));
    }

    #[test]
    fn connections_that_stay_open_fill_backends_roughly_by_weight() {
        let mut c = Candidate::all_eligible(&weighted(&[4, 2, 1, 1]));
        let mut p = PowerOfTwo::new(5);
        for _ in 0..8_000 {
            let i = p.pick(&c, None).unwrap();
            c[i].active += 1;
        }
        for (got, want) in c
            .iter()
            .map(|c| c.active)
            .zip([4_000u64, 2_000, 1_000, 1_000])
        {
            assert!(got.abs_diff(want) * 10 < want, "{c:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_picks() {
        let c = Candidate::all_eligible(&specs(8));
        let mut a = PowerOfTwo::new(9);
        let mut b = PowerOfTwo::new(9);
        for _ in 0..200 {
            assert_eq!(a.pick(&c, None), b.pick(&c, None));
        }
    }

    #[test]
    fn excluded_backends_are_never_among_the_two_choices() {
        let c = Candidate::all_eligible(&specs(4));
        let mut p = PowerOfTwo::new(6);
        for _ in 0..1_000 {
            let (a, b) = p.choose_two(&c, &[1, 3]).unwrap();
            assert!(![1, 3].contains(&a) && ![1, 3].contains(&b) && a != b);
        }
    }
}
