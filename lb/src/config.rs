//! Configuration: TOML file, then environment, then command line, validated into one [`Config`].
//!
//! Two stages: [`FileConfig`] mirrors the file (every field optional, unknown keys rejected), and
//! [`Config`] is what the rest of the program uses (every value present and checked).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::balance::{Algorithm, HashConfig, HashFn};
use crate::control::replicas::{
    default_specs, ReplicaSpec, DEFAULT_REPLICAS, DEFAULT_REPLICA_BASE_PORT,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_CORES: usize = 1;
pub const DEFAULT_ALGORITHM: &str = "round_robin";
pub const DEFAULT_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 1000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_PEEK_TIMEOUT_MS: u64 = 5_000;
/// Largest per-direction relay buffer; buffers start small and grow to this on full reads.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
pub const MIN_BUFFER_SIZE: usize = 1024;
pub const DEFAULT_RETRY_TRIES: u32 = 3;
pub const DEFAULT_RETRY_BUDGET_MS: u64 = 3_000;
pub const DEFAULT_EJECT_MS: u64 = 2_000;
pub const DEFAULT_EJECT_MAX_MS: u64 = 30_000;
pub const DEFAULT_DISCOVERY_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9900";
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_STATUS: u16 = 200;
pub const DEFAULT_SLOW_START_MS: u64 = 10_000;
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
pub const DEFAULT_INTERRUPT_GRACE_MS: u64 = 2_000;
pub const DEFAULT_MAX_HEAD: usize = lb_common::http::DEFAULT_MAX_HEAD;
pub const DEFAULT_BACKLOG: i32 = lb_common::net::DEFAULT_BACKLOG;
pub const DEFAULT_POOL_IDLE_PER_BACKEND: usize = 0;
pub const DEFAULT_POOL_MAX_AGE_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The file as written. Every key is documented in `config/lb.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub cores: Option<usize>,
    pub pin: Option<bool>,
    pub algorithm: Option<String>,
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    #[serde(default)]
    pub hash: FileHash,
    #[serde(default)]
    pub timeouts: FileTimeouts,
    #[serde(default)]
    pub relay: FileRelay,
    #[serde(default)]
    pub retry: FileRetry,
    #[serde(default)]
    pub pool: FilePool,
    #[serde(default)]
    pub replicas: FileReplicas,
    #[serde(default)]
    pub health: FileHealth,
    #[serde(default)]
    pub discovery: FileDiscovery,
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub shutdown: FileShutdown,
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShutdown {
    pub grace_ms: Option<u64>,
    pub interrupt_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplicas {
    pub count: Option<usize>,
    pub base_port: Option<u16>,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub address: String,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub discover: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    pub interval_ms: Option<u64>,
    pub hosts_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHash {
    pub key: Option<String>,
    pub key_hash: Option<String>,
    pub node_hash: Option<String>,
    pub virtual_nodes: Option<u32>,
    pub maglev_table_size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub connect_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub peek_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRelay {
    pub mode: Option<String>,
    pub buffer_size: Option<usize>,
    pub max_head: Option<usize>,
    pub backlog: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    pub tries: Option<u32>,
    pub budget_ms: Option<u64>,
    pub eject_ms: Option<u64>,
    pub eject_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub idle_per_backend: Option<usize>,
    pub max_age_ms: Option<u64>,
}

/// Values that override the file: environment variables first, then command-line flags.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub backends: Option<Vec<String>>,
    pub algorithm: Option<String>,
    pub cores: Option<usize>,
    pub pin: Option<bool>,
    pub admin: Option<String>,
}

impl Overrides {
    /// The seed projects' variables: `ALGORITHM`, `BACKEND_SERVERS` (comma-separated), `HOST`,
    /// `PORT`. Empty values count as unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Overrides {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        Overrides {
            listen: None,
            host: get("HOST"),
            port: get("PORT"),
            backends: get("BACKEND_SERVERS").map(|v| split_list(&v)),
            algorithm: get("ALGORITHM"),
            cores: None,
            pin: None,
            admin: None,
        }
    }

    /// Later sources win: `self` is overridden by whatever `later` sets.
    pub fn then(self, later: Overrides) -> Overrides {
        Overrides {
            listen: later.listen.or(self.listen),
            host: later.host.or(self.host),
            port: later.port.or(self.port),
            backends: later.backends.or(self.backends),
            algorithm: later.algorithm.or(self.algorithm),
            cores: later.cores.or(self.cores),
            pin: later.pin.or(self.pin),
            admin: later.admin.or(self.admin),
        }
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Where an algorithm that hashes takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    ClientIp,
    Cookie(String),
    Header(String),
}

impl KeySource {
    /// Cookie and header keys need the first request head to be peeked.
    pub fn needs_http(&self) -> bool {
        !matches!(self, KeySource::ClientIp)
    }
}

/// Active health checks, run once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    None,
    Tcp,
    Http { path: String, expect_status: u16 },
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

/// How bytes are moved; see `proxy::readiness` and `proxy::tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// io_uring poll for readiness, then non-blocking recv/send through a per-core buffer:
    /// idle connections hold no buffer.
    Readiness,
    /// io_uring recv/send with a buffer committed to every pending read.
    Completion,
}

