//! Load-balancing algorithms: pure, synchronous and deterministic, with no I/O and no runtime.
//!
//! A worker builds one [`Balancer`] per snapshot of the backend set from the specs, then asks it
//! for a backend per connection with a fresh [`Candidate`] view (health, load, latency, weight).
//! What each algorithm reads from that view:
//!
//! | algorithm | reads |
//! | --- | --- |
//! | `round_robin` | `eligible` |
//! | `weighted_round_robin` | `eligible`, `weight` |
//! | `least_connections` | `eligible`, `active`, `weight` |
//! | `least_response_time` | `eligible`, `active`, `ewma_ns`, `weight` |
//! | `random` | `eligible`, `weight` |
//! | `power_of_two` | `eligible`, `active`, `weight` |
//! | `consistent_hash` | `eligible`; weights from the specs at build time |
//! | `maglev` | `eligible`; weights from the specs at build time |

pub mod ewma;
pub mod hash;
pub mod least_connections;
pub mod least_response_time;
pub mod maglev;
pub mod power_of_two;
pub mod random;
pub mod ring_hash;
pub mod rng;
pub mod round_robin;
pub mod weighted_round_robin;

#[cfg(test)]
mod test_support;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

pub use hash::{HashFn, ParseHashFnError};

/// What the config names, in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastResponseTime,
    Random,
    PowerOfTwo,
    /// Ring with virtual nodes. Where the key comes from (client IP, cookie, header) is the
    /// caller's choice, not this module's.
    ConsistentHash,
    Maglev,
}

/// The config named an algorithm this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown balancing algorithm {given:?}; valid names: round_robin, weighted_round_robin, \
     least_connections, least_response_time, random, power_of_two, consistent_hash \
     (aliases ip_hash, ring_hash), maglev"
)]
pub struct ParseAlgorithmError {
    /// What the config said.
    pub given: String,
}

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 8] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::LeastResponseTime,
        Algorithm::Random,
        Algorithm::PowerOfTwo,
        Algorithm::ConsistentHash,
        Algorithm::Maglev,
    ];

    /// The canonical config name.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::LeastResponseTime => "least_response_time",
            Algorithm::Random => "random",
            Algorithm::PowerOfTwo => "power_of_two",
            Algorithm::ConsistentHash => "consistent_hash",
            Algorithm::Maglev => "maglev",
        }
    }

    /// Whether picks depend on a request key; without one these fall back to round robin.
    pub fn needs_key(&self) -> bool {
        matches!(self, Algorithm::ConsistentHash | Algorithm::Maglev)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = ParseAlgorithmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip_hash" | "ring_hash" => Ok(Algorithm::ConsistentHash),
            _ => Algorithm::ALL
                .into_iter()
                .find(|a| a.name() == s)
                .ok_or_else(|| ParseAlgorithmError {
                    given: s.to_owned(),
                }),
        }
    }
}

/// Static description of a backend, in the order the snapshot holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable identity, e.g. "127.0.0.1:9001" or a configured name. The hash algorithms place a
    /// backend by this name alone, so names must be unique within a set.
    pub name: String,
    /// At least 1; 0 is read as 1.
    pub weight: u32,
}

impl BackendSpec {
    pub fn new(name: impl Into<String>, weight: u32) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            weight,
        }
    }
}

/// Dynamic view of one backend at pick time; slice index == backend index in the specs used to
/// build the balancer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    /// Healthy, not draining, not excluded by the caller.
    pub eligible: bool,
    /// Open connections summed over all cores.
    pub active: u64,
    /// Peak-EWMA connect time in nanoseconds; 0 means not measured yet.
    pub ewma_ns: u64,
    /// Current weight (runtime changes, slow-start ramps). 0 is read as 1: to stop traffic to a
    /// backend, make it ineligible.
    pub weight: u32,
}

impl Candidate {
    /// Every spec eligible, idle and unmeasured, at its configured weight.
    pub fn all_eligible(specs: &[BackendSpec]) -> Vec<Candidate> {
        specs
            .iter()
            .map(|s| Candidate {
                eligible: true,
                active: 0,
                ewma_ns: 0,
                weight: s.weight,
            })
            .collect()
    }
}

