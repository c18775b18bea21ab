//! A service's `mode`: `"relay"` (lb terminates TCP and relays, the default) or `"kernel"`
//! (netfilter forwards the service's connections by DNAT, and lb only programs the map from a
//! Maglev slot to a backend; see `control::kernel`). What kernel mode cannot do is refused
//! here, naming the key, so that `--check-config` says it before anything runs.
//!
//! Kernel mode balances with `maglev` on the client IP, hashed with the kernel's `jhash`, so
//! that a client reaches the same backend whether netfilter or lb's relay forwards it (and on
//! every lb instance with the same backends). Values the service inherits from the top-level
//! tables are replaced by kernel mode's own; values the service sets itself that kernel mode
//! cannot honour are errors.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

use super::listeners::{AcceptProxy, ListenerConfig, Route};
use super::services::{FileService, SendProxy, ServiceConfig};
use super::{invalid, ConfigError, KeySource};
use crate::balance::{Algorithm, HashFn};

/// The Maglev table of a kernel-mode service unless `hash.maglev_table_size` says otherwise:
/// prime, 10 slots per backend for 100 backends, and loaded into nftables in about 20 ms here
/// (65537 slots take 0.8 s).
pub const DEFAULT_KERNEL_TABLE_SIZE: u64 = 1_021;
/// The largest table kernel mode programs: one nftables map element per slot.
pub const MAX_KERNEL_TABLE_SIZE: u64 = 65_537;

/// `[services.kernel]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKernel {
    /// Fail at start when lb cannot program netfilter, instead of relaying the service.
    pub required: Option<bool>,
    /// `"off"`, `"masquerade"` or an IPv4 address to SNAT to.
    pub snat: Option<String>,
}

/// How a service's connections are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// lb accepts, picks a backend and relays (io_uring).
    #[default]
    Relay,
    /// netfilter DNATs each new flow to the backend of its Maglev slot; conntrack keeps it there.
    Kernel,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Relay => "relay",
            Mode::Kernel => "kernel",
        }
    }
}

/// What the backends' replies need in kernel mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Snat {
    /// None: the backends route their replies back through lb's host (their default route, or
    /// a route to the clients, via lb). They see the client's own address.
    #[default]
    Off,
    /// The source becomes lb's address on the way to the backend: replies come back to lb
    /// whatever the backends' routes. They see lb's address.
    Masquerade,
    /// As `Masquerade`, with this source address.
    To(Ipv4Addr),
}

impl Snat {
    pub fn name(&self) -> String {
        match self {
            Snat::Off => "off".into(),
            Snat::Masquerade => "masquerade".into(),
            Snat::To(a) => a.to_string(),
        }
    }
}

/// A kernel-mode service's own settings (defaults for relay services, which ignore them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelConfig {
    pub required: bool,
    pub snat: Snat,
}

fn parse_mode(key: &str, v: Option<&str>) -> Result<Mode, ConfigError> {
    match v {
        None | Some("relay") => Ok(Mode::Relay),
        Some("kernel") => Ok(Mode::Kernel),
        Some(other) => Err(invalid(
            key,
            format!("'{other}' is not a mode: use \"relay\" or \"kernel\""),
        )),
    }
}

fn parse_snat(key: &str, v: Option<&str>) -> Result<Snat, ConfigError> {
    match v {
        None | Some("off") => Ok(Snat::Off),
        Some("masquerade") => Ok(Snat::Masquerade),
        Some(a) => a.parse::<Ipv4Addr>().map(Snat::To).map_err(|_| {
            invalid(
                key,
                format!(
                    "'{a}' is not an SNAT setting: use \"off\", \"masquerade\" or an IPv4 address"
                ),
            )
        }),
    }
}

