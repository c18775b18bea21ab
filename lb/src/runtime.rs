//! Thread-per-core bootstrap of `lb`: one worker per core, each with its own listener, balancer
//! and backend state; a connection never leaves the core that accepted it.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_common::net::{monoio_listener, ListenerGroup};
use lb_common::runtime::{run_workers, WorkerCtx, WorkerOpts};
use lb_common::task::spawn_guarded;
use monoio::net::TcpStream;

use crate::balance::{key_from_bytes, key_from_ip};
use crate::config::{Config, KeySource, RelayMode};
use crate::proxy::http::peek_key;
use crate::proxy::idle::IdleTimer;
use crate::proxy::readiness::{self, Scratch};
use crate::proxy::tcp::{self, RelayOpts};
use crate::upstream::{CoreUpstream, Upstreams};

/// Everything a worker needs, shared read-only between cores.
pub struct Shared {
    pub config: Config,
    pub upstreams: Arc<Upstreams>,
}

/// Binds the listeners, prints the address and runs the workers until the process ends.
pub fn launch(config: Config) -> anyhow::Result<()> {
    let group = ListenerGroup::bind(config.listen, config.cores, config.backlog)?;
    let addr = group.addr;
    let upstreams = Arc::new(Upstreams::new(config.backends.clone(), config.cores));
    tracing::info!(
        listen = %addr,
        cores = config.cores,
        pin = config.pin,
        algorithm = config.algorithm.name(),
        backends = %config.backends.iter().map(|b| format!("{}({}, w={})", b.name, b.address, b.weight)).collect::<Vec<_>>().join(", "),
        "lb starting"
    );
    announce(addr);

    let mut opts = WorkerOpts::new("lb-worker", config.cores);
    opts.pin = config.pin;
    let shared = Arc::new(Shared { config, upstreams });
    // Startup-only hand-over of one listener per worker; the data path takes no lock.
    let listeners: Mutex<Vec<Option<StdListener>>> =
        Mutex::new(group.into_listeners().into_iter().map(Some).collect());
    run_workers(&opts, move |ctx| {
        let listener = listeners.lock().unwrap()[ctx.index]
            .take()
            .expect("each worker takes its listener once");
        worker(ctx, listener, shared.clone())
    })?;
    Ok(())
}

/// One line on stdout that scripts and tests read to learn the bound port.
fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "lb listening on {addr}");
    let _ = out.flush();
}

struct Core {
    shared: Arc<Shared>,
    upstream: CoreUpstream,
    relay: RelayOpts,
    scratch: Scratch,
    idle: Rc<IdleTimer>,
}

async fn worker(ctx: WorkerCtx, listener: StdListener, shared: Arc<Shared>) {
    tracing::info!(
        worker = ctx.index,
        driver = ctx.driver.name(),
        "worker started"
    );
    let listener = monoio_listener(listener).expect("cannot register listener with the runtime");
    let core = Rc::new(Core {
        upstream: CoreUpstream::new(ctx.index, shared.upstreams.clone(), &shared.config),
        relay: RelayOpts {
            max_buffer: shared.config.buffer_size,
            idle_timeout: shared.config.idle_timeout,
        },
        scratch: Scratch::new(shared.config.buffer_size),
        idle: IdleTimer::new(shared.config.idle_timeout),
        shared,
    });
    core.upstream.warm_pools();
    let mut last_accept_warn: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                spawn_guarded("connection", handle(stream, peer, core.clone()));
            }
            Err(e) => {
                // Out of file descriptors or memory: back off briefly instead of spinning.
                if last_accept_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(worker = ctx.index, error = %e, "accept failed");
                    last_accept_warn = Some(std::time::Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle(mut client: TcpStream, peer: SocketAddr, core: Rc<Core>) {
    let _ = client.set_nodelay(true);
    let cfg = &core.shared.config;
    let mut replay = None;
    let key = if !cfg.algorithm.needs_key() {
        None
    } else {
        match &cfg.key {
            KeySource::ClientIp => Some(key_from_ip(&cfg.hash, peer.ip())),
            // Boxed, like the connect below: short-lived states kept out of the connection's
            // long-lived future, which every idle connection pays for.
            source => match Box::pin(peek_key(
                &mut client,
                source,
                cfg.max_head,
                cfg.peek_timeout,
            ))
            .await
            {
                Ok(p) => {
                    let key = p.key_bytes().map(|k| key_from_bytes(&cfg.hash, k));
                    replay = Some(p.bytes);
                    key
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "closing client before choosing a backend");
                    return;
                }
            },
        }
    };
    let (mut backend, active) = match Box::pin(core.upstream.connect(key)).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "no backend for client; closing it");
            return;
        }
    };
    if let Some(bytes) = replay.filter(|b| !b.is_empty()) {
        use monoio::io::AsyncWriteRentExt;
        let (res, _) = Box::pin(backend.write_all(bytes)).await;
        if let Err(e) = res {
            tracing::debug!(%peer, error = %e, "backend failed while replaying the peeked head");
            return;
        }
    }
    let backend_idx = active.backend();
    let idle = core.idle.register();
    let result = match cfg.relay_mode {
        // Boxed: each mode's future is allocated at its own size instead of the connection
        // carrying the larger of the two.
        RelayMode::Readiness => {
            Box::pin(readiness::relay(
                client,
                backend,
                core.relay,
                &core.scratch,
                &idle,
            ))
            .await
        }
        RelayMode::Completion => Box::pin(tcp::relay(client, backend, core.relay, &idle)).await,
    };
    match result {
        Ok(r) => {
            tracing::trace!(%peer, backend = backend_idx, up = r.to_backend, down = r.to_client, "connection done")
        }
        Err(e) => {
            tracing::debug!(%peer, backend = backend_idx, error = %e, "connection ended with an error")
        }
    }
    drop(active);
}
