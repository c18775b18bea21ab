//! Key population (`--keys`, `--key-dist`, `--key-seed`): many simulated clients for testing hash
//! algorithms.
//!
//! An L4 balancer decides once per TCP connection, so a key is drawn each time a connection is
//! opened (with `--new-connection`: per request; with keep-alive: per connect and reconnect) and
//! stays with that connection. The key `k{i}` replaces `{key}` in the URL path/query and in `-H`
//! header values, and with `--source-ip-per-key` it also chooses the connection's source address
//! (127.1.0.0 + i), so that a client-IP hash sees one client per key.
//!
//! Draws are stateless: the n-th connect of core c gets draw `(seed, c, n)`, so the keys a core
//! uses do not depend on which of its connections happens to be free first. Per key, the responses
//! are tallied by `X-Server-Id` (per core, merged after the run).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// Largest `--keys` (a zipf table of this many f64 is 80 MB).
pub const MAX_KEYS: u32 = 10_000_000;
/// First source address of `--source-ip-per-key`: key i connects from `SOURCE_BASE + i`.
pub const SOURCE_BASE: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 0);
/// The placeholder replaced by the key's name.
pub const PLACEHOLDER: &str = "{key}";

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Key k{r-1} with probability proportional to 1 / r^s (k0 the most frequent).
    Zipf(f64),
    /// Each key in turn: the n-th connect of the whole run gets k{n mod N} (per core interleaved),
    /// so N connects cover every key exactly once.
    Seq,
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => f.write_str("uniform"),
            KeyDist::Zipf(s) => write!(f, "zipf:{s}"),
            KeyDist::Seq => f.write_str("seq"),
        }
    }
}

/// Parses `uniform`, `seq` or `zipf:S` (S > 0).
pub fn parse_key_dist(s: &str) -> Result<KeyDist, String> {
    let s = s.trim();
    match s {
        "uniform" => return Ok(KeyDist::Uniform),
        "seq" => return Ok(KeyDist::Seq),
        _ => {}
    }
    if let Some(skew) = s.strip_prefix("zipf:") {
        return match skew.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 100.0 => Ok(KeyDist::Zipf(v)),
            _ => Err(format!(
                "'{s}': the zipf skew must be a number above 0 (e.g. zipf:1.1)"
            )),
        };
    }
    Err(format!(
        "'{s}' is not a key distribution (uniform, zipf:S with S > 0, or seq)"
    ))
}

/// The key population: its size, distribution and seed.
#[derive(Debug)]
pub struct KeySpace {
    pub n: u32,
    pub dist: KeyDist,
    pub seed: u64,
    /// Zipf: cumulative probabilities of ranks 1..=n (the last is 1.0).
    cdf: Vec<f64>,
}

impl KeySpace {
    pub fn new(n: u32, dist: KeyDist, seed: u64) -> Self {
        assert!(n >= 1, "a key population has at least one key");
        let cdf = match dist {
            KeyDist::Zipf(s) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=n)
                    .map(|r| {
                        acc += (r as f64).powf(-s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                if let Some(last) = cdf.last_mut() {
                    *last = 1.0;
                }
                cdf
            }
            KeyDist::Uniform | KeyDist::Seq => Vec::new(),
        };
        KeySpace { n, dist, seed, cdf }
    }

    /// The key of the `n`-th connect on core `core` of `cores`.
    pub fn draw(&self, core: usize, cores: usize, n: u64) -> u32 {
        match self.dist {
            KeyDist::Seq => ((n * cores as u64 + core as u64) % self.n as u64) as u32,
            KeyDist::Uniform => {
                let r = mix(self.seed, core as u64, n);
                // Multiply-high: uniform over 0..n without a modulo's bias worth mentioning.
                ((r as u128 * self.n as u128) >> 64) as u32
            }
            KeyDist::Zipf(_) => {
                // 53 random bits -> [0, 1).
                let u = (mix(self.seed, core as u64, n) >> 11) as f64 / (1u64 << 53) as f64;
                let i = self.cdf.partition_point(|&c| c <= u);
                i.min(self.n as usize - 1) as u32
            }
        }
    }

    /// Probability of key `i`.
    #[cfg(test)]
    pub fn probability(&self, i: u32) -> f64 {
        match self.dist {
            KeyDist::Uniform | KeyDist::Seq => 1.0 / self.n as f64,
            KeyDist::Zipf(_) => {
                let i = i as usize;
                self.cdf[i] - if i == 0 { 0.0 } else { self.cdf[i - 1] }
            }
        }
    }
}

/// SplitMix64 finalizer.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A well-mixed 64-bit value for draw `n` of stream `stream` under `seed`.
fn mix(seed: u64, stream: u64, n: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ stream.wrapping_mul(0xd6e8_feb8_6659_fd93)) ^ n)
}

