//! `[discovery]`: how often `discover = true` names are re-resolved, and an optional hosts file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::ConfigError;

pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_millis(5_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    pub interval_ms: Option<u64>,
    pub hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub interval: Duration,
    /// Looked up before the system resolver (hosts(5) format).
    pub hosts_file: Option<PathBuf>,
}

pub fn build(f: &FileDiscovery) -> Result<DiscoveryConfig, ConfigError> {
    Ok(DiscoveryConfig {
        interval: millis(
            "discovery.interval_ms",
            f.interval_ms,
            DEFAULT_DISCOVERY_INTERVAL,
        )?,
        hosts_file: f.hosts_file.clone(),
    })
}
