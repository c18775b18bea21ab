//! Least response time: the lowest peak-EWMA connect time scaled by load and weight.

use std::cmp::Ordering;

use super::{less_loaded, min_round_robin, weight_of, Candidate, Pick};

/// Cost is `ewma_ns * (active + 1) / weight`, compared cross-multiplied in u128 so there are
/// no floats and no rounding. The `+ 1` makes an idle fast backend cheaper than a busy one
/// of the same speed, and makes load count even when latencies tie.
///
/// A backend with no measurement yet (`ewma_ns == 0`) counts as the cheapest, so new and
/// recovered backends get probed instead of starving on an unknown cost. Among unmeasured
/// backends the less loaded per unit of weight goes first, so a burst does not pile onto one
/// of them before its first connect reports; remaining ties rotate.
#[derive(Clone, Debug)]
pub struct LeastResponseTime {
    cursor: usize,
}

impl LeastResponseTime {
    /// The tie-break cursor starts at `seed % n`, so cores do not all break ties the same way.
    pub fn new(n: usize, seed: u64) -> LeastResponseTime {
        let cursor = super::start_cursor(n, seed);
        LeastResponseTime { cursor }
    }
}

/// Orders two candidates by cost, cheapest first.
fn cost_cmp(a: &Candidate, b: &Candidate) -> Ordering {
    match (a.ewma_ns == 0, b.ewma_ns == 0) {
        (true, true) if less_loaded(a, b) => Ordering::Less,
        (true, true) if less_loaded(b, a) => Ordering::Greater,
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => {
            // ewma * (active + 1) needs up to 128 bits and the weight 32 more: saturating keeps
            // the absurd corner (hours of latency on billions of connections) ordered sanely.
            let side = |c: &Candidate, other: &Candidate| {
                u128::from(c.ewma_ns)
                    .saturating_mul(u128::from(c.active) + 1)
                    .saturating_mul(u128::from(weight_of(other)))
            };
            side(a, b).cmp(&side(b, a))
        }
    }
}

impl Pick for LeastResponseTime {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        _key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        min_round_robin(candidates, exclude, &mut self.cursor, |a, b| {
            cost_cmp(a, b) == Ordering::Less
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn cand(ewma_ns: u64, active: u64, weight: u32) -> Candidate {
        Candidate {
            eligible: true,
            active,
            ewma_ns,
            weight,
        }
    }

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(LeastResponseTime::new(0, 0).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(LeastResponseTime::new(3, 0).pick(&c, None), None);
    }

    #[test]
    fn the_faster_backend_wins_at_equal_load() {
        let c = [cand(900, 0, 1), cand(300, 0, 1), cand(600, 0, 1)];
        assert_eq!(LeastResponseTime::new(3, 0).pick(&c, None), Some(1));
    }

    #[test]
    fn load_multiplies_latency_so_a_busy_fast_backend_can_lose() {
        // 300 * 4 = 1200 > 900 * 1
        let c = [cand(900, 0, 1), cand(300, 3, 1)];
        assert_eq!(LeastResponseTime::new(2, 0).pick(&c, None), Some(0));
    }

    #[test]
    fn weight_divides_the_cost() {
        // 1000 * 1 / 3 < 500 * 1 / 1
        let c = [cand(1000, 0, 3), cand(500, 0, 1)];
        assert_eq!(LeastResponseTime::new(2, 0).pick(&c, None), Some(0));
    }

    #[test]
    fn an_unmeasured_backend_is_probed_before_measured_ones() {
        let c = [cand(100, 0, 1), cand(0, 5, 1), cand(200, 0, 1)];
        assert_eq!(LeastResponseTime::new(3, 0).pick(&c, None), Some(1));
    }

    #[test]
    fn among_unmeasured_backends_the_less_loaded_goes_first() {
        let c = [cand(0, 4, 1), cand(0, 1, 1), cand(0, 2, 1)];
        assert_eq!(LeastResponseTime::new(3, 0).pick(&c, None), Some(1));
    }

    #[test]
    fn equal_costs_take_turns_instead_of_index_0_taking_all() {
        let c = [cand(500, 1, 1), cand(500, 1, 1), cand(500, 1, 1)];
        let counts = count_picks(&mut LeastResponseTime::new(3, 0), &c, 300);
        assert_eq!(counts, [100, 100, 100]);
        let idle = Candidate::all_eligible(&specs(3));
        let counts = count_picks(&mut LeastResponseTime::new(3, 0), &idle, 300);
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn connections_that_stay_open_fill_equally_fast_backends_by_weight() {
        let mut c = Candidate::all_eligible(&weighted(&[5, 1, 1]));
        c.iter_mut().for_each(|c| c.ewma_ns = 1_000_000);
        let mut lrt = LeastResponseTime::new(3, 0);
        for _ in 0..700 {
            let i = lrt.pick(&c, None).unwrap();
            c[i].active += 1;
        }
        for (got, want) in c.iter().map(|c| c.active).zip([500u64, 100, 100]) {
            assert!(got.abs_diff(want) <= 5, "{c:?}");
        }
    }

    #[test]
    fn an_ineligible_backend_is_skipped_even_when_cheapest() {
        let mut c = [cand(0, 0, 1), cand(700, 0, 1), cand(900, 0, 1)];
        c[0].eligible = false;
        assert_eq!(LeastResponseTime::new(3, 0).pick(&c, None), Some(1));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let c = [
            cand(u64::MAX, u64::MAX, 1),
            cand(u64::MAX, u64::MAX - 1, u32::MAX),
        ];
        assert_eq!(LeastResponseTime::new(2, 0).pick(&c, None), Some(1));
    }

    #[test]
    fn the_cheapest_is_skipped_when_excluded_for_a_retry() {
        let c = [cand(100, 0, 1), cand(300, 0, 1), cand(200, 0, 1)];
        let mut lrt = LeastResponseTime::new(3, 0);
        assert_eq!(lrt.pick_excluding(&c, None, &[0]), Some(2));
    }
}