/// `k{i}`.
pub fn key_name(i: u32) -> String {
    format!("k{i}")
}

/// Source address of key `i` with `--source-ip-per-key`; `None` past 127.255.255.254.
pub fn source_ip(i: u32) -> Option<Ipv4Addr> {
    let ip = u32::from(SOURCE_BASE).checked_add(i)?;
    (ip < u32::from(Ipv4Addr::new(127, 255, 255, 255))).then(|| Ipv4Addr::from(ip))
}

/// Largest key population `--source-ip-per-key` can give distinct addresses.
pub fn max_source_keys() -> u32 {
    u32::from(Ipv4Addr::new(127, 255, 255, 255)) - u32::from(SOURCE_BASE)
}

/// A request with `{key}` placeholders, split once at start; rendered per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The bytes between the placeholders (one more part than placeholders).
    parts: Vec<Vec<u8>>,
}

impl Template {
    /// Splits `request` at every `{key}` in its first `head_len` bytes (the body is left alone).
    /// `None` when there is no placeholder.
    pub fn new(request: &[u8], head_len: usize) -> Option<Template> {
        let (head, body) = request.split_at(head_len.min(request.len()));
        let p = PLACEHOLDER.as_bytes();
        let mut parts = Vec::new();
        let mut rest = head;
        while let Some(at) = rest.windows(p.len()).position(|w| w == p) {
            parts.push(rest[..at].to_vec());
            rest = &rest[at + p.len()..];
        }
        if parts.is_empty() {
            return None;
        }
        let mut last = rest.to_vec();
        last.extend_from_slice(body);
        parts.push(last);
        Some(Template { parts })
    }

    /// The request for key `i`, written into `out` (cleared first).
    pub fn render(&self, i: u32, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        for (j, part) in self.parts.iter().enumerate() {
            if j > 0 {
                let _ = write!(out, "k{i}");
            }
            out.extend_from_slice(part);
        }
    }
}

/// Per core: key -> (server slot of this core, responses). Only keys that got a response.
#[derive(Debug, Default)]
pub struct KeyTally {
    pub map: HashMap<u32, Vec<(usize, u64)>>,
}

impl KeyTally {
    pub fn record(&mut self, key: u32, server: usize) {
        let slots = self.map.entry(key).or_default();
        match slots.iter_mut().find(|(s, _)| *s == server) {
            Some(slot) => slot.1 += 1,
            None => slots.push((server, 1)),
        }
    }
}

/// All cores' tallies joined by server id: key -> server id -> responses.
pub type MergedTally = BTreeMap<u32, BTreeMap<String, u64>>;

/// Adds one core's tally; `ids` are that core's server ids by slot.
pub fn merge_tally(into: &mut MergedTally, from: KeyTally, ids: &[String]) {
    for (key, slots) in from.map {
        let per = into.entry(key).or_default();
        for (slot, n) in slots {
            let id = ids.get(slot).map_or("-", String::as_str);
            *per.entry(id.to_string()).or_default() += n;
        }
    }
}

/// The JSON `keys` object.
#[derive(Debug, Serialize)]
pub struct KeysReport {
    /// Size of the population (`--keys`).
    pub distinct: u32,
    pub dist: String,
    pub seed: u64,
    pub source_ip_per_key: bool,
    /// Keys that got at least one response.
    pub keys_seen: u64,
    /// Responses tallied per key (counted responses of any status).
    pub requests: u64,
    /// Responses of the most frequent key.
    pub max_key_requests: u64,
    /// Keys whose responses all carried the same server id.
    pub keys_on_one_server: u64,
    pub keys_on_several_servers: u64,
    /// Share (%) of `requests` that went to their key's majority server.
    pub stickiness_pct: f64,
    /// Server id -> keys whose majority server it is (ties: the first id in sort order).
    pub keys_per_server: BTreeMap<String, u64>,
    /// Key -> server id -> responses, keys in numeric order.
    pub per_key: PerKey,
}

