//! `lb` binary: command line -> config -> logging -> [`lb::serve::serve`].

use std::path::PathBuf;

use clap::Parser;
use lb::config::{Config, FileConfig, Overrides};
use lb::serve::ServeOpts;

/// Thread-per-core L4 TCP load balancer on io_uring: `-h` lists the flags, `--help` adds
/// [`AFTER_LONG_HELP`].
#[derive(Parser, Debug)]
#[command(
    name = "lb",
    version,
    about,
    long_about = None,
    after_help = "Environment variables, signals, defaults and local replicas: lb --help",
    after_long_help = AFTER_LONG_HELP
)]
struct Args {
    /// TOML config file; every key is documented in config/lb.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 or :8080 (default 127.0.0.1:8080).
    #[arg(short, long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// A backend address; repeat for several. Replaces the file's and BACKEND_SERVERS' list.
    #[arg(
        short,
        long = "backend",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    backends: Vec<String>,
    /// round_robin, weighted_round_robin, least_connections, least_response_time, random,
    /// power_of_two, consistent_hash (alias ip_hash) or maglev.
    #[arg(short, long, value_name = "NAME")]
    algorithm: Option<String>,
    /// Worker threads, one per core, each with its own listeners: a number, or "auto" for one
    /// per CPU lb may use (its affinity and its cgroup's CPU quota; the default).
    #[arg(long, value_name = "N|auto")]
    cores: Option<String>,
    /// Pin worker i to the i-th CPU this process may use.
    #[arg(long)]
    pin: bool,
    /// Admin API address (stats, metrics, backend changes), or "off" (default 127.0.0.1:9900).
    #[arg(long, value_name = "HOST:PORT|off")]
    admin: Option<String>,
    /// Zero-downtime upgrade: take the listening sockets over from the lb running on the
    /// upgrade socket, then tell it to drain.
    #[arg(long)]
    takeover: bool,
    /// Unix socket for handing listeners to a new process (default: upgrade-PORT.sock in
    /// $XDG_RUNTIME_DIR/lb/, /run/lb/ as root, else $TMPDIR/lb-UID/).
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit (0 if valid, 2 if not).
    #[arg(long)]
    check_config: bool,
}

/// What `lb --help` says after the flags: everything lb takes from outside its flags and its
/// file. `lb/tests/cli.rs` checks that every environment variable the code reads and every
/// signal it handles is named here.
const AFTER_LONG_HELP: &str = "\
Configuration, later sources overriding earlier ones: the TOML file (--config; config/lb.toml
lists every key with its default), the environment variables below, then the flags. SIGHUP
re-reads the file and applies the same overrides. --check-config validates without starting.

Defaults:
  listen     127.0.0.1:8080 (HOST, PORT, --listen)
  admin API  127.0.0.1:9900 (--admin): GET /health, /lb/stats, /metrics, /lb/backends
  cores      \"auto\": one worker per CPU lb may use (affinity mask, cgroup CPU quota)
  algorithm  round_robin
  health     a TCP connect every 2000 ms, timeout 1000 ms, rise 2, fall 3
  shutdown   grace_ms 30000, interrupt_grace_ms 2000, lame_duck_ms 0

Local replicas:
  With no backend configured anywhere (the file, BACKEND_SERVERS, --backend), lb starts three
  `backend` processes, s1, s2, s3 on 127.0.0.1:9001-9003 ([replicas] count, base_port), and
  balances over them: the `backend` binary beside lb, or LB_BACKEND_BIN. A replica that exits,
  or that its health checks hold down 3 s after its start, is restarted; all stop when lb
  stops. --takeover needs configured backends.

