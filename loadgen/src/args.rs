//! Command line: clap definitions, value parsers (durations, URLs, headers) and the validated plan.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::keys::{self, KeyDist, KeySpace, Template};

/// Request body, headers and URL are turned into one immutable byte string at start (see
/// [`Config::request`]); nothing is formatted per request.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    version,
    about = "Thread-per-core io_uring HTTP/1.1 (and raw TCP echo) load generator",
    long_about = "Thread-per-core io_uring HTTP/1.1 (and raw TCP echo) load generator.\n\n\
        Closed loop by default: every connection sends its next request as soon as the previous \
        response is complete. With --rate the load is open loop: request n of the whole run is due \
        at start + n/rate, dealt round-robin to the connections. When a request's connection is \
        still busy at its due time, its latency is measured from the due time (no coordinated \
        omission, as wrk2); when the connection was idle, from the actual send, and the timer's \
        delay (monoio timers tick per ms) is reported apart as schedule lag.\n\n\
        Exit codes: 0 the run completed (even with errors), 1 nothing could be done (no response at \
        all, e.g. every connect refused), 2 bad arguments.",
    after_help = "Examples:\n  loadgen http://127.0.0.1:8080/ --conns 512 --duration 10s\n  \
        loadgen http://lb:80/ --cores 2 --requests 100000 --new-connection --json out.json\n  \
        loadgen http://lb:80/ --rate 20000 --duration 30s --warmup 5s\n  \
        loadgen tcp://127.0.0.1:9000 --tcp-echo --payload 1024\n  \
        loadgen http://127.0.0.1:8080/ -n 10000 -c 8 --new-connection --keys 1000 -H 'Cookie: sid={key}'\n  \
        loadgen http://127.0.0.1:8080/ -n 10000 -c 8 --new-connection --keys 1000 --key-dist zipf:1.1 \
        --source-ip-per-key"
)]
pub struct Args {
    /// Target: http://host[:port][/path] (port 80 by default); with --tcp-echo tcp://host:port or
    /// host:port. A host name is resolved once at start.
    pub url: String,

    /// Connections in total, spread evenly over the cores.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub conns: usize,

    /// Worker threads, each with its own io_uring runtime.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,

    /// Pin worker i to the i-th CPU this process may use.
    #[arg(long)]
    pub pin: bool,

    /// How long to measure (10s, 500ms, 2m, or plain seconds). Default 10s unless --requests.
    #[arg(short = 'd', long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Send exactly this many requests in total instead of running for a duration.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Open loop: this many requests per second in total, whatever the latency.
    #[arg(short = 'R', long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Load that runs before the measurement starts and is not counted.
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Per request (connect + send + full response); a request over it is a `timeout` error and
    /// its connection is closed and reopened.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,

    /// One TCP connection per request, instead of keep-alive. Sends `Connection: close` and,
    /// after the response, waits for the server's close so that the TIME_WAIT state stays on the
    /// server side (this host's ephemeral ports would otherwise run out at high rates).
    #[arg(long)]
    pub new_connection: bool,

    /// Write a PROXY protocol v2 header first on every connection, as a balancer with HAProxy's
    /// `send-proxy-v2` does: command PROXY, TCP over IPv4 (or IPv6), source = this connection's
    /// own address, destination = the target's, no TLV (28 or 52 bytes). It goes out in the same
    /// write as the connection's first request (with --tcp-echo, in a write of its own before
    /// the first payload). For targets that take one: lb `accept_proxy = "v2"`, nginx `listen
    /// ... proxy_protocol`, HAProxy `accept-proxy`.
    #[arg(long)]
    pub proxy_v2: bool,

    /// HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,

    /// Extra request header, 'Name: value' (repeatable). Replaces the default Host, User-Agent,
    /// Connection or Content-Length header of the same name.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Request body (sent with Content-Length).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Request body read from a file.
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<std::path::PathBuf>,

    /// Load a raw TCP echo service: write --payload bytes, read them back = one request.
    #[arg(long)]
    pub tcp_echo: bool,

    /// Bytes per echo round trip (with --tcp-echo).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    pub payload: u64,

    /// Simulate N clients: keys k0..k{N-1}. A key is drawn each time a connection is opened (an
    /// L4 balancer decides per connection: use --new-connection for a key per request) and
    /// replaces `{key}` in the URL path/query and in -H values (e.g. -H 'Cookie: sid={key}'). The
    /// JSON gets a `keys` object: responses per key and server, stickiness.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=keys::MAX_KEYS as i64))]
    pub keys: Option<u32>,

