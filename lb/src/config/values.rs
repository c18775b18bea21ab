//! Checks shared by every section: bounded durations and counts, each error naming its key.

use std::time::Duration;

use super::{invalid, ConfigError};

/// The longest duration any key accepts: one day.
pub const MAX_MILLIS: u64 = 24 * 3600 * 1000;

/// `v` (or `default`) milliseconds, between 1 ms and a day.
pub fn millis(key: &str, v: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(ms) = v else {
        return Ok(default);
    };
    if ms == 0 || ms > MAX_MILLIS {
        return Err(invalid(
            key,
            format!("must be between 1 and {MAX_MILLIS} milliseconds (got {ms})"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// `v` (or `default`), between 1 and 100.
pub fn count(key: &str, v: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    let n = v.unwrap_or(default);
    if !(1..=100).contains(&n) {
        return Err(invalid(key, format!("must be between 1 and 100 (got {n})")));
    }
    Ok(n)
}
