//! The per-connection loop (connect, pace, send, read, record, reconnect) and the HTTP exchange.
//!
//! One task per connection, spawned on its core. On the hot path nothing is allocated or
//! formatted: the request is one `&'static [u8]` written as is, the read buffer is reused, the
//! response head is parsed with a stack header array, and the timeout is one `Sleep` per
//! connection that is reset (a lock-free store when the deadline moves later) for each request.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Sleep;

use crate::args::Config;
use crate::echo::Echo;
use crate::keys::{self, Template};
use crate::outcome::{After, Detail, Failure, Outcome, Reply};
use crate::proxy_v2;
use crate::response::ResponseReader;
use crate::schedule::Plan;
use crate::stats::{CoreStats, ErrorKind};

/// Initial read buffer per connection: enough for typical small responses, and 10k connections
/// cost 40 MiB. Bodies are counted, not kept, so the size only bounds how much one read returns.
pub const READ_BUF: usize = 4 * 1024;
/// A buffer that a read fills completely doubles, up to this, so that large bodies take fewer
/// reads. (Heads larger than the buffer grow it too, up to `response::MAX_HEAD`.)
pub const MAX_READ_BUF: usize = 64 * 1024;

/// Set from the SIGINT handler: stop starting requests and report what was measured.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// State shared by all cores, touched only at connect time and once per loop iteration (one
/// relaxed load).
#[derive(Debug)]
pub struct Shared {
    /// Set when the run cannot do anything useful (every first connect failed).
    pub abort: AtomicBool,
    pub ever_connected: AtomicBool,
    /// Connections whose first connect attempt failed.
    pub first_failures: AtomicUsize,
    /// Connections that run at all (with --requests, a core runs at most as many as its share).
    pub active_conns: usize,
}

impl Shared {
    pub fn new(active_conns: usize) -> Self {
        Shared {
            abort: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            first_failures: AtomicUsize::new(0),
            active_conns,
        }
    }

    fn stopped(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || INTERRUPTED.load(Ordering::Relaxed)
    }

    /// Fail fast: when every connection's first attempt failed and none ever succeeded, there is
    /// nothing to measure, so the run ends now instead of spinning until its duration is over.
    fn first_connect(&self, ok: bool) {
        if ok {
            self.ever_connected.store(true, Ordering::Relaxed);
            return;
        }
        let failed = self.first_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failed >= self.active_conns && !self.ever_connected.load(Ordering::Relaxed) {
            self.abort.store(true, Ordering::Relaxed);
        }
    }
}

/// What every connection of one core shares.
pub struct CoreCtx {
    pub cfg: Arc<Config>,
    pub stats: Rc<RefCell<CoreStats>>,
    pub shared: Arc<Shared>,
    /// When the load starts (after setup connects): the open-loop schedule's origin.
    pub launch: Instant,
    /// Nothing may run past this (duration runs: end + timeout); bounds the close handshakes.
    pub hard_end: Option<Instant>,
    /// This core's index (the stream of its key draws).
    pub core: usize,
    /// Key draws made on this core so far (the index of the next one).
    pub draws: Cell<u64>,
}

impl CoreCtx {
    /// The key for a connection about to be opened (with --keys).
    fn draw_key(&self) -> Option<u32> {
        let space = self.cfg.keys.as_ref()?;
        let n = self.draws.get();
        self.draws.set(n + 1);
        Some(space.draw(self.core, self.cfg.cores, n))
    }
}

/// The request a connection sends.
enum Request {
    /// The same bytes for every connection.
    Fixed(&'static [u8]),
    /// Rendered from the template for the connection's key at each connect (empty while a
    /// cancelled write holds the buffer).
    Keyed {
        template: Arc<Template>,
        bytes: Vec<u8>,
    },
}

/// HTTP/1.1 request/response on an open connection.
pub struct Http {
    request: Request,
    reader: ResponseReader,
    /// Bytes that go out before the next request, in the same write (the PROXY header of a new
    /// connection with --proxy-v2); empty otherwise.
    greeting: Vec<u8>,
}

impl Http {
    pub fn new(cfg: &Config) -> Self {
        let request = match &cfg.template {
            Some(t) => Request::Keyed {
                template: t.clone(),
                bytes: Vec::new(),
            },
            None => Request::Fixed(cfg.request),
        };
        Http {
            request,
            reader: ResponseReader::new(cfg.head_request),
            greeting: Vec::new(),
        }
    }

