//! Test support: start real `backend` and `lb` processes on loopback port 0 and talk to them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod netns;

/// Every `relay.mode`: the relay's behavioural tests run in each.
#[allow(dead_code)]
pub const RELAY_MODES: [&str; 3] = ["completion", "readiness", "multishot"];

/// A child process killed (by PID, through its handle) when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// lb's admin API address, when it has one.
    pub admin: Option<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a workspace binary. `cargo test --workspace` builds every binary before running tests;
/// when a single package is tested, build the missing one.
pub fn workspace_bin(name: &str) -> PathBuf {
    if name == "lb" {
        return PathBuf::from(env!("CARGO_BIN_EXE_lb"));
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    line.split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// Starts a process that prints `... listening on ADDR ...` as its first stdout line (lb prints
/// `lb admin listening on ADDR` next when its admin API is on).
pub fn start(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(workspace_bin(bin));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr =
        listening_addr(&line).unwrap_or_else(|| panic!("{bin} printed no address: {line:?}"));
    let mut admin = None;
    if bin == "lb" && !args.contains(&"off") {
        line.clear();
        out.read_line(&mut line).unwrap();
        admin = listening_addr(&line);
    }
    // Keep draining stdout so that the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Proc { child, addr, admin }
}

pub fn backend(id: &str) -> Proc {
    start("backend", &["--listen", "127.0.0.1:0", "--id", id], &[])
}

pub fn echo_backend() -> Proc {
    start(
        "backend",
        &["--listen", "127.0.0.1:0", "--id", "echo", "--mode", "echo"],
        &[],
    )
}

/// Starts `lb` on port 0 in front of `backends` with extra arguments.
pub fn lb(backends: &[&Proc], extra: &[&str]) -> Proc {
    let list = backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--backend",
        &list,
    ];
    args.extend_from_slice(extra);
    one_core_unless_told(&mut args);
    start("lb", &args, &[])
}

/// Starts `lb` with a config file written from `toml` (backends appended by the caller).
pub fn lb_with_config(toml: &str, extra: &[&str]) -> (Proc, tempfile_path::TempPath) {
    let path = tempfile_path::TempPath::new("lb-test", "toml");
    std::fs::write(&path.0, toml).unwrap();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--config",
        path.0.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    one_core_unless_told(&mut args);
    (start("lb", &args, &[]), path)
}

/// Tests count per-core figures: one worker unless a test asks for more (lb's default is
/// `cores = "auto"`, one per CPU, which differs between machines).
fn one_core_unless_told(args: &mut Vec<&str>) {
    if !args.contains(&"--cores") && !args.contains(&"--check-config") {
        args.extend_from_slice(&["--cores", "1"]);
    }
}

pub mod tempfile_path {
    /// A file path removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn new(prefix: &str, ext: &str) -> TempPath {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            TempPath(
                std::env::temp_dir().join(format!("{prefix}-{}-{n}.{ext}", std::process::id())),
            )
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// One request on a new connection, from `source_ip` if given; returns the `X-Server-Id`.
pub fn request_id(
    addr: SocketAddr,
    source_ip: Option<&str>,
    headers: &str,
) -> std::io::Result<String> {
    let mut s = match source_ip {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5))?,
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            let local: SocketAddr = format!("{ip}:0").parse().unwrap();
            sock.bind(&local.into())?;
            sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            sock.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    )?;
    // Read exactly one response, then close first: the client then keeps the TIME_WAIT, so its
    // kernel never reuses a port whose previous connection lb still holds in TIME_WAIT (with
    // thousands of new connections a minute, that reuse resets connections on loopback).
    let mut resp = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&chunk[..n]);
        if let Some(head_end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| resp.len() >= head_end + 4 + len) {
                break;
            }
        }
    }
    drop(s);
    let text = String::from_utf8_lossy(&resp);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response: {text:?}")));
    }
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-server-id")
                .then(|| v.trim().to_string())
        })
        .ok_or_else(|| std::io::Error::other("no X-Server-Id"))
}

