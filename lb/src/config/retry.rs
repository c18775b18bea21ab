//! `[retry]`: connect retries on another backend and passive ejection.

use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::{invalid, ConfigError};

pub const DEFAULT_RETRY_TRIES: u32 = 3;
/// Every try goes to a different backend; this many is as far as a retry can go.
pub const MAX_RETRY_TRIES: u32 = 100;
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_millis(3_000);
pub const DEFAULT_EJECT: Duration = Duration::from_millis(2_000);
pub const DEFAULT_EJECT_MAX: Duration = Duration::from_millis(30_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    pub tries: Option<u32>,
    pub budget_ms: Option<u64>,
    pub eject_ms: Option<u64>,
    pub eject_max_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Connect attempts per client, each to a different backend (1: no retry).
    pub tries: u32,
    /// All attempts together.
    pub budget: Duration,
    /// Passive ejection after a failed connect, doubled per further failure...
    pub eject: Duration,
    /// ...up to this.
    pub eject_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            tries: DEFAULT_RETRY_TRIES,
            budget: DEFAULT_RETRY_BUDGET,
            eject: DEFAULT_EJECT,
            eject_max: DEFAULT_EJECT_MAX,
        }
    }
}

pub fn build(prefix: &str, f: &FileRetry, base: &RetryConfig) -> Result<RetryConfig, ConfigError> {
    let tries = f.tries.unwrap_or(base.tries);
    if !(1..=MAX_RETRY_TRIES).contains(&tries) {
        return Err(invalid(
            &format!("{prefix}retry.tries"),
            format!("must be between 1 (no retry) and {MAX_RETRY_TRIES} (got {tries})"),
        ));
    }
    let eject = millis(&format!("{prefix}retry.eject_ms"), f.eject_ms, base.eject)?;
    let eject_max = millis(
        &format!("{prefix}retry.eject_max_ms"),
        f.eject_max_ms,
        base.eject_max,
    )?;
    if eject_max < eject {
        return Err(invalid(
            &format!("{prefix}retry.eject_max_ms"),
            format!(
                "must be at least {prefix}retry.eject_ms ({} ms)",
                eject.as_millis()
            ),
        ));
    }
    Ok(RetryConfig {
        tries,
        budget: millis(
            &format!("{prefix}retry.budget_ms"),
            f.budget_ms,
            base.budget,
        )?,
        eject,
        eject_max,
    })
}