/// Applies the service's `mode` (and `[services.kernel]`) to `s`, built from `f`: for kernel
/// mode, refuses what it cannot do and sets what it does (maglev, client IP, jhash, one try).
pub fn apply(prefix: &str, f: &FileService, s: &mut ServiceConfig) -> Result<(), ConfigError> {
    s.mode = parse_mode(&format!("{prefix}mode"), f.mode.as_deref())?;
    if s.mode == Mode::Relay {
        if f.kernel.is_some() {
            return Err(invalid(
                &format!("{prefix}kernel"),
                "is for kernel mode only: set mode = \"kernel\" or remove the table",
            ));
        }
        return Ok(());
    }
    let refuse = |key: &str, why: &str| Err(invalid(&format!("{prefix}{key}"), why));
    if f.algorithm.as_deref().is_some_and(|a| a != "maglev") {
        return refuse(
            "algorithm",
            "kernel mode balances with maglev on the client IP: remove the key or set \"maglev\"",
        );
    }
    let hash = f.hash.as_ref();
    if hash
        .and_then(|h| h.key.as_deref())
        .is_some_and(|k| k != "client_ip")
    {
        return refuse(
            "hash.key",
            "kernel mode hashes the client IP only (netfilter sees no cookie, header or SNI): \
             remove the key, or use mode = \"relay\"",
        );
    }
    if hash
        .and_then(|h| h.key_hash.as_deref())
        .is_some_and(|k| k != "jhash")
    {
        return refuse(
            "hash.key_hash",
            "kernel mode hashes with the kernel's jhash (what nft's `jhash ip saddr` computes): \
             remove the key or set \"jhash\"",
        );
    }
    if s.send_proxy != SendProxy::Off {
        return refuse(
            "send_proxy",
            "kernel mode forwards packets and cannot write a PROXY header: set \"off\", or use \
             mode = \"relay\"",
        );
    }
    if let Some(r) = &f.retry {
        if r.tries != Some(1)
            || r.budget_ms.is_some()
            || r.eject_ms.is_some()
            || r.eject_max_ms.is_some()
        {
            return refuse(
                "retry",
                "kernel mode cannot retry a connect or eject a backend passively (a SYN DNATed to \
                 a dead backend fails there; health checks take it out): remove [retry] or \
                 leave only tries = 1",
            );
        }
    }
    if f.timeouts.is_some() {
        return refuse(
            "timeouts",
            "kernel mode has no connect, idle, keepalive or lifetime limits of lb's own: \
             conntrack's apply (net.netfilter.nf_conntrack_tcp_timeout_*); remove [timeouts]",
        );
    }
    if let Some((i, b)) = s
        .backends
        .iter()
        .enumerate()
        .find(|(_, b)| !b.address.is_ipv4())
    {
        return refuse(
            &format!("backends[{i}].address"),
            &format!("{}: kernel mode programs IPv4 DNAT only", b.address),
        );
    }
    let size = match hash.and_then(|h| h.maglev_table_size) {
        Some(m) if m > MAX_KERNEL_TABLE_SIZE => {
            return refuse(
                "hash.maglev_table_size",
                &format!(
                "kernel mode loads one nftables element per slot: at most {MAX_KERNEL_TABLE_SIZE} \
                     (got {m}); {DEFAULT_KERNEL_TABLE_SIZE} is the default"
            ),
            )
        }
        Some(m) => m,
        None => DEFAULT_KERNEL_TABLE_SIZE,
    };
    s.algorithm = Algorithm::Maglev;
    s.key = KeySource::ClientIp;
    s.hash.key_hash = HashFn::Jhash;
    s.hash.maglev_table_size = size;
    s.retry.tries = 1;
    let k = f.kernel.as_ref();
    s.kernel = KernelConfig {
        required: k.and_then(|k| k.required).unwrap_or(false),
        snat: parse_snat(
            &format!("{prefix}kernel.snat"),
            k.and_then(|k| k.snat.as_deref()),
        )?,
    };
    Ok(())
}

