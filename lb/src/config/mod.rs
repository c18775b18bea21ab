//! Configuration: TOML file, then environment, then command line, validated into one [`Config`].
//!
//! Two stages: [`FileConfig`] mirrors the file (every field optional, unknown keys rejected), and
//! [`Config`] is what the rest of the program uses (every value present and checked), grouped in
//! the file's sections. Each section has its own module with its file struct, its validated
//! struct and one `build` function.

pub mod access_log;
pub mod admin;
pub mod backends;
pub mod cidr;
pub mod discovery;
pub mod env;
pub mod hash;
pub mod health;
pub mod kernel;
pub mod limits;
pub mod listen;
pub mod listeners;
pub mod pool;
pub mod relay;
pub mod replicas;
pub mod response_time;
pub mod retry;
pub mod services;
pub mod shutdown;
pub mod timeouts;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::balance::{Algorithm, HashConfig};

pub use admin::AdminConfig;
pub use backends::{BackendConfig, DiscoverSpec, DEFAULT_WEIGHT, MAX_WEIGHT};
pub use discovery::DiscoveryConfig;
pub use env::Overrides;
pub use hash::KeySource;
pub use health::{HealthCheck, HealthConfig};
pub use kernel::{KernelConfig, Mode, Snat};
pub use listeners::{AcceptProxy, ListenerConfig, Route};
pub use pool::PoolConfig;
pub use relay::{RelayConfig, RelayMode};
pub use replicas::{ReplicaSpec, ReplicasConfig};
pub use retry::RetryConfig;
pub use services::{SendProxy, ServiceConfig, DEFAULT_SERVICE};
pub use shutdown::ShutdownConfig;
pub use timeouts::Timeouts;

/// `cores = "auto"`: one worker per CPU lb may run on.
pub const AUTO_CORES: &str = "auto";
pub const MAX_CORES: usize = 1024;
pub const DEFAULT_ALGORITHM: &str = "round_robin";

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

/// `cores`: a number, or "auto".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileCores {
    N(usize),
    Name(String),
}

/// Workers for `v`: a number from 1 to 1024, or "auto" (the CPUs lb may use).
pub fn parse_cores(key: &str, v: &str) -> Result<usize, ConfigError> {
    let v = v.trim();
    let n = if v == AUTO_CORES {
        lb_common::runtime::available_cpus()
    } else {
        v.parse::<usize>().map_err(|_| {
            invalid(
                key,
                format!("'{v}' is not a number of cores: give 1 to {MAX_CORES}, or \"auto\""),
            )
        })?
    };
    if n == 0 || n > MAX_CORES {
        return Err(invalid(
            key,
            format!("must be between 1 and {MAX_CORES}, or \"auto\" (got {n})"),
        ));
    }
    Ok(n)
}

/// The file as written. Every key is documented in `config/lb.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub cores: Option<FileCores>,
    pub pin: Option<bool>,
    pub algorithm: Option<String>,
    #[serde(default)]
    pub backends: Vec<backends::FileBackend>,
    #[serde(default)]
    pub hash: hash::FileHash,
    #[serde(default)]
    pub timeouts: timeouts::FileTimeouts,
    #[serde(default)]
    pub relay: relay::FileRelay,
    #[serde(default)]
    pub retry: retry::FileRetry,
    #[serde(default)]
    pub pool: pool::FilePool,
    #[serde(default)]
    pub replicas: replicas::FileReplicas,
    #[serde(default)]
    pub health: health::FileHealth,
    #[serde(default)]
    pub discovery: discovery::FileDiscovery,
    #[serde(default)]
    pub admin: admin::FileAdmin,
    #[serde(default)]
    pub shutdown: shutdown::FileShutdown,
    #[serde(default)]
    pub limits: limits::FileLimits,
    #[serde(default)]
    pub access_log: access_log::FileAccessLog,
    #[serde(default)]
    pub response_time: response_time::FileResponseTime,
    #[serde(default)]
    pub services: Vec<services::FileService>,
    #[serde(default)]
    pub listeners: Vec<listeners::FileListener>,
}

