//! `[health]`: active checks (TCP connect or HTTP GET), rise/fall, slow start.

use std::time::Duration;

use serde::Deserialize;

use super::values::{count, millis};
use super::{invalid, ConfigError};

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(2_000);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(1_000);
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_STATUS: u16 = 200;
pub const DEFAULT_SLOW_START: Duration = Duration::from_millis(10_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub check: Option<String>,
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub slow_start_ms: Option<u64>,
}

/// Active health checks, run once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    None,
    Tcp,
    Http { path: String, expect_status: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
    /// A backend that comes back ramps up over this; 0 turns slow start off.
    pub slow_start: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: HealthCheck::Tcp,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_HEALTH_RISE,
            fall: DEFAULT_HEALTH_FALL,
            slow_start: DEFAULT_SLOW_START,
        }
    }
}

pub fn build(
    prefix: &str,
    h: &FileHealth,
    base: &HealthConfig,
) -> Result<HealthConfig, ConfigError> {
    let check = match h.check.as_deref() {
        // Inherited, unless this section names another path or status for an inherited HTTP check.
        None => match (&base.check, &h.path, h.expect_status) {
            (
                HealthCheck::Http {
                    path,
                    expect_status,
                },
                p,
                s,
            ) if p.is_some() || s.is_some() => HealthCheck::Http {
                path: p.clone().unwrap_or_else(|| path.clone()),
                expect_status: s.unwrap_or(*expect_status),
            },
            (c, _, _) => c.clone(),
        },
        Some("none") => HealthCheck::None,
        Some("tcp") => HealthCheck::Tcp,
        Some("http") => {
            let path = h.path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
            if !path.starts_with('/')
                || path
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid(
                    &format!("{prefix}health.path"),
                    format!(
                        "'{path}' is not a request path: it must start with / and have no spaces"
                    ),
                ));
            }
            let expect_status = h.expect_status.unwrap_or(DEFAULT_HEALTH_STATUS);
            if !(100..=599).contains(&expect_status) {
                return Err(invalid(
                    &format!("{prefix}health.expect_status"),
                    format!("must be an HTTP status 100-599 (got {expect_status})"),
                ));
            }
            HealthCheck::Http {
                path,
                expect_status,
            }
        }
        Some(other) => {
            return Err(invalid(
                &format!("{prefix}health.check"),
                format!("'{other}' is not a check: use \"none\", \"tcp\" or \"http\""),
            ))
        }
    };
    let slow_start = match h.slow_start_ms {
        Some(0) => Duration::ZERO,
        v => millis(&format!("{prefix}health.slow_start_ms"), v, base.slow_start)?,
    };
    Ok(HealthConfig {
        check,
        interval: millis(
            &format!("{prefix}health.interval_ms"),
            h.interval_ms,
            base.interval,
        )?,
        timeout: millis(
            &format!("{prefix}health.timeout_ms"),
            h.timeout_ms,
            base.timeout,
        )?,
        rise: count(&format!("{prefix}health.rise"), h.rise, base.rise)?,
        fall: count(&format!("{prefix}health.fall"), h.fall, base.fall)?,
        slow_start,
    })
}