/// Runs `loadgen` against `addr` in the background with `args` and returns its JSON report:
/// the project's own instrument counts every failed request by kind.
pub fn loadgen_background(
    addr: SocketAddr,
    args: &[&str],
) -> std::thread::JoinHandle<serde_json::Value> {
    let bin = workspace_bin("loadgen");
    let out = tempfile_path::TempPath::new("lb-loadgen", "json");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("http://{addr}/"))
        .args(args)
        .arg("--json")
        .arg(&out.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::thread::spawn(move || {
        let status = cmd.status().expect("run loadgen");
        assert!(status.success(), "loadgen failed: {status:?}");
        serde_json::from_str(&std::fs::read_to_string(&out.0).unwrap()).unwrap()
    })
}

/// One HTTP request to `addr` with extra header lines; returns (status, lower-cased head, body).
/// Sends `Host: ADDR`, the admin API's own address.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str(&format!("Connection: close\r\n\r\n{body}"));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A state-changing or reading admin request as a well-behaved client sends it: JSON content
/// type, the admin address as Host, and the bearer token when one is given.
pub fn admin_call(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    let (code, _, body) = http_request(addr, method, path, &h, body);
    (code, body)
}

/// `admin_call` without a token that must succeed (200 or 201).
pub fn admin_ok(addr: SocketAddr, method: &str, path: &str, body: &str) {
    let (code, resp) = admin_call(addr, None, method, path, body);
    assert!(code == 200 || code == 201, "{method} {path}: {code} {resp}");
}

/// Waits for `child` to exit, at most `limit`; its status.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to a process this test started.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test owns.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two services, web (backend `a`) and api (`b`), each behind a listener of its own (l1, l2), on
/// free ports; no health checks.
pub fn two_services(a: &Proc, b: &Proc) -> String {
    format!(
        r#"
[health]
check = "none"
[[services]]
name = "web"
[[services.backends]]
name = "a"
address = "{}"
[[services]]
name = "api"
[[services.backends]]
name = "b"
address = "{}"
[[listeners]]
name = "l1"
address = "127.0.0.1:0"
service = "web"
[[listeners]]
name = "l2"
address = "127.0.0.1:0"
service = "api"
"#,
        a.addr, b.addr
    )
}

/// lb started with `--config` from `toml` and `extra` arguments (no `--listen`: the file's
/// listeners), its admin API on a free port; the address of each listener, by name, from the
/// `lb listener NAME listening on ADDR` lines it prints.
pub fn lb_with_listeners(
    toml: &str,
    names: &[&str],
    extra: &[&str],
) -> (
    Proc,
    tempfile_path::TempPath,
    std::collections::HashMap<String, SocketAddr>,
) {
    let path = tempfile_path::TempPath::new("lb-listeners", "toml");
    std::fs::write(&path.0, toml).unwrap();
    let mut cmd = Command::new(workspace_bin("lb"));
    cmd.args([
        "--admin",
        "127.0.0.1:0",
        "--config",
        path.0.to_str().unwrap(),
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for v in [
        "ALGORITHM",
        "BACKEND_SERVERS",
        "HOST",
        "PORT",
        "LB_ADMIN_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().expect("start lb");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut found = std::collections::HashMap::new();
    let (mut first, mut admin) = (None, None);
    let mut line = String::new();
    while found.len() < names.len() {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "lb exited before printing its listeners"
        );
        let addr = listening_addr(&line);
        if let Some(rest) = line.strip_prefix("lb listener ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            found.insert(name, addr.unwrap());
        } else if line.starts_with("lb admin ") {
            admin = addr;
        } else if first.is_none() {
            first = addr;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (
        Proc {
            child,
            addr: first.unwrap(),
            admin,
        },
        path,
        found,
    )
}

/// Whether the programs nobody here wrote (`tools`, e.g. haproxy, nginx, openssl) are installed.
/// When one is missing: prints why and returns false, or panics when `LB_REQUIRE_TOOLS=1` (CI,
/// which installs them) asks for the test.
pub fn tools_ready(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("LB_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("LB_REQUIRE_TOOLS=1 but {test} needs {missing:?}, which is not installed");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {missing:?} not installed (LB_REQUIRE_TOOLS=1 makes this a failure)"
    );
    false
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = tempfile_path::TempPath::new(name, "d");
        let path = p.0.clone();
        drop(p);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a program nobody here wrote (HAProxy, nginx, openssl s_server) and waits until `addr`
/// accepts; killed (by PID) when dropped.
pub fn start_external(program: &str, args: &[&str], addr: SocketAddr) -> Proc {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{program} does not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc {
        child,
        addr,
        admin: None,
    }
}
