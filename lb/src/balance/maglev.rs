//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table filled from per-backend
//! permutations, giving even load and small disruption with O(1) lookups.

use std::fmt::Write;
use std::sync::Arc;

use super::hash::{fmix64, reciprocal_scale};
use super::round_robin::RoundRobin;
use super::{usable, BackendSpec, Candidate, HashConfig, HashFn, Pick};

/// Marks a table slot not filled yet while building.
const EMPTY: u32 = u32::MAX;

/// Re-hashed slots tried when the key's own slot holds an unusable backend, before walking
/// the table. With a share `d` of the table unusable, a key walks with probability
/// `d^(PROBES+1)`: about 0.01% of keys with half the backends down.
pub const PROBES: u64 = 12;

/// The golden ratio in 64 bits: the stride between probes.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// How a key finds its home slot, and what the probes after it re-hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slots {
    /// `fmix64(key) % m`; the probes re-hash the key.
    Fmix,
    /// `reciprocal_scale(key, m)` of the key's low 32 bits, as nft's `jhash ... mod m` reduces
    /// the kernel's jhash; the probes re-hash the slot, so that a pick depends on the slot
    /// alone: what a netfilter map from slot to backend can hold (see [`kernel_slots`]).
    Kernel,
}

impl Slots {
    /// `Kernel` for the `jhash` key hash (kernel mode's function), `Fmix` for the others.
    pub fn for_hash(hash: &HashConfig) -> Slots {
        if hash.key_hash == HashFn::Jhash {
            Slots::Kernel
        } else {
            Slots::Fmix
        }
    }
}

/// `table[fmix64(key) % m]` is the key's backend; the finaliser, a bijection, keeps a weak key
/// hash (FNV-1a of structured input) from aliasing modulo `m`. Each backend walks its own
/// permutation of the slots (`offset + i * skip mod m`, from two differently salted hashes of
/// its name) and the backends take turns claiming their next free slot, so each ends up with
/// an almost equal share, and a change to the set mostly leaves the other backends' slots in
/// place.
///
/// Weights come from the specs at build time: a backend of weight `w` takes a turn in `w` of
/// every `max_weight` rounds (Envoy's scheme), so its share of slots is proportional to `w`.
///
/// When the key's backend is unusable (ineligible or already tried) the pick stays a pure
/// function of the key and the usable set: it tries `PROBES` further slots at
/// `fmix64(key + p * golden) % m`, which spreads the displaced keys over the other backends in
/// proportion to their table shares, then walks the table from the key's slot, which always
/// terminates because at least one usable backend holds a slot. Keys whose backend is usable
/// never move.
///
/// With the `jhash` key hash the home slot and the probes follow [`Slots::Kernel`] instead, so
/// that a client lands where kernel mode's netfilter map sends it.
#[derive(Clone)]
pub struct Maglev {
    /// Backend index per slot; `len()` is the prime table size, or 0 with no backends. Built once
    /// per change to the backend set and shared by every core.
    table: Arc<Vec<u32>>,
    slots: Slots,
    /// Picks made without a key still need a backend.
    fallback: RoundRobin,
}

/// The first backend `ok` accepts among the home slot's, then those of `PROBES` slots re-hashed
/// from `salt`, then the table walked from home.
fn resolve(table: &[u32], home: u64, salt: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let m = table.len() as u64;
    let at = |slot: u64| table[slot as usize] as usize;
    let probes = (1..=PROBES).map(|p| fmix64(salt.wrapping_add(p.wrapping_mul(GOLDEN))) % m);
    let walk = (1..m).map(|off| (home + off) % m);
    std::iter::once(home)
        .chain(probes)
        .chain(walk)
        .map(at)
        .find(|&b| ok(b))
}

/// The backend of every slot under [`Slots::Kernel`] with the backends `ok` accepts (None in
/// every slot when it accepts none): kernel mode's netfilter map, slot for slot what
/// [`Maglev`] picks for a key whose jhash reduces to that slot. A slot whose own backend is
/// accepted keeps it, so taking a backend out changes only its own slots.
pub fn kernel_slots(table: &[u32], ok: impl Fn(usize) -> bool) -> Vec<Option<u32>> {
    (0..table.len() as u64)
        .map(|s| resolve(table, s, s, &ok).map(|b| b as u32))
        .collect()
}