    /// How keys are drawn: uniform; zipf:S (key k{r-1} with probability proportional to 1/r^S,
    /// S > 0, k0 the most frequent); or seq (each key in turn, so --keys N connects cover every
    /// key exactly once).
    #[arg(long, value_name = "DIST", default_value = "uniform",
          value_parser = keys::parse_key_dist, requires = "keys")]
    pub key_dist: KeyDist,

    /// Seed of the key draws: the n-th connect of core c gets the same key in every run with the
    /// same seed, --keys and --key-dist.
    #[arg(long, value_name = "SEED", default_value_t = 1, requires = "keys")]
    pub key_seed: u64,

    /// Each key connects from its own loopback source address, key i from 127.1.0.0 + i (bound
    /// with IP_BIND_ADDRESS_NO_PORT), so that a client-IP hash sees one client per key. Only for
    /// targets on 127.0.0.0/8.
    #[arg(long, requires = "keys")]
    pub source_ip_per_key: bool,

    /// Width of the timeline buckets in ms (the JSON `timeline` has one entry per bucket, by the
    /// time each request ended). Small widths show short outages (e.g. 100 for a failover); each
    /// bucket with responses costs ~13 KiB per core.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeline_ms: u64,

    /// Also write the full results (timeline, environment) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

/// What the connection loops need: validated, resolved and prebuilt.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub addr: SocketAddr,
    pub conns: usize,
    pub cores: usize,
    pub pin: bool,
    pub stop: StopAt,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub timeout: Duration,
    pub new_connection: bool,
    /// Write a PROXY v2 header first on every connection (--proxy-v2).
    pub proxy_v2: bool,
    pub protocol: Protocol,
    /// Timeline bucket width.
    pub timeline: Duration,
    /// The key population (--keys), if any.
    pub keys: Option<Arc<KeySpace>>,
    /// The request with `{key}` placeholders split out (HTTP with --keys and placeholders).
    pub template: Option<Arc<Template>>,
    /// Bind each connection to its key's own loopback source address.
    pub source_ip_per_key: bool,
    /// The complete request (HTTP) or the payload (echo), built once and shared by all cores.
    pub request: &'static [u8],
    /// HEAD responses carry no body whatever their Content-Length says.
    pub head_request: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopAt {
    Duration(Duration),
    Requests(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    TcpEcho,
}

/// A parsed target: `host` as written (for the Host header), `port`, and `path` with query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Bound on the timeline's length for duration runs (memory: each bucket with responses holds a
/// small histogram per core).
pub const MAX_TIMELINE_BUCKETS: u128 = 100_000;

/// Default measured duration when neither --duration nor --requests is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Parses `10s`, `500ms`, `2m`, `1h`, `1.5s` or plain (possibly fractional) seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 10s, 500ms, 2m or 30)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}' (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("'{s}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of requests per second"
        )),
    }
}

/// Parses an `http://` URL. Anything else (https, missing scheme...) gets an error that says what
/// is supported.
pub fn parse_http_url(url: &str) -> Result<Target, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => {
            return Err(format!(
                "'{url}' has no scheme: loadgen needs an http:// URL (or --tcp-echo for raw TCP)"
            ))
        }
    };
    match scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(format!(
                "'{url}': https is not supported, loadgen speaks plain HTTP/1.1 \
                 (use http://, or a TLS terminator in front of the target)"
            ))
        }
        other => {
            return Err(format!(
                "'{url}': unsupported scheme '{other}', only http:// (or --tcp-echo with tcp://)"
            ))
        }
    }
    let rest = rest.split('#').next().unwrap_or("");
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(format!("'{url}': user info in URLs is not supported"));
    }
    let (host, port) = split_host_port(authority, Some(80)).map_err(|e| format!("'{url}': {e}"))?;
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "'{url}': the path contains spaces or control characters (percent-encode them)"
        ));
    }
    Ok(Target {
        url: url.to_string(),
        host,
        port,
        path,
    })
}

