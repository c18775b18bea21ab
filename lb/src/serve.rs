//! The composition root: binds (or takes over) the listeners, starts the control plane, the local
//! replicas and the signal thread, then runs the workers until a graceful stop has finished. The
//! only module that knows both planes.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lb_common::net::ListenerGroup;

use crate::config::{Config, Overrides};
use crate::control::{self, replicas, upgrade};
use crate::shared::set::Health;
use crate::shared::{Listener, Shared};

/// What the command line says about how to start, beyond the configuration itself.
#[derive(Debug, Clone, Default)]
pub struct ServeOpts {
    /// Take the listening sockets over from the lb on the upgrade socket.
    pub takeover: bool,
    /// The upgrade socket; None: the default for the listen port.
    pub upgrade_socket: Option<PathBuf>,
    /// Environment and command line, re-applied over the file on every reload.
    pub overrides: Overrides,
}

/// Serves `config` until a graceful stop has finished.
pub fn serve(config: Config, opts: ServeOpts) -> anyhow::Result<()> {
    let cpus = lb_common::runtime::available_cpus();
    if config.cores > cpus {
        tracing::warn!(
            cores = config.cores,
            cpus,
            "more worker cores than CPUs lb may use: workers will share CPUs (set cores = \"auto\")"
        );
    }
    // Before any thread starts: signals go to one thread that turns them into actions.
    let started = Arc::new(OnceLock::<Arc<Shared>>::new());
    spawn_signal_thread(started.clone(), opts.overrides.clone())?;
    let replicas = start_replicas(&config, started.clone()).map_err(anyhow::Error::msg)?;
    let port = config.listen().port();
    let (mut taken, admin, takeover) = if opts.takeover {
        if !config.replicas.is_empty() {
            anyhow::bail!("--takeover needs configured backends: the built-in local replicas belong to the old process");
        }
        let path = match &opts.upgrade_socket {
            Some(p) => p.clone(),
            None => upgrade::default_path(port)?,
        };
        let mut t = upgrade::take_over(&path)?;
        tracing::info!(listeners = t.listeners.len(), path = %path.display(), "took the listening sockets over");
        let (listeners, admin) = (std::mem::take(&mut t.listeners), t.admin.take());
        (listeners, admin, Some((t, path)))
    } else {
        // A second lb on a port already served would split the clients between two
        // configurations: refuse, naming the cure. (Port 0 is a fresh port every time.)
        if let Some(path) = (port != 0).then(|| upgrade_path(&opts, port)).flatten() {
            if upgrade::answers(&path) {
                anyhow::bail!(
                    "cannot listen on {}: address in use: an lb already serves it (its upgrade socket {} answers); replace it with --takeover",
                    config.listen(),
                    path.display()
                );
            }
        }
        let admin = match config.admin.listen {
            // A plain bind (no SO_REUSEPORT): a second lb on the same admin port must fail
            // loudly rather than share it. A process that just exited may still hold the port
            // for a few ms (its io_uring teardown): wait for that, briefly.
            Some(addr) => Some(
                lb_common::net::retry_in_use(lb_common::net::GOING_AWAY_WAIT, || {
                    StdListener::bind(addr)
                })
                .map_err(|e| {
                    anyhow::anyhow!("admin API cannot listen on {addr}: {e} (set admin.listen, --admin ADDR or --admin off)")
                })?,
            ),
            None => None,
        };
        (Vec::new(), admin, None)
    };
    // Each configured listener: the sockets the old process handed over under its name (when
    // its address is still the same), or freshly bound.
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let handed = taken
            .iter()
            .position(|(name, _)| name == &l.name)
            .map(|i| taken.swap_remove(i).1);
        let socks = match handed {
            Some(socks) if same_address(&socks, l.address) => socks,
            Some(_) => {
                tracing::warn!(listener = %l.name, address = %l.address, "the handed-over socket has another address: binding the configured one");
                bind(l.address, config.cores, config.relay.backlog)?
            }
            None => bind(l.address, config.cores, config.relay.backlog)?,
        };
        let bound = socks[0].local_addr()?;
        sockets.push((l.clone(), bound, socks));
    }
    for (name, _) in &taken {
        tracing::info!(listener = %name, "a listener of the old process is not in this configuration: not served here");
    }
    let admin_unix = match &config.admin.unix_socket {
        Some(path) => Some(bind_admin_unix(path)?),
        None => None,
    };
    let admin_fd = admin.as_ref().map(|l| l.as_raw_fd());
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    // Opened now: a log file lb cannot write stops it here, not after it took traffic.
    let access = crate::shared::access_log::AccessLog::start(&config.access_log)?;
    let shared = Shared::new(
        config,
        sockets
            .iter()
            .map(|(c, bound, socks)| {
                (
                    c.clone(),
                    *bound,
                    socks.iter().map(|s| s.as_raw_fd()).collect(),
                )
            })
            .collect(),
        admin_addr,
        access,
    );
    if let Some((t, _)) = &takeover {
        for line in control::carry::apply(&shared, &t.carried) {
            tracing::info!(state = %line, "takeover: run-time state of the old process restored");
        }
    }
    let routing = shared.routing.load_full();
    announce("lb", routing.listeners[0].address);
    if let Some(a) = admin_addr {
        announce("lb admin", a);
    }
    for l in &routing.listeners {
        announce(&format!("lb listener {}", l.name), l.address);
    }
    let sockets: Vec<(Arc<Listener>, Vec<StdListener>)> = routing
        .listeners
        .iter()
        .cloned()
        .zip(sockets.into_iter().map(|(_, _, socks)| socks))
        .collect();
    let accept_loops: usize = sockets.iter().map(|(_, s)| s.len()).sum();
    control::start(shared.clone(), admin, admin_unix, replicas)?;
    let _ = started.set(shared.clone());
    match takeover {
        Some((t, path)) => {
            let s = shared.clone();
            std::thread::spawn(move || {
                // Confirm only once every accept loop runs, so that the old process keeps
                // accepting until this one does.
                let deadline = Instant::now() + Duration::from_secs(10);
                while s.ready.load(std::sync::atomic::Ordering::SeqCst) < accept_loops
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
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
        // Named after the port as bound, so that lbs on port 0 each get their own.
        None => match upgrade_path(&opts, routing.listeners[0].address.port()) {
            Some(path) => {
                // The default path is in lb's private directory: killed lbs cannot remove
                // their sockets there, so the next one to start does.
                if let (None, Some(dir)) = (&opts.upgrade_socket, path.parent()) {
                    upgrade::sweep_stale(dir, upgrade::STALE_AFTER);
                }
                if let Err(e) = upgrade::serve(path, shared.clone(), admin_fd) {
                    tracing::warn!(error = %e, "binary upgrade unavailable");
                }
            }
            None => tracing::warn!(
                "binary upgrade unavailable: no private directory for its socket (pass --upgrade-socket)"
            ),
        },
    }
    let done = crate::worker::run(shared.clone(), sockets);
    // The flows netfilter forwards for kernel-mode services end on their own clock.
    control::kernel::wait_stopped(&shared);
    done
}

fn same_address(socks: &[StdListener], want: SocketAddr) -> bool {
    socks
        .first()
        .and_then(|s| s.local_addr().ok())
        .is_some_and(|a| a.ip() == want.ip() && (want.port() == 0 || a.port() == want.port()))
}

/// `--upgrade-socket`, else the default for `port` (None when lb has no private directory for
/// it; the reason is logged).
fn upgrade_path(opts: &ServeOpts, port: u16) -> Option<PathBuf> {
    match &opts.upgrade_socket {
        Some(p) => Some(p.clone()),
        None => match upgrade::default_path(port) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "no directory for the upgrade socket");
                None
            }
        },
    }
}

