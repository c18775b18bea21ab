//! Who may use the admin API: the bearer token, and no cross-site or DNS-rebound requests.
//!
//! A web page open in a browser on the lb host can send a "simple" cross-origin POST (no CORS
//! preflight) with `Content-Type: text/plain`, and a page whose name resolves to 127.0.0.1
//! (DNS rebinding) can even read the answers. So, on the TCP listener:
//! - with a token configured, every request but `GET /health` must carry it
//!   (`Authorization: Bearer <token>`), else 401;
//! - a state-changing request without a valid token must name lb in `Host` (an IP literal,
//!   `localhost`, or one of `admin.allowed_hosts`), else 403: a rebound page's Host is its own
//!   name;
//! - a state-changing request is refused with 403 when it carries an `Origin` header (browsers
//!   send one; tools do not) and with 415 unless its body is declared `application/json` (which a
//!   browser cannot send cross-origin without a preflight that lb never answers).
//!
//! Reads (stats, metrics) are not Host-checked, so that monitoring reaches them by any name.
//!
//! The Unix socket skips all of this: no browser reaches it, and only lb's user can open it.

use crate::config::AdminConfig;

use super::request::Request;

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Unix,
}

/// Why a request is refused: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

pub fn check(req: &Request, via: Via, cfg: &AdminConfig) -> Result<(), Refusal> {
    if via == Via::Unix {
        return Ok(());
    }
    let token_ok = match (&cfg.token, &req.authorization) {
        (Some(t), Some(auth)) => bearer(auth).is_some_and(|given| t.matches(given)),
        _ => false,
    };
    if cfg.token.is_some() && !token_ok && !req.is_health() {
        return Err(refuse(
            401,
            "this admin API needs Authorization: Bearer <token> (admin.token_file or LB_ADMIN_TOKEN)",
        ));
    }
    if req.changes_state() && !token_ok && !host_allowed(req.host.as_deref(), cfg) {
        return Err(refuse(
            403,
            format!(
                "Host {:?} is not this admin API: use its IP address or localhost, or list the name in admin.allowed_hosts",
                req.host.as_deref().unwrap_or("")
            ),
        ));
    }
    if req.changes_state() {
        if req.origin.is_some() {
            return Err(refuse(
                403,
                "cross-origin requests are refused: changes come from tools, not web pages",
            ));
        }
        let json = req.content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(refuse(
                415,
                "changes need Content-Type: application/json (add -H 'Content-Type: application/json')",
            ));
        }
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(auth: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = auth.split_at(auth.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Host names lb answers to without a token: an IP literal (a rebound name never is one),
/// `localhost`, or a configured name; with or without a port. HTTP/1.0 may send no Host.
fn host_allowed(host: Option<&str>, cfg: &AdminConfig) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || cfg
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::admin::{build, FileAdmin};

    fn cfg(token: Option<&str>) -> AdminConfig {
        let f = FileAdmin {
            allowed_hosts: Some(vec!["lb.internal".into()]),
            ..Default::default()
        };
        build(&f, Some("127.0.0.1:9900"), token).unwrap()
    }

    fn req(method: &str, path: &[&str], headers: &[(&str, &str)]) -> Request {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.to_string())
        };
        Request {
            method: method.into(),
            path: format!("/{}", path.join("/")),
            segments: path.iter().map(|s| s.to_string()).collect(),
            host: get("host"),
            origin: get("origin"),
            content_type: get("content-type"),
            authorization: get("authorization").map(String::into_bytes),
            body: Vec::new(),
        }
    }

    const T: &str = "0123456789abcdef";
    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const HOST: (&str, &str) = ("Host", "127.0.0.1:9900");

    fn status(r: &Request, c: &AdminConfig) -> u16 {
        check(r, Via::Tcp, c).err().map_or(200, |e| e.status)
    }

    #[test]
    fn with_a_token_only_get_health_is_open() {
        let c = cfg(Some(T));
        assert_eq!(status(&req("GET", &["health"], &[]), &c), 200);
        assert_eq!(status(&req("GET", &["lb", "stats"], &[HOST]), &c), 401);
        let auth = ("Authorization", "Bearer 0123456789abcdef");
        assert_eq!(
            status(&req("GET", &["lb", "stats"], &[HOST, auth]), &c),
            200
        );
        let wrong = ("Authorization", "Bearer 0123456789abcdeX");
        assert_eq!(status(&req("GET", &["metrics"], &[HOST, wrong]), &c), 401);
        let basic = ("Authorization", "Basic 0123456789abcdef");
        assert_eq!(status(&req("GET", &["metrics"], &[HOST, basic]), &c), 401);
        // A valid token proves a tool, whatever Host it used (a k8s Service name, say).
        let far = ("Host", "lb-admin.default.svc:9900");
        assert_eq!(status(&req("GET", &["metrics"], &[far, auth]), &c), 200);
    }

    #[test]
    fn browser_shaped_changes_are_refused_without_a_token() {
        let c = cfg(None);
        let post = |h: &[(&str, &str)]| status(&req("POST", &["lb", "backends"], h), &c);
        assert_eq!(post(&[HOST, JSON]), 200);
        assert_eq!(post(&[HOST, ("Content-Type", "text/plain")]), 415);
        assert_eq!(post(&[HOST]), 415);
        assert_eq!(
            post(&[HOST, ("Content-Type", "application/json; charset=utf-8")]),
            200
        );
        assert_eq!(
            post(&[HOST, JSON, ("Origin", "http://127.0.0.1:9900")]),
            403
        );
        assert_eq!(post(&[("Host", "evil.example:9900"), JSON]), 403);
        assert_eq!(post(&[("Host", "localhost:9900"), JSON]), 200);
        assert_eq!(post(&[("Host", "[::1]:9900"), JSON]), 200);
        assert_eq!(post(&[("Host", "lb.internal"), JSON]), 200);
        assert_eq!(post(&[JSON]), 200, "HTTP/1.0 without Host");
        // Reads are not Host-checked: monitoring may use any name.
        assert_eq!(
            status(&req("GET", &["lb", "stats"], &[("Host", "lb-admin")]), &c),
            200
        );
    }

    #[test]
    fn the_unix_socket_is_trusted_by_its_file_mode() {
        let c = cfg(Some(T));
        let r = req("POST", &["lb", "backends"], &[("Host", "x")]);
        assert!(check(&r, Via::Unix, &c).is_ok());
    }
}