pub const DEFAULT_RELAY_MODE: RelayMode = RelayMode::Completion;

/// A DNS name whose addresses are backends (e.g. a compose service scaled to N replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverSpec {
    /// Backends from it are named `NAME@IP`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cores: usize,
    pub pin: bool,
    pub algorithm: Algorithm,
    pub backends: Vec<BackendConfig>,
    /// Local `backend` processes to start and supervise (the default when none is configured).
    pub replicas: Vec<ReplicaSpec>,
    /// The replicas' command line ({port} and {id} substituted); None: the `backend` binary.
    pub replica_command: Option<Vec<String>>,
    /// Names re-resolved at run time into one backend per address.
    pub discover: Vec<DiscoverSpec>,
    pub discovery_interval: Duration,
    /// Looked up before the system resolver (hosts(5) format).
    pub discovery_hosts_file: Option<PathBuf>,
    pub key: KeySource,
    pub hash: HashConfig,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub peek_timeout: Duration,
    pub relay_mode: RelayMode,
    pub buffer_size: usize,
    pub max_head: usize,
    pub backlog: i32,
    pub retry_tries: u32,
    pub retry_budget: Duration,
    pub eject: Duration,
    pub eject_max: Duration,
    pub health: HealthConfig,
    /// 0 turns slow start off.
    pub slow_start: Duration,
    /// None: no admin listener.
    pub admin: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    pub interrupt_grace: Duration,
    pub pool_idle_per_backend: usize,
    pub pool_max_age: Duration,
    /// The file this came from, for reloads.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Reads and parses a TOML file.
    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse_file(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// File (optional) + overrides -> validated config.
    pub fn build(
        file: FileConfig,
        over: Overrides,
        source: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let listen = resolve_listen(file.listen.as_deref(), &over)?;

        let cores = over.cores.or(file.cores).unwrap_or(DEFAULT_CORES);
        if cores == 0 || cores > 1024 {
            return Err(invalid(
                "cores",
                format!("must be between 1 and 1024 (got {cores})"),
            ));
        }

        let alg_name = over
            .algorithm
            .clone()
            .or(file.algorithm)
            .unwrap_or_else(|| DEFAULT_ALGORITHM.into());
        let algorithm = alg_name
            .parse::<Algorithm>()
            .map_err(|e| invalid("algorithm", e.to_string()))?;

        // `discover = true` entries are DNS names re-resolved at run time, one backend per address.
        let mut discover = Vec::new();
        if over.backends.is_none() {
            for (i, b) in file
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.discover == Some(true))
            {
                let key = format!("backends[{i}]");
                let (host, port) = b
                    .address
                    .trim()
                    .rsplit_once(':')
                    .and_then(|(h, p)| {
                        Some((h.to_string(), p.parse::<u16>().ok().filter(|p| *p != 0)?))
                    })
                    .ok_or_else(|| invalid(&key, format!("'{}' is not name:port", b.address)))?;
                let weight = b.weight.unwrap_or(DEFAULT_WEIGHT);
                if !(1..=MAX_WEIGHT).contains(&weight) {
                    return Err(invalid(
                        &format!("{key}.weight"),
                        format!("must be between 1 and {MAX_WEIGHT} (got {weight})"),
                    ));
                }
                discover.push(DiscoverSpec {
                    name: b
                        .name
                        .clone()
                        .unwrap_or_else(|| b.address.trim().to_string()),
                    host,
                    port,
                    weight,
                });
            }
        }
        let backends = match over.backends {
            Some(list) => list
                .iter()
                .map(|a| backend_from_parts("backends", a, None, None))
                .collect::<Result<Vec<_>, _>>()?,
            None => file
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.discover != Some(true))
                .map(|(i, b)| {
                    backend_from_parts(
                        &format!("backends[{i}]"),
                        &b.address,
                        b.name.as_deref(),
                        b.weight,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        // Local replicas that lb starts and supervises: declared with replicas.command, or the
        // built-in default when no backend is configured anywhere.
        let mut replicas = Vec::new();
        let mut backends = backends;
        let declared = file.replicas.command.is_some();
        if declared || (backends.is_empty() && discover.is_empty()) {
            let count = file.replicas.count.unwrap_or(DEFAULT_REPLICAS);
            let base = file.replicas.base_port.unwrap_or(DEFAULT_REPLICA_BASE_PORT);
            if count == 0 && backends.is_empty() {
                return Err(invalid(
                    "backends",
                    "no backends configured and replicas.count = 0: add [[backends]] entries, set BACKEND_SERVERS=host:port,host:port or pass --backend host:port",
                ));
            }
            if count > 64 || base == 0 || base as usize + count > 65536 {
                return Err(invalid(
                    "replicas",
                    format!("count {count} from base_port {base} does not fit: use 1..64 replicas on ports that exist"),
                ));
            }
            if let Some(cmd) = &file.replicas.command {
                if cmd.is_empty() || !cmd.iter().any(|a| a.contains("{port}")) {
                    return Err(invalid(
                        "replicas.command",
                        "give the program and its arguments, with {port} where the replica's port goes (and {id} for its name), e.g. [\"backend\", \"--listen\", \"127.0.0.1:{port}\", \"--id\", \"{id}\"]",
                    ));
                }
            }
            replicas = default_specs(count, base);
            backends.extend(replicas.iter().map(|r| BackendConfig {
                name: r.id.clone(),
                address: r.addr,
                weight: DEFAULT_WEIGHT,
            }));
        }
        for (i, b) in backends.iter().enumerate() {
            if backends[..i].iter().any(|o| o.name == b.name) {
                return Err(invalid(
                    "backends",
                    format!("backend name '{}' is used twice: names must be unique (they key the hash ring)", b.name),
                ));
            }
        }

        let key = match file.hash.key.as_deref() {
            None | Some("client_ip") => KeySource::ClientIp,
            Some(k) => parse_key(k)?,
        };
        let mut hash = HashConfig::default();
        if let Some(h) = &file.hash.key_hash {
            hash.key_hash = h
                .parse::<HashFn>()
                .map_err(|e| invalid("hash.key_hash", e.to_string()))?;
        }
        if let Some(h) = &file.hash.node_hash {
            hash.node_hash = h
                .parse::<HashFn>()
                .map_err(|e| invalid("hash.node_hash", e.to_string()))?;
        }
        if let Some(v) = file.hash.virtual_nodes {
            if !(1..=10_000).contains(&v) {
                return Err(invalid(
                    "hash.virtual_nodes",
                    format!("must be between 1 and 10000 (got {v}); 160 is a good default"),
                ));
            }
            hash.virtual_nodes = v;
        }
        if let Some(m) = file.hash.maglev_table_size {
            if m < backends.len() as u64 * 10 || !crate::balance::maglev::is_prime(m) {
                return Err(invalid(
                    "hash.maglev_table_size",
                    format!("must be a prime at least 10x the number of backends (got {m}); 65537 is a good default"),
                ));
            }
            hash.maglev_table_size = m;
        }

        let t = &file.timeouts;
        let connect_timeout = millis(
            "timeouts.connect_ms",
            t.connect_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
        )?;
        let idle_timeout = millis("timeouts.idle_ms", t.idle_ms, DEFAULT_IDLE_TIMEOUT_MS)?;
        let peek_timeout = millis("timeouts.peek_ms", t.peek_ms, DEFAULT_PEEK_TIMEOUT_MS)?;

        let buffer_size = file.relay.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE);
        if !(MIN_BUFFER_SIZE..=16 * 1024 * 1024).contains(&buffer_size) {
            return Err(invalid(
                "relay.buffer_size",
                format!("must be between {MIN_BUFFER_SIZE} and 16777216 bytes (got {buffer_size})"),
            ));
        }
        let relay_mode = match file.relay.mode.as_deref() {
            None => DEFAULT_RELAY_MODE,
            Some("readiness") => RelayMode::Readiness,
            Some("completion") => RelayMode::Completion,
            Some(other) => {
                return Err(invalid(
                    "relay.mode",
                    format!("'{other}' is not a relay mode: use \"readiness\" or \"completion\""),
                ))
            }
        };
        let max_head = file.relay.max_head.unwrap_or(DEFAULT_MAX_HEAD);
        if !(256..=1024 * 1024).contains(&max_head) {
            return Err(invalid(
                "relay.max_head",
                format!("must be between 256 and 1048576 bytes (got {max_head})"),
            ));
        }
        let backlog = file.relay.backlog.unwrap_or(DEFAULT_BACKLOG);
        if backlog < 1 {
            return Err(invalid(
                "relay.backlog",
                format!("must be at least 1 (got {backlog})"),
            ));
        }

        let retry_tries = file.retry.tries.unwrap_or(DEFAULT_RETRY_TRIES);
        if !(1..=100).contains(&retry_tries) {
            return Err(invalid(
                "retry.tries",
                format!("must be between 1 (no retry) and 100 (got {retry_tries})"),
            ));
        }
        let retry_budget = millis(
            "retry.budget_ms",
            file.retry.budget_ms,
            DEFAULT_RETRY_BUDGET_MS,
        )?;
        let eject = millis("retry.eject_ms", file.retry.eject_ms, DEFAULT_EJECT_MS)?;
        let eject_max = millis(
            "retry.eject_max_ms",
            file.retry.eject_max_ms,
            DEFAULT_EJECT_MAX_MS,
        )?;
        if eject_max < eject {
            return Err(invalid(
                "retry.eject_max_ms",
                format!("must be at least retry.eject_ms ({} ms)", eject.as_millis()),
            ));
        }

        let h = &file.health;
        let check = match h.check.as_deref().unwrap_or("tcp") {
            "none" => HealthCheck::None,
            "tcp" => HealthCheck::Tcp,
            "http" => {
                let path = h.path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
                if !path.starts_with('/')
                    || path
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(invalid("health.path", format!("'{path}' is not a request path: it must start with / and have no spaces")));
                }
                let expect_status = h.expect_status.unwrap_or(DEFAULT_HEALTH_STATUS);
                if !(100..=599).contains(&expect_status) {
                    return Err(invalid(
                        "health.expect_status",
                        format!("must be an HTTP status 100-599 (got {expect_status})"),
                    ));
                }
                HealthCheck::Http {
                    path,
                    expect_status,
                }
            }
            other => {
                return Err(invalid(
                    "health.check",
                    format!("'{other}' is not a check: use \"none\", \"tcp\" or \"http\""),
                ))
            }
        };
        let health = HealthConfig {
            check,
            interval: millis(
                "health.interval_ms",
                h.interval_ms,
                DEFAULT_HEALTH_INTERVAL_MS,
            )?,
            timeout: millis("health.timeout_ms", h.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS)?,
            rise: count("health.rise", h.rise, DEFAULT_HEALTH_RISE)?,
            fall: count("health.fall", h.fall, DEFAULT_HEALTH_FALL)?,
        };
        let slow_start = match h.slow_start_ms {
            Some(0) => Duration::ZERO,
            v => millis("health.slow_start_ms", v, DEFAULT_SLOW_START_MS)?,
        };
        let admin = match over.admin.clone().or(file.admin.listen.clone()).as_deref() {
            Some("off") => None,
            Some(a) => Some(
                lb_common::net::parse_addr(a)
                    .map_err(|e| invalid("admin.listen", format!("{e}; or \"off\"")))?,
            ),
            None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
        };
        let shutdown_grace = millis(
            "shutdown.grace_ms",
            file.shutdown.grace_ms,
            DEFAULT_SHUTDOWN_GRACE_MS,
        )?;
        let interrupt_grace = millis(
            "shutdown.interrupt_grace_ms",
            file.shutdown.interrupt_grace_ms,
            DEFAULT_INTERRUPT_GRACE_MS,
        )?;

        let pool_idle_per_backend = file
            .pool
            .idle_per_backend
            .unwrap_or(DEFAULT_POOL_IDLE_PER_BACKEND);
        if pool_idle_per_backend > 1024 {
            return Err(invalid(
                "pool.idle_per_backend",
                format!("must be at most 1024 (got {pool_idle_per_backend}); 0 turns the pool off"),
            ));
        }
        let pool_max_age = millis(
            "pool.max_age_ms",
            file.pool.max_age_ms,
            DEFAULT_POOL_MAX_AGE_MS,
        )?;

        Ok(Config {
            listen,
            cores,
            pin: over.pin.or(file.pin).unwrap_or(false),
            algorithm,
            backends,
            replicas,
            replica_command: file.replicas.command.clone(),
            discovery_interval: millis(
                "discovery.interval_ms",
                file.discovery.interval_ms,
                DEFAULT_DISCOVERY_INTERVAL_MS,
            )?,
            discovery_hosts_file: file.discovery.hosts_file.clone(),
            discover,
            key,
            hash,
            connect_timeout,
            idle_timeout,
            peek_timeout,
            relay_mode,
            buffer_size,
            max_head,
            backlog,
            retry_tries,
            retry_budget,
            eject,
            eject_max,
            health,
            slow_start,
            admin,
            shutdown_grace,
            interrupt_grace,
            pool_idle_per_backend,
            pool_max_age,
            source,
        })
    }
}

