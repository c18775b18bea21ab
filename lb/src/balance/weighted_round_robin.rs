//! Smooth weighted round robin, as nginx does it: weights {5,1,1} give a a b a c a a.

use super::{usable, weight_of, Candidate, Pick};

/// Each pick adds every eligible backend's weight to its running score, takes the highest
/// score and charges it the total. Heavy backends are interleaved with light ones instead of
/// served in bursts, and the weights are read at every pick, so runtime changes and slow-start
/// ramps take effect without a rebuild.
#[derive(Clone, Debug)]
pub struct WeightedRoundRobin {
    current: Vec<i64>,
}

impl WeightedRoundRobin {
    pub fn new(n: usize) -> WeightedRoundRobin {
        WeightedRoundRobin {
            current: vec![0; n],
        }
    }
}

impl Pick for WeightedRoundRobin {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        _key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        if self.current.len() < candidates.len() {
            self.current.resize(candidates.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate() {
            // Like nginx, a backend that sits out keeps its score, so it resumes where it was.
            if !usable(candidates, i, exclude) {
                continue;
            }
            // u32 weights: even 2^32 backends at u32::MAX could not overflow i64 sums here.
            let w = weight_of(c) as i64;
            self.current[i] += w;
            total += w;
            // Strictly greater: the first of equal scores wins, which is what yields a a b a c a a.
            match best {
                Some(b) if self.current[i] <= self.current[b] => {}
                _ => best = Some(i),
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(WeightedRoundRobin::new(0).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(WeightedRoundRobin::new(3).pick(&c, None), None);
    }

    #[test]
    fn smooth_weights_5_1_1_give_a_a_b_a_c_a_a() {
        let c = Candidate::all_eligible(&weighted(&[5, 1, 1]));
        let mut w = WeightedRoundRobin::new(3);
        let names = ["a", "b", "c"];
        let seq: Vec<_> = (0..14).map(|_| names[w.pick(&c, None).unwrap()]).collect();
        assert_eq!(
            seq,
            ["a", "a", "b", "a", "c", "a", "a", "a", "a", "b", "a", "c", "a", "a"]
        );
    }

    #[test]
    fn weights_are_honoured_exactly_over_whole_cycles() {
        let c = Candidate::all_eligible(&weighted(&[3, 7, 1, 4]));
        let counts = count_picks(&mut WeightedRoundRobin::new(4), &c, 15 * 100);
        assert_eq!(counts, [300, 700, 100, 400]);
    }

    #[test]
    fn equal_weights_behave_like_plain_round_robin() {
        let c = Candidate::all_eligible(&specs(3));
        let mut w = WeightedRoundRobin::new(3);
        let seq: Vec<_> = (0..6).map(|_| w.pick(&c, None).unwrap()).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn an_ineligible_backend_is_skipped_and_the_rest_keep_their_ratio() {
        let mut c = Candidate::all_eligible(&weighted(&[5, 1, 1]));
        c[1].eligible = false;
        let counts = count_picks(&mut WeightedRoundRobin::new(3), &c, 600);
        assert_eq!(counts, [500, 0, 100]);
    }

    #[test]
    fn a_runtime_weight_change_takes_effect_without_a_rebuild() {
        let mut c = Candidate::all_eligible(&weighted(&[1, 1, 1]));
        let mut w = WeightedRoundRobin::new(3);
        count_picks(&mut w, &c, 31);
        c[0].weight = 5;
        let counts = count_picks(&mut w, &c, 700);
        for (got, want) in counts.iter().zip([500, 100, 100]) {
            assert!(got.abs_diff(want) <= 2, "{counts:?}");
        }
    }

    #[test]
    fn weight_zero_is_read_as_one() {
        let mut c = Candidate::all_eligible(&weighted(&[1, 1]));
        c[0].weight = 0;
        assert_eq!(
            count_picks(&mut WeightedRoundRobin::new(2), &c, 100),
            [50, 50]
        );
    }

    #[test]
    fn an_excluded_backend_is_never_returned() {
        let c = Candidate::all_eligible(&weighted(&[5, 1, 1]));
        let mut w = WeightedRoundRobin::new(3);
        for _ in 0..100 {
            assert_ne!(w.pick_excluding(&c, None, &[0]), Some(0));
        }
    }
}
