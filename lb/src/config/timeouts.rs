//! `[timeouts]`: connect, idle and head-peek limits.

use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::ConfigError;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(60_000);
pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_millis(5_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub connect_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub peek_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One connect attempt to a backend.
    pub connect: Duration,
    /// No byte in either direction for this long closes a connection.
    pub idle: Duration,
    /// What a client has to send the head lb peeks at (HTTP key, later PROXY or TLS).
    pub peek: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            peek: DEFAULT_PEEK_TIMEOUT,
        }
    }
}

pub fn build(prefix: &str, f: &FileTimeouts, base: &Timeouts) -> Result<Timeouts, ConfigError> {
    Ok(Timeouts {
        connect: millis(
            &format!("{prefix}timeouts.connect_ms"),
            f.connect_ms,
            base.connect,
        )?,
        idle: millis(&format!("{prefix}timeouts.idle_ms"), f.idle_ms, base.idle)?,
        peek: millis(&format!("{prefix}timeouts.peek_ms"), f.peek_ms, base.peek)?,
    })
}
