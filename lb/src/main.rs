//! `lb` binary: command line -> config -> logging -> per-core runtime.

use std::path::PathBuf;

use clap::Parser;
use lb::config::{Config, FileConfig, Overrides};

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
    /// Worker threads, one per core, each with its own listener (default 1).
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
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
        println!(
            "configuration OK: listen {}, {} core(s), algorithm {}, {} backend(s){}",
            config.listen,
            config.cores,
            config.algorithm.name(),
            config.backends.len(),
            if config.replicas.is_empty() {
                ""
            } else {
                " (local replicas lb starts itself)"
            }
        );
        return;
    }
    // Before any thread starts: signals go to one thread that turns them into actions.
    let overrides = overrides(&args);
    let started =
        std::sync::Arc::new(std::sync::OnceLock::<std::sync::Arc<lb::runtime::Shared>>::new());
    let on_signal = started.clone();
    let signals = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT];
    if let Err(e) = lb_common::signals::spawn_signal_thread("lb-signals", &signals, move |sig| {
        let Some(shared) = on_signal.get() else {
            // Not serving yet: nothing to drain, stop at once.
            if sig != libc::SIGHUP {
                std::process::exit(0);
            }
            return;
        };
        match sig {
            libc::SIGHUP => match lb::control::reload::reload(shared, &overrides) {
                Ok(generation) => tracing::info!(generation, "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected; the running configuration stays")
                }
            },
            libc::SIGTERM => {
                tracing::info!(
                    grace_ms = shared.config.shutdown_grace.as_millis() as u64,
                    "SIGTERM: stopping, open connections may finish"
                );
                shared.lifecycle.stop(shared.config.shutdown_grace);
            }
            _ => {
                tracing::info!(
                    grace_ms = shared.config.interrupt_grace.as_millis() as u64,
                    "SIGINT: stopping soon"
                );
                shared.lifecycle.stop(shared.config.interrupt_grace);
            }
        }
    }) {
        eprintln!("lb: cannot set up signal handling: {e}");
        std::process::exit(1);
    }
    if !config.replicas.is_empty() {
        if let Err(e) = start_replicas(&config, started.clone()) {
            eprintln!("lb: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = serve(config, &started, &args) {
        eprintln!("lb: {e:#}");
        std::process::exit(1);
    }
    tracing::info!("lb stopped");
}

fn serve(
    config: Config,
    started: &std::sync::OnceLock<std::sync::Arc<lb::runtime::Shared>>,
    args: &Args,
) -> anyhow::Result<()> {
    use lb::control::upgrade;
    use std::os::fd::AsRawFd;
    let (listeners, admin, takeover) = if args.takeover {
        if !config.replicas.is_empty() {
            anyhow::bail!("--takeover needs configured backends: the built-in local replicas belong to the old process");
        }
        let path = args
            .upgrade_socket
            .clone()
            .unwrap_or_else(|| upgrade::default_path(config.listen.port()));
        let mut t = upgrade::take_over(&path)?;
        tracing::info!(listeners = t.listeners.len(), path = %path.display(), "took the listening sockets over");
        let (listeners, admin) = (std::mem::take(&mut t.listeners), t.admin.take());
        (listeners, admin, Some((t, path)))
    } else {
        let listeners = lb::runtime::bind(&config)?;
        let admin = match config.admin {
            // A plain bind (no SO_REUSEPORT): a second lb on the same admin port must fail
            // loudly rather than share it.
            Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| {
                anyhow::anyhow!("admin API cannot listen on {addr}: {e} (set admin.listen, --admin ADDR or --admin off)")
            })?),
            None => None,
        };
        (listeners, admin, None)
    };
    let admin_fd = admin.as_ref().map(|l| l.as_raw_fd());
    let shared = lb::runtime::shared(config, &listeners)?;
    lb::runtime::announce("lb", shared.listen);
    if let Some(l) = &admin {
        lb::runtime::announce("lb admin", l.local_addr()?);
    }
    lb::control::start(shared.clone(), admin)?;
    let _ = started.set(shared.clone());
    match takeover {
        Some((t, path)) => {
            let s = shared.clone();
            std::thread::spawn(move || {
                // Confirm only once every accept loop runs, so that the old process keeps
                // accepting until this one does.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while s.ready.load(std::sync::atomic::Ordering::SeqCst) < s.listener_fds.len()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                match t.confirm() {
                    Ok(()) => tracing::info!("old process told to drain"),
                    Err(e) => {
                        tracing::error!(error = %e, "could not tell the old process to drain")
                    }
                }
                upgrade::serve_after_takeover(path, s, admin_fd);
            });
        }
        None => {
            let path = args
                .upgrade_socket
                .clone()
                .unwrap_or_else(|| upgrade::default_path(shared.listen.port()));
            if let Err(e) = upgrade::serve(path, shared.clone(), admin_fd) {
                tracing::warn!(error = %e, "binary upgrade unavailable");
            }
        }
    }
    lb::runtime::run(shared, listeners)
}

/// The built-in default: start local `backend` replicas and wait (bounded) until they listen.
fn start_replicas(
    config: &Config,
    started: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<lb::runtime::Shared>>>,
) -> Result<(), String> {
    use lb::control::replicas;
    let program = match &config.replica_command {
        Some(argv) => replicas::Program::Command(argv.clone()),
        None => replicas::Program::Backend(replicas::backend_binary()?),
    };
    let serving = started.clone();
    let stopping: replicas::StopProbe =
        std::sync::Arc::new(move || serving.get().is_some_and(|s| s.lifecycle.stopping()));
    // The supervisor restarts a replica its health checks hold down, once lb is serving.
    let checked = started.clone();
    let down: replicas::DownProbe = std::sync::Arc::new(move |id: &str| {
        checked.get().is_some_and(|s| {
            s.set
                .load()
                .backends
                .iter()
                .any(|b| b.name == id && b.health == lb::upstream::set::Health::Down)
        })
    });
    tracing::info!(
        count = config.replicas.len(),
        "starting local backend replicas (declared with replicas.command, or the default when no backend is configured)"
    );
    // A restarted replica that listens again is fresh: every core stops skipping it at once.
    let serving = started.clone();
    let back: replicas::BackHook = std::sync::Arc::new(move |id: &str| {
        if let Some(s) = serving.get() {
            if let Err(e) = s.set.mark_restarted(id) {
                tracing::warn!(id, error = %e, "cannot mark the restarted replica as back");
            }
        }
    });
    replicas::start(program, config.replicas.clone(), down, stopping, back)
        .map_err(|e| format!("cannot start local replicas: {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for r in &config.replicas {
        while std::net::TcpStream::connect_timeout(&r.addr, std::time::Duration::from_millis(200))
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                tracing::warn!(id = %r.id, addr = %r.addr, "replica not listening yet; lb skips it until it is");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Environment then command line: what overrides the file, now and on every reload.
fn overrides(args: &Args) -> Overrides {
    let env = Overrides::from_env(|k| std::env::var(k).ok());
    let cli = Overrides {
        listen: args.listen.clone(),
        backends: (!args.backends.is_empty()).then(|| args.backends.clone()),
        algorithm: args.algorithm.clone(),
        cores: args.cores,
        pin: args.pin.then_some(true),
        admin: args.admin.clone(),
        ..Default::default()
    };
    env.then(cli)
}

fn load(args: &Args) -> Result<Config, lb::config::ConfigError> {
    let file = match &args.config {
        Some(path) => Config::read_file(path)?,
        None => FileConfig::default(),
    };
    Config::build(file, overrides(args), args.config.clone())
}