    /// A new connection with key `key`: the request for it.
    fn set_key(&mut self, key: u32) {
        if let Request::Keyed { template, bytes } = &mut self.request {
            template.render(key, bytes);
        }
    }

    async fn send(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if !self.greeting.is_empty() {
            // One write, so that the header costs the target no segment of its own.
            let request: &[u8] = match &self.request {
                Request::Fixed(r) => r,
                Request::Keyed { bytes, .. } => bytes,
            };
            self.greeting.extend_from_slice(request);
            let (res, mut b) = stream.write_all(std::mem::take(&mut self.greeting)).await;
            b.clear();
            self.greeting = b;
            return res.map(|_| ());
        }
        match &mut self.request {
            Request::Fixed(r) => stream.write_all(*r).await.0.map(|_| ()),
            Request::Keyed { bytes, .. } => {
                let (res, b) = stream.write_all(std::mem::take(bytes)).await;
                *bytes = b;
                res.map(|_| ())
            }
        }
    }

    async fn exchange(
        &mut self,
        stream: &mut TcpStream,
        mut buf: Vec<u8>,
        stats: &RefCell<CoreStats>,
    ) -> Outcome {
        // Without pipelining nothing may be left over; stray bytes from a sloppy server must not
        // be taken for the next response.
        buf.clear();
        if let Err(e) = self.send(stream).await {
            return (Err(Failure::io(e, false)), buf);
        }
        self.reader.reset();
        let mut bytes = 0u64;
        loop {
            if !buf.is_empty() {
                let fed = {
                    let mut st = stats.borrow_mut();
                    self.reader.feed(&buf, &mut |id| st.intern_server(id))
                };
                match fed {
                    Ok((used, done)) => {
                        if used == buf.len() {
                            buf.clear();
                        } else if used > 0 {
                            buf.drain(..used);
                        }
                        if done {
                            let head = self.reader.head().expect("complete response has a head");
                            let after = if head.keep_alive {
                                After::Reuse
                            } else if head.server_closes {
                                After::DrainThenClose
                            } else {
                                After::Close
                            };
                            let reply = Reply {
                                status: head.status,
                                server: head.server,
                                bytes,
                                after,
                            };
                            return (Ok(reply), buf);
                        }
                    }
                    Err(e) => return (Err(Failure::parse(e)), buf),
                }
            }
            if buf.len() == buf.capacity() {
                // Only a head larger than the buffer gets here; the parser caps it at MAX_HEAD.
                buf.reserve(buf.capacity().max(READ_BUF));
            }
            let len = buf.len();
            let spare = buf.capacity() - len;
            let (res, slice) = stream.read(buf.slice_mut(len..)).await;
            buf = slice.into_inner();
            if matches!(res, Ok(n) if n == spare) && buf.capacity() < MAX_READ_BUF {
                // More is probably waiting: grow once, not per request.
                buf.reserve(buf.capacity());
            }
            match res {
                Ok(0) => {
                    return match self.reader.eof() {
                        Ok(()) => {
                            let head = self.reader.head().expect("complete response has a head");
                            let reply = Reply {
                                status: head.status,
                                server: head.server,
                                bytes,
                                after: After::Close,
                            };
                            (Ok(reply), buf)
                        }
                        Err(e) => (Err(Failure::parse(e)), buf),
                    };
                }
                Ok(n) => bytes += n as u64,
                Err(e) => return (Err(Failure::io(e, false)), buf),
            }
        }
    }
}

/// The protocol a connection speaks; an enum rather than a trait object so the exchange futures
/// need no boxing.
pub enum Proto {
    Http(Http),
    Echo(Echo),
}

impl Proto {
    /// A new connection from `source` to `destination`: the PROXY v2 header its first exchange
    /// writes first.
    fn greet(&mut self, source: SocketAddr, destination: SocketAddr) {
        let greeting = match self {
            Proto::Http(h) => &mut h.greeting,
            Proto::Echo(e) => &mut e.greeting,
        };
        greeting.clear();
        proxy_v2::encode(source, destination, greeting);
    }

    fn set_key(&mut self, key: u32) {
        match self {
            Proto::Http(h) => h.set_key(key),
            Proto::Echo(_) => {}
        }
    }

    fn buffer_size(&self) -> usize {
        match self {
            Proto::Http(_) => READ_BUF,
            Proto::Echo(e) => e.buffer_size(),
        }
    }

