//! Data plane: the L4 relay and the HTTP head peek used by cookie and header hashing.

pub mod http;
pub mod idle;
pub mod join;
pub mod readiness;
pub mod tcp;

use idle::{IdleGuard, Until};
use tcp::{RelayError, Side};

/// Runs both relay directions until they end, the first error, or the idle timeout.
pub async fn until_idle<A, B>(up: A, down: B, idle: &IdleGuard) -> Result<(u64, u64), RelayError>
where
    A: std::future::Future<Output = Result<u64, RelayError>>,
    B: std::future::Future<Output = Result<u64, RelayError>>,
{
    match Until::new(join::try_join(up, down), idle.expired()).await {
        Some(r) => r,
        None => Err(RelayError {
            side: Side::Client,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"),
        }),
    }
}
