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
