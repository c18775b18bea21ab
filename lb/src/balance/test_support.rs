//! Fixtures shared by the balancing tests.

use super::{BackendSpec, Candidate, HashConfig, Pick};

/// `n` backends named like real addresses, weight 1.
pub fn specs(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec::new(format!("127.0.0.1:{}", 9001 + i), 1))
        .collect()
}

/// Backends with the given weights, named like [`specs`].
pub fn weighted(weights: &[u32]) -> Vec<BackendSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| BackendSpec::new(format!("127.0.0.1:{}", 9001 + i), w))
        .collect()
}

/// How often each index is picked over `rounds` picks with a fixed candidate view.
pub fn count_picks(b: &mut impl Pick, c: &[Candidate], rounds: usize) -> Vec<usize> {
    let mut counts = vec![0; c.len()];
    for _ in 0..rounds {
        counts[b.pick(c, None).expect("a backend")] += 1;
    }
    counts
}

/// Keys as the proxy makes them, from a running counter.
pub fn keys(h: &HashConfig, n: u64) -> impl Iterator<Item = u64> + '_ {
    (0..n).map(move |k| super::key_from_bytes(h, &k.to_le_bytes()))
}

/// The backend name each of `n` keys maps to, with every backend eligible.
pub fn key_names(b: &mut impl Pick, s: &[BackendSpec], h: &HashConfig, n: u64) -> Vec<String> {
    let c = Candidate::all_eligible(s);
    keys(h, n)
        .map(|k| s[b.pick(&c, Some(k)).unwrap()].name.clone())
        .collect()
}

/// Picks per backend for the 256 client IPs of one /24 (10.1.2.0/24), keyed as the proxy keys
/// them: a weak key hash would put a whole subnet on one backend.
pub fn slash_24_counts(b: &mut impl Pick, h: &HashConfig, backends: usize) -> Vec<usize> {
    let c = vec![
        Candidate {
            eligible: true,
            weight: 1,
            ..Candidate::default()
        };
        backends
    ];
    let mut counts = vec![0usize; backends];
    for last in 0..=255u8 {
        let ip = std::net::IpAddr::from([10, 1, 2, last]);
        counts[b.pick(&c, Some(super::key_from_ip(h, ip))).unwrap()] += 1;
    }
    counts
}
