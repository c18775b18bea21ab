//! Admin HTTP API on its own listener (127.0.0.1 by default) and optionally a Unix socket: stats,
//! Prometheus metrics, and backend changes that every core sees at its next connection. Who may
//! use it is [`guard`]'s; what it does is [`routes`]'.
//!
//! Every connection is bounded: one request, read within `admin.request_timeout_ms` in all (not
//! per read: a client trickling a byte at a time is cut at the deadline), and at most
//! `admin.max_connections` are served at once; the rest wait in the kernel's accept queue, so
//! that admin clients can never take the file descriptors the data path needs.

pub mod guard;
pub mod metrics;
pub mod request;
pub mod routes;
pub mod seed;
pub mod stats;

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::logging::RateLimited;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::shared::Shared;
use guard::Via;
use request::{Parsed, Request, MAX_REQUEST};
use routes::Response;

/// How long a hostname in `POST /lb/backends` may take to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// What every admin connection works with.
pub struct Ctx {
    pub shared: Arc<Shared>,
    /// lb's local replicas, for the seed API's /add and /rm.
    pub replicas: Arc<crate::control::replicas::Supervisor>,
    pub slots: Slots,
}

/// Connections being served, over both listeners.
#[derive(Default)]
pub struct Slots {
    open: Cell<usize>,
    warning: RateLimited,
}

