//! The access log's process-wide half: what a line says (and how each format writes it), and the
//! writer thread that owns the file. Cores format lines into their own buffers and hand whole
//! buffers over a bounded channel; a full channel (a disk slower than the traffic) drops the
//! buffer and counts it rather than slow the data path, and the writer says in the log itself how
//! many lines were lost, so that a gap is never silent.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::access_log::{AccessLogConfig, LogFormat};

/// Buffers in flight to the writer at most: with 64 KiB buffers, 4 MiB.
const CHANNEL: usize = 64;

/// Why a connection ended (the `end` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side first and the relay ended cleanly.
    ClientFin,
    /// The backend closed its side first and the relay ended cleanly.
    BackendFin,
    ClientReset,
    BackendReset,
    /// Another I/O error on that side (a timeout of the kernel's keepalive, say).
    ClientError,
    BackendError,
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// Past max_lifetime_ms and quiet: closed cleanly.
    Lifetime,
    /// Cut at the shutdown deadline.
    Shutdown,
    /// Cut at its backend's drain deadline.
    DrainDeadline,
    /// No backend was eligible (all down, drained or ejected).
    NoBackend,
    /// Every connect tried failed.
    ConnectFailed,
    /// Queued for a backend slot past queue_timeout_ms.
    QueueTimeout,
    /// Every backend full and the queue too.
    QueueFull,
    /// An access list refused the client.
    Denied,
    /// max_connections_per_ip.
    Limit,
    /// max_new_connections_per_ip_per_s.
    RateLimit,
    /// A missing or bad PROXY header, a malformed ClientHello, no request head in time, or no
    /// route for the server name.
    Protocol,
    /// lb's own shortage (descriptors, memory) at connect.
    Local,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::ClientFin => "client_fin",
            End::BackendFin => "backend_fin",
            End::ClientReset => "client_reset",
            End::BackendReset => "backend_reset",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::IdleTimeout => "idle_timeout",
            End::Lifetime => "lifetime",
            End::Shutdown => "shutdown",
            End::DrainDeadline => "drain_deadline",
            End::NoBackend => "no_backend",
            End::ConnectFailed => "connect_failed",
            End::QueueTimeout => "queue_timeout",
            End::QueueFull => "queue_full",
            End::Denied => "denied",
            End::Limit => "limit",
            End::RateLimit => "rate_limit",
            End::Protocol => "protocol",
            End::Local => "local",
        }
    }
}

/// When a line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The backend connection is up (`log_on_connect`).
    Connect,
    /// Still open after another `interval_ms`.
    Periodic,
    Close,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Periodic => "periodic",
            Event::Close => "close",
        }
    }
}

