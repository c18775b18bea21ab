//! Consistent hashing on a ring of virtual nodes (`consistent_hash`, alias `ip_hash`).

use std::fmt::Write;
use std::sync::Arc;

use super::hash::fmix64;
use super::round_robin::RoundRobin;
use super::{usable, BackendSpec, Candidate, HashConfig, Pick};

/// Caps the points one backend puts on the ring: a weight of 1000 at 160 virtual nodes would
/// otherwise cost 160,000 points per backend per core. Weights above the cap's share lose
/// proportion; 65,536 points keeps weights up to 409 exact at the default 160.
pub const MAX_POINTS_PER_BACKEND: u64 = 1 << 16;

/// A key goes to the first point clockwise from it (the first point `>= key`, wrapping), and
/// from there to the first point whose backend is usable. A backend's points depend only on
/// its name, so adding or removing one backend moves only the keys that land on it, and a
/// backend going ineligible moves only its own keys, each to its clockwise neighbour.
///
/// Points and keys pass through MurmurHash3's `fmix64` finaliser before they meet on the ring.
/// Ring position is decided by the high bits, and FNV-1a leaves those almost unchanged when
/// only the last bytes differ: "name#1".."name#159" clustered on a few arcs (one backend got 6%
/// of keys instead of 20%) and a /24 of client IPs landed on one arc. `fmix64` is a bijection,
/// so for hashes that already mix well it changes nothing but the layout.
/// Most points on one ring, over all backends: 16 MiB of table, built (hashed and sorted) in about
/// a second on the control thread. More is refused with an error naming the cure.
pub const MAX_RING_POINTS: u64 = 1 << 20;

/// The built ring: (point, backend index), sorted by point, then backend name, so the ring is the
/// same whatever order the specs came in. Immutable: built once per change to the backend set and
/// shared by every core.
pub type RingPoints = Vec<(u64, u32)>;

/// Points the ring of `specs` would have.
pub fn ring_points(specs: &[BackendSpec], hash: &HashConfig) -> u64 {
    let per_weight = u64::from(hash.virtual_nodes.max(1));
    specs
        .iter()
        .map(|s| (per_weight * u64::from(s.weight.max(1))).min(MAX_POINTS_PER_BACKEND))
        .sum()
}

/// Each backend gets `virtual_nodes * weight` points (capped at [`MAX_POINTS_PER_BACKEND`]) at
/// `node_hash("{name}#{j}")`.
pub fn build_ring(specs: &[BackendSpec], hash: &HashConfig) -> RingPoints {
    let per_weight = u64::from(hash.virtual_nodes.max(1));
    let mut raw: Vec<(u64, u32, u32)> = Vec::with_capacity(ring_points(specs, hash) as usize);
    let mut label = String::new();
    for (idx, spec) in specs.iter().enumerate() {
        let count = (per_weight * u64::from(spec.weight.max(1))).min(MAX_POINTS_PER_BACKEND);
        for j in 0..count as u32 {
            label.clear();
            // Writing to a String cannot fail.
            let _ = write!(label, "{}#{}", spec.name, j);
            let point = fmix64(hash.node_hash.hash(label.as_bytes()));
            raw.push((point, idx as u32, j));
        }
    }
    // Equal points are rare but possible; ordering them by name (then virtual node, then
    // index for duplicate names) keeps the winner independent of input order.
    raw.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| specs[a.1 as usize].name.cmp(&specs[b.1 as usize].name))
            .then(a.2.cmp(&b.2))
            .then(a.1.cmp(&b.1))
    });
    raw.into_iter().map(|(p, idx, _)| (p, idx)).collect()
}

#[derive(Clone)]
pub struct RingHash {
    /// The ring, shared with every core's balancer of the same backend set.
    points: Arc<RingPoints>,
    /// Picks made without a key (e.g. no cookie yet) still need a backend.
    fallback: RoundRobin,
}

impl RingHash {
    /// Builds the ring here; see [`build_ring`].
    pub fn new(specs: &[BackendSpec], hash: &HashConfig, seed: u64) -> RingHash {
        RingHash::with_points(Arc::new(build_ring(specs, hash)), specs.len(), seed)
    }

