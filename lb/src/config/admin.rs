//! `[admin]`: where the admin API listens and who may use it.
//!
//! The admin API changes where all traffic goes, so it is guarded (DESIGN.md, Trust boundaries):
//! a bearer token (`token_file` or `LB_ADMIN_TOKEN`), required before it may listen anywhere
//! but loopback; an optional Unix socket that only lb's user can open; a whole-request deadline
//! and a cap on concurrent connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::{invalid, ConfigError};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9900";
/// A whole request (head and body) must arrive within this.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Admin connections served at once; more wait in the kernel's accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Shorter tokens are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub unix_socket: Option<PathBuf>,
    pub request_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub allowed_hosts: Option<Vec<String>>,
}

/// The admin bearer token. Never printed: its Debug form is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether `given` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let want = self.0.as_bytes();
        if want.len() != given.len() {
            return false;
        }
        want.iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// None: no TCP admin listener.
    pub listen: Option<SocketAddr>,
    /// Also (or only) on this Unix socket, mode 0600.
    pub unix_socket: Option<PathBuf>,
    /// When set, every request but `GET /health` must carry it as a bearer token.
    pub token: Option<AdminToken>,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// Host names (beside IP literals and `localhost`) that tokenless requests may name in Host.
    pub allowed_hosts: Vec<String>,
}

/// `over` is `--admin` (an address or "off"); `env_token` is `LB_ADMIN_TOKEN`.
pub fn build(
    f: &FileAdmin,
    over: Option<&str>,
    env_token: Option<&str>,
) -> Result<AdminConfig, ConfigError> {
    let listen = match over.or(f.listen.as_deref()) {
        Some("off") => None,
        Some(a) => Some(
            lb_common::net::parse_addr(a)
                .map_err(|e| invalid("admin.listen", format!("{e}; or \"off\"")))?,
        ),
        None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
    };
    let token = match (env_token, &f.token_file) {
        (Some(t), _) => Some(token("LB_ADMIN_TOKEN", t)?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(token("admin.token_file", text.trim())?)
        }
        (None, None) => None,
    };
    if let Some(addr) = listen {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(invalid(
                "admin.listen",
                format!("{addr} is not a loopback address, and anyone who reaches the admin API can reroute all traffic: set a token with admin.token_file = \"PATH\" or the environment variable LB_ADMIN_TOKEN, or listen on 127.0.0.1"),
            ));
        }
    }
    let max_connections = f.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=4096).contains(&max_connections) {
        return Err(invalid(
            "admin.max_connections",
            format!("must be between 1 and 4096 (got {max_connections})"),
        ));
    }
    let allowed_hosts = f.allowed_hosts.clone().unwrap_or_default();
    for h in &allowed_hosts {
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(invalid(
                "admin.allowed_hosts",
                format!(
                    "'{}' is not a host name (letters, digits, '.', '-'; no port)",
                    h.escape_debug()
                ),
            ));
        }
    }
    Ok(AdminConfig {
        listen,
        unix_socket: f.unix_socket.clone(),
        token,
        request_timeout: millis(
            "admin.request_timeout_ms",
            f.request_timeout_ms,
            DEFAULT_REQUEST_TIMEOUT,
        )?,
        max_connections,
        allowed_hosts,
    })
}

fn token(key: &str, t: &str) -> Result<AdminToken, ConfigError> {
    if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            format!("the admin token must be at least {MIN_TOKEN_LEN} visible ASCII characters without spaces, e.g. from `openssl rand -hex 16`"),
        ));
    }
    Ok(AdminToken(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself_and_never_prints() {
        let t = token("k", "0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!format!("{t:?}").contains("0123"));
        assert!(token("k", "short").is_err());
        assert!(token("k", "has a space in it!!").is_err());
    }

    #[test]
    fn a_listener_off_loopback_needs_a_token() {
        let f = FileAdmin::default();
        assert!(build(&f, Some("0.0.0.0:9900"), None).is_err());
        assert!(build(&f, Some("[::]:9900"), None).is_err());
        assert!(build(&f, Some("0.0.0.0:9900"), Some("0123456789abcdef")).is_ok());
        assert!(build(&f, Some("127.0.0.1:9900"), None).is_ok());
        assert!(build(&f, Some("[::1]:9900"), None).is_ok());
    }
}
