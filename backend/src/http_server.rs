//! HTTP/1.1 service: a pure "bytes in -> responses out" state machine ([`Conn::feed`]) and the
//! per-connection loop that drives it (one read -> every complete request -> one write).
//!
//! Routes (the query string is ignored):
//! - `/health` (any method): 200 `{"status":"ok"}`, or 503 `{"status":"unhealthy"}`.
//! - `POST /admin/health/fail`, `POST /admin/health/ok`: make `/health` fail / recover
//!   (other methods: 405).
//! - `GET /admin/latency`: the delay range of `/`, `{"server":"<id>","min_ms":A,"max_ms":B}`;
//!   `POST /admin/latency` with `{"min_ms":A,"max_ms":B}` (`max_ms` defaults to `min_ms`) sets it
//!   for every core at once and answers the same JSON (400 with the reason for a bad range or
//!   body, 411 for a chunked body, 413 for one over [`latency::MAX_BODY`]; other methods: 405).
//!   It applies to requests whose head arrives after the change.
//! - anything else, e.g. `/`: 200 `{"server":"<id>","requests":<n>}` (padded to `--body-size`),
//!   or 500 for the `--failure-rate` share, after a `--min-latency..=--max-latency` delay.
//!   Only these requests are counted, delayed or failed. The count is exact with one core; with
//!   several, each core adds its own exact count to the others' as read every
//!   [`COUNT_REFRESH`] of its requests (no shared atomic written per request).
//!
//! Every response carries `X-Server-Id`. Request bodies are read and discarded: Content-Length
//! and chunked (decoded, trailers skipped); any other Transfer-Encoding, or both framings at
//! once, is a 400. Malformed heads get 400 and oversized ones 431, then a lingering close.

use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::http::{content_length, header, is_chunked, keep_alive, write_head, MAX_HEADERS};
use lb_common::uring::{MultiRecv, RecvRing};
use monoio::buf::SliceMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::chunked::Chunked;
use crate::config::{HttpSettings, Recv};
use crate::health::Health;
use crate::latency::{self, Latency};

/// Initial per-connection read buffer; grows (rarely) up to about twice `--max-head`.
pub const READ_BUF: usize = 4096;
/// Initial per-connection write buffer.
pub const WRITE_BUF: usize = 4096;
/// Pending output that makes [`Conn::feed`] stop and ask for a write before parsing more.
pub const FLUSH_AT: usize = 64 * 1024;
/// After an error response: how long to keep reading (and dropping) what the client still sends,
/// so that closing does not reset the connection before the client has read our answer.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// ... and how many bytes at most.
pub const LINGER_BYTES: usize = 1024 * 1024;
/// Cores refresh their view of the other cores' request counts every this many requests.
pub const COUNT_REFRESH: u64 = 64;

const JSON: &[u8] = b"application/json";

// ---------------------------------------------------------------------------------------------
// Process-wide request counts

#[repr(align(64))]
struct Slot(AtomicU64);

/// One counter per core, each on its own cache line, summed on read.
pub struct Counters {
    slots: Box<[Slot]>,
}

impl Counters {
    pub fn new(cores: usize) -> Self {
        Counters {
            slots: (0..cores.max(1)).map(|_| Slot(AtomicU64::new(0))).collect(),
        }
    }

