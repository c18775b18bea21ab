//! Thread-per-core bootstrap of `lb`: one worker per core, each with its own listener, balancer
//! and backend state; a connection never leaves the core that accepted it.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_common::net::ListenerGroup;
use lb_common::runtime::{run_workers, IoDriver, WorkerCtx, WorkerOpts};
use lb_common::task::spawn_guarded;
use monoio::net::TcpStream;

use crate::balance::{key_from_bytes, key_from_ip};
use crate::config::{Config, KeySource, RelayMode};
use crate::proxy::http::peek_key;
use crate::proxy::idle::IdleTimer;
use crate::proxy::readiness::{self, Scratch};
use crate::proxy::tcp::{self, RelayOpts};
use crate::upstream::counters::CoreCounters;
use crate::upstream::set::BackendSet;
use crate::upstream::CoreUpstream;

/// How often an idle accept loop looks at the lifecycle flags.
const ACCEPT_TICK: Duration = Duration::from_millis(100);
/// Connections taken per readiness event before yielding to the connections themselves...
const ACCEPT_BATCH: usize = 64;
/// ...doubled after each batch that found the queue still non-empty, up to this: a burst of
/// thousands of clients onto a busy core is taken in a few turns instead of 64 per pass over
/// every ready connection (measured before: ~2,000 accepts/s at saturation, a 4,096 burst
/// waiting ~1.9 s). 1,024 accepts stall the core's connections for a few ms at most.
const ACCEPT_BATCH_MAX: usize = 1024;

/// The next turn's batch: larger while the queue outlasts each batch, back to the base once a
/// turn empties it.
fn next_accept_batch(batch: usize, emptied: bool) -> usize {
    if emptied {
        ACCEPT_BATCH
    } else {
        (batch * 2).min(ACCEPT_BATCH_MAX)
    }
}

