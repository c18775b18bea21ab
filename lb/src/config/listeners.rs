//! `[[listeners]]`: the addresses lb accepts on (each bound on every core), who may send a PROXY
//! header, and which service a connection goes to: one named service, or a route by the TLS
//! server name (SNI) with a default. The single-service form is one listener, `default`.

use std::net::SocketAddr;

use serde::Deserialize;

use super::cidr::CidrList;
use super::limits::{self, ClientLimits, FileLimits};
use super::services::check_name;
use super::{invalid, ConfigError};

/// The listener the single-service form makes.
pub const DEFAULT_LISTENER: &str = "default";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub name: String,
    pub address: String,
    pub service: Option<String>,
    pub default_service: Option<String>,
    pub accept_proxy: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u32>,
    pub max_new_connections_per_ip_per_s: Option<u32>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub sni: String,
    pub service: String,
}

/// Which PROXY protocol headers a listener reads from its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptProxy {
    #[default]
    Off,
    V1,
    V2,
    /// Either version, told from the first bytes.
    Any,
}

impl AcceptProxy {
    pub fn name(&self) -> &'static str {
        match self {
            AcceptProxy::Off => "off",
            AcceptProxy::V1 => "v1",
            AcceptProxy::V2 => "v2",
            AcceptProxy::Any => "any",
        }
    }
}

/// A server name pattern: `api.example.com`, or `*.example.com` for exactly one label before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    Exact(String),
    /// The suffix with its dot: `.example.com`.
    Wildcard(String),
}

