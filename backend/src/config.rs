//! Command line and environment (`SERVER_ID`, `HOST`, `PORT`, `FAILURE_RATE`, `MIN_LATENCY`,
//! `MAX_LATENCY`, `BODY_SIZE`) -> validated [`Config`]. Every error names the flag and variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lb_common::http::DEFAULT_MAX_HEAD;

/// Port used when neither `--listen` nor `PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 9001;
/// Listen address when neither `--listen` nor `HOST`/`PORT` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9001";
/// Largest accepted `--body-size` (the padded body is kept in memory once per process).
pub const MAX_BODY_SIZE: usize = 64 * 1024 * 1024;
/// Largest accepted `--max-head`.
pub const MAX_MAX_HEAD: usize = 1024 * 1024;
/// Smallest accepted `--max-head`: a request line and a Host header must fit.
pub const MIN_MAX_HEAD: usize = 64;
/// Longest accepted server id (it is sent in every response header).
pub const MAX_ID_LEN: usize = 128;

/// io_uring HTTP/1.1 test server for the lb project: thread-per-core, one SO_REUSEPORT listener
/// per core (epoll when io_uring is unavailable; MONOIO_FORCE_LEGACY_DRIVER=1 forces it).
///
/// HTTP routes (query strings are ignored; every answer carries `X-Server-Id: <id>`):
///   GET /health               200 {"status":"ok"}, or 503 {"status":"unhealthy"}
///   POST /admin/health/fail   make /health answer 503 (as does signal SIGUSR1)
///   POST /admin/health/ok     make /health answer 200 again (as does signal SIGUSR2)
///   GET /admin/latency        {"server":"<id>","min_ms":A,"max_ms":B}: the delay of `/`
///   POST /admin/latency       body {"min_ms":A,"max_ms":B} (max_ms defaults to min_ms): set
///                             that delay on every core at once, for requests that follow
///   anything else, e.g. GET / 200 {"server":"<id>","requests":<n>}, after the latency delay,
///                             or 500 for the FAILURE_RATE share; n counts these requests
///                             over all cores (health and admin requests are not counted)
/// Keep-alive, pipelining and HTTP/1.0 work; request bodies (Content-Length or chunked) are
/// read and discarded. Bad requests get 400, oversized heads 431, then the connection closes.
/// Echo mode (--mode echo): raw TCP echo that honours half-close.
///
/// SIGTERM or SIGINT: new clients are held, those already queued are accepted (within 1 s),
/// then new connections are refused; open ones may finish within --shutdown-grace, then the
/// process exits 0 (also as PID 1 of a container).
///
/// Once listening, prints `backend <id> listening on <addr> (<mode>, <cores> cores, <driver>)`
/// on stdout; logs go to stderr (RUST_LOG, default info). Exit code 2: invalid arguments.
#[derive(Parser, Debug, Clone)]
#[command(name = "backend", version, about, verbatim_doc_comment)]
pub struct Cli {
    /// Address to listen on (port 0 picks a free port, printed on stdout). Without it: HOST:PORT
    /// if either variable is set (HOST defaults to 0.0.0.0 then, as in the seed servers), else
    /// 127.0.0.1:9001.
    #[arg(short, long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Host to listen on when --listen is absent.
    #[arg(long, env = "HOST", value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on when --listen is absent.
    #[arg(long, env = "PORT", value_name = "PORT")]
    pub port: Option<u16>,
    /// Server id sent in X-Server-Id and in JSON bodies. Default: this machine's host name (in
    /// a container, the container's, so each replica of a service tells itself apart), or
    /// `backend` if the host name is not a valid id.
    #[arg(long, env = "SERVER_ID", value_name = "SERVER_ID")]
    pub id: Option<String>,
    /// Worker threads, one io_uring runtime and one listener each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cores: usize,
    /// Pin worker i to the i-th CPU this process may use.
    #[arg(long)]
    pub pin: bool,
    /// http: the HTTP/1.1 test server; echo: raw TCP echo for L4 tests.
    #[arg(long, value_enum, default_value_t = Mode::Http)]
    pub mode: Mode,
    /// Share of `/` requests answered 500 (0 to 1).
    #[arg(
        long,
        env = "FAILURE_RATE",
        value_name = "FAILURE_RATE",
        default_value_t = 0.0
    )]
    pub failure_rate: f64,
    /// Smallest random delay before answering `/`, in milliseconds.
    #[arg(
        long,
        env = "MIN_LATENCY",
        value_name = "MIN_LATENCY",
        default_value_t = 0
    )]
    pub min_latency: u64,
    /// Largest random delay before answering `/`, in milliseconds (default: MIN_LATENCY).
    #[arg(long, env = "MAX_LATENCY", value_name = "MAX_LATENCY")]
    pub max_latency: Option<u64>,
    /// Exact body size of `/` answers, for throughput tests: the JSON padded with spaces, or
    /// only spaces when the JSON does not fit (0: empty body). Default: the bare JSON.
    #[arg(long, env = "BODY_SIZE", value_name = "BODY_SIZE")]
    pub body_size: Option<usize>,
    /// Largest request head; a longer one gets 431 and a close.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEAD)]
    pub max_head: usize,
    /// Close a connection whose request head is not complete this long after it started
    /// (e.g. 300ms, 10s, 1m; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Close a connection idle this long between requests (echo mode: with no data).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM or SIGINT: stop accepting (once the queued clients are accepted), wait this
    /// long at most for the open connections to finish, then exit 0 (0s: exit at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How HTTP connections receive: `multishot`, one multishot receive per connection into the
    /// core's provided buffers (io_uring on Linux 6.0+; plain reads elsewhere), or `plain`, one
    /// monoio read per request.
    #[arg(long, value_enum, default_value_t = Recv::Multishot)]
    pub recv: Recv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Recv {
    Multishot,
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Http,
    Echo,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Echo => "echo",
        }
    }
}

