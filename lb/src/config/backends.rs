//! Backends: the `[[backends]]` entries, `BACKEND_SERVERS` and `--backend`, and DNS names to
//! discover. One validator serves the file, the environment, the command line and the admin API.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, ConfigError};

pub const DEFAULT_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub address: String,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub discover: Option<bool>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// Open connections over all cores at most (None: no limit); clients past it queue.
    pub max_connections: Option<u32>,
}

impl BackendConfig {
    pub fn new(name: String, address: SocketAddr, weight: u32) -> BackendConfig {
        BackendConfig {
            name,
            address,
            weight,
            max_connections: None,
        }
    }
}

/// A DNS name whose addresses are backends (e.g. a compose service scaled to N replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverSpec {
    /// Backends from it are named `NAME@IP`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub max_connections: Option<u32>,
}

/// Longest backend name.
pub const MAX_NAME_LEN: usize = 128;

/// A backend name, which reaches logs, metrics labels and admin URLs: 1 to 128 characters among
/// letters, digits and `._-@:[]` (enough for `host:port`, `[v6]:port` and discovery's `NAME@IP`).
/// Anything else could forge log lines, reach a terminal as escape codes, or make a backend that
/// no URL can address again.
pub fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._-@:[]".contains(&b);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(ok) {
        return Err(invalid(
            key,
            format!(
                "backend name {:?} is not allowed: use 1 to {MAX_NAME_LEN} letters, digits and . _ - @ : [ ]",
                name
            ),
        ));
    }
    Ok(())
}

/// Whether a backend at `addr` would be lb itself: one of `own` (lb's listen and admin
/// addresses), counting a wildcard listen address as every local address on its port.
pub fn is_own_address(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|o| {
        o.port() != 0
            && o.port() == addr.port()
            && (o.ip().to_canonical() == addr.ip().to_canonical()
                || (o.ip().is_unspecified() && lb_common::net::is_local_ip(addr.ip())))
    })
}

/// A weight from 1 to [`MAX_WEIGHT`], or the default.
pub fn weight(key: &str, w: Option<u32>) -> Result<u32, ConfigError> {
    let w = w.unwrap_or(DEFAULT_WEIGHT);
    if !(1..=MAX_WEIGHT).contains(&w) {
        return Err(invalid(
            key,
            format!("must be between 1 and {MAX_WEIGHT} (got {w})"),
        ));
    }
    Ok(w)
}

/// One backend from its parts, wherever they came from; `key` names the source in errors.
pub fn backend(
    key: &str,
    address: &str,
    name: Option<&str>,
    w: Option<u32>,
) -> Result<BackendConfig, ConfigError> {
    let addr = lb_common::net::parse_addr(address).map_err(|e| invalid(key, e))?;
    if addr.port() == 0 {
        return Err(invalid(
            key,
            format!("backend '{address}' has port 0: give the port it listens on"),
        ));
    }
    let name = name
        .map(String::from)
        .unwrap_or_else(|| address.trim().to_string());
    check_name(&format!("{key}.name"), &name)?;
    Ok(BackendConfig::new(
        name,
        addr,
        weight(&format!("{key}.weight"), w)?,
    ))
}

/// A `discover = true` entry: `name:port`, re-resolved at run time.
pub fn discover(key: &str, b: &FileBackend) -> Result<DiscoverSpec, ConfigError> {
    let (host, port) = b
        .address
        .trim()
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok().filter(|p| *p != 0)?)))
        .ok_or_else(|| invalid(key, format!("'{}' is not name:port", b.address)))?;
    let name = b
        .name
        .clone()
        .unwrap_or_else(|| b.address.trim().to_string());
    check_name(&format!("{key}.name"), &name)?;
    Ok(DiscoverSpec {
        name,
        host,
        port,
        weight: weight(&format!("{key}.weight"), b.weight)?,
        max_connections: max_connections(key, b.max_connections)?,
    })
}