/// One line's fields. Names (listener, service, backend) are validated to a safe charset when
/// configured; the server name comes from the client and is escaped by both formats.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub time: SystemTime,
    pub event: Event,
    pub listener: &'a str,
    /// The client: the PROXY header's source when one was accepted.
    pub client: SocketAddr,
    /// The TCP peer, when it differs from `client` (the balancer that sent a PROXY header).
    pub via: Option<SocketAddr>,
    pub sni: Option<&'a str>,
    pub service: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub backend_address: Option<SocketAddr>,
    pub attempts: u32,
    /// Waiting for a backend slot.
    pub queued: Duration,
    /// From the first connect attempt to the backend connection (None: none was made).
    pub connect: Option<Duration>,
    /// Since accept.
    pub duration: Duration,
    pub to_backend: u64,
    pub to_client: u64,
    /// Only on close lines.
    pub end: Option<End>,
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Appends `line` in `format`, with its newline.
pub fn format_line(out: &mut Vec<u8>, format: LogFormat, line: &Line<'_>) {
    match format {
        LogFormat::Json => json(out, line),
        LogFormat::Text => text(out, line),
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, l: &Line<'_>) {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_micros(l.time).to_string(),
        "event": l.event.name(),
        "listener": l.listener,
        "client": l.client.to_string(),
        "via": l.via.map(|a| a.to_string()),
        "sni": l.sni,
        "service": l.service,
        "backend": l.backend,
        "backend_address": l.backend_address.map(|a| a.to_string()),
        "attempts": l.attempts,
        "queue_ms": ms(l.queued),
        "connect_ms": l.connect.map(ms),
        "duration_ms": ms(l.duration),
        "bytes_to_backend": l.to_backend,
        "bytes_to_client": l.to_client,
        "end": l.end.map(End::name),
    });
    // A Vec never fails to take bytes.
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// Like HAProxy's tcplog: fixed positions, `-` for what does not apply, the optional fields as
/// `key=value` at the end:
/// `TIME EVENT LISTENER CLIENT SERVICE/BACKEND BACKEND_ADDRESS Tw/Tc/Tt UP DOWN END ATTEMPTS [via=ADDR] [sni=NAME]`
/// with the queue wait, the connect time (-1: none) and the duration in milliseconds.
fn text(out: &mut Vec<u8>, l: &Line<'_>) {
    let _ = write!(
        out,
        "{} {} {} {} {}/{} {} {}/{}/{} {} {} {} {}",
        humantime::format_rfc3339_micros(l.time),
        l.event.name(),
        l.listener,
        l.client,
        l.service.unwrap_or("-"),
        l.backend.unwrap_or("-"),
        l.backend_address
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
        l.queued.as_millis(),
        l.connect.map_or(-1, |d| d.as_millis() as i64),
        l.duration.as_millis(),
        l.to_backend,
        l.to_client,
        l.end.map_or("-", End::name),
        l.attempts,
    );
    if let Some(v) = l.via {
        let _ = write!(out, " via={v}");
    }
    if let Some(s) = l.sni {
        out.extend_from_slice(b" sni=");
        escape_text(out, s);
    }
}

