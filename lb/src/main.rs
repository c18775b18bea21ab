//! `lb` binary: command line -> config -> logging -> [`lb::serve::serve`].

use std::path::PathBuf;

use clap::Parser;
use lb::config::{Config, FileConfig, Overrides};
use lb::serve::ServeOpts;

/// Thread-per-core L4 TCP load balancer on io_uring.
///
/// Sources, later overriding earlier: the TOML file (--config), the environment (ALGORITHM,
/// BACKEND_SERVERS=host:port,host:port, HOST, PORT), then these flags.
/// With no backend configured anywhere, lb starts three local `backend` replicas on
/// 127.0.0.1:9001-9003 and restarts any that exits.
/// Logging: RUST_LOG (default info), e.g. RUST_LOG=debug.
#[derive(Parser, Debug)]
#[command(name = "lb", version, about, long_about = None)]
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
    /// Unix socket for handing listeners to a new process (default: $TMPDIR/lb-upgrade-PORT.sock).
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Validate the configuration, print a summary and exit (0 if valid, 2 if not).
    #[arg(long)]
    check_config: bool,
}

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
