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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
}

/// A DNS name whose addresses are backends (e.g. a compose service scaled to N replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverSpec {
    /// Backends from it are named `NAME@IP`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
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
    Ok(BackendConfig {
        name: name
            .map(String::from)
            .unwrap_or_else(|| address.trim().to_string()),
        address: addr,
        weight: weight(&format!("{key}.weight"), w)?,
    })
}

/// A `discover = true` entry: `name:port`, re-resolved at run time.
pub fn discover(key: &str, b: &FileBackend) -> Result<DiscoverSpec, ConfigError> {
    let (host, port) = b
        .address
        .trim()
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok().filter(|p| *p != 0)?)))
        .ok_or_else(|| invalid(key, format!("'{}' is not name:port", b.address)))?;
    Ok(DiscoverSpec {
        name: b
            .name
            .clone()
            .unwrap_or_else(|| b.address.trim().to_string()),
        host,
        port,
        weight: weight(&format!("{key}.weight"), b.weight)?,
    })
}

/// The configured list: `--backend`/`BACKEND_SERVERS` when given (they replace the file's), else
/// the file's fixed entries; plus the file's names to discover (only when the file's list is used).
pub fn build(
    file: &[FileBackend],
    over: Option<&[String]>,
) -> Result<(Vec<BackendConfig>, Vec<DiscoverSpec>), ConfigError> {
    if let Some(list) = over {
        let fixed = list
            .iter()
            .map(|a| backend("backends", a, None, None))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((fixed, Vec::new()));
    }
    let mut fixed = Vec::new();
    let mut names = Vec::new();
    for (i, b) in file.iter().enumerate() {
        let key = format!("backends[{i}]");
        if b.discover == Some(true) {
            names.push(discover(&key, b)?);
        } else {
            fixed.push(backend(&key, &b.address, b.name.as_deref(), b.weight)?);
        }
    }
    Ok((fixed, names))
}

/// Names key the hash ring and the admin routes: each must be unique.
pub fn check_unique(backends: &[BackendConfig]) -> Result<(), ConfigError> {
    for (i, b) in backends.iter().enumerate() {
        if backends[..i].iter().any(|o| o.name == b.name) {
            return Err(invalid(
                "backends",
                format!("backend name '{}' is used twice: names must be unique (they key the hash ring)", b.name),
            ));
        }
    }
    Ok(())
}