/// Everything the HTTP handler needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpSettings {
    pub id: String,
    pub failure_rate: f64,
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
    pub body_size: Option<usize>,
    pub max_head: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub recv: Recv,
}

impl HttpSettings {
    /// Settings for unit tests: no failures, no latency, default limits.
    #[cfg(test)]
    pub fn with_id(id: &str) -> Self {
        HttpSettings {
            id: id.to_string(),
            failure_rate: 0.0,
            min_latency_ms: 0,
            max_latency_ms: 0,
            body_size: None,
            max_head: DEFAULT_MAX_HEAD,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            recv: Recv::Plain,
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub cores: usize,
    pub pin: bool,
    pub mode: Mode,
    pub http: HttpSettings,
    /// How long a SIGTERM waits for open connections before the process exits.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Checks ranges and cross-field rules; the message names the flag and its variable.
    pub fn from_cli(cli: Cli) -> Result<Config, String> {
        let listen = resolve_listen(&cli)?;
        if cli.cores == 0 || cli.cores > 1024 {
            return Err(format!(
                "--cores must be between 1 and 1024, got {}",
                cli.cores
            ));
        }
        if !(0.0..=1.0).contains(&cli.failure_rate) {
            return Err(format!(
                "--failure-rate (FAILURE_RATE) must be between 0 and 1, got {}",
                cli.failure_rate
            ));
        }
        let max_latency = cli.max_latency.unwrap_or(cli.min_latency);
        if cli.min_latency > max_latency {
            return Err(format!(
                "--min-latency (MIN_LATENCY) must not exceed --max-latency (MAX_LATENCY), got {} > {}",
                cli.min_latency, max_latency
            ));
        }
        if max_latency > crate::latency::MAX_MS {
            return Err(format!(
                "--max-latency (MAX_LATENCY) is in milliseconds and at most one hour, got {max_latency}"
            ));
        }
        if let Some(n) = cli.body_size {
            if n > MAX_BODY_SIZE {
                return Err(format!(
                    "--body-size (BODY_SIZE) must be at most {MAX_BODY_SIZE} bytes, got {n}"
                ));
            }
        }
        if !(MIN_MAX_HEAD..=MAX_MAX_HEAD).contains(&cli.max_head) {
            return Err(format!(
                "--max-head must be between {MIN_MAX_HEAD} and {MAX_MAX_HEAD} bytes, got {}",
                cli.max_head
            ));
        }
        let id = resolve_id(cli.id, host_name())?;
        for (flag, d) in [
            ("--header-timeout", cli.header_timeout),
            ("--idle-timeout", cli.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be more than zero"));
            }
        }
        Ok(Config {
            listen,
            cores: cli.cores,
            pin: cli.pin,
            mode: cli.mode,
            shutdown_grace: cli.shutdown_grace,
            http: HttpSettings {
                id,
                failure_rate: cli.failure_rate,
                min_latency_ms: cli.min_latency,
                max_latency_ms: max_latency,
                body_size: cli.body_size,
                max_head: cli.max_head,
                header_timeout: cli.header_timeout,
                idle_timeout: cli.idle_timeout,
                recv: cli.recv,
            },
        })
    }
}

/// `--listen` wins; else `HOST`/`PORT` (seed semantics: all interfaces by default); else
/// [`DEFAULT_LISTEN`].
fn resolve_listen(cli: &Cli) -> Result<SocketAddr, String> {
    let (text, what) = match (&cli.listen, &cli.host, cli.port) {
        (Some(l), _, _) => (l.clone(), "--listen"),
        (None, None, None) => (DEFAULT_LISTEN.to_string(), "the default address"),
        (None, host, port) => {
            let host = host.as_deref().unwrap_or("0.0.0.0");
            let port = port.unwrap_or(DEFAULT_PORT);
            // Bracket bare IPv6 hosts so that host:port parses.
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            (format!("{host}:{port}"), "--host/--port (HOST/PORT)")
        }
    };
    lb_common::net::parse_addr(&text).map_err(|e| format!("{what}: {e}"))
}

/// Id used when neither `--id` nor `SERVER_ID` is given and the host name is not a valid id.
pub const FALLBACK_ID: &str = "backend";

/// `--id`/`SERVER_ID` if given (and valid); else the host name if it is a valid id; else
/// [`FALLBACK_ID`]. A bad host name is no error: nobody asked for it by name.
fn resolve_id(given: Option<String>, host: Option<String>) -> Result<String, String> {
    if let Some(id) = given {
        check_id(&id)?;
        return Ok(id);
    }
    Ok(host
        .filter(|h| check_id(h).is_ok())
        .unwrap_or_else(|| FALLBACK_ID.to_string()))
}

/// gethostname(2): the UTS namespace's name, which a container runtime sets to the container's
/// (Docker and Podman: its short id, or `hostname:` from the compose file). Not
/// `/proc/sys/kernel/hostname`, so that it also works where /proc is not mounted.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..len].to_vec()).ok()
}

/// The id goes into a header and a JSON string unescaped, so it must be plain visible ASCII.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--id (SERVER_ID) must be 1 to {MAX_ID_LEN} visible ASCII characters without quotes or backslashes, got {id:?}"
        ))
    }
}