/// The listeners that feed a kernel-mode service give netfilter something to match: each sends
/// all of its connections to that one service, reads nothing first (no PROXY header, no SNI
/// route) and listens on a fixed IPv4 port.
pub fn check_listeners(
    services: &[ServiceConfig],
    listeners: &[ListenerConfig],
) -> Result<(), ConfigError> {
    for s in services.iter().filter(|s| s.mode == Mode::Kernel) {
        for (i, l) in listeners.iter().enumerate() {
            if !l.route.services().contains(&s.name.as_str()) {
                continue;
            }
            let key = |k: &str| format!("listeners[{i}].{k}");
            if l.route != Route::Service(s.name.clone()) {
                return Err(invalid(
                    &key("routes"),
                    format!(
                        "listener '{}' routes by SNI to the kernel-mode service '{}': netfilter \
                         cannot read a ClientHello; give the service a listener of its own \
                         (service = \"{}\")",
                        l.name, s.name, s.name
                    ),
                ));
            }
            if l.accept_proxy != AcceptProxy::Off {
                return Err(invalid(
                    &key("accept_proxy"),
                    format!(
                        "listener '{}' feeds the kernel-mode service '{}': netfilter cannot read \
                         a PROXY header; set \"off\"",
                        l.name, s.name
                    ),
                ));
            }
            if !matches!(l.address, SocketAddr::V4(_)) || l.address.port() == 0 {
                return Err(invalid(
                    &key("address"),
                    format!(
                        "listener '{}' feeds the kernel-mode service '{}': netfilter matches a \
                         fixed IPv4 address and port (0.0.0.0 for every local address), not {}",
                        l.name, s.name, l.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{parse_file, Config, Overrides};
    use super::*;

    const WEB: &str = r#"
        [retry]
        tries = 4
        [[services]]
        name = "web"
        mode = "kernel"
        [services.health]
        check = "tcp"
        [[services.backends]]
        address = "10.0.0.11:8000"
        [[services.backends]]
        address = "10.0.0.12:8000"
        [[listeners]]
        name = "vip"
        address = "10.0.100.1:80"
        service = "web"
    "#;

    fn build(text: &str) -> Result<Config, String> {
        Config::build(parse_file(text)?, Overrides::default(), None).map_err(|e| e.to_string())
    }

    fn refused(text: &str, key: &str, words: &str) {
        let e = build(text).expect_err("refused");
        assert!(e.contains(key) && e.contains(words), "{e}");
    }

    #[test]
    fn a_kernel_service_is_maglev_on_the_client_ip_with_jhash_and_one_try() {
        let c = build(WEB).unwrap();
        let s = c.service("web").unwrap();
        assert_eq!(s.mode, Mode::Kernel);
        assert_eq!(s.algorithm, Algorithm::Maglev);
        assert_eq!(s.key, KeySource::ClientIp);
        assert_eq!(s.hash.key_hash, HashFn::Jhash);
        assert_eq!(s.hash.maglev_table_size, DEFAULT_KERNEL_TABLE_SIZE);
        assert_eq!(
            s.retry.tries, 1,
            "the top-level tries = 4 is not kernel mode's"
        );
        assert_eq!(s.kernel, KernelConfig::default());
        let c = build(&WEB.replace(
            "mode = \"kernel\"",
            "mode = \"kernel\"\nalgorithm = \"maglev\"\n[services.hash]\nkey = \"client_ip\"\nkey_hash = \"jhash\"\nmaglev_table_size = 257\n[services.retry]\ntries = 1\n[services.kernel]\nrequired = true\nsnat = \"masquerade\"",
        ))
        .unwrap();
        let s = c.service("web").unwrap();
        assert_eq!(s.hash.maglev_table_size, 257);
        assert_eq!(
            s.kernel,
            KernelConfig {
                required: true,
                snat: Snat::Masquerade
            }
        );
        let c = build(&WEB.replace(
            "mode = \"kernel\"",
            "mode = \"kernel\"\n[services.kernel]\nsnat = \"10.0.0.1\"",
        ))
        .unwrap();
        assert_eq!(
            c.service("web").unwrap().kernel.snat,
            Snat::To(Ipv4Addr::new(10, 0, 0, 1))
        );
        let relay = build(&WEB.replace("mode = \"kernel\"", "")).unwrap();
        assert_eq!(relay.service("web").unwrap().mode, Mode::Relay);
        assert_eq!(relay.service("web").unwrap().retry.tries, 4);
    }

    #[test]
    fn check_config_refuses_what_kernel_mode_cannot_do_by_key() {
        let with =
            |extra: &str| WEB.replace("mode = \"kernel\"", &format!("mode = \"kernel\"\n{extra}"));
        refused(
            &WEB.replace("\"kernel\"", "\"kernal\""),
            "services[0].mode",
            "\"relay\" or \"kernel\"",
        );
        refused(
            &WEB.replace("mode = \"kernel\"", "[services.kernel]\nrequired = true"),
            "services[0].kernel",
            "kernel mode only",
        );
        refused(
            &with("algorithm = \"round_robin\""),
            "services[0].algorithm",
            "maglev",
        );
        refused(
            &with("send_proxy = \"v2\""),
            "services[0].send_proxy",
            "PROXY header",
        );
        for key in ["cookie:sid", "header:X-User", "sni"] {
            refused(
                &with(&format!("[services.hash]\nkey = \"{key}\"")),
                "services[0].hash.key",
                "client IP only",
            );
        }
        refused(
            &with("[services.hash]\nkey_hash = \"xxh64\""),
            "services[0].hash.key_hash",
            "jhash",
        );
        refused(
            &with("[services.hash]\nmaglev_table_size = 65539"),
            "services[0].hash.maglev_table_size",
            "at most 65537",
        );
        refused(
            &with("[services.retry]\ntries = 3"),
            "services[0].retry",
            "cannot retry",
        );
        refused(
            &with("[services.retry]\ntries = 1\neject_ms = 100"),
            "services[0].retry",
            "cannot retry",
        );
        refused(
            &with("[services.timeouts]\nidle_ms = 1000"),
            "services[0].timeouts",
            "conntrack",
        );
        refused(
            &with("[services.kernel]\nsnat = \"yes\""),
            "services[0].kernel.snat",
            "masquerade",
        );
        refused(
            &WEB.replace("10.0.0.12:8000", "[fd00::12]:8000"),
            "services[0].backends[1].address",
            "IPv4",
        );
        refused(
            &WEB.replace("10.0.100.1:80", "10.0.100.1:0"),
            "listeners[0].address",
            "fixed IPv4",
        );
        refused(
            &WEB.replace("10.0.100.1:80", "[fd00::1]:80"),
            "listeners[0].address",
            "fixed IPv4",
        );
        refused(
            &WEB.replace(
                "service = \"web\"",
                "accept_proxy = \"v2\"\ntrusted_proxies = [\"10.0.0.0/8\"]\nservice = \"web\"",
            ),
            "listeners[0].accept_proxy",
            "PROXY header",
        );
        refused(
            &WEB.replace("service = \"web\"", "default_service = \"web\"\n[[listeners.routes]]\nsni = \"a.example\"\nservice = \"web\""),
            "listeners[0].routes",
            "ClientHello",
        );
        assert!(build(&WEB.replace("10.0.100.1:80", "0.0.0.0:80")).is_ok());
    }

    #[test]
    fn the_example_kernel_config_is_valid() {
        let c = build(include_str!("../../../config/kernel.toml")).unwrap();
        let s = c.service("web").unwrap();
        assert_eq!((s.mode, s.hash.maglev_table_size), (Mode::Kernel, 1021));
        assert_eq!(s.backends[2].weight, 2);
    }
}