    async fn exchange(
        &mut self,
        stream: &mut TcpStream,
        buf: Vec<u8>,
        stats: &RefCell<CoreStats>,
    ) -> Outcome {
        match self {
            Proto::Http(h) => h.exchange(stream, buf, stats).await,
            Proto::Echo(e) => e.exchange(stream, buf).await,
        }
    }
}

/// Runs `fut` until `sleep` fires; `None` on timeout (the future is dropped, which cancels its
/// in-flight operation).
async fn until<F: Future>(mut sleep: Pin<&mut Sleep>, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

fn mono(t: Instant) -> monoio::time::Instant {
    monoio::time::Instant::from_std(t)
}

/// Opens a connection; with --keys draws its key first (and renders the request for it); with
/// --proxy-v2 makes the PROXY header of its first exchange.
async fn open(
    ctx: &CoreCtx,
    proto: &mut Proto,
    key: &mut Option<u32>,
) -> Result<TcpStream, Failure> {
    let source = match ctx.draw_key() {
        Some(k) => {
            *key = Some(k);
            proto.set_key(k);
            if ctx.cfg.source_ip_per_key {
                keys::source_ip(k)
            } else {
                None
            }
        }
        None => None,
    };
    let stream = connect(ctx.cfg.addr, source).await?;
    if ctx.cfg.proxy_v2 {
        let local = stream.local_addr().map_err(|e| Failure::io(e, true))?;
        proto.greet(local, ctx.cfg.addr);
    }
    Ok(stream)
}

async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream, Failure> {
    let stream = match source {
        None => TcpStream::connect_addr(addr).await,
        Some(ip) => connect_from(ip, addr).await,
    }
    .map_err(|e| Failure::io(e, true))?;
    // Requests go out in one write; without this a body written separately could wait for an ACK.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connects from `source` (port chosen at connect time: IP_BIND_ADDRESS_NO_PORT, so every
/// source address has its own ephemeral ports). monoio 0.2.4 cannot connect a socket it did not
/// create, so the connect is started non-blocking with socket2, the socket handed to the runtime,
/// and its writability awaited (io_uring: a poll op; epoll: the readiness of the registered fd),
/// then SO_ERROR says how the connect ended. Works on both drivers.
async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, SockRef, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: a valid descriptor and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.set_nonblocking(true)?;
    let pending = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(e),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if pending {
        stream.writable(false).await?;
    }
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let sock = SockRef::from(&fd);
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    if !lb_common::runtime::IoDriver::wants_nonblocking() {
        // Under io_uring a blocking socket spares the kernel a failed non-blocking attempt.
        sock.set_nonblocking(false)?;
    }
    Ok(stream)
}

/// Connect (if needed) and one exchange, as one future so that a single deadline covers both.
async fn attempt(
    conn: &mut Option<TcpStream>,
    key: &mut Option<u32>,
    buf: Vec<u8>,
    proto: &mut Proto,
    ctx: &CoreCtx,
) -> Outcome {
    if conn.is_none() {
        match open(ctx, proto, key).await {
            Ok(s) => *conn = Some(s),
            Err(f) => return (Err(f), buf),
        }
    }
    let stream = conn.as_mut().expect("connected above");
    proto.exchange(stream, buf, &ctx.stats).await
}

/// Reads until the server's FIN (or an error, or the deadline), discarding what arrives.
async fn drain(stream: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            buf.clear();
            return buf;
        }
    }
}

