//! Process bootstrap: SO_REUSEPORT listener group, one worker per core, accept loops, and the
//! start line on stdout once every worker is listening.

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use lb_common::net::{monoio_listener, ListenerGroup, DEFAULT_BACKLOG};
use lb_common::runtime::{run_workers, IoDriver, WorkerCtx, WorkerOpts};
use lb_common::task::spawn_guarded;

use crate::config::{Config, Mode};
use crate::health::{self, HEALTH};
use crate::http_server::{self, Counters, Ctx};
use crate::latency::Latency;
use crate::stop;

/// Shared by the workers while they start.
struct Startup {
    listeners: Vec<Mutex<Option<StdListener>>>,
    /// Workers still setting up; the last one prints the start line.
    remaining: AtomicUsize,
    drivers: Mutex<Vec<IoDriver>>,
    line_prefix: String,
}

/// Binds, starts the workers and serves until SIGTERM or SIGINT (then drains and exits 0).
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // Before any thread starts, so that all of them inherit the mask (see stop.rs).
    stop::block_stop_signals().context("cannot block SIGTERM/SIGINT")?;
    health::install_signal_handlers().context("cannot install SIGUSR1/SIGUSR2 handlers")?;
    health::route_signals_to_one_thread().context("cannot start the signal thread")?;
    let group = ListenerGroup::bind(cfg.listen, cfg.cores, DEFAULT_BACKLOG)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = group.addr;
    let listeners = group.into_listeners();
    stop::spawn_stop_thread(
        listeners.iter().map(|l| l.as_raw_fd()).collect(),
        cfg.shutdown_grace,
    )
    .context("cannot start the SIGTERM thread")?;
    let startup = Arc::new(Startup {
        listeners: listeners.into_iter().map(|l| Mutex::new(Some(l))).collect(),
        remaining: AtomicUsize::new(cfg.cores),
        drivers: Mutex::new(Vec::new()),
        line_prefix: format!(
            "backend {} listening on {} ({}, {} cores",
            cfg.http.id,
            addr,
            cfg.mode.name(),
            cfg.cores
        ),
    });
    tracing::info!(
        id = %cfg.http.id,
        %addr,
        mode = cfg.mode.name(),
        cores = cfg.cores,
        failure_rate = cfg.http.failure_rate,
        min_latency_ms = cfg.http.min_latency_ms,
        max_latency_ms = cfg.http.max_latency_ms,
        body_size = ?cfg.http.body_size,
        "starting"
    );
    let counters = Arc::new(Counters::new(cfg.cores));
    let latency = Arc::new(Latency::new(
        cfg.http.min_latency_ms,
        cfg.http.max_latency_ms,
    ));
    let padding = Ctx::padding_for(&cfg.http);
    let mut opts = WorkerOpts::new("backend", cfg.cores);
    opts.pin = cfg.pin;
    let cfg = Arc::new(cfg);
    run_workers(&opts, move |w: WorkerCtx| {
        let cfg = cfg.clone();
        let startup = startup.clone();
        let counters = counters.clone();
        let latency = latency.clone();
        let padding = padding.clone();
        async move {
            let std_listener = startup.listeners[w.index]
                .lock()
                .expect("listener slot")
                .take()
                .expect("one listener per worker");
            let listener = match monoio_listener(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = w.index, error = %e, "cannot use the listener");
                    std::process::exit(1);
                }
            };
            tracing::info!(
                worker = w.index,
                driver = w.driver.name(),
                "worker listening"
            );
            ready(&startup, w.driver);
            match cfg.mode {
                Mode::Http => {
                    let ctx = Rc::new(Ctx::new(
                        cfg.http.clone(),
                        &HEALTH,
                        latency,
                        counters,
                        padding,
                        w.index,
                    ));
                    accept_loop(listener, move |stream| {
                        let open = stop::Open::new();
                        let ctx = ctx.clone();
                        spawn_guarded("http connection", async move {
                            let _open = open;
                            http_server::serve(stream, ctx).await
                        });
                    })
                    .await
                }
                Mode::Echo => {
                    let idle = cfg.http.idle_timeout;
                    accept_loop(listener, move |stream| {
                        let open = stop::Open::new();
                        spawn_guarded("echo connection", async move {
                            let _open = open;
                            crate::echo::serve(stream, idle).await
                        });
                    })
                    .await
                }
            }
        }
    })?;
    Ok(())
}

/// Records a worker's driver; the last worker to get here prints the start line.
fn ready(startup: &Startup, driver: IoDriver) {
    let mut drivers = startup.drivers.lock().expect("drivers");
    drivers.push(driver);
    if startup.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        let mut names: Vec<&str> = drivers.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        let line = format!("{}, {})", startup.line_prefix, names.join("+"));
        let mut stdout = std::io::stdout().lock();
        // A closed stdout must not stop the server.
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        tracing::info!("{line}");
    }
}

/// Accepts until the stop thread shuts the listener down, handing each connection (with
/// TCP_NODELAY) to `handle`; then waits for the process to exit.
async fn accept_loop(listener: monoio::net::TcpListener, handle: impl Fn(monoio::net::TcpStream)) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                handle(stream);
            }
            Err(_) if stop::is_stopping() => {
                // The open connections on this core go on; the stop thread ends the process.
                stop::accept_ended();
                monoio::time::sleep(Duration::from_secs(3600)).await;
            }
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
