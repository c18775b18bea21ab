//! Configuration: TOML file, then environment, then command line, validated into one [`Config`].
//!
//! Two stages: [`FileConfig`] mirrors the file (every field optional, unknown keys rejected), and
//! [`Config`] is what the rest of the program uses (every value present and checked), grouped in
//! the file's sections. Each section has its own module with its file struct, its validated
//! struct and one `build` function.

pub mod admin;
pub mod backends;
pub mod discovery;
pub mod env;
pub mod hash;
pub mod health;
pub mod listen;
pub mod pool;
pub mod relay;
pub mod replicas;
pub mod retry;
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
pub use pool::PoolConfig;
pub use relay::{RelayConfig, RelayMode};
pub use replicas::{ReplicaSpec, ReplicasConfig};
pub use retry::RetryConfig;
pub use shutdown::ShutdownConfig;
pub use timeouts::Timeouts;

pub const DEFAULT_CORES: usize = 1;
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

/// The file as written. Every key is documented in `config/lb.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub cores: Option<usize>,
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
}

/// The validated configuration, by section.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cores: usize,
    pub pin: bool,
    pub algorithm: Algorithm,
    /// The fixed backends, the replicas' among them.
    pub backends: Vec<BackendConfig>,
    /// Names re-resolved at run time into one backend per address.
    pub discover: Vec<DiscoverSpec>,
    pub discovery: DiscoveryConfig,
    /// Local `backend` processes to start and supervise (the default when none is configured).
    pub replicas: ReplicasConfig,
    pub key: KeySource,
    pub hash: HashConfig,
    pub timeouts: Timeouts,
    pub relay: RelayConfig,
    pub retry: RetryConfig,
    pub pool: PoolConfig,
    pub health: HealthConfig,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
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
        let listen = listen::build(file.listen.as_deref(), &over)?;
        let cores = over.cores.or(file.cores).unwrap_or(DEFAULT_CORES);
        if cores == 0 || cores > 1024 {
            return Err(invalid(
                "cores",
                format!("must be between 1 and 1024 (got {cores})"),
            ));
        }
        let algorithm = over
            .algorithm
            .clone()
            .or(file.algorithm)
            .unwrap_or_else(|| DEFAULT_ALGORITHM.into())
            .parse::<Algorithm>()
            .map_err(|e| invalid("algorithm", e.to_string()))?;
        let (mut backends, discover) = backends::build(&file.backends, over.backends.as_deref())?;
        let replicas = replicas::build(&file.replicas, backends.is_empty() && discover.is_empty())?;
        backends.extend(replicas.backends());
        let admin = admin::build(
            &file.admin,
            over.admin.as_deref(),
            over.admin_token.as_deref(),
        )?;
        let own: Vec<SocketAddr> = std::iter::once(listen).chain(admin.listen).collect();
        backends::check_set(&backends, &own)?;
        let (key, hash) = hash::build(&file.hash, backends.len())?;
        let specs: Vec<crate::balance::BackendSpec> = backends
            .iter()
            .map(|b| crate::balance::BackendSpec::new(b.name.clone(), b.weight))
            .collect();
        crate::balance::Table::check(algorithm, &specs, &hash)
            .map_err(|e| invalid("hash.virtual_nodes", e.to_string()))?;
        Ok(Config {
            listen,
            cores,
            pin: over.pin.or(file.pin).unwrap_or(false),
            algorithm,
            backends,
            discover,
            discovery: discovery::build(&file.discovery)?,
            replicas,
            key,
            hash,
            timeouts: timeouts::build(&file.timeouts, &Timeouts::default())?,
            relay: relay::build(&file.relay)?,
            retry: retry::build(&file.retry, &RetryConfig::default())?,
            pool: pool::build(&file.pool)?,
            health: health::build(&file.health, &HealthConfig::default())?,
            admin,
            shutdown: shutdown::build(&file.shutdown)?,
            source,
        })
    }
}

/// Parses TOML text into the file stage; the message names the offending key and line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::HeadKey;

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
        assert_eq!(c.listen.to_string(), listen::DEFAULT_LISTEN);
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
        assert_eq!(c.key, KeySource::Head(HeadKey::Cookie("session".into())));
        assert!(c.key.needs_http());
        let c = build(
            &format!("{TWO}\n[hash]\nkey = \"header:X-User\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.key, KeySource::Head(HeadKey::Header("X-User".into())));
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