/// Whether `n` is prime (trial division: table sizes are small enough).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime `>= n`.
pub fn next_prime(n: u64) -> u64 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

struct Builder {
    idx: u32,
    pos: u64,
    skip: u64,
    weight: u64,
    target: u64,
}

/// Builds the table. The size is `maglev_table_size` rounded up to a prime (a composite
/// size would leave some permutations unable to reach every slot) and to at least the
/// number of backends.
pub fn build_table(specs: &[BackendSpec], hash: &HashConfig) -> Vec<u32> {
    if specs.is_empty() {
        return Vec::new();
    }
    let m = next_prime(hash.maglev_table_size.max(specs.len() as u64));

    // Turn order decides who claims contested slots, so it follows names, not input order.
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by(|&a, &b| specs[a].name.cmp(&specs[b].name).then(a.cmp(&b)));

    let mut label = String::new();
    let mut salted = |name: &str, salt: &str| {
        label.clear();
        // Writing to a String cannot fail.
        let _ = write!(label, "{name}#{salt}");
        hash.node_hash.hash(label.as_bytes())
    };
    let mut builders: Vec<Builder> = order
        .into_iter()
        .map(|i| {
            let name = specs[i].name.as_str();
            Builder {
                idx: i as u32,
                pos: salted(name, "maglev-offset") % m,
                skip: salted(name, "maglev-skip") % (m - 1) + 1,
                weight: u64::from(specs[i].weight.max(1)),
                target: 0,
            }
        })
        .collect();
    let max_weight = builders.iter().map(|b| b.weight).max().unwrap_or(1);

    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u64;
    let mut round = 1u64;
    while filled < m {
        for b in builders.iter_mut() {
            if filled == m {
                break;
            }
            // A backend of weight w takes a turn when round * w has caught up with its
            // target, which grows by max_weight per turn: w turns per max_weight rounds.
            if round * b.weight < b.target {
                continue;
            }
            b.target += max_weight;
            // m is prime and 0 < skip < m, so the permutation reaches every slot and
            // this finds a free one while any is left.
            while table[b.pos as usize] != EMPTY {
                b.pos = (b.pos + b.skip) % m;
            }
            table[b.pos as usize] = b.idx;
            b.pos = (b.pos + b.skip) % m;
            filled += 1;
        }
        round += 1;
    }
    table
}

impl Maglev {
    /// Builds the table here; see [`build_table`].
    pub fn new(specs: &[BackendSpec], hash: &HashConfig, seed: u64) -> Maglev {
        Maglev::with_table(Arc::new(build_table(specs, hash)), specs.len(), hash, seed)
    }

    /// A balancer on a table built elsewhere for `n` backends.
    pub fn with_table(table: Arc<Vec<u32>>, n: usize, hash: &HashConfig, seed: u64) -> Maglev {
        Maglev {
            table,
            slots: Slots::for_hash(hash),
            fallback: RoundRobin::new(n, seed),
        }
    }

    /// Number of slots (prime), 0 with no backends.
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    fn lookup(&self, candidates: &[Candidate], key: u64, exclude: &[usize]) -> Option<usize> {
        if self.table.is_empty() || !(0..candidates.len()).any(|i| usable(candidates, i, exclude)) {
            return None;
        }
        let m = self.table.len() as u64;
        let (home, salt) = match self.slots {
            Slots::Fmix => (fmix64(key) % m, key),
            Slots::Kernel => {
                // m is at most MAX_MAGLEV_TABLE_SIZE: it fits the kernel's u32 modulus.
                let s = u64::from(reciprocal_scale(key as u32, m as u32));
                (s, s)
            }
        };
        resolve(&self.table, home, salt, |b| usable(candidates, b, exclude))
    }
}