/// Parses TOML text into the file stage; the message names the offending key and line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

fn resolve_listen(file_listen: Option<&str>, over: &Overrides) -> Result<SocketAddr, ConfigError> {
    if let Some(l) = &over.listen {
        return lb_common::net::parse_addr(l).map_err(|e| invalid("listen", e));
    }
    let base = file_listen.unwrap_or(DEFAULT_LISTEN);
    let mut addr = lb_common::net::parse_addr(base).map_err(|e| invalid("listen", e))?;
    if let Some(host) = &over.host {
        let ip = lb_common::net::parse_addr(&format!("{host}:0"))
            .map_err(|e| invalid("HOST", e))?
            .ip();
        addr.set_ip(ip);
    }
    if let Some(port) = &over.port {
        let p: u16 = port
            .trim()
            .parse()
            .map_err(|_| invalid("PORT", format!("'{port}' is not a port number (0-65535)")))?;
        addr.set_port(p);
    }
    Ok(addr)
}

fn backend_from_parts(
    key: &str,
    address: &str,
    name: Option<&str>,
    weight: Option<u32>,
) -> Result<BackendConfig, ConfigError> {
    let addr = lb_common::net::parse_addr(address).map_err(|e| invalid(key, e))?;
    if addr.port() == 0 {
        return Err(invalid(
            key,
            format!("backend '{address}' has port 0: give the port it listens on"),
        ));
    }
    let weight = weight.unwrap_or(DEFAULT_WEIGHT);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(invalid(
            &format!("{key}.weight"),
            format!("must be between 1 and {MAX_WEIGHT} (got {weight})"),
        ));
    }
    Ok(BackendConfig {
        name: name
            .map(String::from)
            .unwrap_or_else(|| address.trim().to_string()),
        address: addr,
        weight,
    })
}

