//! `[pool]`: pre-connected idle backend connections per core (off by default).

use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::{invalid, ConfigError};

pub const DEFAULT_POOL_IDLE_PER_BACKEND: usize = 0;
pub const DEFAULT_POOL_MAX_AGE: Duration = Duration::from_millis(10_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub idle_per_backend: Option<usize>,
    pub max_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// 0: no pool.
    pub idle_per_backend: usize,
    pub max_age: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_per_backend: DEFAULT_POOL_IDLE_PER_BACKEND,
            max_age: DEFAULT_POOL_MAX_AGE,
        }
    }
}

pub fn build(f: &FilePool) -> Result<PoolConfig, ConfigError> {
    let idle_per_backend = f.idle_per_backend.unwrap_or(DEFAULT_POOL_IDLE_PER_BACKEND);
    if idle_per_backend > 1024 {
        return Err(invalid(
            "pool.idle_per_backend",
            format!("must be at most 1024 (got {idle_per_backend}); 0 turns the pool off"),
        ));
    }
    Ok(PoolConfig {
        idle_per_backend,
        max_age: millis("pool.max_age_ms", f.max_age_ms, DEFAULT_POOL_MAX_AGE)?,
    })
}