impl Slots {
    /// Waits until a connection may be taken (below the cap).
    async fn wait_for_room(&self, max: usize) {
        if self.open.get() < max {
            return;
        }
        self.warn(|suppressed| {
            tracing::warn!(
                max,
                suppressed,
                "admin API at its connection cap (admin.max_connections): new connections wait"
            )
        });
        while self.open.get() >= max {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn warn(&self, log: impl FnOnce(u64)) {
        self.warning.warn(log)
    }
}

/// Serves the TCP admin listener until the process ends.
pub async fn serve_tcp(listener: StdListener, ctx: Rc<Ctx>) {
    let (shared, slots) = (&ctx.shared, &ctx.slots);
    // Non-blocking: readiness, then accept4, which must never wait.
    let _ = listener.set_nonblocking(true);
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin API cannot start");
            return;
        }
    };
    let max = shared.config.admin.max_connections;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    loop {
        slots.wait_for_room(max).await;
        if let Err(e) = listener.readable(false).await {
            tracing::warn!(error = %e, "admin listener failed");
            monoio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        match accept(fd, |o| {
            monoio::net::TcpStream::from_std(std::net::TcpStream::from(o))
        }) {
            Ok(None) => continue,
            Ok(Some(stream)) => spawn(stream, Via::Tcp, &ctx),
            Err(e) => {
                slots.warn(
                    |suppressed| tracing::warn!(error = %e, suppressed, "admin accept failed"),
                );
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the Unix-socket admin listener until the process ends. Only lb's own user (or root)
/// may use it: the socket file is 0600, and each peer's uid is checked too.
pub async fn serve_unix(listener: StdUnixListener, ctx: Rc<Ctx>) {
    let (shared, slots) = (&ctx.shared, &ctx.slots);
    let _ = listener.set_nonblocking(true);
    let listener = match monoio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin API cannot serve its Unix socket");
            return;
        }
    };
    let max = shared.config.admin.max_connections;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    loop {
        slots.wait_for_room(max).await;
        if let Err(e) = listener.readable(false).await {
            tracing::warn!(error = %e, "admin Unix socket failed");
            monoio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let accepted = accept(fd, |o| {
            monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(o))
        });
        match accepted {
            Ok(None) => continue,
            Ok(Some(stream)) => match stream.peer_cred() {
                Ok(c) if c.uid() == me || c.uid() == 0 => spawn(stream, Via::Unix, &ctx),
                Ok(c) => {
                    slots.warn(|suppressed| {
                        tracing::warn!(
                            uid = c.uid(),
                            suppressed,
                            "admin Unix socket: refused a peer of another user"
                        )
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin Unix socket: cannot read the peer's credentials")
                }
            },
            Err(e) => {
                slots.warn(
                    |suppressed| tracing::warn!(error = %e, suppressed, "admin accept failed"),
                );
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection with close-on-exec set (see `lb_common::net::accept_cloexec`), as `wrap`
/// makes it; None when the queue is empty after all.
fn accept<S>(
    fd: std::os::fd::RawFd,
    wrap: impl FnOnce(std::os::fd::OwnedFd) -> std::io::Result<S>,
) -> std::io::Result<Option<S>> {
    match lb_common::net::accept_cloexec(fd) {
        Ok((owned, _)) => wrap(owned).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

fn spawn<S>(stream: S, via: Via, ctx: &Rc<Ctx>)
where
    S: AsyncReadRent + AsyncWriteRent + 'static,
{
    ctx.slots.open.set(ctx.slots.open.get() + 1);
    let ctx = ctx.clone();
    lb_common::task::spawn_guarded("admin-connection", async move {
        // The admin settings in force: a reload can rotate the token or change these.
        let deadline = ctx.shared.live.load().admin.request_timeout;
        let _ = monoio::time::timeout(deadline, connection(stream, via, &ctx)).await;
        ctx.slots.open.set(ctx.slots.open.get() - 1);
    });
}

/// One request, one answer, then close. The caller bounds the whole of it.
async fn connection<S: AsyncReadRent + AsyncWriteRent>(mut stream: S, via: Via, ctx: &Ctx) {
    let response = match read_request(&mut stream).await {
        Ok(Some(req)) => match guard::check(&req, via, &ctx.shared.live.load().admin) {
            Ok(()) => handle(&req, ctx).await,
            Err(r) => Response::error(r.status, r.message),
        },
        Ok(None) => return,
        Err(r) => r,
    };
    let mut out = Vec::with_capacity(response.body.len() + 256);
    let headers: Vec<(&str, &[u8])> =
        std::iter::once(("Content-Type", response.content_type.as_bytes()))
            .chain(response.headers.iter().map(|(k, v)| (*k, v.as_bytes())))
            .collect();
    lb_common::http::write_head(
        &mut out,
        response.status,
        &headers,
        response.body.len(),
        false,
        false,
    );
    out.extend_from_slice(response.body.as_bytes());
    let _ = stream.write_all(out).await;
}

/// The request, None when the client went away, or the error answer for a bad one.
async fn read_request<S: AsyncReadRent>(stream: &mut S) -> Result<Option<Request>, Response> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if buf.len() >= MAX_REQUEST {
            return Err(Response::error(413, "request too large"));
        }
        buf.reserve(4096.min(MAX_REQUEST - buf.len()));
        let filled = buf.len();
        let (res, slice) = stream.read(buf.slice_mut(filled..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        match request::parse(&buf) {
            Parsed::Complete(r) => return Ok(Some(r)),
            Parsed::Partial => continue,
            Parsed::Bad(status, why) => return Err(Response::error(status, why)),
        }
    }
}

async fn handle(req: &Request, ctx: &Ctx) -> Response {
    let shared = &ctx.shared;
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    if let Some(r) = seed::handle(req, ctx).await {
        return r;
    }
    if req.method == "GET"
        && matches!(
            segs.as_slice(),
            ["metrics"] | ["lb", "stats" | "services", ..]
        )
    {
        // Kernel mode's counters are nftables': read at the scrape, on the kernel loop's thread.
        crate::control::kernel::fresh_counters(&shared.kernel).await;
    }
    let svc = match routes::backend_scope(shared, &segs) {
        Some(Ok((svc, []))) if req.method == "POST" => svc,
        _ => return routes::route(req, shared),
    };
    let add = match routes::parse_add(&req.body) {
        Ok(a) => a,
        Err(e) => return Response::error(400, e),
    };
    match resolve(&add.address).await {
        Ok(addr) => routes::add_backend(shared, &svc, &add, addr),
        Err(e) => Response::error(400, e),
    }
}

/// `host:port` to an address. An IP literal is parsed here; a name is looked up on a thread of
/// its own with a deadline, so that a DNS server that does not answer never stalls this thread,
/// which also runs the health checks.
async fn resolve(address: &str) -> Result<SocketAddr, String> {
    let address = address.trim().to_string();
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    let result = Arc::new(std::sync::Mutex::new(None));
    let out = result.clone();
    let name = address.clone();
    std::thread::Builder::new()
        .name("lb-admin-dns".into())
        .spawn(move || {
            let r = lb_common::net::parse_addr(&name);
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        })
        .map_err(|e| format!("cannot look up {address:?}: {e}"))?;
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    loop {
        if let Some(r) = result.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return r;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "looking up {address:?} took more than {} s: give an IP address, or fix the resolver",
                LOOKUP_TIMEOUT.as_secs()
            ));
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}
