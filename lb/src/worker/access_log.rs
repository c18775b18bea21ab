//! The access log's per-core half: a connection's record, filled in as the connection goes and
//! written as its close line when the record is dropped (so that every way out of a connection,
//! a cancelled task included, leaves a line); the core's line buffer and its share of the rate
//! cap; and the periodic lines of long connections.
//!
//! With the log off, a record is a `None`: no allocation and no formatting on the data path.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slab::Slab;

use crate::config::access_log::AccessLogConfig;
use crate::proxy::idle::IdleTimer;
use crate::shared::access_log::{format_line, AccessLog, End, Event, Line};

/// A core hands its buffer to the writer at this size, or every [`FLUSH_EVERY`].
const FLUSH_AT: usize = 64 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

pub struct CoreLog {
    shared: Arc<AccessLog>,
    cores: usize,
    idle: Rc<IdleTimer>,
    buf: RefCell<Vec<u8>>,
    pending: Cell<u64>,
    tokens: Cell<f64>,
    refilled: Cell<Instant>,
    /// Open connections, for their periodic lines (only while `interval_ms` is set).
    open: RefCell<Slab<Rc<ConnLog>>>,
}

/// What is known of one connection so far.
pub struct ConnLog {
    accepted: Instant,
    listener: String,
    peer: SocketAddr,
    client: Cell<SocketAddr>,
    sni: RefCell<Option<String>>,
    service: RefCell<Option<String>>,
    backend: RefCell<Option<(String, SocketAddr)>>,
    attempts: Cell<u32>,
    queued: Cell<Duration>,
    connect: Cell<Option<Duration>>,
    bytes: Cell<(u64, u64)>,
    end: Cell<Option<End>>,
    /// Its idle-timer entry while it relays (the bytes so far, for periodic lines).
    idle_key: Cell<Option<usize>>,
    slot: Cell<Option<usize>>,
    reported: Cell<Instant>,
}

/// A connection's record; writes the close line when dropped.
pub struct Record {
    inner: Option<(Rc<CoreLog>, Rc<ConnLog>)>,
}

impl CoreLog {
    pub fn new(shared: Arc<AccessLog>, cores: usize, idle: Rc<IdleTimer>) -> Rc<CoreLog> {
        Rc::new(CoreLog {
            shared,
            cores: cores.max(1),
            idle,
            buf: RefCell::new(Vec::new()),
            pending: Cell::new(0),
            // A full bucket to start with (clamped to the rate at the first line).
            tokens: Cell::new(f64::INFINITY),
            refilled: Cell::new(Instant::now()),
            open: RefCell::new(Slab::new()),
        })
    }

    /// A record for a connection just accepted from `peer` on `listener` (an empty one with
    /// the log off).
    pub fn open(self: &Rc<Self>, listener: &str, peer: SocketAddr) -> Record {
        if !self.shared.enabled() {
            return Record { inner: None };
        }
        let now = Instant::now();
        Record {
            inner: Some((
                self.clone(),
                Rc::new(ConnLog {
                    accepted: now,
                    listener: listener.to_string(),
                    peer,
                    client: Cell::new(peer),
                    sni: RefCell::new(None),
                    service: RefCell::new(None),
                    backend: RefCell::new(None),
                    attempts: Cell::new(0),
                    queued: Cell::new(Duration::ZERO),
                    connect: Cell::new(None),
                    bytes: Cell::new((0, 0)),
                    end: Cell::new(None),
                    idle_key: Cell::new(None),
                    slot: Cell::new(None),
                    reported: Cell::new(now),
                }),
            )),
        }
    }

    /// Takes one line's token of this core's share of `max_lines_per_s`.
    fn admit(&self, cfg: &AccessLogConfig) -> bool {
        let rate = (f64::from(cfg.max_lines_per_s) / self.cores as f64).max(1.0);
        let now = Instant::now();
        let dt = now
            .saturating_duration_since(self.refilled.get())
            .as_secs_f64();
        let tokens = (self.tokens.get() + dt * rate).min(rate);
        self.refilled.set(now);
        if tokens < 1.0 {
            self.tokens.set(tokens);
            return false;
        }
        self.tokens.set(tokens - 1.0);
        true
    }

