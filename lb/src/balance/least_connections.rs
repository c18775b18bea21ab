//! Least connections: the eligible backend with the fewest open connections per unit of weight.

use super::{less_loaded, min_round_robin, Candidate, Pick};

/// Reads `active` summed over all cores, so its view is as fresh as the last publish of the
/// per-core counts. Ties rotate: with equal load (all idle at start, or a steady state) every
/// backend takes its turn instead of index 0 taking every tie.
#[derive(Clone, Debug)]
pub struct LeastConnections {
    cursor: usize,
}

impl LeastConnections {
    /// The tie-break cursor starts at `seed % n`, so cores do not all break ties the same way.
    pub fn new(n: usize, seed: u64) -> LeastConnections {
        let cursor = super::start_cursor(n, seed);
        LeastConnections { cursor }
    }
}

impl Pick for LeastConnections {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        _key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        min_round_robin(candidates, exclude, &mut self.cursor, less_loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    /// Picks `rounds` times, each pick opening a connection that never closes.
    fn fill(lc: &mut LeastConnections, c: &mut [Candidate], rounds: usize) -> Vec<u64> {
        for _ in 0..rounds {
            let i = lc.pick(c, None).unwrap();
            c[i].active += 1;
        }
        c.iter().map(|c| c.active).collect()
    }

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(LeastConnections::new(0, 0).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(LeastConnections::new(3, 0).pick(&c, None), None);
    }

    #[test]
    fn the_backend_with_fewer_active_connections_wins() {
        let mut c = Candidate::all_eligible(&specs(3));
        c[0].active = 5;
        c[1].active = 2;
        c[2].active = 9;
        let mut lc = LeastConnections::new(3, 0);
        for _ in 0..10 {
            assert_eq!(lc.pick(&c, None), Some(1));
        }
    }

    #[test]
    fn equal_idle_backends_take_turns_instead_of_index_0_taking_all() {
        let c = Candidate::all_eligible(&specs(4));
        let counts = count_picks(&mut LeastConnections::new(4, 0), &c, 400);
        assert_eq!(counts, [100, 100, 100, 100]);
    }

    #[test]
    fn a_heavier_backend_may_hold_more_connections_in_proportion_to_weight() {
        let mut c = Candidate::all_eligible(&weighted(&[2, 1]));
        c[0].active = 3;
        c[1].active = 2;
        // 3/2 < 2/1
        assert_eq!(LeastConnections::new(2, 1).pick(&c, None), Some(0));
        c[0].active = 5;
        // 5/2 > 2/1
        assert_eq!(LeastConnections::new(2, 0).pick(&c, None), Some(1));
    }

    #[test]
    fn connections_that_stay_open_fill_backends_in_proportion_to_weight() {
        let mut c = Candidate::all_eligible(&weighted(&[5, 1, 1]));
        let active = fill(&mut LeastConnections::new(3, 0), &mut c, 700);
        for (got, want) in active.iter().zip([500, 100, 100]) {
            assert!(got.abs_diff(want) <= 1, "{active:?}");
        }
    }

    #[test]
    fn an_idle_ineligible_backend_is_skipped() {
        let mut c = Candidate::all_eligible(&specs(3));
        c[0].eligible = false;
        c[1].active = 10;
        c[2].active = 10;
        let counts = count_picks(&mut LeastConnections::new(3, 0), &c, 10);
        assert_eq!(counts, [0, 5, 5]);
    }

    #[test]
    fn the_least_loaded_is_skipped_when_excluded_for_a_retry() {
        let mut c = Candidate::all_eligible(&specs(3));
        c[0].active = 1;
        c[1].active = 3;
        c[2].active = 2;
        let mut lc = LeastConnections::new(3, 0);
        assert_eq!(lc.pick_excluding(&c, None, &[0]), Some(2));
        assert_eq!(lc.pick_excluding(&c, None, &[0, 2]), Some(1));
    }
}