// By hand: the derived form would print every slot into a log line.
impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maglev")
            .field("table_size", &self.table.len())
            .field("slots", &self.slots)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl Pick for Maglev {
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        match key {
            Some(k) => self.lookup(candidates, k, exclude),
            None => self.fallback.pick_excluding(candidates, None, exclude),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::HashFn;
    use super::*;

    fn small() -> HashConfig {
        HashConfig {
            maglev_table_size: 4_099,
            ..HashConfig::default()
        }
    }

    /// The backend name each of `n` keys maps to with every backend eligible.
    fn names(s: &[BackendSpec], h: &HashConfig, n: u64) -> Vec<String> {
        key_names(&mut Maglev::new(s, h, 0), s, h, n)
    }

    fn slots_per_backend(m: &Maglev, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &b in m.table.iter() {
            counts[b as usize] += 1;
        }
        counts
    }

    #[test]
    fn an_empty_set_gives_none() {
        let mut m = Maglev::new(&[], &HashConfig::default(), 0);
        assert_eq!(m.table_size(), 0);
        assert_eq!(m.pick(&[], Some(1)), None);
        assert_eq!(m.pick(&[], None), None);
    }

    #[test]
    fn all_ineligible_gives_none() {
        let c = vec![Candidate::default(); 3];
        let mut m = Maglev::new(&specs(3), &small(), 0);
        assert_eq!(m.pick(&c, Some(1)), None);
    }

    #[test]
    fn primes_are_recognised_and_sizes_round_up_to_the_next_prime() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(4_099));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65_536) && !is_prime(4_097));
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(0), 2);
        let h = HashConfig {
            maglev_table_size: 1_000,
            ..HashConfig::default()
        };
        assert_eq!(Maglev::new(&specs(3), &h, 0).table_size(), 1_009);
        let tiny = HashConfig {
            maglev_table_size: 1,
            ..HashConfig::default()
        };
        assert_eq!(Maglev::new(&specs(6), &tiny, 0).table_size(), 7);
    }

    #[test]
    fn every_slot_is_filled_and_equal_weights_get_nearly_equal_slots() {
        let m = Maglev::new(&specs(10), &HashConfig::default(), 0);
        assert_eq!(m.table_size(), 65_537);
        assert!(m.table.iter().all(|&b| b != EMPTY));
        for n in slots_per_backend(&m, 10) {
            assert!((6_553..=6_554).contains(&n), "{n}");
        }
    }

    #[test]
    fn weights_set_the_share_of_slots_within_one_percent() {
        let weights = [1u32, 2, 1, 3, 1];
        let m = Maglev::new(&weighted(&weights), &HashConfig::default(), 0);
        for (got, w) in slots_per_backend(&m, 5).into_iter().zip(weights) {
            let want = 65_537.0 * f64::from(w) / 8.0;
            assert!((got as f64 - want).abs() < 0.01 * want, "{got} vs {want}");
        }
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
    fn removing_one_of_ten_moves_under_fifteen_percent_of_100k_keys() {
        let h = HashConfig::default();
        let ten = specs(10);
        let mut nine = ten.clone();
        let gone = nine.remove(6);
        let before = names(&ten, &h, 100_000);
        let after = names(&nine, &h, 100_000);
        let held = before.iter().filter(|n| **n == gone.name).count();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(moved >= held);
        assert!(moved < 15_000, "moved {moved} of 100000");
    }

    #[test]
    fn an_ineligible_backend_hands_only_its_own_keys_to_the_others_evenly() {
        let h = HashConfig::default();
        let s = specs(5);
        let mut m = Maglev::new(&s, &h, 0);
        let all = Candidate::all_eligible(&s);
        let mut some = all.clone();
        some[2].eligible = false;
        let mut moved_to = [0usize; 5];
        for k in keys(&h, 50_000) {
            let was = m.pick(&all, Some(k)).unwrap();
            let now = m.pick(&some, Some(k)).unwrap();
            assert_ne!(now, 2);
            if was == 2 {
                moved_to[now] += 1;
            } else {
                assert_eq!(was, now);
            }
        }
        let displaced: usize = moved_to.iter().sum();
        for (i, &n) in moved_to.iter().enumerate() {
            if i != 2 {
                assert!(
                    n * 4 > displaced * 8 / 10 && n * 4 < displaced * 12 / 10,
                    "{moved_to:?}"
                );
            }
        }
    }

    #[test]
    fn with_one_usable_backend_of_many_every_key_still_finds_it() {
        let s = specs(20);
        let mut c = Candidate::all_eligible(&s);
        c.iter_mut().for_each(|c| c.eligible = false);
        c[13].eligible = true;
        let h = small();
        let mut m = Maglev::new(&s, &h, 0);
        for k in keys(&h, 5_000) {
            assert_eq!(m.pick(&c, Some(k)), Some(13));
        }
    }

    #[test]
    fn every_pair_of_hash_functions_spreads_keys_over_every_backend() {
        for key_hash in HashFn::ALL {
            for node_hash in HashFn::ALL {
                let h = HashConfig {
                    key_hash,
                    node_hash,
                    ..small()
                };
                let s = specs(5);
                let got = names(&s, &h, 20_000);
                for spec in &s {
                    let n = got.iter().filter(|g| **g == spec.name).count();
                    assert!(
                        (3_400..4_600).contains(&n),
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
        let counts = slash_24_counts(&mut Maglev::new(&specs(5), &h, 0), &h, 5);
        assert!(counts.iter().all(|&n| n > 25), "{counts:?}");
    }

    #[test]
    fn a_retry_excluding_the_first_choice_goes_to_another_backend_deterministically() {
        let h = small();
        let s = specs(5);
        let c = Candidate::all_eligible(&s);
        let mut m = Maglev::new(&s, &h, 0);
        for k in keys(&h, 1_000) {
            let first = m.pick(&c, Some(k)).unwrap();
            let second = m.pick_excluding(&c, Some(k), &[first]).unwrap();
            assert_ne!(first, second);
            assert_eq!(m.pick_excluding(&c, Some(k), &[first]), Some(second));
        }
    }

    fn jhash_config(m: u64) -> HashConfig {
        HashConfig {
            key_hash: HashFn::Jhash,
            maglev_table_size: m,
            ..HashConfig::default()
        }
    }

    #[test]
    fn with_jhash_a_clients_backend_is_the_kernel_map_entry_of_its_slot() {
        use super::super::hash::{jhash, JHASH_SEED};
        let h = jhash_config(1_021);
        let s = weighted(&[1, 2, 1, 1, 3]);
        let mut m = Maglev::new(&s, &h, 0);
        let table = build_table(&s, &h);
        for down in [None, Some(1), Some(4)] {
            let mut c = Candidate::all_eligible(&s);
            if let Some(d) = down {
                c[d].eligible = false;
            }
            let map = kernel_slots(&table, |b| c[b].eligible);
            for i in 0..20_000u32 {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919);
                let key = super::super::key_from_ip(&h, ip.into());
                let slot = reciprocal_scale(jhash(&ip.octets(), JHASH_SEED), 1_021);
                assert_eq!(
                    m.pick(&c, Some(key)).map(|b| b as u32),
                    map[slot as usize],
                    "{ip} with {down:?} down"
                );
            }
        }
    }

    #[test]
    fn taking_a_backend_out_of_the_kernel_map_changes_only_its_own_slots_evenly() {
        let h = jhash_config(1_021);
        let s = specs(5);
        let table = build_table(&s, &h);
        let all = kernel_slots(&table, |_| true);
        assert!(all.iter().zip(table.iter()).all(|(a, &t)| *a == Some(t)));
        let without_2 = kernel_slots(&table, |b| b != 2);
        let mut moved_to = [0usize; 5];
        for (before, after) in all.iter().zip(&without_2) {
            if *before == Some(2) {
                moved_to[after.unwrap() as usize] += 1;
            } else {
                assert_eq!(before, after);
            }
        }
        assert_eq!(moved_to[2], 0);
        let displaced: usize = moved_to.iter().sum();
        for (i, &n) in moved_to.iter().enumerate().filter(|(i, _)| *i != 2) {
            assert!(n * 4 > displaced * 6 / 10, "backend {i}: {moved_to:?}");
        }
        assert!(kernel_slots(&table, |_| false).iter().all(Option::is_none));
    }

    #[test]
    fn without_a_key_picks_fall_back_to_round_robin_over_the_eligible() {
        let s = specs(4);
        let mut c = Candidate::all_eligible(&s);
        c[1].eligible = false;
        let mut m = Maglev::new(&s, &small(), 0);
        let picks: Vec<_> = (0..6).map(|_| m.pick(&c, None).unwrap()).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
    }
}
