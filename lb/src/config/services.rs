//! `[[services]]`: backend pools, each with its algorithm, hash key, health checks, retry,
//! timeouts and PROXY-out setting. Tables left out of a service inherit the top-level ones.
//! The single-service form (top-level `backends`, `algorithm`, ...) is the service `default`.

use serde::Deserialize;

use super::backends::{self, BackendConfig, DiscoverSpec, FileBackend};
use super::hash::{self, FileHash, KeySource};
use super::health::{self, FileHealth, HealthConfig};
use super::kernel::{self, FileKernel, KernelConfig, Mode};
use super::limits::{self, FileLimits, ServiceLimits};
use super::response_time::{self, FileResponseTime, ResponseTime};
use super::retry::{self, FileRetry, RetryConfig};
use super::timeouts::{self, FileTimeouts, Timeouts};
use super::{invalid, ConfigError};
use crate::balance::{Algorithm, BackendSpec, HashConfig, Table};

/// The service the single-service form makes, and that today's admin routes act on.
pub const DEFAULT_SERVICE: &str = "default";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    pub name: String,
    pub algorithm: Option<String>,
    pub send_proxy: Option<String>,
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    pub hash: Option<FileHash>,
    pub health: Option<FileHealth>,
    pub retry: Option<FileRetry>,
    pub timeouts: Option<FileTimeouts>,
    pub limits: Option<FileLimits>,
    pub response_time: Option<FileResponseTime>,
    /// `"relay"` (the default) or `"kernel"`: see `config::kernel`.
    pub mode: Option<String>,
    pub kernel: Option<FileKernel>,
}

/// A PROXY protocol header lb writes to each backend before the client's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendProxy {
    #[default]
    Off,
    V1,
    V2,
}

impl SendProxy {
    pub fn name(&self) -> &'static str {
        match self {
            SendProxy::Off => "off",
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }
}

/// What every service starts from: the top-level tables.
#[derive(Debug, Clone)]
pub struct ServiceDefaults {
    pub limits: ServiceLimits,
    pub algorithm: Algorithm,
    pub key: KeySource,
    pub hash: HashConfig,
    pub health: HealthConfig,
    pub retry: RetryConfig,
    pub timeouts: Timeouts,
    pub response_time: ResponseTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub key: KeySource,
    pub hash: HashConfig,
    pub health: HealthConfig,
    pub retry: RetryConfig,
    pub timeouts: Timeouts,
    pub send_proxy: SendProxy,
    /// What least_response_time measures, and how fast it forgets.
    pub response_time: ResponseTime,
    /// The queue for clients that find every backend full, and who may use the service.
    pub limits: ServiceLimits,
    /// The fixed backends (the local replicas among them, for `default`).
    pub backends: Vec<BackendConfig>,
    /// Names re-resolved at run time into one backend per address.
    pub discover: Vec<DiscoverSpec>,
    /// Relayed by lb, or forwarded by netfilter with the `kernel` settings.
    pub mode: Mode,
    pub kernel: KernelConfig,
}

/// Service, listener and route names: they reach logs, metrics labels and admin URLs.
pub fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(ok) {
        return Err(invalid(
            key,
            format!("{name:?} is not a name: use 1 to 64 letters, digits and . _ -"),
        ));
    }
    Ok(())
}

pub fn parse_send_proxy(key: &str, v: Option<&str>) -> Result<SendProxy, ConfigError> {
    match v {
        None | Some("off") => Ok(SendProxy::Off),
        Some("v1") => Ok(SendProxy::V1),
        Some("v2") => Ok(SendProxy::V2),
        Some(other) => Err(invalid(
            key,
            format!("'{other}' is not a PROXY protocol setting: use \"off\", \"v1\" or \"v2\""),
        )),
    }
}

/// A service from the file (`index` in `[[services]]`), on top of the defaults.
pub fn build(
    index: usize,
    f: &FileService,
    d: &ServiceDefaults,
) -> Result<ServiceConfig, ConfigError> {
    let prefix = format!("services[{index}].");
    check_name(&format!("{prefix}name"), &f.name)?;
    let algorithm = match &f.algorithm {
        Some(a) => a
            .parse::<Algorithm>()
            .map_err(|e| invalid(&format!("{prefix}algorithm"), e.to_string()))?,
        None => d.algorithm,
    };
    let mut fixed = Vec::new();
    let mut discover = Vec::new();
    for (i, b) in f.backends.iter().enumerate() {
        let key = format!("{prefix}backends[{i}]");
        if b.discover == Some(true) {
            discover.push(backends::discover(&key, b)?);
        } else {
            fixed.push(backends::from_file(&key, b)?);
        }
    }
    let (key, hash) = match &f.hash {
        Some(h) => hash::build(&prefix, h, &(d.key.clone(), d.hash), fixed.len())?,
        None => (d.key.clone(), d.hash),
    };
    let mut s = ServiceConfig {
        name: f.name.clone(),
        algorithm,
        key,
        hash,
        health: match &f.health {
            Some(h) => health::build(&prefix, h, &d.health)?,
            None => d.health.clone(),
        },
        retry: match &f.retry {
            Some(r) => retry::build(&prefix, r, &d.retry)?,
            None => d.retry,
        },
        timeouts: match &f.timeouts {
            Some(t) => timeouts::build(&prefix, t, &d.timeouts)?,
            None => d.timeouts,
        },
        send_proxy: parse_send_proxy(&format!("{prefix}send_proxy"), f.send_proxy.as_deref())?,
        response_time: match &f.response_time {
            Some(r) => response_time::build(&prefix, r, d.response_time)?,
            None => d.response_time,
        },
        limits: match &f.limits {
            Some(l) => limits::service(&prefix, l, &d.limits)?,
            None => d.limits.clone(),
        },
        backends: fixed,
        discover,
        mode: Mode::Relay,
        kernel: KernelConfig::default(),
    };
    kernel::apply(&prefix, f, &mut s)?;
    check_table(&prefix, &s)?;
    Ok(s)
}

/// The hash table of the service's backends is within its bounds.
pub fn check_table(prefix: &str, s: &ServiceConfig) -> Result<(), ConfigError> {
    let specs: Vec<BackendSpec> = s
        .backends
        .iter()
        .map(|b| BackendSpec::new(b.name.clone(), b.weight))
        .collect();
    Table::check(s.algorithm, &specs, &s.hash)
        .map_err(|e| invalid(&format!("{prefix}hash.virtual_nodes"), e.to_string()))
}