impl SniPattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            SniPattern::Exact(n) => n == name,
            SniPattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }

    pub fn text(&self) -> String {
        match self {
            SniPattern::Exact(n) => n.clone(),
            SniPattern::Wildcard(s) => format!("*{s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    pub pattern: SniPattern,
    pub service: String,
}

/// Where a listener's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// All to one service.
    Service(String),
    /// By the ClientHello's server name: exact routes before wildcards, else `default` (none:
    /// the connection is closed).
    Sni {
        routes: Vec<SniRoute>,
        default: Option<String>,
    },
}

impl Route {
    /// The service for a connection whose ClientHello named `sni` (None: no TLS, or no SNI).
    pub fn service_for(&self, sni: Option<&str>) -> Option<&str> {
        match self {
            Route::Service(s) => Some(s),
            Route::Sni { routes, default } => {
                let by = |exact: bool| {
                    let name = sni?;
                    routes
                        .iter()
                        .filter(|r| matches!(r.pattern, SniPattern::Exact(_)) == exact)
                        .find(|r| r.pattern.matches(name))
                        .map(|r| r.service.as_str())
                };
                by(true).or_else(|| by(false)).or(default.as_deref())
            }
        }
    }

    /// Every service it can send a connection to, each once.
    pub fn services(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all: Vec<&str> = match self {
            Route::Service(s) => vec![s],
            Route::Sni { routes, default } => routes
                .iter()
                .map(|r| r.service.as_str())
                .chain(default.as_deref())
                .collect(),
        };
        for s in all {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    pub fn reads_sni(&self) -> bool {
        matches!(self, Route::Sni { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub route: Route,
    pub accept_proxy: AcceptProxy,
    /// PROXY headers are read only from these sources; others are refused.
    pub trusted_proxies: CidrList,
    /// Its connection limits and access list.
    pub limits: ClientLimits,
}

fn parse_sni(key: &str, s: &str) -> Result<SniPattern, ConfigError> {
    let t = s.trim().to_ascii_lowercase();
    let (wild, host) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, t.clone()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(invalid(
            key,
            format!("'{}' is not a server name: give a host name (\"api.example.com\") or one wildcard label (\"*.example.com\")", s.escape_debug()),
        ));
    }
    Ok(if wild {
        SniPattern::Wildcard(format!(".{host}"))
    } else {
        SniPattern::Exact(host)
    })
}

/// A listener from the file (`index` in `[[listeners]]`), its limits over `base` (the
/// top-level ones). Service names are checked by the caller, which knows them all.
pub fn build(
    index: usize,
    f: &FileListener,
    base: &ClientLimits,
) -> Result<ListenerConfig, ConfigError> {
    let prefix = format!("listeners[{index}].");
    check_name(&format!("{prefix}name"), &f.name)?;
    let address = lb_common::net::parse_addr(&f.address)
        .map_err(|e| invalid(&format!("{prefix}address"), e))?;
    let route = match (&f.service, f.routes.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                &format!("{prefix}routes"),
                "a listener names either one `service` or `routes` by SNI (with an optional `default_service`), not both",
            ))
        }
        (Some(s), true) => {
            if f.default_service.is_some() {
                return Err(invalid(
                    &format!("{prefix}default_service"),
                    "`default_service` goes with `routes`; this listener names one `service`",
                ));
            }
            Route::Service(s.clone())
        }
        (None, false) => Route::Sni {
            routes: f
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Ok(SniRoute {
                        pattern: parse_sni(&format!("{prefix}routes[{i}].sni"), &r.sni)?,
                        service: r.service.clone(),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?,
            default: f.default_service.clone(),
        },
        (None, true) => match &f.default_service {
            Some(s) => Route::Service(s.clone()),
            None => {
                return Err(invalid(
                    &format!("{prefix}service"),
                    "name the service this listener's connections go to (`service = \"NAME\"`), or give `routes` by SNI",
                ))
            }
        },
    };
    let accept_proxy = match f.accept_proxy.as_deref() {
        None | Some("off") => AcceptProxy::Off,
        Some("v1") => AcceptProxy::V1,
        Some("v2") => AcceptProxy::V2,
        Some("any") => AcceptProxy::Any,
        Some(other) => {
            return Err(invalid(
                &format!("{prefix}accept_proxy"),
                format!(
                "'{other}' is not a PROXY protocol setting: use \"off\", \"v1\", \"v2\" or \"any\""
            ),
            ))
        }
    };
    let trusted_proxies = CidrList::parse(
        &format!("{prefix}trusted_proxies"),
        f.trusted_proxies.as_deref().unwrap_or(&[]),
    )?;
    if accept_proxy != AcceptProxy::Off && trusted_proxies.is_empty() {
        return Err(invalid(
            &format!("{prefix}trusted_proxies"),
            "accept_proxy needs trusted_proxies: the sources (e.g. [\"10.0.0.0/8\"]) allowed to send a PROXY header, which rewrites the client address",
        ));
    }
    let limits = limits::clients(
        &prefix,
        &FileLimits {
            max_connections: f.max_connections,
            max_connections_per_ip: f.max_connections_per_ip,
            max_new_connections_per_ip_per_s: f.max_new_connections_per_ip_per_s,
            allow: f.allow.clone(),
            deny: f.deny.clone(),
            queue_timeout_ms: None,
            max_queue: None,
        },
        base,
    )?;
    Ok(ListenerConfig {
        name: f.name.clone(),
        address,
        route,
        accept_proxy,
        trusted_proxies,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sni(routes: &[(&str, &str)], default: Option<&str>) -> Route {
        Route::Sni {
            routes: routes
                .iter()
                .map(|(p, s)| SniRoute {
                    pattern: parse_sni("k", p).unwrap(),
                    service: s.to_string(),
                })
                .collect(),
            default: default.map(String::from),
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_and_a_wildcard_is_one_label() {
        let r = sni(
            &[("*.example.com", "wild"), ("api.example.com", "api")],
            Some("web"),
        );
        assert_eq!(r.service_for(Some("api.example.com")), Some("api"));
        assert_eq!(r.service_for(Some("www.example.com")), Some("wild"));
        assert_eq!(r.service_for(Some("a.b.example.com")), Some("web"));
        assert_eq!(r.service_for(Some("example.com")), Some("web"));
        assert_eq!(r.service_for(None), Some("web"));
        assert_eq!(
            sni(&[("a.example", "x")], None).service_for(Some("b.example")),
            None
        );
        assert_eq!(Route::Service("s".into()).service_for(Some("x")), Some("s"));
    }

    #[test]
    fn server_name_patterns_are_checked() {
        assert_eq!(
            parse_sni("k", "API.Example.com").unwrap(),
            SniPattern::Exact("api.example.com".into())
        );
        for bad in ["", "*.", "a..b", "*.*.x", "a b", "-a.com", "x/y"] {
            assert!(parse_sni("k", bad).is_err(), "{bad:?}");
        }
    }

    fn file(name: &str, addr: &str) -> FileListener {
        FileListener {
            name: name.into(),
            address: addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_listener_names_a_service_or_routes_and_proxy_needs_trusted_sources() {
        let mut f = file("l", "127.0.0.1:1");
        assert!(build(0, &f, &ClientLimits::default())
            .unwrap_err()
            .to_string()
            .contains("listeners[0].service"));
        f.service = Some("web".into());
        assert_eq!(
            build(0, &f, &ClientLimits::default()).unwrap().route,
            Route::Service("web".into())
        );
        f.routes.push(FileRoute {
            sni: "a.example".into(),
            service: "api".into(),
        });
        assert!(build(0, &f, &ClientLimits::default())
            .unwrap_err()
            .to_string()
            .contains("listeners[0].routes"));
        f.service = None;
        f.default_service = Some("web".into());
        assert!(build(0, &f, &ClientLimits::default())
            .unwrap()
            .route
            .reads_sni());
        f.accept_proxy = Some("v2".into());
        assert!(build(0, &f, &ClientLimits::default())
            .unwrap_err()
            .to_string()
            .contains("trusted_proxies"));
        f.trusted_proxies = Some(vec!["127.0.0.0/8".into()]);
        assert_eq!(
            build(0, &f, &ClientLimits::default()).unwrap().accept_proxy,
            AcceptProxy::V2
        );
    }
}
