//! Small blocking test servers (std::net, one thread per connection) on 127.0.0.1:0 and a runner
//! for the real `loadgen` binary. Nothing here depends on the `backend` crate.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a test server answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// HTTP responses; see [`Http`].
    Http(Http),
    /// Reads requests and never answers.
    Silent,
    /// Echoes every byte back.
    Echo,
}

#[derive(Clone, Debug)]
pub struct Http {
    pub status: u16,
    /// `X-Server-Id` values, used in turn across all connections (empty: no header).
    pub ids: Vec<&'static str>,
    pub delay: Duration,
    pub body: &'static str,
    pub chunked: bool,
    /// Answer every request with `Connection: close` and close.
    pub close_each: bool,
    /// Close-delimited body: no Content-Length, no chunking, close after the body.
    pub read_to_close: bool,
    /// Reset (RST) the connection instead of answering every second request on it.
    pub reset_every_second: bool,
    /// Answer 400 unless the request has this header line (lowercase name: value).
    pub require_header: Option<(&'static str, &'static str)>,
    /// Answer 400 unless the request body is exactly this.
    pub require_body: Option<&'static str>,
    /// Take the `X-Server-Id` from the request instead of `ids`.
    pub id_from: Option<IdFrom>,
    /// Every connection must open with the PROXY v2 header (TCP over IPv4) of its own addresses,
    /// the client's as the source and the server's as the destination; else it is closed
    /// without an answer.
    pub require_proxy_v2: bool,
}

/// Where a test server takes its `X-Server-Id` from, so that loadgen's per-key tally shows what
/// each key's requests carried.
#[derive(Clone, Copy, Debug)]
pub enum IdFrom {
    /// The client's (source) IP address.
    PeerIp,
    /// The request target (path and query) and the Cookie header value: `"{target} {cookie}"`.
    TargetAndCookie,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            status: 200,
            ids: vec![],
            delay: Duration::ZERO,
            body: "hello",
            chunked: false,
            close_each: false,
            read_to_close: false,
            reset_every_second: false,
            require_header: None,
            require_body: None,
            id_from: None,
            require_proxy_v2: false,
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepts: Arc<AtomicUsize>,
    /// Requests read (answered or not).
    pub requests: Arc<AtomicUsize>,
}

impl Server {
    pub fn start(behavior: Behavior) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::new(AtomicUsize::new(0));
        {
            let accepts = accepts.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let behavior = behavior.clone();
                    let requests = requests.clone();
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &behavior, &requests, &counter);
                    });
                }
            });
        }
        Server {
            addr,
            accepts,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Reads one request (head and Content-Length body). `None` at EOF.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Ok(Some((head, body)));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn serve(
    mut stream: TcpStream,
    behavior: &Behavior,
    requests: &AtomicUsize,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let h = match behavior {
        Behavior::Echo => {
            let mut buf = [0u8; 65536];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n])?;
            }
        }
        Behavior::Silent => {
            let mut buf = Vec::new();
            while read_request(&mut stream, &mut buf)?.is_some() {
                requests.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        }
        Behavior::Http(h) => h,
    };
    if h.require_proxy_v2 {
        let mut got = [0u8; 28];
        stream.read_exact(&mut got)?;
        if got[..] != proxy_v2_tcp4(stream.peer_addr()?, stream.local_addr()?)[..] {
            return Ok(());
        }
    }
    let mut buf = Vec::new();
    let mut on_this_conn = 0;
    while let Some((head, body)) = read_request(&mut stream, &mut buf)? {
        requests.fetch_add(1, Ordering::SeqCst);
        on_this_conn += 1;
        if h.reset_every_second && on_this_conn % 2 == 0 {
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            return Ok(());
        }
        if !h.delay.is_zero() {
            std::thread::sleep(h.delay);
        }
        let mut status = h.status;
        if let Some((name, value)) = h.require_header {
            if !head.contains(&format!("\r\n{name}: {value}\r\n")) {
                status = 400;
            }
        }
        if let Some(want) = h.require_body {
            if body != want.as_bytes() {
                status = 400;
            }
        }
        let client_closes = head.contains("\r\nconnection: close\r\n");
        let close = h.close_each || h.read_to_close || client_closes;
        let mut out = format!("HTTP/1.1 {status} X\r\n");
        if let Some(from) = h.id_from {
            let id = match from {
                IdFrom::PeerIp => stream.peer_addr()?.ip().to_string(),
                IdFrom::TargetAndCookie => {
                    let target = head.split(' ').nth(1).unwrap_or("");
                    let cookie = head
                        .lines()
                        .find_map(|l| l.strip_prefix("cookie:"))
                        .unwrap_or("")
                        .trim();
                    format!("{target} {cookie}")
                }
            };
            out.push_str(&format!("X-Server-Id: {id}\r\n"));
        } else if !h.ids.is_empty() {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            out.push_str(&format!("X-Server-Id: {}\r\n", h.ids[n % h.ids.len()]));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        if h.chunked {
            out.push_str("Transfer-Encoding: chunked\r\n\r\n");
            // Split the body over several chunks, with an extension and a trailer.
            for piece in h.body.as_bytes().chunks(2) {
                out.push_str(&format!(
                    "{:x};ext=1\r\n{}\r\n",
                    piece.len(),
                    String::from_utf8_lossy(piece)
                ));
            }
            out.push_str("0\r\nX-Trailer: yes\r\n\r\n");
        } else if h.read_to_close {
            out.push_str("\r\n");
            out.push_str(h.body);
        } else {
            out.push_str(&format!(
                "Content-Length: {}\r\n\r\n{}",
                h.body.len(),
                h.body
            ));
        }
        stream.write_all(out.as_bytes())?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// The spec's v2 header (doc/proxy-protocol.txt, 2.2) for TCP over IPv4, written out field by
/// field: signature, version 2 + PROXY, INET + STREAM, 12 address bytes, source and destination
/// addresses, then their ports.
pub fn proxy_v2_tcp4(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("not IPv4: {source} {destination}");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// Path of a workspace binary (`lb`, `backend`). `cargo test --workspace` builds every binary
/// before running tests; when only loadgen is tested, build the missing one.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let path = exe.parent().unwrap().join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", name, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// A child process (backend or lb) killed through its handle when dropped.
pub struct Proc {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a workspace binary that prints `... listening on ADDR ...` as its first stdout line.
pub fn start_bin(name: &str, args: &[&str]) -> Proc {
    use std::io::BufRead;
    let mut child = Command::new(workspace_bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{name} printed no address: {line:?}"));
    // Keep draining stdout so that the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Proc { child, addr }
}

/// A port with nothing listening (bound once, then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<serde_json::Value>,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Runs the real binary with `args` plus `--json <tmp>`; kills it after `limit`.
pub fn loadgen(args: &[&str]) -> Run {
    loadgen_within(args, Duration::from_secs(60))
}

pub fn loadgen_within(args: &[&str], limit: Duration) -> Run {
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let json = std::env::temp_dir().join(format!("loadgen-test-{}-{n}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("loadgen {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let parsed = std::fs::read(&json)
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("valid JSON"));
    let _ = std::fs::remove_file(&json);
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
        json: parsed,
    }
}

impl Run {
    pub fn json(&self) -> &serde_json::Value {
        self.json.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON written; stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn u(&self, pointer: &str) -> u64 {
        self.json()
            .pointer(pointer)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{pointer} missing in {:#}", self.json()))
    }

    pub fn f(&self, pointer: &str) -> f64 {
        self.json()
            .pointer(pointer)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("{pointer} missing in {:#}", self.json()))
    }
}