fn max_connections(key: &str, v: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match v {
        Some(0) => Err(invalid(
            &format!("{key}.max_connections"),
            "must be at least 1 (leave the key out for no limit)",
        )),
        v => Ok(v),
    }
}

/// A `[[backends]]` entry of the file.
pub fn from_file(key: &str, b: &FileBackend) -> Result<BackendConfig, ConfigError> {
    let mut c = backend(key, &b.address, b.name.as_deref(), b.weight)?;
    c.max_connections = max_connections(key, b.max_connections)?;
    Ok(c)
}

/// The configured list: `--backend`/`BACKEND_SERVERS` when given (they replace the file's), else
/// the file's fixed entries; plus the file's names to discover (only when the file's list is used).
/// A backend as the seed projects write it in `BACKEND_SERVERS` (and `--backend`): `host:port`,
/// a URL `http://host:port/path` (the path ignored; the port defaults to the scheme's), and an
/// optional weight `*N` at the end: `10.0.0.1:80*3`. Returns the address and the weight.
pub fn parse_listed(key: &str, item: &str) -> Result<(String, Option<u32>), ConfigError> {
    let item = item.trim();
    let (rest, weight) = match item.rsplit_once('*') {
        Some((a, w)) => {
            let w = w.trim().parse::<u32>().map_err(|_| {
                invalid(
                    key,
                    format!("'{item}': the weight after '*' must be a number"),
                )
            })?;
            (a.trim(), Some(w))
        }
        None => (item, None),
    };
    let (default_port, hostport) = if let Some(r) = rest.strip_prefix("http://") {
        (Some(80), r)
    } else if let Some(r) = rest.strip_prefix("https://") {
        (Some(443), r)
    } else {
        (None, rest)
    };
    let hostport = hostport.split(['/', '?', '#']).next().unwrap_or("");
    let has_port = match hostport.rsplit_once(':') {
        Some((h, p)) => !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty(),
        None => false,
    } && !(hostport.starts_with('[') && hostport.ends_with(']'));
    let address = match (has_port, default_port) {
        (true, _) => hostport.to_string(),
        (false, Some(p)) => format!("{hostport}:{p}"),
        (false, None) => {
            return Err(invalid(
                key,
                format!("backend '{item}' has no port: write host:port (or http://host:port)"),
            ))
        }
    };
    Ok((address, weight))
}

/// One `BACKEND_SERVERS`/`--backend` item: a fixed backend, or, for a host name that does not
/// resolve now, a name lb keeps resolving in the background (as nginx's `resolve` does) instead
/// of refusing to start: its addresses become backends `NAME@IP` once it resolves.
fn listed(key: &str, item: &str) -> Result<Result<BackendConfig, DiscoverSpec>, ConfigError> {
    let (address, w) = parse_listed(key, item)?;
    match backend(key, &address, None, w) {
        Ok(b) => Ok(Ok(b)),
        Err(e) => {
            let host_part = address.rsplit_once(':').map_or("", |(h, _)| h);
            let is_name = host_part.parse::<std::net::IpAddr>().is_err()
                && !host_part.starts_with('[')
                && !host_part.is_empty();
            if !is_name {
                return Err(e);
            }
            let spec = discover(
                key,
                &FileBackend {
                    address: address.clone(),
                    name: None,
                    weight: w,
                    discover: Some(true),
                    max_connections: None,
                },
            )?;
            tracing::warn!(backend = %address, "backend host name does not resolve now: lb keeps looking it up in the background (every discovery.interval_ms) and sends clients there once it resolves");
            Ok(Err(spec))
        }
    }
}