/// Parses the --tcp-echo target: `tcp://host:port` or `host:port` (the port is required).
pub fn parse_tcp_target(url: &str) -> Result<Target, String> {
    let authority = match url.split_once("://") {
        Some((s, r)) if s.eq_ignore_ascii_case("tcp") => r.trim_end_matches('/'),
        Some((s, _)) => {
            return Err(format!(
                "'{url}': --tcp-echo takes tcp://host:port or host:port, not a {s}:// URL"
            ))
        }
        None => url,
    };
    let (host, port) = split_host_port(authority, None).map_err(|e| format!("'{url}': {e}"))?;
    Ok(Target {
        url: url.to_string(),
        host,
        port,
        path: String::new(),
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`. The host keeps its brackets so that it can
/// be written back into a Host header and handed to the resolver as is.
fn split_host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    if authority.is_empty() {
        return Err("no host".into());
    }
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']').ok_or("unclosed '[' in the host")?;
        let host = &authority[..=close];
        match &authority[close + 1..] {
            "" => (host, None),
            p if p.starts_with(':') => (host, Some(&p[1..])),
            _ => return Err("garbage after ']'".into()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("no host".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port '{p}'"))?,
        None => default_port.ok_or("a port is required (host:port)")?,
    };
    Ok((host.to_string(), port))
}

/// One `Name: value` header, validated so that it cannot break the request framing.
pub fn parse_header(h: &str) -> Result<(String, String), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("header '{h}' is not 'Name: value'"))?;
    let name = name.trim();
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(format!("header '{h}': '{name}' is not a valid header name"));
    }
    let value = value.trim();
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(format!("header '{h}': the value contains a line break"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Builds the request bytes once. `Connection: close` is added with --new-connection so that the
/// server closes first: its side then keeps the TIME_WAIT state and this machine's ephemeral
/// ports do not run out at high connection rates.
pub fn build_request(
    method: &str,
    target: &Target,
    headers: &[(String, String)],
    body: &[u8],
    new_connection: bool,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !has("host") {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(target.host.as_bytes());
        if target.port != 80 {
            out.extend_from_slice(format!(":{}", target.port).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !has("user-agent") {
        out.extend_from_slice(
            concat!("User-Agent: loadgen/", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes(),
        );
    }
    if new_connection && !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    let method_implies_body = matches!(method, "POST" | "PUT" | "PATCH");
    if (!body.is_empty() || method_implies_body)
        && !has("content-length")
        && !has("transfer-encoding")
    {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Echo payload: a recognizable repeating pattern, so that a mixed-up echo is detected.
pub fn echo_payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz\n"[i % 37])
        .collect()
}

impl Args {
    /// Validates everything, resolves the host once and builds the request. An `Err` is a usage
    /// error (exit code 2), except that resolution failures are reported the same way: the
    /// caller decides.
    pub fn into_config(self) -> Result<Config, ArgError> {
        use ArgError::Usage;
        if self.conns == 0 {
            return Err(Usage("--conns must be at least 1".into()));
        }
        if self.cores == 0 {
            return Err(Usage("--cores must be at least 1".into()));
        }
        if self.conns < self.cores {
            return Err(Usage(format!(
                "--conns ({}) must be at least --cores ({}): every core drives its own connections",
                self.conns, self.cores
            )));
        }
        if let Some(d) = self.duration {
            let buckets = d.as_millis() / self.timeline_ms as u128;
            if buckets > MAX_TIMELINE_BUCKETS {
                return Err(Usage(format!(
                    "--timeline-ms {} over --duration {d:?} makes {buckets} timeline buckets \
                     (at most {MAX_TIMELINE_BUCKETS}): use wider buckets",
                    self.timeline_ms
                )));
            }
        }
        if self.timeout.is_zero() {
            return Err(Usage("--timeout must be more than 0".into()));
        }
        let stop = match (self.duration, self.requests) {
            (Some(d), _) if d.is_zero() => {
                return Err(Usage("--duration must be more than 0".into()))
            }
            (Some(d), _) => StopAt::Duration(d),
            (None, Some(n)) => StopAt::Requests(n),
            (None, None) => StopAt::Duration(DEFAULT_DURATION),
        };
        let protocol = if self.tcp_echo {
            Protocol::TcpEcho
        } else {
            Protocol::Http
        };
        let target = match protocol {
            Protocol::Http => parse_http_url(&self.url),
            Protocol::TcpEcho => parse_tcp_target(&self.url),
        }
        .map_err(Usage)?;
        let method = self.method.trim().to_string();
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
        {
            return Err(Usage(format!(
                "--method '{method}' is not an HTTP method token"
            )));
        }
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Usage)?;
        let body: Vec<u8> = match (&self.body, &self.body_file) {
            (Some(b), _) => b.as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read(path)
                .map_err(|e| Usage(format!("--body-file {}: {e}", path.display())))?,
            (None, None) => Vec::new(),
        };
        if protocol == Protocol::TcpEcho
            && (!headers.is_empty() || !body.is_empty() || self.method != "GET")
        {
            return Err(Usage(
                "--method, --header, --body and --body-file do not apply to --tcp-echo".into(),
            ));
        }
        let addr = lb_common::net::parse_addr(&format!("{}:{}", target.host, target.port))
            .map_err(ArgError::Resolve)?;
        let request = match protocol {
            Protocol::Http => build_request(&method, &target, &headers, &body, self.new_connection),
            Protocol::TcpEcho => echo_payload(self.payload as usize),
        };
        let template = match protocol {
            Protocol::Http => Template::new(&request, request.len() - body.len()),
            Protocol::TcpEcho => None,
        };
        if template.is_some() && self.keys.is_none() {
            return Err(Usage(format!(
                "the URL or a header uses {} but there is no --keys population to fill it in",
                keys::PLACEHOLDER
            )));
        }
        if self.source_ip_per_key {
            let loopback = matches!(addr, SocketAddr::V4(a) if a.ip().octets()[0] == 127);
            if !loopback {
                return Err(Usage(format!(
                    "--source-ip-per-key binds every key to its own 127.x.y.z source address, \
                     which only reaches a target on 127.0.0.0/8 (the target is {addr})"
                )));
            }
            if self.keys.unwrap_or(0) > keys::max_source_keys() {
                return Err(Usage(format!(
                    "--source-ip-per-key gives at most {} keys distinct addresses",
                    keys::max_source_keys()
                )));
            }
        }
        let key_space = self
            .keys
            .map(|n| Arc::new(KeySpace::new(n, self.key_dist, self.key_seed)));
        Ok(Config {
            head_request: method.eq_ignore_ascii_case("HEAD"),
            target,
            addr,
            conns: self.conns,
            cores: self.cores,
            pin: self.pin,
            stop,
            rate: self.rate,
            warmup: self.warmup.unwrap_or(Duration::ZERO),
            timeout: self.timeout,
            new_connection: self.new_connection,
            proxy_v2: self.proxy_v2,
            protocol,
            timeline: Duration::from_millis(self.timeline_ms),
            keys: key_space,
            template: template.map(Arc::new),
            source_ip_per_key: self.source_ip_per_key,
            // Leaked once: every connection on every core writes this same buffer, and a
            // `&'static [u8]` can be handed to io_uring without copying or reference counting.
            request: Box::leak(request.into_boxed_slice()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot resolve the target: {0}")]
    Resolve(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 200ms "), Ok(Duration::from_millis(200)));
    }

    #[test]
    fn durations_reject_garbage() {
        for bad in ["", "s", "ten", "10x", "-1s", "1.2.3s", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn http_urls_default_to_port_80_and_root_path() {
        let t = parse_http_url("http://example.com").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("example.com", 80, "/")
        );
        let t = parse_http_url("HTTP://127.0.0.1:8080/a/b?x=1#frag").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/a/b?x=1")
        );
        let t = parse_http_url("http://h:81?q").unwrap();
        assert_eq!(t.path, "/?q");
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let t = parse_http_url("http://[::1]:9000/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 9000));
        let t = parse_http_url("http://[::1]/").unwrap();
        assert_eq!(t.port, 80);
    }

    #[test]
    fn https_and_other_schemes_get_a_clear_error() {
        let e = parse_http_url("https://example.com/").unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(parse_http_url("ftp://x/")
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(parse_http_url("example.com:80")
            .unwrap_err()
            .contains("no scheme"));
        assert!(parse_http_url("http://:80/").is_err());
        assert!(parse_http_url("http://h:0/").is_err());
        assert!(parse_http_url("http://h:99999/").is_err());
        assert!(parse_http_url("http://u:p@h/").is_err());
    }

    #[test]
    fn tcp_targets_need_a_port() {
        let t = parse_tcp_target("tcp://127.0.0.1:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        let t = parse_tcp_target("localhost:7").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("localhost", 7));
        assert!(parse_tcp_target("127.0.0.1").is_err());
        assert!(parse_tcp_target("http://127.0.0.1:80").is_err());
    }

    #[test]
    fn headers_are_validated() {
        assert_eq!(
            parse_header("X-Test:  a b "),
            Ok(("X-Test".to_string(), "a b".to_string()))
        );
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert!(parse_header(": v").is_err());
    }

    #[test]
    fn requests_carry_host_and_close_only_when_asked() {
        let t = parse_http_url("http://h:8080/p").unwrap();
        let r = String::from_utf8(build_request("GET", &t, &[], b"", false)).unwrap();
        assert!(r.starts_with("GET /p HTTP/1.1\r\nHost: h:8080\r\n"), "{r}");
        assert!(!r.contains("Connection"));
        assert!(!r.contains("Content-Length"));
        assert!(r.ends_with("\r\n\r\n"));
        let r = String::from_utf8(build_request("GET", &t, &[], b"", true)).unwrap();
        assert!(r.contains("Connection: close\r\n"));
        let t80 = parse_http_url("http://h/").unwrap();
        let r = String::from_utf8(build_request("POST", &t80, &[], b"abc", false)).unwrap();
        assert!(
            r.contains("Host: h\r\n") && r.contains("Content-Length: 3\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\nabc"));
    }

    #[test]
    fn user_headers_replace_the_defaults() {
        let t = parse_http_url("http://h/").unwrap();
        let hs = vec![("host".to_string(), "other".to_string())];
        let r = String::from_utf8(build_request("GET", &t, &hs, b"", false)).unwrap();
        assert!(!r.contains("Host: h\r\n"));
        assert!(r.contains("host: other\r\n"));
    }
}