/// Running, or stopping with a deadline.
pub struct Lifecycle {
    started: Instant,
    stopping: AtomicBool,
    /// Deadline for open connections, in ms after `started`.
    deadline_ms: AtomicU64,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Stop accepting; open connections get `grace` to finish. A later call can only shorten it.
    pub fn stop(&self, grace: Duration) {
        let at = (self.started.elapsed() + grace).as_millis() as u64;
        self.deadline_ms.fetch_min(at, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn deadline(&self) -> Instant {
        let ms = self.deadline_ms.load(Ordering::SeqCst);
        self.started + Duration::from_millis(ms.min(365 * 24 * 3600 * 1000))
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything the workers and the control plane share.
pub struct Shared {
    pub config: Config,
    pub set: Arc<BackendSet>,
    pub cores: CoreCounters,
    pub lifecycle: Lifecycle,
    /// The address clients connect to (resolved when the config said port 0).
    pub listen: SocketAddr,
    /// Raw fds of the client listeners, for a binary upgrade to take over.
    pub listener_fds: Vec<RawFd>,
    /// Accept loops running (a new process confirms a takeover once all of them are).
    pub ready: std::sync::atomic::AtomicUsize,
}

/// Listeners to serve: freshly bound, or taken over from a previous `lb` process.
pub fn bind(config: &Config) -> anyhow::Result<Vec<StdListener>> {
    Ok(ListenerGroup::bind(config.listen, config.cores, config.backlog)?.into_listeners())
}

/// Builds the shared state for `listeners`.
pub fn shared(config: Config, listeners: &[StdListener]) -> anyhow::Result<Arc<Shared>> {
    let listen = listeners[0].local_addr()?;
    let set = Arc::new(BackendSet::new(&config.backends, config.cores));
    Ok(Arc::new(Shared {
        cores: CoreCounters::new(config.cores),
        lifecycle: Lifecycle::new(),
        listener_fds: listeners.iter().map(|l| l.as_raw_fd()).collect(),
        ready: std::sync::atomic::AtomicUsize::new(0),
        listen,
        set,
        config,
    }))
}

/// Runs the workers on `listeners` until a graceful stop has finished.
pub fn run(shared: Arc<Shared>, listeners: Vec<StdListener>) -> anyhow::Result<()> {
    let config = &shared.config;
    tracing::info!(
        listen = %shared.listen,
        cores = config.cores,
        pin = config.pin,
        algorithm = config.algorithm.name(),
        backends = %config.backends.iter().map(|b| format!("{}({}, w={})", b.name, b.address, b.weight)).collect::<Vec<_>>().join(", "),
        "lb starting"
    );
    let mut opts = WorkerOpts::new("lb-worker", config.cores);
    opts.pin = config.pin;
    // Listener i goes to worker i mod cores (a takeover may bring more listeners than cores).
    let mut per_worker: Vec<Vec<StdListener>> = (0..config.cores).map(|_| Vec::new()).collect();
    for (i, l) in listeners.into_iter().enumerate() {
        per_worker[i % config.cores].push(l);
    }
    // Startup-only hand-over; the data path takes no lock.
    let per_worker = Mutex::new(per_worker);
    run_workers(&opts, move |ctx| {
        let mine = std::mem::take(&mut per_worker.lock().unwrap()[ctx.index]);
        worker(ctx, mine, shared.clone())
    })?;
    Ok(())
}

/// One line on stdout that scripts and tests read to learn a bound port.
pub fn announce(what: &str, addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} listening on {addr}");
    let _ = out.flush();
}

struct Core {
    index: usize,
    shared: Arc<Shared>,
    upstream: CoreUpstream,
    relay: RelayOpts,
    scratch: Scratch,
    idle: Rc<IdleTimer>,
}

async fn worker(ctx: WorkerCtx, listeners: Vec<StdListener>, shared: Arc<Shared>) {
    tracing::info!(
        worker = ctx.index,
        driver = ctx.driver.name(),
        listeners = listeners.len(),
        "worker started"
    );
    let core = Rc::new(Core {
        index: ctx.index,
        upstream: CoreUpstream::new(ctx.index, shared.set.clone(), &shared.config),
        relay: RelayOpts {
            max_buffer: shared.config.buffer_size,
            idle_timeout: shared.config.idle_timeout,
        },
        scratch: Scratch::new(shared.config.buffer_size),
        idle: IdleTimer::new(shared.config.idle_timeout),
        shared,
    });
    core.upstream.warm_pools();
    let loops = Rc::new(std::cell::Cell::new(listeners.len()));
    for l in listeners {
        let (core, loops) = (core.clone(), loops.clone());
        spawn_guarded("accept", async move {
            accept_loop(l, core).await;
            loops.set(loops.get() - 1);
        });
    }
    // Stop: wait for the accept loops to end, then for open connections until the deadline.
    while loops.get() > 0 {
        monoio::time::sleep(ACCEPT_TICK).await;
    }
    let lifecycle = &core.shared.lifecycle;
    let mut reported = false;
    loop {
        let open = core.shared.cores.get(ctx.index).active;
        if open == 0 {
            break;
        }
        if Instant::now() >= lifecycle.deadline() {
            tracing::warn!(
                worker = ctx.index,
                open,
                "shutdown deadline reached: closing the remaining connections"
            );
            break;
        }
        if !reported {
            tracing::info!(
                worker = ctx.index,
                open,
                "waiting for open connections to finish"
            );
            reported = true;
        }
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(worker = ctx.index, "worker stopped");
}

/// Waits for readiness (cancellable at no cost) and accepts with non-blocking `accept4`, so that
/// a stop never cancels an accept that already took a connection: during a binary upgrade the
/// old and the new process share these sockets, and a lost connection would be a reset.
async fn accept_loop(listener: StdListener, core: Rc<Core>) {
    let fd = listener.as_raw_fd();
    let _ = listener.set_nonblocking(true);
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = core.index, error = %e, "cannot register listener with the runtime");
            return;
        }
    };
    core.shared.ready.fetch_add(1, Ordering::SeqCst);
    let lifecycle = &core.shared.lifecycle;
    let mut last_warn: Option<Instant> = None;
    let mut batch = ACCEPT_BATCH;
    while !lifecycle.stopping() {
        let ready = monoio::select! {
            r = listener.readable(false) => Some(r),
            _ = monoio::time::sleep(ACCEPT_TICK) => None,
        };
        if ready.is_none() {
            continue;
        }
        let mut emptied = false;
        for _ in 0..batch {
            match accept(fd) {
                Ok((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        core.shared.cores.accepted(core.index);
                        let c = core.clone();
                        spawn_guarded("connection", async move {
                            handle(stream, peer, &c).await;
                            c.shared.cores.finished(c.index);
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register accepted connection"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    emptied = true;
                    break;
                }
                Err(e) => {
                    emptied = true;
                    // Out of file descriptors or memory: back off briefly instead of spinning.
                    if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!(worker = core.index, error = %e, "accept failed");
                        last_warn = Some(Instant::now());
                    }
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
        batch = next_accept_batch(batch, emptied);
    }
    // Dropping the listener here closes only this process's descriptor: after a takeover the
    // new process still holds the socket and its queue.
    tracing::debug!(worker = core.index, "accept loop stopped");
}

fn accept(fd: RawFd) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    let mut flags = libc::SOCK_CLOEXEC;
    // io_uring works best with blocking sockets; epoll needs non-blocking ones.
    if IoDriver::wants_nonblocking() {
        flags |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: accept4 fills at most `len` bytes of the storage we own.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let s = libc::accept4(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            flags,
        );
        if s < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(s);
        let peer = socket2::SockAddr::new(storage, len)
            .as_socket()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok((stream, peer))
    }
}

async fn handle(mut client: TcpStream, peer: SocketAddr, core: &Core) {
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
            core.shared.cores.no_backend(core.index);
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
            active.set_bytes(r.to_backend, r.to_client);
            tracing::trace!(%peer, backend = active.backend(), up = r.to_backend, down = r.to_client, "connection done");
        }
        Err(e) => {
            tracing::debug!(%peer, backend = active.backend(), error = %e, "connection ended with an error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_batch_grows_while_the_queue_outlasts_it_and_resets_when_emptied() {
        let mut b = ACCEPT_BATCH;
        let mut turns = 0;
        let mut taken = 0;
        // A burst of 4,096 waiting connections, never emptied until the last turn.
        while taken < 4096 {
            taken += b;
            turns += 1;
            b = next_accept_batch(b, false);
        }
        assert!(turns <= 8, "{turns} turns for a 4,096 burst");
        assert_eq!(b, ACCEPT_BATCH_MAX);
        assert_eq!(next_accept_batch(ACCEPT_BATCH_MAX, true), ACCEPT_BATCH);
        assert_eq!(next_accept_batch(ACCEPT_BATCH, true), ACCEPT_BATCH);
    }
}
