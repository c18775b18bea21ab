//! `[hash]`: where the hash algorithms take their key from, and how they hash.

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::balance::{HashConfig, HashFn};
use crate::proxy::http::HeadKey;

/// Largest Maglev table: the largest prime below 2^20 (4 MiB of table, built once per change).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 1_048_573;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHash {
    pub key: Option<String>,
    pub key_hash: Option<String>,
    pub node_hash: Option<String>,
    pub virtual_nodes: Option<u32>,
    pub maglev_table_size: Option<u64>,
}

/// Where an algorithm that hashes takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    ClientIp,
    /// A cookie or header of the first request head, which is peeked and replayed.
    Head(HeadKey),
    /// The server name of the TLS ClientHello, which is peeked and replayed.
    Sni,
}

impl KeySource {
    /// Cookie and header keys need the first request head to be peeked.
    pub fn needs_http(&self) -> bool {
        matches!(self, KeySource::Head(_))
    }
}

/// `backends` is how many backends the table must hold (the Maglev size is checked against it).
pub fn build(
    prefix: &str,
    f: &FileHash,
    base: &(KeySource, HashConfig),
    backends: usize,
) -> Result<(KeySource, HashConfig), ConfigError> {
    let key = match f.key.as_deref() {
        None => base.0.clone(),
        Some("client_ip") => KeySource::ClientIp,
        Some("sni") => KeySource::Sni,
        Some(k) => KeySource::Head(parse_key(prefix, k)?),
    };
    let mut hash = base.1;
    if let Some(h) = &f.key_hash {
        hash.key_hash = h
            .parse::<HashFn>()
            .map_err(|e| invalid(&format!("{prefix}hash.key_hash"), e.to_string()))?;
    }
    if let Some(h) = &f.node_hash {
        hash.node_hash = h
            .parse::<HashFn>()
            .map_err(|e| invalid(&format!("{prefix}hash.node_hash"), e.to_string()))?;
    }
    if let Some(v) = f.virtual_nodes {
        if !(1..=10_000).contains(&v) {
            return Err(invalid(
                &format!("{prefix}hash.virtual_nodes"),
                format!("must be between 1 and 10000 (got {v}); 160 is a good default"),
            ));
        }
        hash.virtual_nodes = v;
    }
    if let Some(m) = f.maglev_table_size {
        // Bounded before the primality test, which would otherwise run for minutes on a
        // 64-bit value; the table costs 4 bytes per slot.
        if m > MAX_MAGLEV_TABLE_SIZE
            || m < backends as u64 * 10
            || !crate::balance::maglev::is_prime(m)
        {
            return Err(invalid(
                &format!("{prefix}hash.maglev_table_size"),
                format!("must be a prime from 10x the number of backends up to {MAX_MAGLEV_TABLE_SIZE} (got {m}); 65537 is a good default"),
            ));
        }
        hash.maglev_table_size = m;
    }
    Ok((key, hash))
}

fn parse_key(prefix: &str, k: &str) -> Result<HeadKey, ConfigError> {
    let bad = || {
        invalid(
            &format!("{prefix}hash.key"),
            format!(
                "'{k}' is not a key source: use \"client_ip\", \"sni\", \"cookie:NAME\" or \"header:NAME\""
            ),
        )
    };
    let (kind, name) = k.split_once(':').ok_or_else(bad)?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
    {
        return Err(bad());
    }
    match kind.trim() {
        "cookie" => Ok(HeadKey::Cookie(name.to_string())),
        "header" => Ok(HeadKey::Header(name.to_string())),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_maglev_table_is_prime_and_the_next_size_up_is_refused() {
        assert!(crate::balance::maglev::is_prime(MAX_MAGLEV_TABLE_SIZE));
        assert_eq!(
            crate::balance::maglev::next_prime(MAX_MAGLEV_TABLE_SIZE + 1),
            1_048_583
        );
        let f = |m| FileHash {
            maglev_table_size: Some(m),
            ..Default::default()
        };
        let base = (KeySource::ClientIp, HashConfig::default());
        assert!(build("", &f(MAX_MAGLEV_TABLE_SIZE), &base, 3).is_ok());
        assert!(build("", &f(1_048_583), &base, 3).is_err());
        assert!(build("", &f(9_223_372_036_854_775_783), &base, 3).is_err());
    }
}