/// The validated configuration, by section: listeners feed services (DESIGN.md, the model).
#[derive(Debug, Clone)]
pub struct Config {
    pub cores: usize,
    pub pin: bool,
    /// Every address lb accepts on, in the file's order.
    pub listeners: Vec<ListenerConfig>,
    /// Every backend pool, in the file's order (`default` first when there is one).
    pub services: Vec<ServiceConfig>,
    pub discovery: DiscoveryConfig,
    /// Local `backend` processes to start and supervise (the default when none is configured);
    /// they are backends of the service `default`.
    pub replicas: ReplicasConfig,
    /// The top-level timeouts: `peek` bounds what a listener reads before it picks a service.
    pub timeouts: Timeouts,
    /// Open connections of the whole process at most (None: no limit).
    pub max_connections: Option<u64>,
    pub relay: RelayConfig,
    pub pool: PoolConfig,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub access_log: access_log::AccessLogConfig,
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

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The service today's single-service admin routes act on: `default`, or the only one.
    pub fn default_service(&self) -> Option<&ServiceConfig> {
        self.service(DEFAULT_SERVICE)
            .or_else(|| (self.services.len() == 1).then(|| &self.services[0]))
    }

    /// The first listener's address (the single-service form's `listen`).
    pub fn listen(&self) -> SocketAddr {
        self.listeners[0].address
    }

    /// Every backend of every service.
    pub fn backend_count(&self) -> usize {
        self.services.iter().map(|s| s.backends.len()).sum()
    }

