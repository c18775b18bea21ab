//! The per-connection loop (connect, pace, send, read, record, reconnect) and the HTTP exchange.
//!
//! One task per connection, spawned on its core. On the hot path nothing is allocated or
//! formatted: the request is one `&'static [u8]` written as is, the read buffer is reused, the
//! response head is parsed with a stack header array, and the timeout is one `Sleep` per
//! connection that is reset (a lock-free store when the deadline moves later) for each request.

use std::cell::RefCell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
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
use crate::response::{ParseError, ResponseReader};
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
}

/// Why a request failed; formatted only for the first error of each kind.
#[derive(Debug)]
pub enum Detail {
    Io(io::Error),
    Parse(ParseError),
    EchoMismatch,
    Timeout(Duration),
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Io(e) => write!(f, "{e}"),
            Detail::Parse(ParseError::Bad) => f.write_str("malformed HTTP response"),
            Detail::Parse(ParseError::ClosedEarly) => {
                f.write_str("the server closed the connection before the response was complete")
            }
            Detail::EchoMismatch => f.write_str("the echoed bytes differ from the bytes sent"),
            Detail::Timeout(t) => write!(f, "no complete response within {t:?}"),
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: Detail,
}

impl Failure {
    pub fn io(e: io::Error, connecting: bool) -> Self {
        Failure {
            kind: ErrorKind::from_io(&e, connecting),
            detail: Detail::Io(e),
        }
    }

    pub fn parse(e: ParseError) -> Self {
        let kind = match e {
            ParseError::Bad => ErrorKind::BadResponse,
            ParseError::ClosedEarly => ErrorKind::ClosedEarly,
        };
        Failure {
            kind,
            detail: Detail::Parse(e),
        }
    }
}

/// What happens to the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Reuse,
    /// The server already closed (read-to-close body) or did not promise to: just close.
    Close,
    /// The server said it will close: wait for its FIN first, so that the TIME_WAIT state stays on
    /// its side and this machine does not run out of ephemeral ports.
    DrainThenClose,
}

/// A complete response.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub server: usize,
    pub bytes: u64,
    pub after: After,
}

pub type Outcome = (Result<Reply, Failure>, Vec<u8>);

/// HTTP/1.1 request/response on an open connection.
pub struct Http {
    request: &'static [u8],
    reader: ResponseReader,
}

impl Http {
    pub fn new(cfg: &Config) -> Self {
        Http {
            request: cfg.request,
            reader: ResponseReader::new(cfg.head_request),
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
        let (res, _) = stream.write_all(self.request).await;
        if let Err(e) = res {
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

async fn connect(addr: std::net::SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| Failure::io(e, true))?;
    // Requests go out in one write; without this a body written separately could wait for an ACK.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connect (if needed) and one exchange, as one future so that a single deadline covers both.
async fn attempt(
    conn: &mut Option<TcpStream>,
    buf: Vec<u8>,
    proto: &mut Proto,
    ctx: &CoreCtx,
) -> Outcome {
    if conn.is_none() {
        match connect(ctx.cfg.addr).await {
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
    let buf_size = proto.buffer_size();
    let mut buf: Vec<u8> = Vec::with_capacity(buf_size);
    let mut first_connect = true;

    // Keep-alive connections are opened before the load starts, so that the handshakes of a
    // large --conns do not land in the first requests' latencies. Reconnects later are measured.
    if !cfg.new_connection {
        let now = Instant::now();
        sleep.as_mut().reset(mono(now + timeout));
        let res = until(sleep.as_mut(), connect(cfg.addr)).await;
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
        let res = until(sleep.as_mut(), attempt(&mut conn, b, &mut proto, &ctx)).await;
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
                    ctx.stats.borrow_mut().record_response(
                        done,
                        done.saturating_duration_since(origin),
                        reply.status,
                        reply.server,
                        reply.bytes,
                    );
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