/// The configured list: `--backend`/`BACKEND_SERVERS` when given (they replace the file's), else
/// the file's fixed entries; plus the names to discover (the file's `discover = true` entries,
/// and listed host names that did not resolve at start).
pub fn build(
    file: &[FileBackend],
    over: Option<&[String]>,
) -> Result<(Vec<BackendConfig>, Vec<DiscoverSpec>), ConfigError> {
    let mut fixed = Vec::new();
    let mut names = Vec::new();
    if let Some(list) = over {
        for item in list {
            match listed("backends", item)? {
                Ok(b) => fixed.push(b),
                Err(d) => names.push(d),
            }
        }
        return Ok((fixed, names));
    }
    for (i, b) in file.iter().enumerate() {
        let key = format!("backends[{i}]");
        if b.discover == Some(true) {
            names.push(discover(&key, b)?);
        } else {
            fixed.push(from_file(&key, b)?);
        }
    }
    Ok((fixed, names))
}

/// Names key the hash ring and the admin routes: each must be unique; and no backend may be lb
/// itself (`own`: its listen and admin addresses), which would loop a client through lb until it
/// runs out of connections.
pub fn check_set(backends: &[BackendConfig], own: &[SocketAddr]) -> Result<(), ConfigError> {
    for (i, b) in backends.iter().enumerate() {
        if is_own_address(b.address, own) {
            return Err(invalid(
                "backends",
                format!("backend '{}' at {} is lb's own listen or admin address: a client sent there would loop through lb", b.name, b.address),
            ));
        }
        if backends[..i].iter().any(|o| o.name == b.name) {
            return Err(invalid(
                "backends",
                format!("backend name '{}' is used twice: names must be unique (they key the hash ring)", b.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_servers_take_the_seeds_url_form_and_a_weight() {
        let p = |s: &str| parse_listed("k", s).unwrap();
        assert_eq!(p("127.0.0.1:9001"), ("127.0.0.1:9001".into(), None));
        assert_eq!(
            p(" http://127.0.0.1:9001/app/x?y=1 "),
            ("127.0.0.1:9001".into(), None)
        );
        assert_eq!(p("http://backend"), ("backend:80".into(), None));
        assert_eq!(p("https://[::1]/"), ("[::1]:443".into(), None));
        assert_eq!(p("10.0.0.1:80*3"), ("10.0.0.1:80".into(), Some(3)));
        assert_eq!(p("http://h:81/p*2"), ("h:81".into(), Some(2)));
        assert!(parse_listed("k", "10.0.0.1").is_err(), "no port");
        assert!(parse_listed("k", "10.0.0.1:80*x").is_err());
        let (fixed, names) = build(
            &[],
            Some(&[
                "http://127.0.0.1:9001/*4".into(),
                "lb-test-no-such-host.invalid:9000".into(),
            ]),
        )
        .unwrap();
        assert_eq!((fixed[0].address.port(), fixed[0].weight), (9001, 4));
        assert_eq!(names[0].host, "lb-test-no-such-host.invalid");
        assert!(build(&[], Some(&["127.0.0.1:0".into()])).is_err());
    }

    #[test]
    fn names_stay_within_the_token_charset() {
        for good in [
            "s1",
            "127.0.0.1:9001",
            "[::1]:9001",
            "web@10.0.0.7",
            "a_b-c.d",
        ] {
            assert!(check_name("k", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "a\nb",
            "q?x",
            "\u{1b}[31m",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(check_name("k", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_backend_on_lbs_own_address_or_wildcard_port_is_lb_itself() {
        let own = [
            "127.0.0.1:8080".parse().unwrap(),
            "0.0.0.0:9900".parse().unwrap(),
        ];
        assert!(is_own_address("127.0.0.1:8080".parse().unwrap(), &own));
        assert!(is_own_address("127.0.0.1:9900".parse().unwrap(), &own));
        assert!(is_own_address(
            "[::ffff:127.0.0.1]:8080".parse().unwrap(),
            &own
        ));
        assert!(!is_own_address("127.0.0.1:8081".parse().unwrap(), &own));
        assert!(!is_own_address("127.0.0.2:8080".parse().unwrap(), &own));
        assert!(!is_own_address("192.0.2.1:9900".parse().unwrap(), &own));
        let unbound = ["127.0.0.1:0".parse().unwrap()];
        assert!(!is_own_address("127.0.0.1:0".parse().unwrap(), &unbound));
    }
}