    /// File (optional) + overrides -> validated config.
    pub fn build(
        file: FileConfig,
        over: Overrides,
        source: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let cores = match (&over.cores, &file.cores) {
            (Some(c), _) => parse_cores("cores", c)?,
            (None, Some(FileCores::N(n))) => parse_cores("cores", &n.to_string())?,
            (None, Some(FileCores::Name(s))) => parse_cores("cores", s)?,
            (None, None) => parse_cores("cores", AUTO_CORES)?,
        };
        let algorithm = over
            .algorithm
            .clone()
            .or(file.algorithm.clone())
            .unwrap_or_else(|| DEFAULT_ALGORITHM.into())
            .parse::<Algorithm>()
            .map_err(|e| invalid("algorithm", e.to_string()))?;
        let timeouts = timeouts::build("", &file.timeouts, &Timeouts::default())?;
        let (top_key, top_hash) = hash::build(
            "",
            &file.hash,
            &(KeySource::ClientIp, HashConfig::default()),
            file.backends.len(),
        )?;
        let top_clients = limits::clients("limits.", &file.limits, &Default::default())?;
        let defaults = services::ServiceDefaults {
            limits: limits::service(
                "",
                &limits::FileLimits {
                    max_connections: None,
                    max_connections_per_ip: None,
                    max_new_connections_per_ip_per_s: None,
                    ..file.limits.clone()
                },
                &Default::default(),
            )?,
            algorithm,
            key: top_key,
            hash: top_hash,
            health: health::build("", &file.health, &HealthConfig::default())?,
            retry: retry::build("", &file.retry, &RetryConfig::default())?,
            timeouts,
            response_time: response_time::build(
                "",
                &file.response_time,
                response_time::ResponseTime::default(),
            )?,
        };

        // Named services, then the single-service form's `default` when it has anything.
        let mut services = Vec::new();
        for (i, f) in file.services.iter().enumerate() {
            let s = services::build(i, f, &defaults)?;
            if services.iter().any(|o: &ServiceConfig| o.name == s.name) {
                return Err(invalid(
                    &format!("services[{i}].name"),
                    format!("service '{}' is defined twice", s.name),
                ));
            }
            services.push(s);
        }
        let (mut fixed, discover) = backends::build(&file.backends, over.backends.as_deref())?;
        let nothing_configured = fixed.is_empty() && discover.is_empty() && services.is_empty();
        let replicas = replicas::build(&file.replicas, nothing_configured)?;
        fixed.extend(replicas.backends());
        if !fixed.is_empty() || !discover.is_empty() {
            if services.iter().any(|s| s.name == DEFAULT_SERVICE) {
                return Err(invalid(
                    "backends",
                    "top-level backends make the service `default`, and [[services]] defines one too: move them into it",
                ));
            }
            let d = ServiceConfig {
                name: DEFAULT_SERVICE.to_string(),
                algorithm: defaults.algorithm,
                key: defaults.key.clone(),
                hash: defaults.hash,
                health: defaults.health.clone(),
                retry: defaults.retry,
                timeouts: defaults.timeouts,
                send_proxy: SendProxy::Off,
                response_time: defaults.response_time,
                limits: defaults.limits.clone(),
                backends: fixed,
                discover,
                mode: Mode::Relay,
                kernel: KernelConfig::default(),
            };
            services::check_table("", &d)?;
            services.insert(0, d);
        }

        // A listener takes the top-level per-client limits and lists; the top-level
        // max_connections is the whole process's, not each listener's.
        let listener_base = limits::ClientLimits {
            max_connections: None,
            ..top_clients.clone()
        };
        let listeners = if file.listeners.is_empty() {
            let address = listen::build(file.listen.as_deref(), &over)?;
            let service = if services.iter().any(|s| s.name == DEFAULT_SERVICE) {
                DEFAULT_SERVICE.to_string()
            } else if services.len() == 1 {
                services[0].name.clone()
            } else {
                return Err(invalid(
                    "listeners",
                    "with several [[services]], add [[listeners]] that name them",
                ));
            };
            vec![ListenerConfig {
                name: listeners::DEFAULT_LISTENER.to_string(),
                address,
                route: Route::Service(service),
                accept_proxy: AcceptProxy::Off,
                trusted_proxies: Default::default(),
                limits: listener_base.clone(),
            }]
        } else {
            for (key, set) in [
                ("listen", file.listen.is_some() || over.listen.is_some()),
                ("HOST", over.host.is_some()),
                ("PORT", over.port.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "sets the single listener of the simple form; with [[listeners]], give each its `address` in the file",
                    ));
                }
            }
            let mut out = Vec::new();
            for (i, f) in file.listeners.iter().enumerate() {
                let l = listeners::build(i, f, &listener_base)?;
                if out.iter().any(|o: &ListenerConfig| o.name == l.name) {
                    return Err(invalid(
                        &format!("listeners[{i}].name"),
                        format!("listener '{}' is defined twice", l.name),
                    ));
                }
                out.push(l);
            }
            out
        };
        for (i, l) in listeners.iter().enumerate() {
            for name in l.route.services() {
                if !services.iter().any(|s| s.name == name) {
                    return Err(invalid(
                        &format!("listeners[{i}]"),
                        format!(
                            "listener '{}' names the unknown service '{name}'; services: {}",
                            l.name,
                            services
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            if let Some(o) = listeners[..i]
                .iter()
                .find(|o| overlaps(o.address, l.address))
            {
                return Err(invalid(
                    &format!("listeners[{i}].address"),
                    format!(
                        "listener '{}' at {} overlaps listener '{}' at {}: each address can be served once",
                        l.name, l.address, o.name, o.address
                    ),
                ));
            }
        }
        kernel::check_listeners(&services, &listeners)?;
        let admin = admin::build(
            &file.admin,
            over.admin.as_deref(),
            over.admin_token.as_deref(),
        )?;
        if let Some(a) = admin.listen {
            if let Some(l) = listeners.iter().find(|l| overlaps(l.address, a)) {
                return Err(invalid(
                    "admin.listen",
                    format!("{a} overlaps listener '{}' at {}", l.name, l.address),
                ));
            }
        }
        let own: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.address)
            .chain(admin.listen)
            .collect();
        for s in &services {
            backends::check_set(&s.backends, &own).map_err(|e| match e {
                ConfigError::Invalid { key, message } if s.name != DEFAULT_SERVICE => {
                    ConfigError::Invalid {
                        key: format!("services.{}.{key}", s.name),
                        message,
                    }
                }
                e => e,
            })?;
        }
        Ok(Config {
            cores,
            pin: over.pin.or(file.pin).unwrap_or(false),
            listeners,
            services,
            discovery: discovery::build(&file.discovery)?,
            replicas,
            timeouts,
            max_connections: top_clients.max_connections,
            relay: relay::build(&file.relay)?,
            pool: pool::build(&file.pool)?,
            admin,
            shutdown: shutdown::build(&file.shutdown)?,
            access_log: access_log::build(&file.access_log)?,
            source,
        })
    }
}

/// Two listen addresses that the kernel would not let two sockets bind: the same port on the same
/// address, or on a wildcard and anything.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Parses TOML text into the file stage; the message names the offending key and line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::HeadKey;

    fn d(c: &Config) -> &ServiceConfig {
        c.default_service().unwrap()
    }

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
        assert_eq!(c.listen().to_string(), listen::DEFAULT_LISTEN);
        assert_eq!(
            c.cores,
            lb_common::runtime::available_cpus(),
            "auto by default"
        );
        assert_eq!(d(&c).algorithm, Algorithm::RoundRobin);
        assert_eq!(d(&c).backends[1].weight, 3);
        assert_eq!(d(&c).backends[0].name, "127.0.0.1:9001");
        assert_eq!(d(&c).key, KeySource::ClientIp);
    }

    #[test]
    fn no_backends_means_local_replicas_unless_their_count_is_zero() {
        let c = build("", Overrides::default()).unwrap();
        assert_eq!(c.replicas.len(), 3);
        assert_eq!(d(&c).backends.len(), 3);
        assert_eq!(d(&c).backends[0].address.to_string(), "127.0.0.1:9001");
        assert!(build(TWO, Overrides::default())
            .unwrap()
            .replicas
            .is_empty());
        let c = build(
            "[replicas]\ncount = 2\nbase_port = 7000\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(d(&c).backends[1].address.to_string(), "127.0.0.1:7001");
        let c = build(
            &format!("{TWO}\n[replicas]\ncount = 2\nbase_port = 7000\ncommand = [\"srv\", \"-p\", \"{{port}}\"]\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            d(&c).backends.len(),
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
            build(TWO, Overrides::default()).unwrap().relay.mode,
            relay::DEFAULT_RELAY_MODE
        );
        let c = build(
            &format!("{TWO}\n[relay]\nmode = \"readiness\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.relay.mode, RelayMode::Readiness);
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
        })
        .unwrap();
        let c = build(TWO, env.clone()).unwrap();
        assert_eq!(d(&c).algorithm, Algorithm::Random);
        assert_eq!(d(&c).backends.len(), 3);
        assert_eq!(c.listen().to_string(), "0.0.0.0:9999");

        let cli = Overrides {
            listen: Some("127.0.0.1:0".into()),
            algorithm: Some("least_connections".into()),
            cores: Some("2".into()),
            ..Default::default()
        };
        let c = build(TWO, env.then(cli)).unwrap();
        assert_eq!(d(&c).algorithm, Algorithm::LeastConnections);
        assert_eq!(c.listen().to_string(), "127.0.0.1:0");
        assert_eq!(c.cores, 2);
        assert_eq!(
            d(&c).backends.len(),
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
        assert_eq!(
            d(&c).key,
            KeySource::Head(HeadKey::Cookie("session".into()))
        );
        assert!(d(&c).key.needs_http());
        let c = build(
            &format!("{TWO}\n[hash]\nkey = \"header:X-User\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(d(&c).key, KeySource::Head(HeadKey::Header("X-User".into())));
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

    const MULTI: &str = r#"
        [[services]]
        name = "web"
        algorithm = "least_connections"
        [[services.backends]]
        address = "127.0.0.1:9001"
        [[services]]
        name = "api"
        send_proxy = "v2"
        [services.hash]
        key = "client_ip"
        [services.retry]
        tries = 5
        [[services.backends]]
        address = "127.0.0.1:9002"
        [[listeners]]
        name = "public"
        address = "127.0.0.1:8080"
        service = "web"
        [[listeners]]
        name = "tls"
        address = "127.0.0.1:8443"
        default_service = "web"
        accept_proxy = "v2"
        trusted_proxies = ["127.0.0.0/8"]
        [[listeners.routes]]
        sni = "api.example.com"
        service = "api"
    "#;

    #[test]
    fn services_and_listeners_parse_and_inherit_the_top_level_tables() {
        let c = build(
            &format!("[retry]\ntries = 4\n[timeouts]\nidle_ms = 7000\n{MULTI}"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.listeners.len(), 2);
        let web = c.service("web").unwrap();
        assert_eq!(web.algorithm, Algorithm::LeastConnections);
        assert_eq!(web.retry.tries, 4, "inherited");
        assert_eq!(web.timeouts.idle.as_millis(), 7000, "inherited");
        let api = c.service("api").unwrap();
        assert_eq!(api.retry.tries, 5, "its own");
        assert_eq!(api.send_proxy, SendProxy::V2);
        assert_eq!(api.algorithm, Algorithm::RoundRobin);
        assert_eq!(
            c.listeners[1].route.service_for(Some("api.example.com")),
            Some("api")
        );
        assert_eq!(c.listeners[1].route.service_for(None), Some("web"));
        assert!(
            c.default_service().is_none(),
            "two services, none named default"
        );
    }

    #[test]
    fn a_service_backend_keeps_its_max_connections() {
        // It was dropped: [[services.backends]] went through the path that ignores the key.
        let c = build(
            "[[services]]\nname = \"web\"\n[[services.backends]]\naddress = \"127.0.0.1:9001\"\nmax_connections = 7\n\
             [[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nservice = \"web\"\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.service("web").unwrap().backends[0].max_connections,
            Some(7)
        );
        assert!(err(
            "[[services]]\nname = \"web\"\n[[services.backends]]\naddress = \"127.0.0.1:9001\"\nmax_connections = 0\n\
             [[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nservice = \"web\"\n"
        )
        .contains("services[0].backends[0].max_connections"));
    }

    fn err(toml: &str) -> String {
        build(toml, Overrides::default()).unwrap_err().to_string()
    }

    #[test]
    fn check_config_names_every_listener_and_service_mistake() {
        let e = err(&MULTI.replace("service = \"api\"", "service = \"apx\""));
        assert!(
            e.contains("unknown service 'apx'") && e.contains("listeners[1]"),
            "{e}"
        );
        let e = err(&MULTI.replace("127.0.0.1:8443", "127.0.0.1:8080"));
        assert!(
            e.contains("overlaps") && e.contains("listeners[1].address"),
            "{e}"
        );
        let e = err(&MULTI.replace("127.0.0.1:8443", "0.0.0.0:8080"));
        assert!(e.contains("overlaps"), "{e}");
        let e = err(&MULTI.replace("default_service = \"web\"", "service = \"web\""));
        assert!(e.contains("listeners[1].routes"), "{e}");
        let e = err(&MULTI.replace("trusted_proxies = [\"127.0.0.0/8\"]", ""));
        assert!(e.contains("listeners[1].trusted_proxies"), "{e}");
        let e = err(&MULTI.replace("name = \"api\"", "name = \"web\""));
        assert!(e.contains("defined twice"), "{e}");
        let e = err(&MULTI.replace("name = \"tls\"", "name = \"public\""));
        assert!(e.contains("defined twice"), "{e}");
        let e = err(&MULTI.replace("name = \"api\"", "name = \"a/b\""));
        assert!(e.contains("services[1].name"), "{e}");
        let e = err(&MULTI.replace("send_proxy = \"v2\"", "send_proxy = \"v3\""));
        assert!(e.contains("services[1].send_proxy"), "{e}");
        let e = err(&MULTI.replace("tries = 5", "tries = 500"));
        assert!(e.contains("services[1].retry.tries"), "{e}");
        let e = err(&format!("listen = \"127.0.0.1:1\"\n{MULTI}"));
        assert!(e.contains("`listen`"), "{e}");
        let two = MULTI.split("[[listeners]]").next().unwrap();
        let e = err(two);
        assert!(e.contains("add [[listeners]]"), "{e}");
        let e = err(&format!("{MULTI}\n[admin]\nlisten = \"127.0.0.1:8080\"\n"));
        assert!(e.contains("admin.listen") && e.contains("overlaps"), "{e}");
        let e = err(&MULTI.replace(
            "address = \"127.0.0.1:9002\"",
            "address = \"127.0.0.1:8443\"",
        ));
        assert!(e.contains("lb's own"), "{e}");
    }

    #[test]
    fn the_single_service_form_is_the_default_listener_and_service() {
        let c = build(TWO, Overrides::default()).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].name, "default");
        assert_eq!(c.listeners[0].route, Route::Service("default".into()));
        assert_eq!(c.services[0].name, DEFAULT_SERVICE);
        // One named service and no listener: the default listener feeds it.
        let one =
            "[[services]]\nname = \"web\"\n[[services.backends]]\naddress = \"127.0.0.1:9\"\n";
        let c = build(one, Overrides::default()).unwrap();
        assert_eq!(c.listeners[0].route, Route::Service("web".into()));
        assert_eq!(c.default_service().unwrap().name, "web");
        assert!(
            c.replicas.is_empty(),
            "a named service is configured: no local replicas"
        );
    }
}