    /// A balancer on a ring built elsewhere for `n` backends.
    pub fn with_points(points: Arc<RingPoints>, n: usize, seed: u64) -> RingHash {
        RingHash {
            points,
            fallback: RoundRobin::new(n, seed),
        }
    }

    /// Number of points on the ring.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no points (no backends).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The backend for ring position `pos` (a key after [`fmix64`]).
    fn lookup(&self, candidates: &[Candidate], pos: u64, exclude: &[usize]) -> Option<usize> {
        // Without this a ring whose backends are all down would be walked point by point.
        if !(0..candidates.len()).any(|i| usable(candidates, i, exclude)) {
            return None;
        }
        let n = self.points.len();
        let start = self.points.partition_point(|&(p, _)| p < pos);
        (start..n)
            .chain(0..start)
            .map(|k| self.points[k].1 as usize)
            .find(|&b| usable(candidates, b, exclude))
    }
}

// By hand: the derived form would print every point into a log line.
impl std::fmt::Debug for RingHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingHash")
            .field("points", &self.points.len())
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl Pick for RingHash {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        match key {
            Some(k) => self.lookup(candidates, fmix64(k), exclude),
            None => self.fallback.pick_excluding(candidates, None, exclude),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::HashFn;
    use super::*;

    fn ring(s: &[BackendSpec]) -> RingHash {
        RingHash::new(s, &HashConfig::default(), 0)
    }

    /// The backend name each of `n` keys maps to with every backend eligible.
    fn names(s: &[BackendSpec], h: &HashConfig, n: u64) -> Vec<String> {
        key_names(&mut RingHash::new(s, h, 0), s, h, n)
    }

    #[test]
    fn an_empty_set_gives_none() {
        assert_eq!(ring(&[]).pick(&[], Some(1)), None);
        assert_eq!(ring(&[]).pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        assert_eq!(ring(&specs(3)).pick(&c, Some(1)), None);
    }

    #[test]
    fn each_backend_gets_virtual_nodes_times_weight_points() {
        assert_eq!(ring(&weighted(&[1, 2, 3])).len(), 160 * 6);
        let h = HashConfig {
            virtual_nodes: 0,
            ..HashConfig::default()
        };
        assert_eq!(RingHash::new(&weighted(&[1, 2]), &h, 0).len(), 3);
    }

    #[test]
    fn a_huge_weight_is_capped() {
        assert_eq!(
            ring(&weighted(&[u32::MAX])).len() as u64,
            MAX_POINTS_PER_BACKEND
        );
    }

    #[test]
    fn a_key_goes_to_the_first_point_clockwise_and_wraps_past_the_last() {
        let s = specs(3);
        let r = ring(&s);
        let c = Candidate::all_eligible(&s);
        let (p0, b0) = r.points[0];
        let (p1, b1) = r.points[1];
        let (last, _) = *r.points.last().unwrap();
        assert_eq!(r.lookup(&c, p0, &[]), Some(b0 as usize));
        assert_eq!(r.lookup(&c, p0 + 1, &[]), Some(b1 as usize));
        assert_eq!(r.lookup(&c, p1, &[]), Some(b1 as usize));
        assert_eq!(r.lookup(&c, last + 1, &[]), Some(b0 as usize));
        assert_eq!(r.lookup(&c, 0, &[]), Some(b0 as usize));
    }

    #[test]
    fn two_independent_builds_give_the_same_picks_for_10k_keys() {
        let h = HashConfig::default();
        let s = specs(7);
        assert_eq!(names(&s, &h, 10_000), names(&s, &h, 10_000));
    }

    #[test]
    fn the_input_order_of_the_specs_does_not_change_which_name_a_key_gets() {
        let h = HashConfig::default();
        let s = weighted(&[1, 3, 2, 1, 1, 2, 1]);
        let mut reversed = s.clone();
        reversed.reverse();
        let mut rotated = s.clone();
        rotated.rotate_left(3);
        let want = names(&s, &h, 10_000);
        assert_eq!(names(&reversed, &h, 10_000), want);
        assert_eq!(names(&rotated, &h, 10_000), want);
    }

    #[test]
    fn removing_one_of_ten_moves_exactly_the_keys_it_held() {
        let h = HashConfig::default();
        let ten = specs(10);
        let mut nine = ten.clone();
        let gone = nine.remove(4);
        let before = names(&ten, &h, 100_000);
        let after = names(&nine, &h, 100_000);
        let held = before.iter().filter(|n| **n == gone.name).count();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(moved, held);
        assert!(held > 5_000, "{held}");
        for (b, a) in before.iter().zip(&after) {
            if *b != gone.name {
                assert_eq!(b, a);
            }
        }
    }

    #[test]
    fn adding_an_eleventh_moves_keys_only_onto_it() {
        let h = HashConfig::default();
        let before = names(&specs(10), &h, 100_000);
        let eleven = specs(11);
        let after = names(&eleven, &h, 100_000);
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, eleven[10].name);
            }
        }
    }

    #[test]
    fn an_ineligible_backend_hands_only_its_own_keys_to_its_neighbours() {
        let h = HashConfig::default();
        let s = specs(5);
        let mut r = RingHash::new(&s, &h, 0);
        let all = Candidate::all_eligible(&s);
        let mut some = all.clone();
        some[2].eligible = false;
        for k in keys(&h, 20_000) {
            let was = r.pick(&all, Some(k)).unwrap();
            let now = r.pick(&some, Some(k)).unwrap();
            assert_ne!(now, 2);
            if was != 2 {
                assert_eq!(was, now);
            }
        }
    }

    #[test]
    fn weights_set_the_share_of_keys_within_fifteen_percent() {
        let h = HashConfig::default();
        let weights = [1u32, 2, 1, 3, 1];
        let s = weighted(&weights);
        let n = 200_000;
        let got = names(&s, &h, n);
        for (spec, w) in s.iter().zip(weights) {
            let share = got.iter().filter(|g| **g == spec.name).count() as f64 / n as f64;
            let want = f64::from(w) / 8.0;
            assert!(
                (share - want).abs() < 0.15 * want,
                "{}: {share} vs {want}",
                spec.name
            );
        }
    }

    #[test]
    fn every_pair_of_hash_functions_spreads_keys_over_every_backend() {
        for key_hash in HashFn::ALL {
            for node_hash in HashFn::ALL {
                let h = HashConfig {
                    key_hash,
                    node_hash,
                    ..HashConfig::default()
                };
                let s = specs(5);
                let got = names(&s, &h, 20_000);
                for spec in &s {
                    let n = got.iter().filter(|g| **g == spec.name).count();
                    assert!(
                        (3_000..5_000).contains(&n),
                        "{key_hash}/{node_hash}: {} got {n} of 20000",
                        spec.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_slash_24_of_client_ips_under_fnv1a_spreads_over_every_backend() {
        let h = HashConfig {
            key_hash: HashFn::Fnv1a,
            node_hash: HashFn::Fnv1a,
            ..HashConfig::default()
        };
        let counts = slash_24_counts(&mut RingHash::new(&specs(5), &h, 0), &h, 5);
        assert!(counts.iter().all(|&n| n > 25), "{counts:?}");
    }

    #[test]
    fn a_retry_excluding_the_first_choice_goes_to_another_backend_deterministically() {
        let h = HashConfig::default();
        let s = specs(5);
        let c = Candidate::all_eligible(&s);
        let mut r = RingHash::new(&s, &h, 0);
        for k in keys(&h, 1_000) {
            let first = r.pick(&c, Some(k)).unwrap();
            let second = r.pick_excluding(&c, Some(k), &[first]).unwrap();
            assert_ne!(first, second);
            assert_eq!(r.pick_excluding(&c, Some(k), &[first]), Some(second));
        }
    }

    #[test]
    fn without_a_key_picks_fall_back_to_round_robin_over_the_eligible() {
        let s = specs(4);
        let mut c = Candidate::all_eligible(&s);
        c[1].eligible = false;
        let mut r = ring(&s);
        let picks: Vec<_> = (0..6).map(|_| r.pick(&c, None).unwrap()).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    }
}