/// Serialized as a JSON object in key order (k0, k1, k2, ... rather than k0, k1, k10, ...).
#[derive(Debug)]
pub struct PerKey(pub MergedTally);

impl Serialize for PerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(&key_name(*k), v)?;
        }
        m.end()
    }
}

impl KeysReport {
    pub fn new(space: &KeySpace, source_ip_per_key: bool, tally: MergedTally) -> KeysReport {
        let mut r = KeysReport {
            distinct: space.n,
            dist: space.dist.to_string(),
            seed: space.seed,
            source_ip_per_key,
            keys_seen: tally.len() as u64,
            requests: 0,
            max_key_requests: 0,
            keys_on_one_server: 0,
            keys_on_several_servers: 0,
            stickiness_pct: 0.0,
            keys_per_server: BTreeMap::new(),
            per_key: PerKey(BTreeMap::new()),
        };
        let mut majority_total = 0u64;
        for per in tally.values() {
            let total: u64 = per.values().sum();
            r.requests += total;
            r.max_key_requests = r.max_key_requests.max(total);
            if per.len() == 1 {
                r.keys_on_one_server += 1;
            } else {
                r.keys_on_several_servers += 1;
            }
            // The first id with the highest count (BTreeMap order makes ties deterministic).
            let mut best: Option<(&String, u64)> = None;
            for (id, &n) in per {
                if best.is_none_or(|(_, b)| n > b) {
                    best = Some((id, n));
                }
            }
            if let Some((id, n)) = best {
                majority_total += n;
                *r.keys_per_server.entry(id.clone()).or_default() += 1;
            }
        }
        if r.requests > 0 {
            r.stickiness_pct = 100.0 * majority_total as f64 / r.requests as f64;
        }
        r.per_key = PerKey(tally);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(space: &KeySpace, cores: usize, draws: u64) -> Vec<u64> {
        let mut c = vec![0u64; space.n as usize];
        for core in 0..cores {
            for n in 0..draws {
                c[space.draw(core, cores, n) as usize] += 1;
            }
        }
        c
    }

    #[test]
    fn key_distributions_parse_and_print_back() {
        assert_eq!(parse_key_dist("uniform"), Ok(KeyDist::Uniform));
        assert_eq!(parse_key_dist("seq"), Ok(KeyDist::Seq));
        assert_eq!(parse_key_dist("zipf:1.1"), Ok(KeyDist::Zipf(1.1)));
        assert_eq!(KeyDist::Zipf(1.1).to_string(), "zipf:1.1");
        for bad in ["zipf:0", "zipf:-1", "zipf:", "zipf:x", "normal", ""] {
            assert!(parse_key_dist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uniform_draws_cover_every_key_evenly() {
        let space = KeySpace::new(100, KeyDist::Uniform, 7);
        let c = counts(&space, 2, 50_000);
        // 1000 expected per key; 5 sigma is about 160.
        for (i, n) in c.iter().enumerate() {
            assert!((840..=1160).contains(n), "key {i}: {n}");
        }
    }

    #[test]
    fn draws_are_deterministic_per_seed_core_and_index() {
        let a = KeySpace::new(1000, KeyDist::Uniform, 1);
        let b = KeySpace::new(1000, KeyDist::Uniform, 1);
        let c = KeySpace::new(1000, KeyDist::Uniform, 2);
        let seq = |s: &KeySpace, core| (0..50).map(|n| s.draw(core, 2, n)).collect::<Vec<_>>();
        assert_eq!(seq(&a, 0), seq(&b, 0));
        assert_ne!(seq(&a, 0), seq(&c, 0));
        assert_ne!(seq(&a, 0), seq(&a, 1));
    }

    #[test]
    fn zipf_skew_favours_the_first_keys_as_predicted() {
        let space = KeySpace::new(1000, KeyDist::Zipf(1.0), 3);
        let total: f64 = (0..1000).map(|i| space.probability(i)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        // H(1000) = 7.485: k0 has 13.4%, k1 half of that.
        assert!((space.probability(0) - 0.1336).abs() < 0.001);
        let draws = 200_000u64;
        let c = counts(&space, 1, draws);
        for i in [0usize, 1, 9, 99] {
            let expect = space.probability(i as u32) * draws as f64;
            let sd = expect.sqrt();
            assert!(
                (c[i] as f64 - expect).abs() < 5.0 * sd + 1.0,
                "k{i}: {} vs {expect:.0}",
                c[i]
            );
        }
        assert!(c[0] > 2 * c[2] && c[1] > c[9] && c[9] > c[99]);
        // A stronger skew concentrates more on the first key.
        let steep = KeySpace::new(1000, KeyDist::Zipf(2.0), 3);
        assert!(steep.probability(0) > 0.6);
        assert_eq!(steep.draw(0, 1, 0), steep.draw(0, 1, 0));
    }

    #[test]
    fn seq_covers_every_key_once_across_cores() {
        let space = KeySpace::new(5, KeyDist::Seq, 0);
        // 5 connects split 3 + 2 over two cores.
        let mut seen: Vec<u32> = (0..3).map(|n| space.draw(0, 2, n)).collect();
        seen.extend((0..2).map(|n| space.draw(1, 2, n)));
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn placeholders_are_replaced_in_the_head_only() {
        let req = b"GET /u/{key}?x={key} HTTP/1.1\r\nCookie: sid={key}\r\n\r\nbody {key}";
        let head_len = req.len() - b"body {key}".len();
        let t = Template::new(req, head_len).unwrap();
        let mut out = Vec::new();
        t.render(42, &mut out);
        assert_eq!(
            out,
            b"GET /u/k42?x=k42 HTTP/1.1\r\nCookie: sid=k42\r\n\r\nbody {key}".to_vec()
        );
        t.render(7, &mut out);
        assert!(out.starts_with(b"GET /u/k7?x=k7 "));
        assert!(Template::new(b"GET / HTTP/1.1\r\n\r\n{key}", 18).is_none());
    }

    #[test]
    fn source_addresses_are_distinct_loopback_addresses() {
        assert_eq!(source_ip(0), Some(Ipv4Addr::new(127, 1, 0, 0)));
        assert_eq!(source_ip(257), Some(Ipv4Addr::new(127, 1, 1, 1)));
        let last = source_ip(max_source_keys() - 1).unwrap();
        assert_eq!(last, Ipv4Addr::new(127, 255, 255, 254));
        assert_eq!(source_ip(max_source_keys()), None);
        assert!(max_source_keys() > MAX_KEYS);
    }

    #[test]
    fn tallies_merge_across_cores_by_server_id() {
        // Core a knows servers [s1, s2], core b [s2, s1]: slots differ, ids must be joined.
        let mut a = KeyTally::default();
        let mut b = KeyTally::default();
        for _ in 0..3 {
            a.record(17, 0);
        }
        a.record(17, 1);
        b.record(17, 1);
        b.record(4, 0);
        b.record(4, 0);
        let mut merged = MergedTally::new();
        merge_tally(&mut merged, a, &["s1".into(), "s2".into()]);
        merge_tally(&mut merged, b, &["s2".into(), "s1".into()]);
        assert_eq!(merged[&17]["s1"], 4);
        assert_eq!(merged[&17]["s2"], 1);
        assert_eq!(merged[&4]["s2"], 2);
        let space = KeySpace::new(20, KeyDist::Uniform, 0);
        let r = KeysReport::new(&space, false, merged);
        assert_eq!((r.keys_seen, r.requests, r.max_key_requests), (2, 7, 5));
        assert_eq!((r.keys_on_one_server, r.keys_on_several_servers), (1, 1));
        // 4 of key 17's 5 and both of key 4's on their majority server.
        assert!((r.stickiness_pct - 100.0 * 6.0 / 7.0).abs() < 1e-9);
        assert_eq!(r.keys_per_server["s1"], 1);
        assert_eq!(r.keys_per_server["s2"], 1);
        let json = serde_json::to_string(&r.per_key).unwrap();
        assert_eq!(json, r#"{"k4":{"s2":2},"k17":{"s1":4,"s2":1}}"#);
    }
}