Environment:
  BACKEND_SERVERS  backends, comma-separated: host:port, http://host:port/path, host:port*WEIGHT
  ALGORITHM        as --algorithm
  HOST, PORT       the listen address's host and port (--listen replaces both)
  LB_ADMIN_TOKEN   the admin API's bearer token (16+ visible characters); overrides
                   admin.token_file
  LB_BACKEND_BIN   the program local replicas run (default: `backend` beside lb)
  RUST_LOG         the log filter, default info: RUST_LOG=debug, RUST_LOG=warn,lb=debug
  MONOIO_FORCE_LEGACY_DRIVER=1
                   epoll instead of io_uring (lb falls back to epoll by itself, with a warning,
                   where io_uring is missing or blocked)
  LB_URING_TASKRUN=coop
                   io_uring rings with COOP_TASKRUN instead of DEFER_TASKRUN | SINGLE_ISSUER
                   (the default, where the kernel takes it; for comparison)
  LB_RECV_RING_BRIDGE=eventfd
                   relay.mode = \"multishot\": wake the runtime by an eventfd instead of a
                   poll on the receive ring (for comparison)
  XDG_RUNTIME_DIR, TMPDIR
                   the upgrade socket's default directory: $XDG_RUNTIME_DIR/lb/, /run/lb/ as
                   root, else $TMPDIR/lb-UID/

Signals:
  SIGHUP   reload the config file; keys only a restart applies are named in a warning
  SIGTERM  graceful stop: for shutdown.lame_duck_ms GET /health answers 503 while lb still
           accepts (a second SIGTERM ends that), then lb stops accepting and open connections
           may finish within shutdown.grace_ms; those still open are reset
  SIGINT   the same stop without the lame duck, within shutdown.interrupt_grace_ms (Ctrl-C)
  SIGUSR1  open the access log file again (logrotate: rename it, then kill -USR1)

lb prints \"lb listening on ADDR\" on stdout once bound (--listen 127.0.0.1:0: a free port) and
logs to stderr. Exit status: 0 stopped, 1 could not start (e.g. address in use), 2 invalid
configuration, 70 a worker thread died.";

fn main() {
    let args = Args::parse();
    lb_common::logging::init("info");
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!("{}", summary(&config));
        return;
    }
    let opts = ServeOpts {
        takeover: args.takeover,
        upgrade_socket: args.upgrade_socket.clone(),
        overrides: overrides(&args).expect("checked by load"),
    };
    if let Err(e) = lb::serve::serve(config, opts) {
        eprintln!("lb: {e:#}");
        std::process::exit(1);
    }
    tracing::info!("lb stopped");
}

/// What `--check-config` prints: the simple form in one line, listeners and services otherwise.
fn summary(config: &Config) -> String {
    let replicas = if config.replicas.is_empty() {
        ""
    } else {
        " (local replicas lb starts itself)"
    };
    if config.listeners.len() == 1 && config.services.len() == 1 {
        let s = &config.services[0];
        return format!(
            "configuration OK: listen {}, {} core(s), algorithm {}, {} backend(s){replicas}",
            config.listen(),
            config.cores,
            s.algorithm.name(),
            s.backends.len() + s.discover.len(),
        );
    }
    let mut out = format!(
        "configuration OK: {} listener(s), {} service(s), {} core(s){replicas}",
        config.listeners.len(),
        config.services.len(),
        config.cores
    );
    for l in &config.listeners {
        out.push_str(&format!(
            "\n  listener {} on {} -> {}",
            l.name,
            l.address,
            l.route.services().join(", ")
        ));
    }
    for s in &config.services {
        out.push_str(&format!(
            "\n  service {}: {}, {} backend(s)",
            s.name,
            s.algorithm.name(),
            s.backends.len() + s.discover.len()
        ));
    }
    out
}

/// Environment then command line: what overrides the file, now and on every reload.
fn overrides(args: &Args) -> Result<Overrides, lb::config::ConfigError> {
    let env = Overrides::from_env(|k| std::env::var_os(k))?;
    let cli = Overrides {
        listen: args.listen.clone(),
        backends: (!args.backends.is_empty()).then(|| args.backends.clone()),
        algorithm: args.algorithm.clone(),
        cores: args.cores.clone(),
        pin: args.pin.then_some(true),
        admin: args.admin.clone(),
        ..Default::default()
    };
    Ok(env.then(cli))
}

fn load(args: &Args) -> Result<Config, lb::config::ConfigError> {
    let file = match &args.config {
        Some(path) => Config::read_file(path)?,
        None => FileConfig::default(),
    };
    Config::build(file, overrides(args)?, args.config.clone())
}
