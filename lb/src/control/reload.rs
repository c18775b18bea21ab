//! Reload on SIGHUP: re-read the config file and apply what can change without a restart.
//!
//! The file is the base; the admin API's changes (backends it added, weights it set, drains) and
//! the addresses discovered for `discover = true` entries still in the file stay on top of it
//! and are logged as kept. A file that would need local replicas lb did not start is refused.

use crate::config::backends::is_own_address;
use crate::config::{Config, FileConfig, Overrides};
use crate::shared::set::Override;
use crate::shared::Shared;

/// Re-reads `shared.config.source` with the same environment and command-line overrides and
/// applies the new backend list. Returns the generation in force, or why nothing changed.
/// An invalid file leaves the running configuration untouched.
pub fn reload(shared: &Shared, overrides: &Overrides) -> Result<u64, String> {
    let Some(path) = shared.config.source.clone() else {
        return Err("lb was started without --config: there is no file to re-read".into());
    };
    let file: FileConfig = Config::read_file(&path).map_err(|e| e.to_string())?;
    let next = Config::build(file, overrides.clone(), Some(path)).map_err(|e| e.to_string())?;
    let old = &shared.config;
    if next.replicas.specs != old.replicas.specs {
        return Err(if old.replicas.is_empty() {
            format!(
                "the file would need {} local replicas (it lists no backend), which lb did not start: list the backends, or restart lb to let it start replicas",
                next.replicas.len()
            )
        } else {
            "the file changes lb's local replicas, which only a restart can do".to_string()
        });
    }
    if let Some(b) = next
        .backends
        .iter()
        .find(|b| is_own_address(b.address, &shared.own_addresses))
    {
        return Err(format!(
            "backend '{}' at {} is lb's own listen or admin address",
            b.name, b.address
        ));
    }
    let mut restart_only = Vec::new();
    if next.listen != old.listen {
        restart_only.push("listen");
    }
    if next.cores != old.cores {
        restart_only.push("cores");
    }
    if next.algorithm != old.algorithm {
        restart_only.push("algorithm");
    }
    if next.admin != old.admin {
        restart_only.push("admin");
    }
    if !restart_only.is_empty() {
        tracing::warn!(keys = %restart_only.join(", "), "these keys changed but only take effect after a restart or upgrade");
    }
    let specs: Vec<String> = next.discover.iter().map(|d| d.name.clone()).collect();
    let generation = shared
        .set
        .replace(&next.backends, &specs)
        .map_err(|e| e.to_string())?;
    shared
        .discover
        .store(std::sync::Arc::new(next.discover.clone()));
    for o in shared.set.overrides() {
        match o {
            Override::Added { backend } => {
                tracing::info!(backend = ?backend, "reload kept a backend added through the admin API (DELETE /lb/backends/NAME removes it)")
            }
            Override::Weight {
                backend,
                weight,
                file,
            } => {
                tracing::info!(backend = ?backend, weight, file_weight = file, "reload kept a weight set through the admin API (DELETE /lb/backends/NAME/weight restores the file's)")
            }
            Override::Drained { backend } => {
                tracing::info!(backend = ?backend, "reload kept a drain set through the admin API (POST /lb/backends/NAME/undrain ends it)")
            }
        }
    }
    Ok(generation)
}