/// Default virtual nodes per unit of weight on the ring (the figure nginx and ketama use).
pub const DEFAULT_VIRTUAL_NODES: u32 = 160;
/// Default Maglev table size: prime, and large enough for ~650 backends at the paper's
/// recommended ratio of 100 slots per backend.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;

/// Hash settings for the key-based algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashConfig {
    /// H(i): hashes the request key bytes (client IP, cookie, header).
    pub key_hash: HashFn,
    /// Phi(i, j): hashes "name#j" for virtual node j, and the name for Maglev's permutation.
    pub node_hash: HashFn,
    /// Ring points per unit of weight.
    pub virtual_nodes: u32,
    /// Maglev lookup table size; should be prime (a non-prime is rounded up to the next prime).
    pub maglev_table_size: u64,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            key_hash: HashFn::Xxh64,
            node_hash: HashFn::Xxh64,
            virtual_nodes: DEFAULT_VIRTUAL_NODES,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

/// The one interface every algorithm implements.
pub trait Pick {
    /// The chosen backend index, skipping ineligible backends and every index in `exclude`
    /// (backends already tried for this connection); `None` when nothing is left.
    fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize>;

    /// The chosen backend index, or `None` when no candidate is eligible.
    fn pick(&mut self, candidates: &[Candidate], key: Option<u64>) -> Option<usize> {
        self.pick_excluding(candidates, key, &[])
    }
}

/// Enum dispatch over the algorithms, so a pick is a jump, not a virtual call.
#[derive(Clone, Debug)]
pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    WeightedRoundRobin(weighted_round_robin::WeightedRoundRobin),
    LeastConnections(least_connections::LeastConnections),
    LeastResponseTime(least_response_time::LeastResponseTime),
    Random(random::Random),
    PowerOfTwo(power_of_two::PowerOfTwo),
    ConsistentHash(ring_hash::RingHash),
    Maglev(maglev::Maglev),
}

/// What a hash algorithm looks keys up in, built once per change to the backend set (by the
/// control plane, which publishes it with the snapshot) and shared by every core's balancer: a
/// core never stalls its connections to build one. Measured before: adding 100 weight-1000
/// backends under `consistent_hash` rebuilt a 6.5M-point ring inside a connection on every core
/// after every change, 7 s without a completed request at 300 req/s and RSS 5.6 -> 254 MB.
#[derive(Clone, Default)]
pub enum Table {
    /// The algorithm needs none.
    #[default]
    None,
    Ring(Arc<ring_hash::RingPoints>),
    Maglev(Arc<Vec<u32>>),
}

// By hand: the derived form would print every point.
impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Table::None => f.write_str("Table::None"),
            Table::Ring(p) => write!(f, "Table::Ring({} points)", p.len()),
            Table::Maglev(t) => write!(f, "Table::Maglev({} slots)", t.len()),
        }
    }
}

/// A table that would break the documented bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the consistent_hash ring would have {points} points (hash.virtual_nodes x each weight, at most \
     65536 per backend); the limit is {limit}: lower the weights or hash.virtual_nodes, or use maglev"
)]
pub struct TableError {
    pub points: u64,
    pub limit: u64,
}

impl Table {
    /// Whether the table `alg` needs for `specs` is within its bounds, without building it.
    pub fn check(
        alg: Algorithm,
        specs: &[BackendSpec],
        hash: &HashConfig,
    ) -> Result<(), TableError> {
        if alg == Algorithm::ConsistentHash {
            let points = ring_hash::ring_points(specs, hash);
            if points > ring_hash::MAX_RING_POINTS {
                return Err(TableError {
                    points,
                    limit: ring_hash::MAX_RING_POINTS,
                });
            }
        }
        Ok(())
    }

    /// The table `alg` needs for `specs`, within the bounds ([`ring_hash::MAX_RING_POINTS`];
    /// Maglev's size is bounded by its configuration).
    pub fn build(
        alg: Algorithm,
        specs: &[BackendSpec],
        hash: &HashConfig,
    ) -> Result<Table, TableError> {
        Table::check(alg, specs, hash)?;
        match alg {
            Algorithm::ConsistentHash => {
                Ok(Table::Ring(Arc::new(ring_hash::build_ring(specs, hash))))
            }
            Algorithm::Maglev => Ok(Table::Maglev(Arc::new(maglev::build_table(specs, hash)))),
            _ => Ok(Table::None),
        }
    }
}