/// Printable ASCII but space and backslash as is, everything else as `\xHH`: a value can never
/// end a line or split a field.
fn escape_text(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

enum Msg {
    /// Formatted lines.
    Lines(Vec<u8>),
    /// Open the file again (logrotate moved it): SIGUSR1.
    Reopen,
    /// Write here from now on (a reload changed the path).
    Target(Option<PathBuf>),
    /// Everything before this is written: say so.
    Flush(mpsc::Sender<()>),
}

/// The process's access log: the configuration in force, and the channel to its writer.
pub struct AccessLog {
    config: ArcSwap<AccessLogConfig>,
    enabled: AtomicBool,
    tx: Mutex<Option<SyncSender<Msg>>>,
    /// Lines handed to the writer, and lines lost (the rate cap, or a writer behind).
    pub lines: AtomicU64,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// The log as configured; a file that cannot be opened is an error now, not a silent loss.
    pub fn start(cfg: &AccessLogConfig) -> io::Result<Arc<AccessLog>> {
        let log = Arc::new(AccessLog {
            config: ArcSwap::from_pointee(cfg.clone()),
            enabled: AtomicBool::new(cfg.enabled),
            tx: Mutex::new(None),
            lines: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        if cfg.enabled {
            log.spawn_writer(cfg.path.clone())?;
        }
        Ok(log)
    }

    fn spawn_writer(self: &Arc<Self>, path: Option<PathBuf>) -> io::Result<()> {
        let out = Output::open(path)?;
        let (tx, rx) = mpsc::sync_channel(CHANNEL);
        let me = self.clone();
        std::thread::Builder::new()
            .name("lb-access-log".into())
            .spawn(move || me.write_loop(out, rx))?;
        *self.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> Arc<AccessLogConfig> {
        self.config.load_full()
    }

    /// A reload's configuration: in force for the next line. A new path that cannot be opened
    /// is refused (the old one stays).
    pub fn apply(self: &Arc<Self>, cfg: &AccessLogConfig) -> io::Result<()> {
        let old = self.config.load_full();
        if cfg.enabled {
            let running = self.tx.lock().unwrap_or_else(|p| p.into_inner()).is_some();
            if !running {
                self.spawn_writer(cfg.path.clone())?;
            } else if old.path != cfg.path {
                // Opened here first, so that a bad path is an error of the reload.
                drop(Output::open(cfg.path.clone())?);
                self.send(Msg::Target(cfg.path.clone()));
            }
        }
        self.config.store(Arc::new(cfg.clone()));
        self.enabled.store(cfg.enabled, Ordering::SeqCst);
        Ok(())
    }

    /// SIGUSR1: the writer opens its file again.
    pub fn reopen(&self) {
        self.send(Msg::Reopen);
    }

    fn send(&self, m: Msg) -> bool {
        match self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(tx) => tx.send(m).is_ok(),
            None => false,
        }
    }

    /// Hands a core's buffer of `n` lines to the writer; dropped (and counted) when it is behind.
    pub fn submit(&self, buf: Vec<u8>, n: u64) {
        let r = match self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(tx) => tx.try_send(Msg::Lines(buf)),
            None => return,
        };
        match r {
            Ok(()) => {
                self.lines.fetch_add(n, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `limit`) until everything submitted so far is written: at exit.
    pub fn flush(&self, limit: Duration) {
        let (ack, done) = mpsc::channel();
        if self.send(Msg::Flush(ack)) {
            let _ = done.recv_timeout(limit);
        }
    }

    fn write_loop(&self, mut out: Output, rx: Receiver<Msg>) {
        let mut reported = 0u64;
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Lines(buf)) => out.write(&buf),
                Ok(Msg::Reopen) => out.reopen(),
                Ok(Msg::Target(path)) => match Output::open(path) {
                    Ok(o) => out = o,
                    Err(e) => {
                        tracing::error!(error = %e, "access log: cannot open the new path; writing on to the old one")
                    }
                },
                Ok(Msg::Flush(ack)) => {
                    out.flush();
                    let _ = ack.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Lines lost since the last report: said in the log itself, in its format.
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped != reported {
                let fmt = self.config.load().format;
                let mut b = Vec::new();
                let when = humantime::format_rfc3339_micros(SystemTime::now());
                let n = dropped - reported;
                match fmt {
                    LogFormat::Json => {
                        let _ = writeln!(
                            b,
                            "{{\"time\":\"{when}\",\"event\":\"dropped\",\"lines\":{n},\"total\":{dropped}}}"
                        );
                    }
                    LogFormat::Text => {
                        let _ = writeln!(
                            b,
                            "{when} dropped {n} lines (rate cap or slow writer; {dropped} in all)"
                        );
                    }
                }
                out.write(&b);
                reported = dropped;
            }
        }
    }
}

/// Where lines go: stderr, or an appended file (created 0640).
struct Output {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl Output {
    fn open(path: Option<PathBuf>) -> io::Result<Output> {
        let file = match &path {
            Some(p) => Some(open_append(p)?),
            None => None,
        };
        Ok(Output { path, file })
    }

    fn reopen(&mut self) {
        if let Some(p) = &self.path {
            match open_append(p) {
                Ok(f) => {
                    self.file = Some(f);
                    tracing::info!(path = %p.display(), "access log reopened");
                }
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "access log: cannot reopen; writing on to the old file")
                }
            }
        }
    }

    fn write(&mut self, buf: &[u8]) {
        let r = match &mut self.file {
            Some(f) => f.write_all(buf),
            // Whole lines of at most PIPE_BUF per write, so that lb's own log lines on the same
            // stderr never land inside one.
            None => {
                let mut err = io::stderr().lock();
                chunks(buf, 4096).try_for_each(|c| err.write_all(c))
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "access log: write failed");
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(p)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", p.display())))
}

/// `buf` cut at line ends into pieces of at most `max` bytes (a longer line stays whole).
fn chunks(buf: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let window = &rest[..rest.len().min(max)];
        let cut = if rest.len() <= max {
            rest.len()
        } else {
            match window.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1),
            }
        };
        let (a, b) = rest.split_at(cut);
        rest = b;
        Some(a)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_590_400_123),
            event: Event::Close,
            listener: "l1",
            client: "192.0.2.7:51234".parse().unwrap(),
            via: Some("10.0.0.2:40000".parse().unwrap()),
            sni: Some("a.example"),
            service: Some("web"),
            backend: Some("s1"),
            backend_address: Some("127.0.0.1:9001".parse().unwrap()),
            attempts: 2,
            queued: Duration::from_micros(1500),
            connect: Some(Duration::from_micros(250)),
            duration: Duration::from_millis(5007),
            to_backend: 212,
            to_client: 1234,
            end: Some(End::ClientFin),
        }
    }

    #[test]
    fn text_lines_have_fixed_fields_like_tcplog() {
        let mut b = Vec::new();
        format_line(&mut b, LogFormat::Text, &line());
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "2025-12-01T12:00:00.123000Z close l1 192.0.2.7:51234 web/s1 127.0.0.1:9001 1/0/5007 212 1234 client_fin 2 via=10.0.0.2:40000 sni=a.example\n"
        );
        let mut early = line();
        early.service = None;
        early.backend = None;
        early.backend_address = None;
        early.connect = None;
        early.via = None;
        early.sni = None;
        early.end = Some(End::Denied);
        let mut b = Vec::new();
        format_line(&mut b, LogFormat::Text, &early);
        assert!(String::from_utf8(b)
            .unwrap()
            .ends_with(" close l1 192.0.2.7:51234 -/- - 1/-1/5007 212 1234 denied 2\n"));
    }

    #[test]
    fn json_lines_parse_and_keep_every_field() {
        let mut b = Vec::new();
        format_line(&mut b, LogFormat::Json, &line());
        assert_eq!(b.iter().filter(|&&c| c == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["end"], "client_fin");
        assert_eq!(v["via"], "10.0.0.2:40000");
        assert_eq!(v["queue_ms"], 1.5);
        assert_eq!(v["connect_ms"], 0.25);
        assert_eq!(v["bytes_to_client"], 1234);
        assert_eq!(v["time"], "2025-12-01T12:00:00.123000Z");
    }

    #[test]
    fn a_hostile_server_name_cannot_forge_a_line_or_a_field() {
        let evil =
            "a.example\n2025-12-01T00:00:00Z close l1 6.6.6.6:1 x/y - 0/0/0 0 0 client_fin 1 \\x";
        let mut l = line();
        l.sni = Some(evil);
        for f in [LogFormat::Text, LogFormat::Json] {
            let mut b = Vec::new();
            format_line(&mut b, f, &l);
            let s = String::from_utf8(b).unwrap();
            assert_eq!(s.matches('\n').count(), 1, "{s}");
            if f == LogFormat::Text {
                let sni = s.trim_end().rsplit_once(" sni=").unwrap().1;
                assert!(!sni.contains(' '), "{sni}");
                assert!(sni.contains("\\x0a") && sni.contains("\\x5cx"), "{sni}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&s).unwrap();
                assert_eq!(v["sni"], evil);
            }
        }
    }

    #[test]
    fn stderr_writes_are_cut_at_line_ends() {
        let buf = b"aaaa\nbbbb\ncccccccccc\nd\n";
        let parts: Vec<&[u8]> = chunks(buf, 6).collect();
        assert_eq!(parts.concat(), buf.to_vec());
        for p in &parts {
            assert!(p.ends_with(b"\n"), "{:?}", String::from_utf8_lossy(p));
        }
        assert_eq!(parts[2], b"cccccccccc\n", "a long line stays whole");
    }

    #[test]
    fn lines_reach_the_file_and_a_reopen_follows_a_rename() {
        let dir = std::env::temp_dir().join(format!("lb-alog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("access.log");
        let cfg = AccessLogConfig {
            enabled: true,
            path: Some(p.clone()),
            ..Default::default()
        };
        let log = AccessLog::start(&cfg).unwrap();
        log.submit(b"one\n".to_vec(), 1);
        log.flush(Duration::from_secs(5));
        std::fs::rename(&p, dir.join("access.log.1")).unwrap();
        log.submit(b"two\n".to_vec(), 1);
        log.flush(Duration::from_secs(5));
        log.reopen();
        log.submit(b"three\n".to_vec(), 1);
        log.flush(Duration::from_secs(5));
        assert_eq!(
            std::fs::read_to_string(dir.join("access.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "three\n");
        assert_eq!(log.lines.load(Ordering::Relaxed), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
