//! `[timeouts]`: connect, idle and head-peek limits, TCP keepalive, and connection lifetimes.

use std::time::Duration;

use serde::Deserialize;

use super::values::{count, millis};
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
    pub keepalive_idle_ms: Option<u64>,
    pub keepalive_interval_ms: Option<u64>,
    pub keepalive_count: Option<u32>,
    pub max_lifetime_ms: Option<u64>,
}

/// TCP keepalive on the client's and the backend's socket: the kernel probes a connection idle
/// for `idle`, every `interval`, and drops it after `count` unanswered probes, so that a peer
/// that vanished (a NAT that forgot the flow, a host powered off) is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One connect attempt to a backend.
    pub connect: Duration,
    /// No byte in either direction for this long closes a connection.
    pub idle: Duration,
    /// What a client has to send the head lb peeks at (HTTP key, later PROXY or TLS).
    pub peek: Duration,
    /// None: no TCP keepalive (the default).
    pub keepalive: Option<Keepalive>,
    /// A connection older than this is closed (cleanly) once it has been idle for a moment: the
    /// cure for the imbalance long-lived connections leave after a scale-out. None: no limit.
    pub max_lifetime: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            peek: DEFAULT_PEEK_TIMEOUT,
            keepalive: None,
            max_lifetime: None,
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
        keepalive: match f.keepalive_idle_ms {
            Some(0) => None,
            None if f.keepalive_interval_ms.is_none() && f.keepalive_count.is_none() => {
                base.keepalive
            }
            idle => {
                let inherited = base.keepalive.unwrap_or(Keepalive {
                    idle: Duration::from_secs(60),
                    interval: Duration::from_secs(10),
                    count: 6,
                });
                Some(Keepalive {
                    idle: millis(
                        &format!("{prefix}timeouts.keepalive_idle_ms"),
                        idle,
                        inherited.idle,
                    )?,
                    interval: millis(
                        &format!("{prefix}timeouts.keepalive_interval_ms"),
                        f.keepalive_interval_ms,
                        inherited.interval,
                    )?,
                    count: count(
                        &format!("{prefix}timeouts.keepalive_count"),
                        f.keepalive_count,
                        inherited.count,
                    )?,
                })
            }
        },
        max_lifetime: match f.max_lifetime_ms {
            Some(0) => None,
            None => base.max_lifetime,
            v => Some(millis(
                &format!("{prefix}timeouts.max_lifetime_ms"),
                v,
                Duration::ZERO,
            )?),
        },
    })
}