    fn write(&self, event: Event, c: &ConnLog, end: Option<End>) {
        let cfg = self.shared.config();
        if !cfg.enabled {
            return;
        }
        if !self.admit(&cfg) {
            self.shared
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let bytes = match (event, c.idle_key.get()) {
            (Event::Periodic, Some(k)) => self.idle.bytes_of(k),
            _ => c.bytes.get(),
        };
        let client = c.client.get();
        let sni = c.sni.borrow();
        let service = c.service.borrow();
        let backend = c.backend.borrow();
        let line = Line {
            time: SystemTime::now(),
            event,
            listener: &c.listener,
            client,
            via: (client != c.peer).then_some(c.peer),
            sni: sni.as_deref(),
            service: service.as_deref(),
            backend: backend.as_ref().map(|(n, _)| n.as_str()),
            backend_address: backend.as_ref().map(|(_, a)| *a),
            attempts: c.attempts.get(),
            queued: c.queued.get(),
            connect: c.connect.get(),
            duration: c.accepted.elapsed(),
            to_backend: bytes.0,
            to_client: bytes.1,
            end,
        };
        let full = {
            let mut buf = self.buf.borrow_mut();
            format_line(&mut buf, cfg.format, &line);
            buf.len() >= FLUSH_AT
        };
        self.pending.set(self.pending.get() + 1);
        if full {
            self.flush();
        }
    }

    /// Hands the buffered lines to the writer.
    pub fn flush(&self) {
        let n = self.pending.replace(0);
        if n == 0 {
            return;
        }
        let buf = std::mem::take(&mut *self.buf.borrow_mut());
        self.shared.submit(buf, n);
    }

    /// Every [`FLUSH_EVERY`]: the buffer out, and a periodic line for each connection open
    /// another `interval_ms` since its last line.
    pub fn tick(&self) {
        let cfg = self.shared.config();
        if let (true, Some(every)) = (cfg.enabled, cfg.interval) {
            let due: Vec<Rc<ConnLog>> = self
                .open
                .borrow()
                .iter()
                .filter(|(_, c)| c.reported.get().elapsed() >= every)
                .map(|(_, c)| c.clone())
                .collect();
            for c in due {
                c.reported.set(Instant::now());
                self.write(Event::Periodic, &c, None);
            }
        }
        self.flush();
    }
}

impl Drop for CoreLog {
    /// The core's runtime ended (its last records written): its lines go out.
    fn drop(&mut self) {
        self.flush();
    }
}

impl Record {
    fn with(&self, f: impl FnOnce(&CoreLog, &ConnLog)) {
        if let Some((core, c)) = &self.inner {
            f(core, c)
        }
    }

    /// The client named by a PROXY header.
    pub fn client(&self, addr: SocketAddr) {
        self.with(|_, c| c.client.set(addr));
    }

    pub fn sni(&self, name: Option<&str>) {
        self.with(|_, c| *c.sni.borrow_mut() = name.map(str::to_string));
    }

    pub fn service(&self, name: &str) {
        self.with(|_, c| *c.service.borrow_mut() = Some(name.to_string()));
    }

    /// How the connect went (with or without a backend at the end of it).
    pub fn attempts(&self, attempts: u32, queued: Duration) {
        self.with(|_, c| {
            c.attempts.set(attempts);
            c.queued.set(queued);
        });
    }

    /// The backend connection is up: a connect line when `log_on_connect`.
    pub fn connected(&self, backend: &str, address: SocketAddr, connect: Duration) {
        self.with(|core, c| {
            *c.backend.borrow_mut() = Some((backend.to_string(), address));
            c.connect.set(Some(connect));
            if core.shared.config().log_on_connect {
                core.write(Event::Connect, c, None);
            }
        });
    }

    /// Relaying under the idle-timer entry `key`: periodic lines from now on, when asked for.
    pub fn relaying(&self, key: usize) {
        if let Some((core, c)) = &self.inner {
            c.idle_key.set(Some(key));
            if core.shared.config().interval.is_some() {
                c.slot.set(Some(core.open.borrow_mut().insert(c.clone())));
            }
        }
    }

    pub fn bytes(&self, to_backend: u64, to_client: u64) {
        self.with(|_, c| c.bytes.set((to_backend, to_client)));
    }

    pub fn end(&self, end: End) {
        self.with(|_, c| c.end.set(Some(end)));
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some((core, c)) = self.inner.take() {
            if let Some(s) = c.slot.take() {
                core.open.borrow_mut().try_remove(s);
            }
            // A task dropped before it said how it ended: the worker stopped under it.
            let end = c.end.get().unwrap_or(End::Shutdown);
            core.write(Event::Close, &c, Some(end));
        }
    }
}
