//! Shared helpers for the integration tests: start the real binary on port 0 (killed on drop),
//! and a tiny blocking HTTP/1.1 client on std sockets with timeouts everywhere.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Read/write timeout on every test socket: nothing waits forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Variables the binary reads; removed so that the test environment cannot leak in.
const SERVER_VARS: [&str; 7] = [
    "SERVER_ID",
    "HOST",
    "PORT",
    "FAILURE_RATE",
    "MIN_LATENCY",
    "MAX_LATENCY",
    "BODY_SIZE",
];

/// This machine's host name, as the kernel reports it: what a `backend` without `--id` or
/// `SERVER_ID` calls itself (read here from /proc, apart from the binary's gethostname(2)).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("/proc/sys/kernel/hostname")
        .trim()
        .to_string()
}

/// A running `backend`; dropping it kills the process (by PID) and reaps it.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub line: String,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
}

/// `backend --listen 127.0.0.1:0 <args>`.
pub fn start(args: &[&str]) -> Server {
    start_with_env(args, &[])
}

/// `backend --listen 127.0.0.1:0 <args>` with extra environment variables.
pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    start_raw(&all, env)
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    command_under(&[], args, env)
}

/// The binary run by `prefix` (e.g. `unshare --pid --fork`), or directly if it is empty.
fn command_under(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
    let bin = env!("CARGO_BIN_EXE_backend");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args);
    for v in SERVER_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Starts the binary with exactly these arguments and waits for its start line.
pub fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Server {
    start_under(&[], args, env)
}

/// [`start_raw`] under a wrapper command; `Server::child` is then the wrapper.
pub fn start_under(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = command_under(prefix, args, env);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    if std::env::var_os("BACKEND_TEST_LOG").is_some() {
        cmd.stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::null());
    }
    let mut child = cmd.spawn().expect("spawn backend");
    let stdout = child.stdout.take().expect("stdout");
    // The guard exists before we wait, so a failed start still kills the process.
    let mut server = Server {
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
        line: String::new(),
        _stdout: None,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send((line, reader));
    });
    let (line, reader) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("backend printed no start line within 20s");
    let line = line.trim_end().to_string();
    let addr = line
        .split(" listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
    server.addr = addr.parse().expect("address in start line");
    server.line = line;
    // Keep stdout open: a closed pipe must not bother the server.
    server._stdout = Some(reader);
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some() {
        assert!(server.line.ends_with("epoll)"), "{}", server.line);
    }
    server
}

/// Runs the binary to completion (bounded: killed after 20s) and returns its output.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_bounded(command(args, env), Duration::from_secs(20))
}

/// Runs any command, killing it (by PID) if it outlives `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of our still-running child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let out = rx.recv_timeout(Duration::from_secs(5));
            panic!("{cmd:?} did not finish within {limit:?}: {out:?}");
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A connection with a buffered reader for responses.
pub struct Client {
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            reader: BufReader::new(connect(addr)),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream().write_all(raw).expect("send");
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read()
    }

    pub fn post(&mut self, path: &str) -> Resp {
        self.send(
            format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        self.read()
    }

    pub fn read(&mut self) -> Resp {
        read_response(&mut self.reader, false)
    }

    pub fn read_head_only(&mut self) -> Resp {
        read_response(&mut self.reader, true)
    }

    /// True if the server closed (EOF or reset) within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        }
    }

    pub fn shutdown_write(&mut self) {
        self.stream().shutdown(Shutdown::Write).unwrap();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn count(&self) -> u64 {
        self.json()["requests"].as_u64().expect("requests count")
    }
}

/// Reads one response: status line, headers, then a Content-Length body (none for HEAD).
pub fn read_response(r: &mut BufReader<TcpStream>, head_only: bool) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(!line.is_empty(), "connection closed before a response");
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h
            .split_once(':')
            .unwrap_or_else(|| panic!("bad header {h:?}"));
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        version,
        headers,
        body: Vec::new(),
    };
    if !head_only {
        let len: usize = resp
            .header("content-length")
            .expect("content-length")
            .parse()
            .unwrap();
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body).expect("body");
    }
    resp
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    Client::new(addr).get(path)
}

/// Polls `f` every 20ms for up to 5s until it returns true.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