/// The admin API's Unix socket: mode 0600 from the start (created under a 0177 umask, so there
/// is no moment at which another user could connect), replacing a stale socket file of ours;
/// removed when lb exits.
fn bind_admin_unix(path: &std::path::Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.file_type().is_socket() || m.uid() != me {
            anyhow::bail!(
                "admin.unix_socket {}: something else is there (not a socket of uid {me}); remove it or choose another path",
                path.display()
            );
        }
        // Ours: left by an lb that died, or held by the one we replace; the new process owns
        // the path from now on (the old one removes it at exit only if it is still its own).
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask only swaps the process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| anyhow::anyhow!("admin.unix_socket {}: {e}", path.display()))?;
    crate::shared::exit::remove_at_exit(path);
    Ok(l)
}

/// A listener freshly bound: one `SO_REUSEPORT` socket per core.
pub fn bind(addr: SocketAddr, cores: usize, backlog: i32) -> anyhow::Result<Vec<StdListener>> {
    Ok(ListenerGroup::bind(addr, cores, backlog)?.into_listeners())
}

/// One line on stdout that scripts and tests read to learn a bound port.
pub fn announce(what: &str, addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} listening on {addr}");
    let _ = out.flush();
}

/// SIGHUP reloads, SIGTERM and SIGINT stop gracefully (each with its own grace), SIGUSR1 reopens
/// the access log.
fn spawn_signal_thread(
    started: Arc<OnceLock<Arc<Shared>>>,
    overrides: Overrides,
) -> anyhow::Result<()> {
    let signals = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];
    lb_common::signals::spawn_signal_thread("lb-signals", &signals, move |sig| {
        let Some(shared) = started.get() else {
            // Not serving yet: nothing to drain, stop at once.
            if sig != libc::SIGHUP && sig != libc::SIGUSR1 {
                std::process::exit(0);
            }
            return;
        };
        match sig {
            // logrotate moved the access log: open the path again.
            libc::SIGUSR1 => shared.access.reopen(),
            libc::SIGHUP => match control::reload::reload(shared, &overrides) {
                Ok(generation) => tracing::info!(generation, "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected; the running configuration stays")
                }
            },
            libc::SIGTERM => {
                // The shutdown section in force: a reload may have changed it.
                let sd = shared.live.load().shutdown;
                if sd.lame_duck.is_zero() || shared.lifecycle.draining() {
                    tracing::info!(
                        grace_ms = sd.grace.as_millis() as u64,
                        "SIGTERM: stopping, open connections may finish"
                    );
                    shared.lifecycle.stop(sd.grace);
                    return;
                }
                // Lame duck: health probes see 503 at once while lb keeps accepting, so that
                // whatever sends clients here (a balancer, a Kubernetes Service) stops first.
                tracing::info!(
                    lame_duck_ms = sd.lame_duck.as_millis() as u64,
                    grace_ms = sd.grace.as_millis() as u64,
                    "SIGTERM: draining (GET /health answers 503) and still accepting; then stopping"
                );
                shared.lifecycle.drain();
                let s = shared.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(sd.lame_duck);
                    tracing::info!("lame duck over: stopping, open connections may finish");
                    s.lifecycle.stop(sd.grace);
                });
            }
            _ => {
                let grace = shared.live.load().shutdown.interrupt_grace;
                tracing::info!(grace_ms = grace.as_millis() as u64, "SIGINT: stopping soon");
                shared.lifecycle.stop(grace);
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot set up signal handling: {e}"))?;
    Ok(())
}

