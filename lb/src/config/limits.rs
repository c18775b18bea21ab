//! Limits and access lists (HAProxy's maxconn and maxqueue are the anchor): set at the top level
//! (`[limits]`), per listener (the same keys in `[[listeners]]`) and per service
//! (`[services.limits]`), the narrower winning; plus `max_connections` per backend.
//!
//! - `max_connections` (process, listener): above it lb stops accepting (the kernel's queue holds
//!   the rest) and resumes below it; it never accepts a connection only to close it.
//! - `max_connections_per_ip`, `max_new_connections_per_ip_per_s` (a token bucket with a burst of
//!   one second's worth): a source over them is refused at accept (after its PROXY header).
//! - `allow`, `deny`: CIDR lists; deny wins; with an `allow` list, only sources in it. Checked at
//!   accept before anything else (after the PROXY header when one is accepted), and a service's
//!   once the service is chosen. Refused with a reset.
//! - `queue_timeout_ms`, `max_queue`: a client that finds every eligible backend of its service
//!   at its `max_connections` waits in a per-core FIFO, up to the timeout and the length.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::cidr::CidrList;
use super::values::millis;
use super::{invalid, ConfigError};

pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(1_000);
pub const DEFAULT_MAX_QUEUE: usize = 1024;

/// The keys `[limits]` takes; a listener takes the client ones inline, a service the queue and
/// list ones in `[services.limits]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u32>,
    pub max_new_connections_per_ip_per_s: Option<u32>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub queue_timeout_ms: Option<u64>,
    pub max_queue: Option<usize>,
}

/// Who may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    pub allow: CidrList,
    pub deny: CidrList,
}

impl AccessList {
    /// Deny wins; an empty allow list allows everyone.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// What a listener enforces on its clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientLimits {
    /// Open connections of this listener; None: no limit.
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u32>,
    pub max_new_connections_per_ip_per_s: Option<u32>,
    pub access: AccessList,
}

impl ClientLimits {
    pub fn per_ip(&self) -> bool {
        self.max_connections_per_ip.is_some() || self.max_new_connections_per_ip_per_s.is_some()
    }
}

/// A service's queue for clients that find every backend full, and its access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimits {
    pub queue_timeout: Duration,
    /// Clients waiting at once, per core.
    pub max_queue: usize,
    pub access: AccessList,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_queue: DEFAULT_MAX_QUEUE,
            access: AccessList::default(),
        }
    }
}

fn positive<T: Copy + Into<u64>>(key: &str, v: Option<T>) -> Result<Option<T>, ConfigError> {
    match v {
        Some(n) if n.into() == 0 => Err(invalid(
            key,
            "must be at least 1 (leave the key out for no limit)",
        )),
        v => Ok(v),
    }
}

fn list(key: &str, v: &Option<Vec<String>>, base: &CidrList) -> Result<CidrList, ConfigError> {
    match v {
        Some(items) => CidrList::parse(key, items),
        None => Ok(base.clone()),
    }
}

/// A level's client limits (`prefix` names it in errors) over the level above.
pub fn clients(
    prefix: &str,
    f: &FileLimits,
    base: &ClientLimits,
) -> Result<ClientLimits, ConfigError> {
    let k = |n: &str| format!("{prefix}{n}");
    Ok(ClientLimits {
        max_connections: positive(&k("max_connections"), f.max_connections)?
            .or(base.max_connections),
        max_connections_per_ip: positive(&k("max_connections_per_ip"), f.max_connections_per_ip)?
            .or(base.max_connections_per_ip),
        max_new_connections_per_ip_per_s: positive(
            &k("max_new_connections_per_ip_per_s"),
            f.max_new_connections_per_ip_per_s,
        )?
        .or(base.max_new_connections_per_ip_per_s),
        access: AccessList {
            allow: list(&k("allow"), &f.allow, &base.access.allow)?,
            deny: list(&k("deny"), &f.deny, &base.access.deny)?,
        },
    })
}

/// A service's queue and list over the top-level ones.
pub fn service(
    prefix: &str,
    f: &FileLimits,
    base: &ServiceLimits,
) -> Result<ServiceLimits, ConfigError> {
    let k = |n: &str| format!("{prefix}limits.{n}");
    for (name, set) in [
        ("max_connections", f.max_connections.is_some()),
        ("max_connections_per_ip", f.max_connections_per_ip.is_some()),
        (
            "max_new_connections_per_ip_per_s",
            f.max_new_connections_per_ip_per_s.is_some(),
        ),
    ] {
        if set {
            return Err(invalid(
                &k(name),
                "is a listener's limit (or the top-level [limits]'s); a service limits its backends with each backend's max_connections",
            ));
        }
    }
    let max_queue = f.max_queue.unwrap_or(base.max_queue);
    if max_queue > 1 << 20 {
        return Err(invalid(
            &k("max_queue"),
            format!("must be at most 1048576 (got {max_queue})"),
        ));
    }
    Ok(ServiceLimits {
        queue_timeout: millis(
            &k("queue_timeout_ms"),
            f.queue_timeout_ms,
            base.queue_timeout,
        )?,
        max_queue,
        access: AccessList {
            allow: list(&k("allow"), &f.allow, &base.access.allow)?,
            deny: list(&k("deny"), &f.deny, &base.access.deny)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn deny_wins_and_an_allow_list_admits_only_its_sources() {
        let f = FileLimits {
            allow: l(&["10.0.0.0/8", "::1"]),
            deny: l(&["10.9.0.0/16"]),
            ..Default::default()
        };
        let c = clients("", &f, &ClientLimits::default()).unwrap();
        assert!(c.access.permits("10.1.2.3".parse().unwrap()));
        assert!(!c.access.permits("10.9.2.3".parse().unwrap()));
        assert!(!c.access.permits("192.0.2.1".parse().unwrap()));
        assert!(c.access.permits("::1".parse().unwrap()));
        assert!(c.access.permits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(AccessList::default().permits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn a_listener_overrides_the_top_level_and_inherits_what_it_leaves_out() {
        let top = clients(
            "limits.",
            &FileLimits {
                max_connections_per_ip: Some(10),
                deny: l(&["192.0.2.0/24"]),
                ..Default::default()
            },
            &ClientLimits::default(),
        )
        .unwrap();
        let mine = clients(
            "listeners[0].",
            &FileLimits {
                max_connections_per_ip: Some(3),
                ..Default::default()
            },
            &top,
        )
        .unwrap();
        assert_eq!(mine.max_connections_per_ip, Some(3));
        assert!(
            !mine.access.permits("192.0.2.9".parse().unwrap()),
            "inherited deny"
        );
        let e = clients(
            "listeners[0].",
            &FileLimits {
                max_connections: Some(0),
                ..Default::default()
            },
            &top,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listeners[0].max_connections"), "{e}");
        let e = service(
            "services[0].",
            &FileLimits {
                max_connections_per_ip: Some(1),
                ..Default::default()
            },
            &ServiceLimits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("services[0].limits.max_connections_per_ip"),
            "{e}"
        );
    }
}