/// `300ms`, `10s`, `1.5s`, `2m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 300ms, 10s, 1m)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 * 365.0 {
        return Err(format!("'{s}' is not a sensible duration"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["backend"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    /// Parses without reading the process environment (tests may run with PORT etc. set).
    fn config(args: &[&str]) -> Result<Config, String> {
        let mut c = cli(args);
        let given = |flag: &str| {
            args.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        if !given("--host") {
            c.host = None;
        }
        if !given("--port") {
            c.port = None;
        }
        if !given("--failure-rate") {
            c.failure_rate = 0.0;
        }
        if !given("--min-latency") {
            c.min_latency = 0;
        }
        if !given("--max-latency") {
            c.max_latency = None;
        }
        if !given("--body-size") {
            c.body_size = None;
        }
        if !given("--id") {
            c.id = None;
        }
        Config::from_cli(c)
    }

    #[test]
    fn defaults_listen_on_loopback_9001_with_one_core() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.cores, 1);
        assert_eq!(c.mode, Mode::Http);
        assert_eq!(c.http.max_head, DEFAULT_MAX_HEAD);
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn port_without_listen_binds_all_interfaces_like_the_seed_servers() {
        let c = config(&["--port", "9100"]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9100");
        let c = config(&["--host", "127.0.0.1", "--port", "9100"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100");
        let c = config(&["--host", "::1"]).unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:9001");
    }

    #[test]
    fn listen_flag_beats_host_and_port() {
        let c = config(&["--listen", "127.0.0.1:0", "--port", "9100"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn failure_rate_outside_zero_to_one_is_rejected_naming_flag_and_variable() {
        for bad in [
            "--failure-rate=1.5",
            "--failure-rate=-0.1",
            "--failure-rate=NaN",
        ] {
            let e = config(&[bad]).unwrap_err();
            assert!(
                e.contains("--failure-rate") && e.contains("FAILURE_RATE"),
                "{e}"
            );
        }
        assert_eq!(
            config(&["--failure-rate", "1"]).unwrap().http.failure_rate,
            1.0
        );
    }

    #[test]
    fn min_latency_above_max_latency_is_rejected() {
        let e = config(&["--min-latency", "50", "--max-latency", "10"]).unwrap_err();
        assert!(
            e.contains("MIN_LATENCY") && e.contains("MAX_LATENCY"),
            "{e}"
        );
    }

    #[test]
    fn max_latency_defaults_to_min_latency() {
        let c = config(&["--min-latency", "50"]).unwrap();
        assert_eq!((c.http.min_latency_ms, c.http.max_latency_ms), (50, 50));
    }

    #[test]
    fn ids_that_would_break_headers_or_json_are_rejected() {
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(config(&["--id", bad]).is_err(), "{bad:?}");
        }
        assert_eq!(config(&["--id", "s1"]).unwrap().http.id, "s1");
    }

    #[test]
    fn the_id_is_the_flag_or_variable_else_the_host_name_else_backend() {
        let host = || Some("replica-7f3a".to_string());
        assert_eq!(resolve_id(Some("s1".into()), host()), Ok("s1".into()));
        assert_eq!(resolve_id(None, host()), Ok("replica-7f3a".into()));
        assert_eq!(resolve_id(None, None), Ok("backend".into()));
        for bad in ["", "my host", "h\"", "é.local"] {
            assert_eq!(resolve_id(None, Some(bad.into())), Ok("backend".into()));
        }
        // A bad id that was asked for by name is an error, not a silent fallback.
        assert!(resolve_id(Some("a b".into()), host()).is_err());
    }

    #[test]
    fn zero_cores_and_silly_limits_are_rejected() {
        assert!(config(&["--cores", "0"]).is_err());
        assert!(config(&["--max-head", "10"]).is_err());
        assert!(config(&["--header-timeout", "0s"]).is_err());
        assert!(config(&["--body-size", "999999999999"]).is_err());
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