/// The built-in default: start local `backend` replicas and wait (bounded) until they listen.
/// The local replicas: those configured (the built-in default when no backend is configured, or
/// `replicas.command`'s), started now and waited for (bounded) until they listen; and the
/// supervisor that also starts the seed API's `POST /add` replicas later.
fn start_replicas(
    config: &Config,
    started: Arc<OnceLock<Arc<Shared>>>,
) -> Result<Arc<replicas::Supervisor>, String> {
    // A port already served would leave the replica failing to start while lb sends its clients
    // to whatever listens there. The replicas of an lb that just stopped may still be exiting.
    for r in &config.replicas.specs {
        lb_common::net::ensure_free(r.addr, Duration::from_secs(2)).map_err(|e| {
            format!("local replica {} cannot start: {e}; set replicas.base_port to free ports or configure backends", r.id)
        })?;
    }
    let program = match &config.replicas.command {
        Some(argv) => Some(replicas::Program::Command(argv.clone())),
        // Needed now for configured replicas; otherwise only if /add asks for one.
        None if !config.replicas.is_empty() => {
            Some(replicas::Program::Backend(replicas::backend_binary()?))
        }
        None => replicas::backend_binary()
            .ok()
            .map(replicas::Program::Backend),
    };
    let serving = started.clone();
    let stopping: replicas::StopProbe =
        Arc::new(move || serving.get().is_some_and(|s| s.lifecycle.stopping()));
    // The supervisor restarts a replica its health checks hold down, once lb is serving.
    let checked = started.clone();
    let down: replicas::DownProbe = Arc::new(move |id: &str| {
        checked.get().is_some_and(|s| {
            s.default_service().is_some_and(|svc| {
                svc.set
                    .load()
                    .backends
                    .iter()
                    .any(|b| b.name == id && b.health == Health::Down)
            })
        })
    });
    if !config.replicas.is_empty() {
        tracing::info!(
            count = config.replicas.len(),
            "starting local backend replicas (declared with replicas.command, or the default when no backend is configured)"
        );
    }
    // A restarted replica that listens again is fresh: every core stops skipping it at once.
    let serving = started.clone();
    let back: replicas::BackHook = Arc::new(move |id: &str| {
        if let Some(svc) = serving.get().and_then(|s| s.default_service()) {
            if let Err(e) = svc.set.mark_restarted(id) {
                tracing::warn!(id, error = %e, "cannot mark the restarted replica as back");
            }
        }
    });
    let sup = replicas::start(program, config.replicas.specs.clone(), down, stopping, back)
        .map_err(|e| format!("cannot start local replicas: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in &config.replicas.specs {
        while std::net::TcpStream::connect_timeout(&r.addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                tracing::warn!(id = %r.id, addr = %r.addr, "replica not listening yet; lb skips it until it is");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(sup)
}