fn parse_key(k: &str) -> Result<KeySource, ConfigError> {
    let bad = || {
        invalid(
            "hash.key",
            format!(
                "'{k}' is not a key source: use \"client_ip\", \"cookie:NAME\" or \"header:NAME\""
            ),
        )
    };
    let (kind, name) = k.split_once(':').ok_or_else(bad)?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
    {
        return Err(bad());
    }
    match kind.trim() {
        "cookie" => Ok(KeySource::Cookie(name.to_string())),
        "header" => Ok(KeySource::Header(name.to_string())),
        _ => Err(bad()),
    }
}

fn count(key: &str, v: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    let n = v.unwrap_or(default);
    if !(1..=100).contains(&n) {
        return Err(invalid(key, format!("must be between 1 and 100 (got {n})")));
    }
    Ok(n)
}

fn millis(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    let ms = v.unwrap_or(default);
    if ms == 0 || ms > 24 * 3600 * 1000 {
        return Err(invalid(
            key,
            format!("must be between 1 and 86400000 milliseconds (got {ms})"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str, over: Overrides) -> Result<Config, ConfigError> {
        let file = parse_file(toml_text).map_err(|m| ConfigError::Parse {
            path: "test.toml".into(),
            message: m,
        })?;
        Config::build(file, over, None)
    }

    const TWO: &str = r#"
        [[backends]]
        address = "127.0.0.1:9001"
        [[backends]]
        address = "127.0.0.1:9002"
        weight = 3
    "#;

    #[test]
    fn defaults_fill_everything_but_backends() {
        let c = build(TWO, Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.cores, DEFAULT_CORES);
        assert_eq!(c.algorithm, Algorithm::RoundRobin);
        assert_eq!(c.backends[1].weight, 3);
        assert_eq!(c.backends[0].name, "127.0.0.1:9001");
        assert_eq!(c.key, KeySource::ClientIp);
    }

    #[test]
    fn no_backends_means_local_replicas_unless_their_count_is_zero() {
        let c = build("", Overrides::default()).unwrap();
        assert_eq!(c.replicas.len(), 3);
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.backends[0].address.to_string(), "127.0.0.1:9001");
        assert!(build(TWO, Overrides::default())
            .unwrap()
            .replicas
            .is_empty());
        let c = build(
            "[replicas]\ncount = 2\nbase_port = 7000\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.backends[1].address.to_string(), "127.0.0.1:7001");
        let c = build(
            &format!("{TWO}\n[replicas]\ncount = 2\nbase_port = 7000\ncommand = [\"srv\", \"-p\", \"{{port}}\"]\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.backends.len(),
            4,
            "declared replicas join the configured backends"
        );
        let e = build(
            &format!("{TWO}\n[replicas]\ncommand = [\"srv\"]\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("replicas.command") && e.contains("{port}"),
            "{e}"
        );
        let e = build("[replicas]\ncount = 0\n", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backends") && e.contains("BACKEND_SERVERS"),
            "{e}"
        );
    }

    #[test]
    fn relay_mode_is_checked() {
        assert_eq!(
            build(TWO, Overrides::default()).unwrap().relay_mode,
            DEFAULT_RELAY_MODE
        );
        let c = build(
            &format!("{TWO}\n[relay]\nmode = \"readiness\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.relay_mode, RelayMode::Readiness);
        let e = build(
            &format!("{TWO}\n[relay]\nmode = \"splice\"\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("relay.mode"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = build(
            &format!("{TWO}\n[timeouts]\nconect_ms = 5\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("conect_ms"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key_and_the_fix() {
        let e = build(
            &format!("algorithm = \"fastest\"\n{TWO}"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`algorithm`") && e.contains("round_robin"),
            "{e}"
        );
        let e = build(
            &format!("{TWO}\n[timeouts]\nconnect_ms = 0\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("timeouts.connect_ms"), "{e}");
        let e = build(
            "[[backends]]\naddress = \"127.0.0.1:1\"\nweight = 0\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("backends[0].weight"), "{e}");
        let e = build(
            &format!("{TWO}\n[hash]\nkey = \"ip\"\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hash.key") && e.contains("cookie:NAME"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_cli_overrides_env() {
        let env = Overrides::from_env(|k| match k {
            "ALGORITHM" => Some("random".into()),
            "BACKEND_SERVERS" => Some("127.0.0.1:7001, 127.0.0.1:7002,127.0.0.1:7003".into()),
            "HOST" => Some("0.0.0.0".into()),
            "PORT" => Some("9999".into()),
            _ => None,
        });
        let c = build(TWO, env.clone()).unwrap();
        assert_eq!(c.algorithm, Algorithm::Random);
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.listen.to_string(), "0.0.0.0:9999");

        let cli = Overrides {
            listen: Some("127.0.0.1:0".into()),
            algorithm: Some("least_connections".into()),
            cores: Some(2),
            ..Default::default()
        };
        let c = build(TWO, env.then(cli)).unwrap();
        assert_eq!(c.algorithm, Algorithm::LeastConnections);
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.cores, 2);
        assert_eq!(
            c.backends.len(),
            3,
            "env backends stay when the CLI gives none"
        );
    }

    #[test]
    fn cookie_and_header_keys_parse() {
        let c = build(
            &format!("{TWO}\n[hash]\nkey = \"cookie:session\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.key, KeySource::Cookie("session".into()));
        assert!(c.key.needs_http());
        let c = build(
            &format!("{TWO}\n[hash]\nkey = \"header:X-User\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.key, KeySource::Header("X-User".into()));
    }

    #[test]
    fn duplicate_backend_names_are_rejected() {
        let e = build(
            "[[backends]]\naddress=\"127.0.0.1:1\"\nname=\"a\"\n[[backends]]\naddress=\"127.0.0.1:2\"\nname=\"a\"\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn maglev_table_must_be_prime() {
        let e = build(
            &format!("{TWO}\n[hash]\nmaglev_table_size = 65536\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("prime"), "{e}");
        assert!(build(
            &format!("{TWO}\n[hash]\nmaglev_table_size = 65537\n"),
            Overrides::default()
        )
        .is_ok());
    }
}