/// One connection's whole life: optional setup connect, then requests until the plan says stop.
pub async fn connection(ctx: Rc<CoreCtx>, mut plan: Plan, mut proto: Proto) {
    let cfg = ctx.cfg.clone();
    let timeout = cfg.timeout;
    let sleep = monoio::time::sleep(Duration::from_secs(3600));
    let mut sleep = pin!(sleep);
    let mut conn: Option<TcpStream> = None;
    // The key of the current connection (with --keys).
    let mut key: Option<u32> = None;
    let buf_size = proto.buffer_size();
    let mut buf: Vec<u8> = Vec::with_capacity(buf_size);
    let mut first_connect = true;

    // Keep-alive connections are opened before the load starts, so that the handshakes of a
    // large --conns do not land in the first requests' latencies. Reconnects later are measured.
    if !cfg.new_connection {
        let now = Instant::now();
        sleep.as_mut().reset(mono(now + timeout));
        let res = until(sleep.as_mut(), open(&ctx, &mut proto, &mut key)).await;
        let res = res.unwrap_or_else(|| Err(timeout_failure(timeout)));
        first_connect = false;
        ctx.shared.first_connect(res.is_ok());
        match res {
            Ok(s) => {
                conn = Some(s);
                ctx.stats.borrow_mut().connects += 1;
            }
            Err(f) => record_failure(&ctx, Instant::now(), f),
        }
    }
    if Instant::now() < ctx.launch && !ctx.shared.stopped() {
        sleep.as_mut().reset(mono(ctx.launch));
        sleep.as_mut().await;
    }

    // When this connection last became free for a new request. Clock reads are reused where
    // the time in between is only this task's own bookkeeping: one read per keep-alive request.
    let mut free_since = Instant::now();
    while !ctx.shared.stopped() {
        let now = free_since;
        let Some(next) = plan.next(now) else { break };
        let begin = if next.at > now {
            sleep.as_mut().reset(mono(next.at));
            sleep.as_mut().await;
            if ctx.shared.stopped() {
                break;
            }
            Instant::now()
        } else {
            now
        };
        // Closed loop measures from the send. Open loop measures from the due time whenever
        // this connection was still busy with its previous request at that time: the server's
        // slowness delayed this request, and hiding that would be coordinated omission. When the
        // connection was idle and waiting for its timer, the delay between the due time and the
        // send is the timer's granularity (up to ~1 ms in monoio), not the server's doing: it is
        // reported apart as schedule lag instead of inflating every latency.
        let origin = if !plan.open_loop() {
            begin
        } else if next.at >= free_since {
            if next.counted {
                ctx.stats
                    .borrow_mut()
                    .record_lag(begin.saturating_duration_since(next.at));
            }
            begin
        } else {
            next.at
        };
        sleep.as_mut().reset(mono(begin + timeout));
        if buf.capacity() == 0 {
            // The previous buffer went down with a cancelled read (timeout).
            buf = Vec::with_capacity(buf_size);
        }
        let was_connected = conn.is_some();
        let b = std::mem::take(&mut buf);
        let res = until(
            sleep.as_mut(),
            attempt(&mut conn, &mut key, b, &mut proto, &ctx),
        )
        .await;
        let done = Instant::now();
        let res = match res {
            Some((res, b)) => {
                buf = b;
                res
            }
            None => Err(timeout_failure(timeout)),
        };
        if !was_connected {
            // `attempt` stores the stream as soon as the connect succeeds, even if the
            // exchange then failed or timed out.
            let connected = conn.is_some();
            if connected {
                ctx.stats.borrow_mut().connects += 1;
            }
            if first_connect {
                first_connect = false;
                ctx.shared.first_connect(connected);
            }
        }
        match res {
            Ok(reply) => {
                if next.counted {
                    let mut st = ctx.stats.borrow_mut();
                    st.record_response(
                        done,
                        done.saturating_duration_since(origin),
                        reply.status,
                        reply.server,
                        reply.bytes,
                    );
                    if let Some(k) = key {
                        st.record_key(k, reply.server);
                    }
                }
                let after = match reply.after {
                    After::Reuse if cfg.new_connection => After::Close,
                    a => a,
                };
                free_since = done;
                match after {
                    After::Reuse => {}
                    After::Close => conn = None,
                    After::DrainThenClose => {
                        if let Some(mut stream) = conn.take() {
                            let mut deadline = done + timeout;
                            if let Some(hard) = ctx.hard_end {
                                deadline = deadline.min(hard);
                            }
                            sleep.as_mut().reset(mono(deadline));
                            let b = std::mem::take(&mut buf);
                            if let Some(b) = until(sleep.as_mut(), drain(&mut stream, b)).await {
                                buf = b;
                            }
                            free_since = Instant::now();
                        }
                    }
                }
            }
            Err(f) => {
                conn = None;
                buf.clear();
                if next.counted {
                    record_failure(&ctx, done, f);
                }
                free_since = done;
            }
        }
    }
}

fn timeout_failure(t: Duration) -> Failure {
    Failure {
        kind: ErrorKind::Timeout,
        detail: Detail::Timeout(t),
    }
}

fn record_failure(ctx: &CoreCtx, at: Instant, f: Failure) {
    ctx.stats
        .borrow_mut()
        .record_error(at, f.kind, || f.detail.to_string());
}
