//! Reload on SIGHUP: re-read the config file and apply what can change without a restart.

use crate::config::{Config, FileConfig, Overrides};
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
        restart_only.push("admin.listen");
    }
    if !restart_only.is_empty() {
        tracing::warn!(keys = %restart_only.join(", "), "these keys changed but only take effect after a restart or upgrade");
    }
    let generation = shared
        .set
        .replace(&next.backends)
        .map_err(|e| e.to_string())?;
    Ok(generation)
}