impl Balancer {
    /// The algorithm on a `table` built for `specs` (by [`Table::build`]): cheap, whatever the
    /// algorithm. A table that does not fit the algorithm is built here instead.
    pub fn with_table(
        alg: Algorithm,
        specs: &[BackendSpec],
        table: &Table,
        hash: &HashConfig,
        seed: u64,
    ) -> Balancer {
        let n = specs.len();
        match (alg, table) {
            (Algorithm::ConsistentHash, Table::Ring(p)) => {
                Balancer::ConsistentHash(ring_hash::RingHash::with_points(p.clone(), n, seed))
            }
            (Algorithm::Maglev, Table::Maglev(t)) => {
                Balancer::Maglev(maglev::Maglev::with_table(t.clone(), n, hash, seed))
            }
            _ => Balancer::new(alg, specs, hash, seed),
        }
    }

    /// Builds the algorithm for this backend set. `seed` should differ per core: it sets the
    /// random streams and where round-robin cursors start, so cores do not move in lockstep.
    pub fn new(alg: Algorithm, specs: &[BackendSpec], hash: &HashConfig, seed: u64) -> Balancer {
        let n = specs.len();
        match alg {
            Algorithm::RoundRobin => Balancer::RoundRobin(round_robin::RoundRobin::new(n, seed)),
            Algorithm::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(weighted_round_robin::WeightedRoundRobin::new(n))
            }
            Algorithm::LeastConnections => {
                Balancer::LeastConnections(least_connections::LeastConnections::new(n, seed))
            }
            Algorithm::LeastResponseTime => {
                Balancer::LeastResponseTime(least_response_time::LeastResponseTime::new(n, seed))
            }
            Algorithm::Random => Balancer::Random(random::Random::new(seed)),
            Algorithm::PowerOfTwo => Balancer::PowerOfTwo(power_of_two::PowerOfTwo::new(seed)),
            Algorithm::ConsistentHash => {
                Balancer::ConsistentHash(ring_hash::RingHash::new(specs, hash, seed))
            }
            Algorithm::Maglev => Balancer::Maglev(maglev::Maglev::new(specs, hash, seed)),
        }
    }

    /// Which algorithm this is.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Balancer::RoundRobin(_) => Algorithm::RoundRobin,
            Balancer::WeightedRoundRobin(_) => Algorithm::WeightedRoundRobin,
            Balancer::LeastConnections(_) => Algorithm::LeastConnections,
            Balancer::LeastResponseTime(_) => Algorithm::LeastResponseTime,
            Balancer::Random(_) => Algorithm::Random,
            Balancer::PowerOfTwo(_) => Algorithm::PowerOfTwo,
            Balancer::ConsistentHash(_) => Algorithm::ConsistentHash,
            Balancer::Maglev(_) => Algorithm::Maglev,
        }
    }

    /// Returns the chosen backend index, or `None` when no candidate is eligible. `key` is a
    /// hash made by [`key_from_bytes`] or [`key_from_ip`]; algorithms without keys ignore it,
    /// and the hash algorithms given `None` fall back to round robin among the eligible.
    pub fn pick(&mut self, candidates: &[Candidate], key: Option<u64>) -> Option<usize> {
        self.pick_excluding(candidates, key, &[])
    }

    /// Like [`Balancer::pick`], skipping the indices in `exclude` (backends already tried).
    pub fn pick_excluding(
        &mut self,
        candidates: &[Candidate],
        key: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::WeightedRoundRobin(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::LeastConnections(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::LeastResponseTime(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::Random(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::PowerOfTwo(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::ConsistentHash(b) => b.pick_excluding(candidates, key, exclude),
            Balancer::Maglev(b) => b.pick_excluding(candidates, key, exclude),
        }
    }
}

/// H(i): the key for the hash algorithms from request bytes (cookie, header value).
/// Where a rotating cursor over `n` backends starts: `seed % n`, so that cores seeded with their
/// index do not all begin (or break ties) on backend 0.
pub(crate) fn start_cursor(n: usize, seed: u64) -> usize {
    if n == 0 {
        0
    } else {
        (seed % n as u64) as usize
    }
}

pub fn key_from_bytes(h: &HashConfig, bytes: &[u8]) -> u64 {
    h.key_hash.hash(bytes)
}

/// H(i) of a client address: IPv4 as its 4 octets, IPv6 as its 16. An IPv4-mapped IPv6
/// address (a v4 client on a dual-stack socket) counts as the IPv4 address, so the same client
/// lands on the same backend whichever listener accepted it.
pub fn key_from_ip(h: &HashConfig, ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => key_from_bytes(h, &v4.octets()),
        IpAddr::V6(v6) => key_from_bytes(h, &v6.octets()),
    }
}

/// Fraction of `n_keys` keys whose chosen backend name differs between a balancer built from
/// `before` and one built from `after`, all backends eligible at their spec weights. Keys are
/// `key_from_bytes` of 0, 1, 2, ... as little-endian u64. Only meaningful for key algorithms;
/// for the others it measures how two independent pick sequences differ.
pub fn disruption(
    alg: Algorithm,
    before: &[BackendSpec],
    after: &[BackendSpec],
    hash: &HashConfig,
    n_keys: u64,
) -> f64 {
    if n_keys == 0 {
        return 0.0;
    }
    let mut b = Balancer::new(alg, before, hash, 0);
    let mut a = Balancer::new(alg, after, hash, 0);
    let cb = Candidate::all_eligible(before);
    let ca = Candidate::all_eligible(after);
    let mut moved = 0u64;
    for k in 0..n_keys {
        let key = key_from_bytes(hash, &k.to_le_bytes());
        let was = b.pick(&cb, Some(key)).map(|i| before[i].name.as_str());
        let now = a.pick(&ca, Some(key)).map(|i| after[i].name.as_str());
        if was != now {
            moved += 1;
        }
    }
    moved as f64 / n_keys as f64
}

/// Whether backend `i` may be chosen now. Indices past the slice are never usable, so a caller
/// that passes a short slice gets fewer choices rather than a panic.
#[inline]
pub(crate) fn usable(candidates: &[Candidate], i: usize, exclude: &[usize]) -> bool {
    candidates.get(i).is_some_and(|c| c.eligible) && !exclude.contains(&i)
}

/// Weight as the algorithms use it: 0 is read as 1 so no division or total can be zero.
#[inline]
pub(crate) fn weight_of(c: &Candidate) -> u64 {
    u64::from(c.weight.max(1))
}

/// `a.active / a.weight < b.active / b.weight`, cross-multiplied so no floats and no rounding.
#[inline]
pub(crate) fn less_loaded(a: &Candidate, b: &Candidate) -> bool {
    u128::from(a.active) * u128::from(weight_of(b))
        < u128::from(b.active) * u128::from(weight_of(a))
}

/// The usable candidate that no other beats under `less`, scanning from `*cursor` so that ties
/// go to the next one in round-robin order; moves the cursor past the winner.
pub(crate) fn min_round_robin(
    candidates: &[Candidate],
    exclude: &[usize],
    cursor: &mut usize,
    less: impl Fn(&Candidate, &Candidate) -> bool,
) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let start = *cursor % n;
    let mut best: Option<usize> = None;
    for off in 0..n {
        let i = if start + off >= n {
            start + off - n
        } else {
            start + off
        };
        if !usable(candidates, i, exclude) {
            continue;
        }
        match best {
            Some(b) if !less(&candidates[i], &candidates[b]) => {}
            _ => best = Some(i),
        }
    }
    if let Some(b) = best {
        *cursor = b + 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_balancer_on_a_shared_table_picks_what_one_built_alone_picks() {
        let h = HashConfig::default();
        let s = specs(7);
        let c = Candidate::all_eligible(&s);
        for a in [Algorithm::ConsistentHash, Algorithm::Maglev] {
            let table = Table::build(a, &s, &h).unwrap();
            let mut shared = Balancer::with_table(a, &s, &table, &h, 3);
            let mut alone = Balancer::new(a, &s, &h, 3);
            for k in 0..2_000u64 {
                assert_eq!(shared.pick(&c, Some(k)), alone.pick(&c, Some(k)), "{a}");
            }
        }
    }

    #[test]
    fn a_ring_past_the_point_limit_is_refused() {
        let h = HashConfig::default();
        let heavy: Vec<_> = (0..20)
            .map(|i| BackendSpec::new(format!("h{i}"), 1000))
            .collect();
        let e = Table::build(Algorithm::ConsistentHash, &heavy, &h).unwrap_err();
        assert_eq!(e.points, 20 * ring_hash::MAX_POINTS_PER_BACKEND);
        assert!(e.to_string().contains("lower the weights"), "{e}");
        assert!(Table::build(Algorithm::Maglev, &heavy, &h).is_ok());
        assert!(Table::build(Algorithm::RoundRobin, &heavy, &h).is_ok());
    }

    #[test]
    fn every_algorithm_name_parses_back_to_itself() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
            assert_eq!(a.to_string(), a.name());
        }
    }

    #[test]
    fn ip_hash_and_ring_hash_are_aliases_of_consistent_hash() {
        assert_eq!("ip_hash".parse(), Ok(Algorithm::ConsistentHash));
        assert_eq!("ring_hash".parse(), Ok(Algorithm::ConsistentHash));
    }

    #[test]
    fn an_unknown_algorithm_is_rejected_with_every_valid_name() {
        let err = "fastest".parse::<Algorithm>().unwrap_err().to_string();
        assert!(err.contains("\"fastest\""), "{err}");
        for a in Algorithm::ALL {
            assert!(err.contains(a.name()), "{err}");
        }
    }

    #[test]
    fn only_the_hash_algorithms_need_a_key() {
        let keyed: Vec<_> = Algorithm::ALL
            .into_iter()
            .filter(|a| a.needs_key())
            .collect();
        assert_eq!(keyed, [Algorithm::ConsistentHash, Algorithm::Maglev]);
    }

    #[test]
    fn the_balancer_reports_the_algorithm_it_was_built_for() {
        for a in Algorithm::ALL {
            let b = Balancer::new(a, &specs(3), &HashConfig::default(), 0);
            assert_eq!(b.algorithm(), a);
        }
    }

    #[test]
    fn every_algorithm_returns_none_for_an_empty_set_with_and_without_a_key() {
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, &[], &HashConfig::default(), 0);
            assert_eq!(b.pick(&[], None), None, "{a}");
            assert_eq!(b.pick(&[], Some(42)), None, "{a}");
        }
    }

    #[test]
    fn every_algorithm_returns_none_when_all_are_ineligible() {
        let s = specs(5);
        let mut c = Candidate::all_eligible(&s);
        c.iter_mut().for_each(|c| c.eligible = false);
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, &s, &HashConfig::default(), 0);
            for k in 0..100 {
                assert_eq!(b.pick(&c, Some(k)), None, "{a}");
                assert_eq!(b.pick(&c, None), None, "{a}");
            }
        }
    }

    #[test]
    fn every_algorithm_skips_ineligible_backends_with_and_without_a_key() {
        let s = specs(6);
        let mut c = Candidate::all_eligible(&s);
        for i in [0, 2, 3] {
            c[i].eligible = false;
        }
        let hc = HashConfig::default();
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, &s, &hc, 9);
            let mut seen = [false; 6];
            for k in 0..3_000u64 {
                let key = (k % 2 == 0).then(|| key_from_bytes(&hc, &k.to_le_bytes()));
                let i = b.pick(&c, key).unwrap();
                assert!(c[i].eligible, "{a} picked ineligible {i}");
                seen[i] = true;
            }
            assert_eq!(seen, [false, true, false, false, true, true], "{a}");
        }
    }

    #[test]
    fn every_algorithm_never_returns_an_excluded_index() {
        let s = specs(5);
        let c = Candidate::all_eligible(&s);
        let hc = HashConfig::default();
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, &s, &hc, 3);
            for k in 0..2_000u64 {
                let key = (k % 3 != 0).then(|| key_from_bytes(&hc, &k.to_le_bytes()));
                let exclude = [(k % 5) as usize, ((k / 5) % 5) as usize];
                let i = b.pick_excluding(&c, key, &exclude).unwrap();
                assert!(!exclude.contains(&i), "{a}: {i} in {exclude:?}");
            }
            assert_eq!(b.pick_excluding(&c, Some(1), &[0, 1, 2, 3, 4]), None, "{a}");
        }
    }

    #[test]
    fn retrying_with_every_tried_index_excluded_visits_each_eligible_backend_once() {
        let s = specs(5);
        let mut c = Candidate::all_eligible(&s);
        c[1].eligible = false;
        let hc = HashConfig::default();
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, &s, &hc, 1);
            let mut tried = Vec::new();
            while let Some(i) = b.pick_excluding(&c, Some(77), &tried) {
                tried.push(i);
            }
            tried.sort_unstable();
            assert_eq!(tried, [0, 2, 3, 4], "{a}");
        }
    }

    #[test]
    fn a_candidate_slice_shorter_than_the_specs_never_panics_or_overruns() {
        let s = specs(5);
        let c = Candidate::all_eligible(&s[..2]);
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, &s, &HashConfig::default(), 0);
            for k in 0..500 {
                assert!(b.pick(&c, Some(k)).unwrap() < 2, "{a}");
            }
        }
    }

    #[test]
    fn a_mapped_ipv6_client_gets_the_same_key_as_its_ipv4_address() {
        let h = HashConfig::default();
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            key_from_ip(&h, IpAddr::V4(v4)),
            key_from_ip(&h, IpAddr::V6(v4.to_ipv6_mapped()))
        );
        assert_eq!(
            key_from_ip(&h, IpAddr::V4(v4)),
            key_from_bytes(&h, &v4.octets())
        );
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        assert_eq!(
            key_from_ip(&h, IpAddr::V6(v6)),
            key_from_bytes(&h, &v6.octets())
        );
    }

    #[test]
    fn disruption_is_zero_for_an_unchanged_set_and_one_when_every_name_changes() {
        let h = HashConfig::default();
        let s = specs(4);
        let other: Vec<_> = (0..4)
            .map(|i| BackendSpec::new(format!("x{i}"), 1))
            .collect();
        for a in [Algorithm::ConsistentHash, Algorithm::Maglev] {
            assert_eq!(disruption(a, &s, &s, &h, 10_000), 0.0, "{a}");
            assert_eq!(disruption(a, &s, &other, &h, 10_000), 1.0, "{a}");
        }
    }

    #[test]
    fn ties_in_the_min_scan_go_round_robin_from_the_cursor() {
        let c = Candidate::all_eligible(&specs(3));
        let mut cursor = 0;
        let picks: Vec<_> = (0..6)
            .map(|_| min_round_robin(&c, &[], &mut cursor, less_loaded).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn load_compares_active_per_unit_of_weight_and_reads_weight_zero_as_one() {
        let c = |active, weight| Candidate {
            eligible: true,
            active,
            ewma_ns: 0,
            weight,
        };
        assert!(less_loaded(&c(3, 2), &c(2, 1)));
        assert!(!less_loaded(&c(4, 2), &c(2, 1)));
        assert!(!less_loaded(&c(2, 1), &c(4, 2)));
        assert!(less_loaded(&c(1, 0), &c(2, 1)));
        assert!(less_loaded(
            &c(u64::MAX - 1, u32::MAX),
            &c(u64::MAX, u32::MAX)
        ));
    }

    /// Prints the share of keys that move on the ring and on Maglev when one of ten backends
    /// goes away and when an eleventh arrives. Run with `--release --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_disruption_over_1m_keys() {
        let h = HashConfig::default();
        let ten = specs(10);
        let nine: Vec<_> = ten
            .iter()
            .filter(|s| s.name != ten[3].name)
            .cloned()
            .collect();
        let eleven = specs(11);
        let n = 1_000_000;
        for a in [Algorithm::ConsistentHash, Algorithm::Maglev] {
            let removed = disruption(a, &ten, &nine, &h, n);
            let added = disruption(a, &ten, &eleven, &h, n);
            println!(
                "{a} (virtual_nodes {}, maglev_table_size {}, {} keys): remove 1 of 10 moved \
                 {:.4}% (ideal 10%), add an 11th moved {:.4}% (ideal {:.4}%)",
                h.virtual_nodes,
                h.maglev_table_size,
                n,
                removed * 100.0,
                added * 100.0,
                100.0 / 11.0
            );
        }
    }
}