    /// Requests counted on all cores.
    pub fn total(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Per-core context

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Main,
    Health,
    SetHealth(bool),
    GetLatency,
    /// The JSON body is collected into [`Conn`] before the answer.
    SetLatency,
    /// A `POST /admin/latency` whose body is chunked (411) or too large (413): skipped, refused.
    LatencyBodyRefused(u16),
    /// 405 with this `Allow` value.
    AdminMethodNotAllowed(&'static str),
}

/// A request whose head was parsed; answered once its body has been skipped.
#[derive(Clone, Copy, Debug)]
struct Pending {
    route: Route,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
    fail: bool,
    /// Delay still to wait before answering (0: none or already waited).
    delay_ms: u64,
}

struct CachedHead {
    body_len: usize,
    bytes: Vec<u8>,
}

/// What one core needs to answer requests. Shared by that core's connections (`Rc`).
pub struct Ctx {
    settings: HttpSettings,
    health: &'static Health,
    /// The delay range of `/`, shared by every core; `settings` holds only its start value.
    latency: Arc<Latency>,
    counters: Arc<Counters>,
    core: usize,
    /// This core's count (exact) and the other cores' (refreshed every [`COUNT_REFRESH`]).
    local: Cell<u64>,
    others: Cell<u64>,
    rng: Cell<u64>,
    /// `{"server":"<id>","requests":`
    json_prefix: Box<[u8]>,
    /// `--body-size` spaces (empty without it), shared by all cores.
    padding: Arc<[u8]>,
    failure_body: Box<[u8]>,
    admin_bodies: [Box<[u8]>; 2],
    /// 200 heads for `/`, by (keep-alive, HTTP/1.0), rebuilt when the body length changes.
    heads: RefCell<[CachedHead; 4]>,
}

impl Ctx {
    pub fn new(
        settings: HttpSettings,
        health: &'static Health,
        latency: Arc<Latency>,
        counters: Arc<Counters>,
        padding: Arc<[u8]>,
        core: usize,
    ) -> Ctx {
        let id = &settings.id;
        let seed = {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            splitmix(t ^ (u64::from(std::process::id()) << 32) ^ core as u64)
        };
        Ctx {
            json_prefix: format!(r#"{{"server":"{id}","requests":"#)
                .into_bytes()
                .into(),
            failure_body: format!(r#"{{"server":"{id}","error":"injected failure"}}"#)
                .into_bytes()
                .into(),
            admin_bodies: [false, true].map(|h| {
                format!(r#"{{"server":"{id}","healthy":{h}}}"#)
                    .into_bytes()
                    .into()
            }),
            heads: RefCell::new(std::array::from_fn(|_| CachedHead {
                body_len: usize::MAX,
                bytes: Vec::new(),
            })),
            settings,
            health,
            latency,
            counters,
            core,
            local: Cell::new(0),
            others: Cell::new(0),
            rng: Cell::new(seed | 1),
            padding,
        }
    }

    /// The padding buffer a [`Ctx`] needs for these settings (build once, share across cores).
    pub fn padding_for(settings: &HttpSettings) -> Arc<[u8]> {
        vec![b' '; settings.body_size.unwrap_or(0)].into()
    }

    fn next_random(&self) -> u64 {
        // xorshift64: plenty for failure and latency dice.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    fn roll_failure(&self) -> bool {
        let rate = self.settings.failure_rate;
        if rate <= 0.0 {
            false
        } else if rate >= 1.0 {
            true
        } else {
            ((self.next_random() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < rate
        }
    }

    fn roll_delay(&self) -> u64 {
        let (min, max) = self.latency.get();
        if max == 0 {
            0
        } else if min == max {
            min
        } else {
            min + self.next_random() % (max - min + 1)
        }
    }

    /// Counts one request and returns the process-wide count as this core sees it.
    fn count(&self) -> u64 {
        let local = self.local.get() + 1;
        self.local.set(local);
        self.counters.slots[self.core]
            .0
            .store(local, Ordering::Relaxed);
        if self.counters.slots.len() > 1 && local % COUNT_REFRESH == 1 {
            self.others.set(
                self.counters
                    .total()
                    .saturating_sub(local)
                    .max(self.others.get()),
            );
        }
        local + self.others.get()
    }

    /// `body`: the request body, collected for the routes that read one (empty otherwise).
    fn respond(&self, p: &Pending, body: &[u8], out: &mut Vec<u8>) {
        match p.route {
            Route::Main => {
                let count = self.count();
                if p.fail {
                    self.small(out, 500, &self.failure_body, p, None);
                } else {
                    self.ok(count, p, out);
                }
            }
            Route::Health => {
                if self.health.is_healthy() {
                    self.small(out, 200, br#"{"status":"ok"}"#, p, None);
                } else {
                    self.small(out, 503, br#"{"status":"unhealthy"}"#, p, None);
                }
            }
            Route::SetHealth(healthy) => {
                if self.health.set(healthy) != healthy {
                    tracing::info!(healthy, "health changed by an admin request");
                }
                self.small(out, 200, &self.admin_bodies[healthy as usize], p, None);
            }
            Route::GetLatency => self.latency_answer(out, p),
            Route::SetLatency => match self.latency.set_from_json(body) {
                Ok((min_ms, max_ms)) => {
                    tracing::info!(min_ms, max_ms, "latency changed by an admin request");
                    self.latency_answer(out, p);
                }
                Err(e) => {
                    let body = serde_json::json!({ "error": e.to_string() }).to_string();
                    self.small(out, 400, body.as_bytes(), p, None);
                }
            },
            Route::LatencyBodyRefused(status) => {
                let body: &[u8] = if status == 411 {
                    br#"{"error":"send the JSON body with a Content-Length, not chunked"}"#
                } else {
                    br#"{"error":"the JSON body is larger than 1024 bytes"}"#
                };
                self.small(out, status, body, p, None);
            }
            Route::AdminMethodNotAllowed(allow) => {
                let body = format!(r#"{{"error":"use {}"}}"#, allow.replace(", ", " or "));
                self.small(
                    out,
                    405,
                    body.as_bytes(),
                    p,
                    Some(("Allow", allow.as_bytes())),
                );
            }
        }
    }

    fn latency_answer(&self, out: &mut Vec<u8>, p: &Pending) {
        let (min_ms, max_ms) = self.latency.get();
        let body = serde_json::json!({
            "server": self.settings.id,
            "min_ms": min_ms,
            "max_ms": max_ms,
        })
        .to_string();
        self.small(out, 200, body.as_bytes(), p, None);
    }

    /// The hot path: a cached head plus the JSON (and padding), no formatting machinery.
    fn ok(&self, count: u64, p: &Pending, out: &mut Vec<u8>) {
        let mut digits = [0u8; 20];
        let digits = format_u64(count, &mut digits);
        let json_len = self.json_prefix.len() + digits.len() + 1;
        let body_len = self.settings.body_size.unwrap_or(json_len);
        {
            let mut heads = self.heads.borrow_mut();
            let cached = &mut heads[usize::from(p.keep_alive) | usize::from(p.http10) << 1];
            if cached.body_len != body_len {
                cached.bytes.clear();
                write_head(
                    &mut cached.bytes,
                    200,
                    &[
                        ("X-Server-Id", self.settings.id.as_bytes()),
                        ("Content-Type", JSON),
                    ],
                    body_len,
                    p.keep_alive,
                    p.http10,
                );
                cached.body_len = body_len;
            }
            out.extend_from_slice(&cached.bytes);
        }
        if p.head_only {
            return;
        }
        if body_len >= json_len {
            out.extend_from_slice(&self.json_prefix);
            out.extend_from_slice(digits);
            out.push(b'}');
            out.extend_from_slice(&self.padding[..body_len - json_len]);
        } else {
            out.extend_from_slice(&self.padding[..body_len]);
        }
    }

    fn small(
        &self,
        out: &mut Vec<u8>,
        status: u16,
        body: &[u8],
        p: &Pending,
        extra: Option<(&str, &[u8])>,
    ) {
        let id = ("X-Server-Id", self.settings.id.as_bytes());
        let ct = ("Content-Type", JSON);
        let headers: &[(&str, &[u8])] = match extra {
            Some(e) => &[id, ct, e],
            None => &[id, ct],
        };
        write_head(out, status, headers, body.len(), p.keep_alive, p.http10);
        if !p.head_only {
            out.extend_from_slice(body);
        }
    }

    /// An error answer that ends the connection.
    fn error(&self, out: &mut Vec<u8>, status: u16) {
        let body: &[u8] = match status {
            431 => br#"{"error":"request head too large"}"#,
            _ => br#"{"error":"bad request"}"#,
        };
        let p = Pending {
            route: Route::Main,
            keep_alive: false,
            http10: false,
            head_only: false,
            fail: false,
            delay_ms: 0,
        };
        self.small(out, status, body, &p, None);
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Decimal digits of `n`, written at the end of `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

// ---------------------------------------------------------------------------------------------
// The pure per-connection state machine

/// What the connection loop must do after [`Conn::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Write the output (if any) and read more input.
    Read,
    /// Write the output, then call `feed` again with the unconsumed input.
    Flush,
    /// Write the output, wait this long, then call `feed` again.
    Delay(Duration),
    /// Write the output and close; `linger` asks to drain what the client still sends first.
    Close { linger: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked(Chunked),
    /// A body to keep (for [`Route::SetLatency`]): this many bytes still to come.
    Collect(u64),
}

/// Per-connection protocol state: the body being skipped and the request waiting for an answer.
#[derive(Debug)]
pub struct Conn {
    body: Body,
    pending: Option<Pending>,
    /// The body of the pending request when its route reads one (at most
    /// [`latency::MAX_BODY`]); empty, and unallocated, otherwise.
    collected: Vec<u8>,
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}

impl Conn {
    pub fn new() -> Self {
        Conn {
            body: Body::None,
            pending: None,
            collected: Vec::new(),
        }
    }

    /// True when `buffered` unconsumed bytes are the start of a request head (the header
    /// timeout applies), false between requests or inside a body (the idle timeout applies).
    pub fn in_head(&self, buffered: usize) -> bool {
        buffered > 0 && self.body == Body::None && self.pending.is_none()
    }

    /// Answers every complete request at the start of `input`, in order, appending the
    /// responses to `out`. Returns how many bytes of `input` were consumed (the caller keeps
    /// the rest for the next call) and what to do next.
    pub fn feed(&mut self, ctx: &Ctx, input: &[u8], out: &mut Vec<u8>) -> (usize, Next) {
        let mut pos = 0;
        loop {
            // 1. Skip the current request's body.
            match &mut self.body {
                Body::None => {}
                Body::Length(left) => {
                    let n = (*left).min((input.len() - pos) as u64);
                    pos += n as usize;
                    *left -= n;
                    if *left > 0 {
                        return (pos, Next::Read);
                    }
                    self.body = Body::None;
                }
                Body::Collect(left) => {
                    let n = (*left).min((input.len() - pos) as u64) as usize;
                    self.collected.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                    *left -= n as u64;
                    if *left > 0 {
                        return (pos, Next::Read);
                    }
                    self.body = Body::None;
                }
                Body::Chunked(state) => match state.skip(&input[pos..]) {
                    Ok(n) => {
                        pos += n;
                        if !state.is_done() {
                            return (pos, Next::Read);
                        }
                        self.body = Body::None;
                    }
                    Err(_) => {
                        self.pending = None;
                        ctx.error(out, 400);
                        return (input.len(), Next::Close { linger: true });
                    }
                },
            }
            // 2. Answer it.
            if let Some(mut p) = self.pending.take() {
                if p.delay_ms > 0 {
                    let delay = Duration::from_millis(p.delay_ms);
                    p.delay_ms = 0;
                    self.pending = Some(p);
                    return (pos, Next::Delay(delay));
                }
                ctx.respond(&p, &self.collected, out);
                if !self.collected.is_empty() {
                    self.collected = Vec::new();
                }
                if !p.keep_alive {
                    return (
                        pos,
                        Next::Close {
                            linger: pos < input.len(),
                        },
                    );
                }
                if out.len() >= FLUSH_AT && pos < input.len() {
                    return (pos, Next::Flush);
                }
            }
            // 3. Parse the next head.
            if pos == input.len() {
                return (pos, Next::Read);
            }
            let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
            let mut req = httparse::Request::new(&mut []);
            let max_head = ctx.settings.max_head;
            match req.parse_with_uninit_headers(&input[pos..], &mut headers) {
                Ok(httparse::Status::Partial) => {
                    if input.len() - pos > max_head {
                        ctx.error(out, 431);
                        return (input.len(), Next::Close { linger: true });
                    }
                    return (pos, Next::Read);
                }
                Ok(httparse::Status::Complete(n)) => {
                    if n > max_head {
                        ctx.error(out, 431);
                        return (input.len(), Next::Close { linger: true });
                    }
                    if self.start(ctx, &req, out).is_err() {
                        ctx.error(out, 400);
                        return (input.len(), Next::Close { linger: true });
                    }
                    pos += n;
                }
                Err(httparse::Error::TooManyHeaders) => {
                    ctx.error(out, 431);
                    return (input.len(), Next::Close { linger: true });
                }
                Err(_) => {
                    ctx.error(out, 400);
                    return (input.len(), Next::Close { linger: true });
                }
            }
        }
    }

    /// Sets up the body to skip and the answer to give for a parsed head.
    fn start(
        &mut self,
        ctx: &Ctx,
        req: &httparse::Request<'_, '_>,
        out: &mut Vec<u8>,
    ) -> Result<(), ()> {
        let version = req.version.unwrap_or(1);
        let headers = &*req.headers;
        let method = req.method.unwrap_or("GET");
        let te = header(headers, "transfer-encoding");
        let body = match te {
            Some(_) => {
                // Anything but a final `chunked`, or both framings at once, is a smuggling risk.
                if !is_chunked(headers) || header(headers, "content-length").is_some() {
                    return Err(());
                }
                Body::Chunked(Chunked::new())
            }
            None => match content_length(headers).map_err(|_| ())? {
                Some(n) if n > 0 => Body::Length(n),
                _ => Body::None,
            },
        };
        if version >= 1
            && body != Body::None
            && header(headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
        {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let path = req.path.unwrap_or("/");
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let route = match path {
            "/health" => Route::Health,
            "/admin/health/fail" | "/admin/health/ok" if method != "POST" => {
                Route::AdminMethodNotAllowed("POST")
            }
            "/admin/health/fail" => Route::SetHealth(false),
            "/admin/health/ok" => Route::SetHealth(true),
            "/admin/latency" => match method {
                "GET" | "HEAD" => Route::GetLatency,
                "POST" => Route::SetLatency,
                _ => Route::AdminMethodNotAllowed("GET, POST"),
            },
            _ => Route::Main,
        };
        // The latency body is kept (bounded); everything else is skipped.
        let (route, body) = match (route, body) {
            (Route::SetLatency, Body::Length(n)) if n > latency::MAX_BODY as u64 => {
                (Route::LatencyBodyRefused(413), body)
            }
            (Route::SetLatency, Body::Length(n)) => (route, Body::Collect(n)),
            (Route::SetLatency, Body::Chunked(_)) => (Route::LatencyBodyRefused(411), body),
            other => other,
        };
        let main = route == Route::Main;
        self.body = body;
        self.pending = Some(Pending {
            route,
            keep_alive: keep_alive(version, headers),
            http10: version == 0,
            head_only: method == "HEAD",
            fail: main && ctx.roll_failure(),
            delay_ms: if main { ctx.roll_delay() } else { 0 },
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The connection loop

/// Serves one HTTP connection until the client leaves, asks to close, errs or times out.
pub async fn serve(mut stream: TcpStream, ctx: Rc<Ctx>) {
    // One multishot receive for the connection's life (no poll armed and no buffer held per
    // request), where the core's ring runs; monoio reads otherwise.
    let mut multi = match ctx.settings.recv {
        Recv::Multishot => {
            use std::os::fd::AsRawFd;
            RecvRing::current().map(|ring| ring.recv(stream.as_raw_fd()))
        }
        Recv::Plain => None,
    };
    let mut conn = Conn::new();
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_BUF);
    let mut head_deadline: Option<Instant> = None;
    let idle = ctx.settings.idle_timeout;
    loop {
        let (used, next) = conn.feed(&ctx, &rbuf, &mut out);
        consume(&mut rbuf, used);
        match next {
            Next::Read => {}
            Next::Flush => {
                match write_timeout(&mut stream, out, idle).await {
                    Some(o) => out = o,
                    None => return,
                }
                continue;
            }
            Next::Delay(d) => {
                if !out.is_empty() {
                    match write_timeout(&mut stream, out, idle).await {
                        Some(o) => out = o,
                        None => return,
                    }
                }
                monoio::time::sleep(d).await;
                continue;
            }
            Next::Close { linger } => {
                if write_timeout(&mut stream, out, idle).await.is_some() && linger {
                    // Plain reads from here on: the multishot receive is cancelled first.
                    drop(multi.take());
                    linger_close(&mut stream, rbuf).await;
                }
                return;
            }
        }
        // Between requests the idle timeout applies; inside a head, one deadline for all of it.
        let wait = if conn.in_head(rbuf.len()) {
            let now = Instant::now();
            let deadline = *head_deadline.get_or_insert(now + ctx.settings.header_timeout);
            deadline.saturating_duration_since(now)
        } else {
            head_deadline = None;
            idle
        };
        if wait.is_zero() {
            tracing::debug!("request head timed out");
            return;
        }
        if rbuf.len() == rbuf.capacity() {
            rbuf.reserve(rbuf.capacity().max(READ_BUF));
        }
        let (start, end) = (rbuf.len(), rbuf.capacity());
        let cycle = write_then_read(
            &mut stream,
            multi.as_mut(),
            out,
            SliceMut::new(rbuf, start, end),
        );
        match monoio::time::timeout(wait, cycle).await {
            Ok(Some((o, n, r))) if n > 0 => {
                out = o;
                rbuf = r;
            }
            // EOF, an I/O error or a timeout: dropping the stream closes it (a read still in
            // flight is cancelled by monoio's async-cancel).
            _ => return,
        }
    }
}

/// Drops the first `used` bytes, keeping the unparsed rest at the front.
fn consume(buf: &mut Vec<u8>, used: usize) {
    if used == buf.len() {
        buf.clear();
    } else if used > 0 {
        buf.drain(..used);
    }
}

/// One write (if there is output) then one read (of the next message of `multi`, if given),
/// under a single timer.
async fn write_then_read(
    stream: &mut TcpStream,
    multi: Option<&mut MultiRecv>,
    mut out: Vec<u8>,
    slice: SliceMut<Vec<u8>>,
) -> Option<(Vec<u8>, usize, Vec<u8>)> {
    if !out.is_empty() {
        let (res, o) = stream.write_all(out).await;
        res.ok()?;
        out = o;
        out.clear();
    }
    if let Some(multi) = multi {
        let mut buf = slice.into_inner();
        return match multi.recv().await.ok()? {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                Some((out, chunk.len(), buf))
            }
            None => Some((out, 0, buf)),
        };
    }
    let (res, slice) = stream.read(slice).await;
    Some((out, res.ok()?, slice.into_inner()))
}

/// Writes all of `out` within `limit`; returns the emptied buffer, or `None` on error/timeout.
async fn write_timeout(stream: &mut TcpStream, out: Vec<u8>, limit: Duration) -> Option<Vec<u8>> {
    if out.is_empty() {
        return Some(out);
    }
    match monoio::time::timeout(limit, stream.write_all(out)).await {
        Ok((Ok(_), mut o)) => {
            o.clear();
            Some(o)
        }
        _ => None,
    }
}

/// Half-closes, then reads and drops what the client still sends for a while, so that the
/// close does not turn into a reset that could destroy our last answer in flight.
async fn linger_close(stream: &mut TcpStream, mut buf: Vec<u8>) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        buf.clear();
        match monoio::time::timeout(left, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                drained += n;
                buf = b;
            }
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("json body")
        }
    }

    /// Splits a byte stream of responses (answers to non-HEAD requests) into messages.
    fn parse_all(mut raw: &[u8]) -> Vec<Resp> {
        let mut all = Vec::new();
        while !raw.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            let n = match r.parse(raw).expect("valid response") {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial response"),
            };
            let len = content_length(r.headers).unwrap().unwrap_or(0) as usize;
            let len = if r.code == Some(100) { 0 } else { len };
            all.push(Resp {
                status: r.code.unwrap(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
                    .collect(),
                body: raw[n..n + len].to_vec(),
            });
            raw = &raw[n + len..];
        }
        all
    }

    fn ctx_with(settings: HttpSettings) -> Ctx {
        let health: &'static Health = Box::leak(Box::new(Health::new()));
        let padding = Ctx::padding_for(&settings);
        let latency = Arc::new(Latency::new(
            settings.min_latency_ms,
            settings.max_latency_ms,
        ));
        Ctx::new(
            settings,
            health,
            latency,
            Arc::new(Counters::new(1)),
            padding,
            0,
        )
    }

    fn ctx() -> Ctx {
        ctx_with(HttpSettings::with_id("s1"))
    }

    /// Feeds `input` in one go and returns (consumed, next, responses).
    fn run(ctx: &Ctx, conn: &mut Conn, input: &[u8]) -> (usize, Next, Vec<Resp>) {
        let mut out = Vec::new();
        let (used, next) = conn.feed(ctx, input, &mut out);
        (used, next, parse_all(&out))
    }

    #[test]
    fn get_root_answers_json_with_the_server_id_and_a_growing_count() {
        let c = ctx();
        let mut conn = Conn::new();
        for expected in 1..=3 {
            let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            let (used, next, resps) = run(&c, &mut conn, req);
            assert_eq!((used, next), (req.len(), Next::Read));
            assert_eq!(resps.len(), 1);
            let r = &resps[0];
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-server-id"), Some("s1"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("connection"), None);
            assert_eq!(
                r.json(),
                serde_json::json!({"server": "s1", "requests": expected})
            );
        }
    }

    #[test]
    fn the_count_crosses_digit_boundaries_with_correct_lengths() {
        let c = ctx();
        c.local.set(8);
        let mut conn = Conn::new();
        let req = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (_, _, resps) = run(&c, &mut conn, req);
        let counts: Vec<u64> = resps
            .iter()
            .map(|r| r.json()["requests"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, vec![9, 10, 11]);
    }

    #[test]
    fn any_other_path_and_method_is_answered_like_root() {
        let c = ctx();
        let mut conn = Conn::new();
        let (_, _, resps) = run(&c, &mut conn, b"DELETE /some/where?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(resps[0].status, 200);
        assert_eq!(resps[0].json()["server"], "s1");
    }

    #[test]
    fn pipelined_requests_are_all_answered_in_order_in_one_output() {
        let c = ctx();
        let mut conn = Conn::new();
        let req = b"GET / HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let (used, next, resps) = run(&c, &mut conn, req);
        assert_eq!((used, next), (req.len(), Next::Read));
        assert_eq!(resps.len(), 3);
        assert_eq!(resps[0].json()["requests"], 1);
        assert_eq!(resps[1].json()["status"], "ok");
        assert_eq!(resps[2].json()["requests"], 2);
    }

    #[test]
    fn a_partial_request_waits_for_more_bytes_whatever_the_split() {
        let req = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /health HTTP/1.1\r\n\r\n";
        for split in 0..=req.len() {
            let c = ctx();
            let mut conn = Conn::new();
            let mut buf = req[..split].to_vec();
            let mut out = Vec::new();
            let (used, next) = conn.feed(&c, &buf, &mut out);
            assert_eq!(next, Next::Read, "split {split}");
            consume(&mut buf, used);
            buf.extend_from_slice(&req[split..]);
            let (used, next) = conn.feed(&c, &buf, &mut out);
            assert_eq!((used, next), (buf.len(), Next::Read), "split {split}");
            let resps = parse_all(&out);
            assert_eq!(resps.len(), 2, "split {split}");
            assert_eq!(resps[0].json()["requests"], 1);
            assert_eq!(resps[1].json()["status"], "ok");
        }
    }

    #[test]
    fn connection_close_answers_then_closes_and_ignores_the_rest() {
        let c = ctx();
        let mut conn = Conn::new();
        let req = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (_, next, resps) = run(&c, &mut conn, req);
        assert_eq!(next, Next::Close { linger: true });
        assert_eq!(resps.len(), 1);
        assert_eq!(resps[0].header("connection"), Some("close"));
        let (_, next, _) = run(
            &c,
            &mut Conn::new(),
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(next, Next::Close { linger: false });
    }

    #[test]
    fn http10_closes_unless_it_asks_for_keep_alive() {
        let c = ctx();
        let (_, next, resps) = run(&c, &mut Conn::new(), b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(next, Next::Close { linger: false });
        assert!(resps[0]
            .header("connection")
            .unwrap()
            .eq_ignore_ascii_case("close"));
        let (_, next, resps) = run(
            &c,
            &mut Conn::new(),
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!(next, Next::Read);
        assert_eq!(resps[0].header("connection"), Some("keep-alive"));
    }

    #[test]
    fn malformed_requests_get_400_and_a_lingering_close() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let c = ctx();
            let (used, next, resps) = run(&c, &mut Conn::new(), bad);
            assert_eq!(used, bad.len());
            assert_eq!(
                next,
                Next::Close { linger: true },
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(resps.len(), 1);
            assert_eq!(resps[0].status, 400);
            assert_eq!(resps[0].header("x-server-id"), Some("s1"));
            assert_eq!(resps[0].header("connection"), Some("close"));
        }
    }

    #[test]
    fn heads_over_the_limit_get_431_complete_or_not() {
        let mut s = HttpSettings::with_id("s1");
        s.max_head = 100;
        let c = ctx_with(s);
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(200));
        let (_, next, resps) = run(&c, &mut Conn::new(), long.as_bytes());
        assert_eq!(next, Next::Close { linger: true });
        assert_eq!(resps[0].status, 431);
        let complete = format!("{long}\r\n");
        let (_, _, resps) = run(&c, &mut Conn::new(), complete.as_bytes());
        assert_eq!(resps[0].status, 431);
        // Exactly at the limit is fine.
        let fits = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100 - 23));
        assert_eq!(fits.len(), 100);
        let (_, _, resps) = run(&c, &mut Conn::new(), fits.as_bytes());
        assert_eq!(resps[0].status, 200);
    }

    #[test]
    fn too_many_headers_get_431() {
        let c = ctx();
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS + 1 {
            req.push_str(&format!("H{i}: v\r\n"));
        }
        req.push_str("\r\n");
        let (_, _, resps) = run(&c, &mut Conn::new(), req.as_bytes());
        assert_eq!(resps[0].status, 431);
    }

    #[test]
    fn content_length_bodies_are_skipped_across_reads() {
        let c = ctx();
        let mut conn = Conn::new();
        let (used, next, resps) = run(
            &c,
            &mut conn,
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123",
        );
        assert_eq!((next, resps.len()), (Next::Read, 0));
        assert!(!conn.in_head(0));
        assert_eq!(used, 43);
        let (used, next, resps) = run(&c, &mut conn, b"456789GET /health HTTP/1.1\r\n\r\n");
        assert_eq!((used, next), (30, Next::Read));
        assert_eq!(resps.len(), 2);
        assert_eq!(resps[0].json()["requests"], 1);
        assert_eq!(resps[1].status, 200);
    }

    #[test]
    fn chunked_bodies_are_decoded_and_skipped() {
        let c = ctx();
        let mut conn = Conn::new();
        let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (used, next, resps) = run(&c, &mut conn, req);
        assert_eq!((used, next), (req.len(), Next::Read));
        assert_eq!(resps.len(), 2);
    }

    #[test]
    fn expect_continue_gets_an_interim_answer_before_the_body() {
        let c = ctx();
        let mut conn = Conn::new();
        let (_, next, resps) = run(
            &c,
            &mut conn,
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(next, Next::Read);
        assert_eq!(resps.len(), 1);
        assert_eq!(resps[0].status, 100);
        let (_, _, resps) = run(&c, &mut conn, b"hi");
        assert_eq!(resps[0].status, 200);
    }

    #[test]
    fn health_fails_and_recovers_through_the_admin_paths() {
        let c = ctx();
        let mut conn = Conn::new();
        let req = b"GET /health HTTP/1.1\r\n\r\nPOST /admin/health/fail HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /health?probe=1 HTTP/1.1\r\n\r\nPOST /admin/health/ok HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n";
        let (_, _, resps) = run(&c, &mut conn, req);
        let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![200, 200, 503, 200, 200]);
        assert_eq!(resps[1].json()["healthy"], false);
        assert_eq!(resps[2].json()["status"], "unhealthy");
        assert_eq!(resps[3].json()["healthy"], true);
        assert!(resps.iter().all(|r| r.header("x-server-id") == Some("s1")));
        assert_eq!(
            c.local.get(),
            0,
            "health and admin requests are not counted"
        );
    }

    #[test]
    fn admin_paths_want_post() {
        let c = ctx();
        let (_, _, resps) = run(
            &c,
            &mut Conn::new(),
            b"GET /admin/health/fail HTTP/1.1\r\n\r\n",
        );
        assert_eq!(resps[0].status, 405);
        assert_eq!(resps[0].header("allow"), Some("POST"));
        assert!(c.health.is_healthy());
    }

    #[test]
    fn the_latency_admin_path_reports_and_sets_the_delay_of_root() {
        let c = ctx();
        let mut conn = Conn::new();
        let body = br#"{"min_ms": 40, "max_ms": 40}"#;
        let req = format!(
            "GET /admin/latency HTTP/1.1\r\n\r\nPOST /admin/latency HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}GET / HTTP/1.1\r\n\r\n",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        let mut input = req.into_bytes();
        let mut out = Vec::new();
        let (used, next) = conn.feed(&c, &input, &mut out);
        consume(&mut input, used);
        // The two admin answers come at once; the root request then asks for the new delay.
        assert_eq!(next, Next::Delay(Duration::from_millis(40)));
        let resps = parse_all(&out);
        assert_eq!(resps.len(), 2);
        assert_eq!(
            resps[0].json(),
            serde_json::json!({"server": "s1", "min_ms": 0, "max_ms": 0})
        );
        assert_eq!(
            resps[1].json(),
            serde_json::json!({"server": "s1", "min_ms": 40, "max_ms": 40})
        );
        assert!(resps.iter().all(|r| r.status == 200));
        assert_eq!(c.latency.get(), (40, 40));
        out.clear();
        let (used, next) = conn.feed(&c, &input, &mut out);
        assert_eq!((used, next), (input.len(), Next::Read));
        assert_eq!(
            parse_all(&out)[0].json()["requests"],
            1,
            "admin requests are not counted"
        );
    }

    #[test]
    fn a_latency_body_split_across_reads_is_collected_whatever_the_split() {
        let body = br#"{"min_ms":5,"max_ms":9}"#;
        let req = format!(
            "POST /admin/latency?x=1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        let req = req.as_bytes();
        for split in 0..=req.len() {
            let c = ctx();
            let mut conn = Conn::new();
            let mut buf = req[..split].to_vec();
            let mut out = Vec::new();
            let (used, next) = conn.feed(&c, &buf, &mut out);
            assert_eq!(next, Next::Read, "split {split}");
            consume(&mut buf, used);
            buf.extend_from_slice(&req[split..]);
            let (used, next) = conn.feed(&c, &buf, &mut out);
            assert_eq!((used, next), (buf.len(), Next::Read), "split {split}");
            let resps = parse_all(&out);
            assert_eq!(resps.len(), 1, "split {split}");
            assert_eq!(resps[0].status, 200, "split {split}");
            assert_eq!(c.latency.get(), (5, 9), "split {split}");
            assert!(conn.collected.is_empty());
        }
    }

    #[test]
    fn bad_latency_requests_are_refused_and_the_connection_stays_usable() {
        let c = ctx_with({
            let mut s = HttpSettings::with_id("s1");
            s.min_latency_ms = 2;
            s.max_latency_ms = 3;
            s
        });
        let mut conn = Conn::new();
        let post = |body: &str| {
            format!(
                "POST /admin/latency HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let big = format!(r#"{{"min_ms": 1{}}}"#, " ".repeat(latency::MAX_BODY));
        let mut req = String::new();
        for body in [
            "not json",
            r#"{"min_ms": 9, "max_ms": 1}"#,
            r#"{"min_ms": 1, "max_ms": 3600001}"#,
            r#"{"min": 1}"#,
            "",
            big.as_str(),
        ] {
            req.push_str(&post(body));
        }
        req.push_str(
            "POST /admin/latency HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n",
        );
        req.push_str("PUT /admin/latency HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        req.push_str("GET /admin/latency HTTP/1.1\r\n\r\n");
        let mut input = req.into_bytes();
        let mut out = Vec::new();
        loop {
            let (used, next) = conn.feed(&c, &input, &mut out);
            consume(&mut input, used);
            match next {
                Next::Read if input.is_empty() => break,
                Next::Flush => {}
                other => panic!("{other:?}"),
            }
        }
        let resps = parse_all(&out);
        let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [400, 400, 400, 400, 400, 413, 411, 405, 200]);
        assert!(resps[1].json()["error"]
            .as_str()
            .unwrap()
            .contains("must not exceed"));
        assert!(resps[0].json()["error"]
            .as_str()
            .unwrap()
            .contains("min_ms"));
        assert_eq!(resps[7].header("allow"), Some("GET, POST"));
        assert!(resps.iter().all(|r| r.header("connection").is_none()));
        assert_eq!(resps[8].json()["min_ms"], 2, "nothing was changed");
        assert_eq!(c.latency.get(), (2, 3));
    }

    #[test]
    fn head_requests_get_the_head_without_a_body() {
        let c = ctx();
        let mut out = Vec::new();
        let req = b"HEAD / HTTP/1.1\r\n\r\n";
        let (used, next) = Conn::new().feed(&c, req, &mut out);
        assert_eq!((used, next), (req.len(), Next::Read));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: 28\r\n"), "{text}");
    }

    #[test]
    fn failure_rate_one_fails_every_root_request_but_not_health() {
        let mut s = HttpSettings::with_id("s1");
        s.failure_rate = 1.0;
        let c = ctx_with(s);
        let (_, _, resps) = run(
            &c,
            &mut Conn::new(),
            b"GET / HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
        );
        assert_eq!(resps[0].status, 500);
        assert_eq!(resps[0].header("x-server-id"), Some("s1"));
        assert_eq!(resps[0].json()["error"], "injected failure");
        assert_eq!(resps[1].status, 200);
    }

    #[test]
    fn failure_rate_half_fails_about_half() {
        let mut s = HttpSettings::with_id("s1");
        s.failure_rate = 0.5;
        let c = ctx_with(s);
        let mut conn = Conn::new();
        let mut req = b"GET / HTTP/1.1\r\n\r\n".repeat(1000);
        let mut out = Vec::new();
        loop {
            let (used, next) = conn.feed(&c, &req, &mut out);
            consume(&mut req, used);
            if next == Next::Read {
                break;
            }
            assert_eq!(next, Next::Flush);
        }
        let resps = parse_all(&out);
        assert_eq!(resps.len(), 1000);
        let failed = resps.iter().filter(|r| r.status == 500).count();
        assert!((400..=600).contains(&failed), "{failed}");
    }

    #[test]
    fn latency_makes_feed_ask_for_a_delay_before_each_answer() {
        let mut s = HttpSettings::with_id("s1");
        s.min_latency_ms = 20;
        s.max_latency_ms = 30;
        let c = ctx_with(s);
        let mut conn = Conn::new();
        let mut input = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
        let mut out = Vec::new();
        let mut delays = 0;
        loop {
            let (used, next) = conn.feed(&c, &input, &mut out);
            consume(&mut input, used);
            match next {
                Next::Delay(d) => {
                    assert!(d >= Duration::from_millis(20) && d <= Duration::from_millis(30));
                    delays += 1;
                }
                Next::Read => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, 2);
        assert_eq!(parse_all(&out).len(), 2);
    }

    #[test]
    fn body_size_pads_the_json_or_gives_plain_padding() {
        for (size, starts_json) in [(1000, true), (29, true), (10, false), (0, false)] {
            let mut s = HttpSettings::with_id("s1");
            s.body_size = Some(size);
            let c = ctx_with(s);
            let (_, _, resps) = run(&c, &mut Conn::new(), b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(resps[0].body.len(), size);
            assert_eq!(
                resps[0].body.starts_with(br#"{"server":"s1""#),
                starts_json,
                "{size}"
            );
            if starts_json {
                let text = String::from_utf8(resps[0].body.clone()).unwrap();
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(text.trim_end()).unwrap()["requests"],
                    1
                );
            }
        }
    }

    #[test]
    fn large_output_is_flushed_before_parsing_more() {
        let mut s = HttpSettings::with_id("s1");
        s.body_size = Some(40_000);
        let c = ctx_with(s);
        let mut conn = Conn::new();
        let mut input = b"GET / HTTP/1.1\r\n\r\n".repeat(3);
        let mut out = Vec::new();
        let (used, next) = conn.feed(&c, &input, &mut out);
        assert_eq!(next, Next::Flush);
        assert_eq!(parse_all(&out).len(), 2);
        consume(&mut input, used);
        out.clear();
        let (used, next) = conn.feed(&c, &input, &mut out);
        assert_eq!((used, next), (input.len(), Next::Read));
        assert_eq!(parse_all(&out).len(), 1);
    }

    #[test]
    fn counts_are_summed_across_cores() {
        let counters = Arc::new(Counters::new(2));
        let health: &'static Health = Box::leak(Box::new(Health::new()));
        let s = HttpSettings::with_id("s1");
        let latency = Arc::new(Latency::new(0, 0));
        let a = Ctx::new(
            s.clone(),
            health,
            latency.clone(),
            counters.clone(),
            Ctx::padding_for(&s),
            0,
        );
        let b = Ctx::new(
            s.clone(),
            health,
            latency,
            counters.clone(),
            Ctx::padding_for(&s),
            1,
        );
        for _ in 0..5 {
            a.count();
        }
        // b's first count refreshes its view of a.
        assert_eq!(b.count(), 6);
        assert_eq!(counters.total(), 6);
    }

    #[test]
    fn the_head_timeout_applies_only_inside_a_head() {
        let c = ctx();
        let mut conn = Conn::new();
        assert!(!conn.in_head(0));
        let (used, _, _) = run(&c, &mut conn, b"GET / HT");
        assert_eq!(used, 0);
        assert!(conn.in_head(8));
    }

    #[test]
    fn random_bytes_never_panic_and_always_yield_parseable_output() {
        let c = ctx();
        let mut seed = 0x1234_5678_9abc_def1u64;
        let pieces: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\n",
            b"\r\n",
            b"Content-Length: 3\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
            b"Connection: close\r\n",
            b"\x00\xff ",
            b"POST /health HTTP/1.0\r\n",
        ];
        for _ in 0..3000 {
            let mut conn = Conn::new();
            let mut input = Vec::new();
            let mut out = Vec::new();
            for _ in 0..(seed % 8) {
                seed = splitmix(seed);
                input.extend_from_slice(pieces[(seed % 8) as usize]);
                seed = splitmix(seed);
                if seed % 5 == 1 {
                    input.push((seed >> 8) as u8);
                }
                let (used, next) = conn.feed(&c, &input, &mut out);
                assert!(used <= input.len());
                consume(&mut input, used);
                if let Next::Close { .. } = next {
                    break;
                }
            }
            parse_all(&out);
        }
    }

    #[test]
    fn numbers_format_like_display() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(format_u64(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
