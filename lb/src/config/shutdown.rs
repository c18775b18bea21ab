//! `[shutdown]`: how long open connections may finish after SIGTERM and after SIGINT.

use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::ConfigError;

pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(30_000);
pub const DEFAULT_INTERRUPT_GRACE: Duration = Duration::from_millis(2_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    pub grace_ms: Option<u64>,
    pub interrupt_grace_ms: Option<u64>,
    pub lame_duck_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// After SIGTERM (and after handing the listeners to a new process).
    pub grace: Duration,
    /// After SIGINT.
    pub interrupt_grace: Duration,
    /// After SIGTERM, lb answers /health with 503 but keeps accepting for this long (0: not at
    /// all), so that a balancer or Kubernetes stops sending clients before lb stops taking them.
    pub lame_duck: Duration,
}

pub fn build(f: &FileShutdown) -> Result<ShutdownConfig, ConfigError> {
    Ok(ShutdownConfig {
        grace: millis("shutdown.grace_ms", f.grace_ms, DEFAULT_SHUTDOWN_GRACE)?,
        interrupt_grace: millis(
            "shutdown.interrupt_grace_ms",
            f.interrupt_grace_ms,
            DEFAULT_INTERRUPT_GRACE,
        )?,
        lame_duck: match f.lame_duck_ms {
            None | Some(0) => Duration::ZERO,
            v => millis("shutdown.lame_duck_ms", v, Duration::ZERO)?,
        },
    })
}
