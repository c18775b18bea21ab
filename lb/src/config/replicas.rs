//! `[replicas]`: local `backend` processes lb starts and supervises, declared with a command or
//! the built-in default when no backend is configured anywhere.

use std::net::SocketAddr;

use serde::Deserialize;

use super::backends::{BackendConfig, DEFAULT_WEIGHT};
use super::{invalid, ConfigError};

/// Replicas started when no backend is configured.
pub const DEFAULT_REPLICAS: usize = 3;
pub const DEFAULT_REPLICA_BASE_PORT: u16 = 9001;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplicas {
    pub count: Option<usize>,
    pub base_port: Option<u16>,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    pub id: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Default)]
pub struct ReplicasConfig {
    /// Local processes to start and supervise; empty: none.
    pub specs: Vec<ReplicaSpec>,
    /// Their command line ({port}, {host} and {id} substituted); None: the `backend` binary.
    pub command: Option<Vec<String>>,
}

impl ReplicasConfig {
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// The replicas as backends, named by their ids.
    pub fn backends(&self) -> impl Iterator<Item = BackendConfig> + '_ {
        self.specs
            .iter()
            .map(|r| BackendConfig::new(r.id.clone(), r.addr, DEFAULT_WEIGHT))
    }
}

/// The default set: `s1..sN` on consecutive loopback ports.
pub fn default_specs(count: usize, base_port: u16) -> Vec<ReplicaSpec> {
    (0..count)
        .map(|i| ReplicaSpec {
            id: format!("s{}", i + 1),
            addr: SocketAddr::from(([127, 0, 0, 1], base_port + i as u16)),
        })
        .collect()
}

/// Replicas start when declared with `command`, or by default when `nothing_configured`.
pub fn build(f: &FileReplicas, nothing_configured: bool) -> Result<ReplicasConfig, ConfigError> {
    let declared = f.command.is_some();
    if !declared && !nothing_configured {
        return Ok(ReplicasConfig::default());
    }
    let count = f.count.unwrap_or(DEFAULT_REPLICAS);
    let base = f.base_port.unwrap_or(DEFAULT_REPLICA_BASE_PORT);
    if count == 0 && nothing_configured {
        return Err(invalid(
            "backends",
            "no backends configured and replicas.count = 0: add [[backends]] entries, set BACKEND_SERVERS=host:port,host:port or pass --backend host:port",
        ));
    }
    if count > 64 || base == 0 || base as usize + count > 65536 {
        return Err(invalid(
            "replicas",
            format!("count {count} from base_port {base} does not fit: use 1..64 replicas on ports that exist"),
        ));
    }
    if let Some(cmd) = &f.command {
        if cmd.is_empty() || !cmd.iter().any(|a| a.contains("{port}")) {
            return Err(invalid(
                "replicas.command",
                "give the program and its arguments, with {port} where the replica's port goes (and {id} for its name), e.g. [\"backend\", \"--listen\", \"127.0.0.1:{port}\", \"--id\", \"{id}\"]",
            ));
        }
    }
    Ok(ReplicasConfig {
        specs: default_specs(count, base),
        command: f.command.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_replicas_are_on_consecutive_loopback_ports() {
        let s = default_specs(3, 9001);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].id, "s3");
        assert_eq!(s[2].addr.to_string(), "127.0.0.1:9003");
    }
}
