//! The access log with real processes: one line per connection with the right termination
//! reason for each way a connection ends, the PROXY client, periodic lines, the rate cap,
//! SIGUSR1 reopening after logrotate's rename, the last lines written at a stop, and SIGHUP
//! turning the log on.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::*;

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until the log holds a line matching `pred` (lines are written within about 100 ms).
fn wait_line(
    path: &std::path::Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = json_lines(path).into_iter().find(&pred) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no such line in {:?}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn reset(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// A backend written here: `resets` answers nothing and resets each connection; otherwise it
/// answers and closes first.
fn scripted_backend(resets: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            if resets {
                reset(&c);
            } else {
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        }
    });
    addr
}

#[test]
fn each_way_a_connection_ends_has_its_reason_in_the_json_log() {
    let dir = TempDir::new("lb-access");
    let log = dir.0.join("access.log");
    let (ok, rst, closes) = (
        backend("ok"),
        scripted_backend(true),
        scripted_backend(false),
    );
    let dead = free_port();
    let toml = format!(
        r#"
[health]
check = "none"
[access_log]
path = "{}"
format = "json"
[timeouts]
idle_ms = 300
[retry]
tries = 1
[[services]]
name = "web"
[[services.backends]]
name = "ok"
address = "{}"
[[services]]
name = "resets"
[[services.backends]]
name = "rst"
address = "{rst}"
[[services]]
name = "closes"
[[services.backends]]
name = "cl"
address = "{closes}"
[[services]]
name = "dead"
[[services.backends]]
name = "gone"
address = "127.0.0.1:{dead}"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
service = "web"
deny = ["127.0.0.9"]
[[listeners]]
name = "resets"
address = "127.0.0.1:0"
service = "resets"
[[listeners]]
name = "closes"
address = "127.0.0.1:0"
service = "closes"
[[listeners]]
name = "dead"
address = "127.0.0.1:0"
service = "dead"
[[listeners]]
name = "proxied"
address = "127.0.0.1:0"
service = "web"
accept_proxy = "v1"
trusted_proxies = ["127.0.0.1"]
"#,
        log.display(),
        ok.addr
    );
    let names = ["web", "resets", "closes", "dead", "proxied"];
    let (_lb, _cfg, at) = lb_with_listeners(&toml, &names, &["--cores", "1"]);

    // A request the client ends (curl-like: it closes after the answer).
    let mut s = TcpStream::connect(at["web"]).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut b = [0u8; 4096];
    let n = s.read(&mut b).unwrap();
    assert!(n > 0);
    let client = s.local_addr().unwrap().to_string();
    drop(s);
    let l = wait_line(&log, |l| l["client"] == client.as_str());
    assert_eq!(l["event"], "close");
    assert_eq!(l["end"], "client_fin", "{l}");
    assert_eq!(l["listener"], "web");
    assert_eq!(l["service"], "web");
    assert_eq!(l["backend"], "ok");
    assert_eq!(l["backend_address"], ok.addr.to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["bytes_to_backend"], 27);
    assert!(l["bytes_to_client"].as_u64().unwrap() >= n as u64, "{l}");
    assert!(l["connect_ms"].as_f64().unwrap() >= 0.0);
    assert!(l["via"].is_null());

    // The backend resets; the backend closes first; nothing listens; the idle timeout.
    let _ = get(at["resets"]);
    wait_line(&log, |l| {
        l["listener"] == "resets" && l["end"] == "backend_reset"
    });
    assert!(get(at["closes"]).unwrap().ends_with("ok"));
    wait_line(&log, |l| {
        l["listener"] == "closes" && l["end"] == "backend_fin"
    });
    let _ = get(at["dead"]);
    let l = wait_line(&log, |l| l["listener"] == "dead");
    assert_eq!(l["end"], "connect_failed", "{l}");
    assert_eq!(l["attempts"], 1);
    assert!(l["backend"].is_null());
    let idle = TcpStream::connect(at["web"]).unwrap();
    let idle_client = idle.local_addr().unwrap().to_string();
    let l = wait_line(&log, |l| l["client"] == idle_client.as_str());
    assert_eq!(l["end"], "idle_timeout", "{l}");
    assert!(l["duration_ms"].as_f64().unwrap() >= 290.0, "{l}");
    drop(idle);

    // The client resets in the middle of its connection.
    let s = TcpStream::connect(at["web"]).unwrap();
    let rc = s.local_addr().unwrap().to_string();
    (&s).write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    reset(&s);
    drop(s);
    let l = wait_line(&log, |l| l["client"] == rc.as_str());
    assert_eq!(l["end"], "client_reset", "{l}");

    // Denied by the listener's list: a line with no service.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.9:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&at["web"].into()).unwrap();
    let l = wait_line(&log, |l| {
        l["client"].as_str().unwrap_or("").starts_with("127.0.0.9:")
    });
    assert_eq!(l["end"], "denied", "{l}");
    assert!(l["service"].is_null());
    drop(s);

    // A PROXY header: the client it names, and the balancer as `via`.
    let mut p = TcpStream::connect(at["proxied"]).unwrap();
    p.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    p.read_to_end(&mut out).unwrap();
    let via = p.local_addr().unwrap().to_string();
    let l = wait_line(&log, |l| l["client"] == "198.51.100.7:40000");
    assert_eq!(l["via"], via.as_str(), "{l}");
    // A bad PROXY header.
    let mut p = TcpStream::connect(at["proxied"]).unwrap();
    p.write_all(b"HELLO\r\n\r\n").unwrap();
    let bad = p.local_addr().unwrap().to_string();
    let l = wait_line(&log, |l| l["client"] == bad.as_str());
    assert_eq!(l["end"], "protocol", "{l}");
}

#[test]
fn text_lines_sigusr1_reopens_and_the_last_lines_are_written_at_a_stop() {
    let dir = TempDir::new("lb-access-text");
    let log = dir.0.join("access.log");
    let b = backend("b");
    let toml = format!(
        "[health]\ncheck = \"none\"\n[access_log]\npath = \"{}\"\n[shutdown]\ngrace_ms = 300\n[[backends]]\nname = \"b\"\naddress = \"{}\"\n",
        log.display(),
        b.addr
    );
    let (mut lb, _cfg) = lb_with_config(&toml, &[]);
    assert!(get(lb.addr).unwrap().contains("200 OK"));
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text(&log).contains(" close ") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = text(&log);
    let f: Vec<&str> = line.split_whitespace().collect();
    // TIME EVENT LISTENER CLIENT SERVICE/BACKEND BACKEND_ADDRESS Tw/Tc/Tt UP DOWN END ATTEMPTS
    assert_eq!(f.len(), 11, "{line}");
    assert_eq!(f[1], "close");
    assert_eq!(f[2], "default");
    assert_eq!(f[4], "default/b");
    assert_eq!(f[5], b.addr.to_string());
    assert_eq!(f[6].split('/').count(), 3);
    // Connection: close: the backend ends first.
    assert_eq!(f[9], "backend_fin");
    // logrotate: rename, then SIGUSR1.
    let rotated = dir.0.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(&lb.child, libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the log");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(get(lb.addr).unwrap().contains("200 OK"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text(&log).contains(" close ") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        text(&rotated).lines().count(),
        1,
        "the old file keeps only its line"
    );
    // A connection open at SIGTERM, cut at the 300 ms deadline: its line is written before
    // lb exits.
    let held = TcpStream::connect(lb.addr).unwrap();
    let held_client = held.local_addr().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(100));
    signal(&lb.child, libc::SIGTERM);
    assert!(wait_exit(&mut lb.child, Duration::from_secs(5)).is_some());
    let last = text(&log);
    let cut = last
        .lines()
        .find(|l| l.contains(&held_client))
        .unwrap_or_else(|| panic!("no line for the cut connection in {last}"));
    assert!(cut.contains(" shutdown "), "{cut}");
    drop(held);
}

#[test]
fn long_connections_get_periodic_lines_and_the_rate_cap_says_what_it_dropped() {
    let dir = TempDir::new("lb-access-periodic");
    let log = dir.0.join("access.log");
    let echo = echo_backend();
    let toml = format!(
        "[health]\ncheck = \"none\"\n[access_log]\npath = \"{}\"\nformat = \"json\"\ninterval_ms = 200\nmax_lines_per_s = 5\n[[backends]]\nname = \"e\"\naddress = \"{}\"\n",
        log.display(),
        echo.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let mut s = TcpStream::connect(lb.addr).unwrap();
    let me = s.local_addr().unwrap().to_string();
    let mut buf = [0u8; 5];
    for _ in 0..5 {
        s.write_all(b"hello").unwrap();
        s.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(s);
    let l = wait_line(&log, |l| {
        l["client"] == me.as_str() && l["event"] == "close"
    });
    assert_eq!(l["bytes_to_backend"], 25);
    assert_eq!(l["bytes_to_client"], 25);
    let periodic: Vec<_> = json_lines(&log)
        .into_iter()
        .filter(|l| l["client"] == me.as_str() && l["event"] == "periodic")
        .collect();
    assert!((2..=4).contains(&periodic.len()), "{periodic:?}");
    assert!(periodic[0]["end"].is_null());
    assert!(periodic[0]["bytes_to_backend"].as_u64().unwrap() > 0);
    // Thirty short connections at once against 5 lines a second: most dropped, and said so.
    for _ in 0..30 {
        let mut c = TcpStream::connect(lb.addr).unwrap();
        c.write_all(b"x").unwrap();
        c.read_exact(&mut buf[..1]).unwrap();
    }
    let d = wait_line(&log, |l| l["event"] == "dropped");
    assert!(d["lines"].as_u64().unwrap() >= 20, "{d}");
    let (_, body) = admin_call(lb.admin.unwrap(), None, "GET", "/lb/stats", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["access_log"]["dropped"].as_u64().unwrap() >= 20,
        "{}",
        v["access_log"]
    );
    assert_eq!(v["access_log"]["format"], "json");
}

#[test]
fn sighup_turns_the_log_on_and_a_path_lb_cannot_write_refuses_the_reload() {
    let dir = TempDir::new("lb-access-reload");
    let log = dir.0.join("access.log");
    let b = backend("b");
    let file = |extra: &str| {
        format!(
            "[health]\ncheck = \"none\"\n{extra}\n[[backends]]\nname = \"b\"\naddress = \"{}\"\n",
            b.addr
        )
    };
    let (lb, cfg) = lb_with_config(&file(""), &[]);
    assert!(get(lb.addr).unwrap().contains("200 OK"));
    std::fs::write(
        &cfg.0,
        file(&format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"",
            log.display()
        )),
    )
    .unwrap();
    signal(&lb.child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = get(lb.addr);
        if !json_lines(&log).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never turned the log on"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(
        &cfg.0,
        file("[access_log]\npath = \"/nonexistent-dir/access.log\""),
    )
    .unwrap();
    signal(&lb.child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reload = loop {
        let (_, body) = admin_call(lb.admin.unwrap(), None, "GET", "/lb/stats", "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["reload"]["ok"] == false {
            break v;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        reload["reload"]["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent-dir/access.log"),
        "{}",
        reload["reload"]
    );
    assert_eq!(reload["access_log"]["path"], log.display().to_string());
}

#[test]
fn a_log_file_lb_cannot_open_stops_it_at_start() {
    let path = tempfile_path::TempPath::new("lb-access-bad", "toml");
    std::fs::write(
        &path.0,
        "[access_log]\npath = \"/nonexistent-dir/a.log\"\n[[backends]]\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(workspace_bin("lb"))
        .args([
            "--config",
            path.0.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--cores",
            "1",
        ])
        .env_remove("BACKEND_SERVERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent-dir/a.log"), "{err}");
}

#[test]
fn every_relay_mode_names_the_side_that_closed_first() {
    // Each relay must tell the log whose FIN came first; the multishot relay once did not, and
    // a backend that closed first was logged as the client's close.
    let closes = scripted_backend(false);
    for mode in ["completion", "readiness", "multishot"] {
        let dir = TempDir::new("lb-access-modes");
        let log = dir.0.join("access.log");
        let toml = format!(
            r#"
[health]
check = "none"
[relay]
mode = "{mode}"
[access_log]
path = "{}"
format = "json"
[[services]]
name = "closes"
[[services.backends]]
name = "cl"
address = "{closes}"
[[listeners]]
name = "closes"
address = "127.0.0.1:0"
service = "closes"
"#,
            log.display()
        );
        let (_lb, _cfg, at) = lb_with_listeners(&toml, &["closes"], &["--cores", "1"]);
        // The backend answers and closes first.
        let mut s = TcpStream::connect(at["closes"]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert!(out.ends_with(b"ok"), "{mode}");
        let client = s.local_addr().unwrap().to_string();
        drop(s);
        let l = wait_line(&log, |l| l["client"] == client.as_str());
        assert_eq!(l["end"], "backend_fin", "{mode}: {l}");
        assert_eq!(l["bytes_to_backend"], 27, "{mode}: {l}");
    }
}

#[test]
fn a_malformed_client_hello_is_refused_where_lb_routes_or_hashes_by_sni() {
    let ok = backend("ok");
    let dir = TempDir::new("lb-access-sni");
    let log = dir.0.join("access.log");
    let toml = format!(
        r#"
[health]
check = "none"
[access_log]
path = "{}"
format = "json"
[[services]]
name = "web"
[[services.backends]]
name = "ok"
address = "{}"
[[services]]
name = "keyed"
algorithm = "consistent_hash"
[services.hash]
key = "sni"
[[services.backends]]
name = "ok2"
address = "{}"
[[listeners]]
name = "routes"
address = "127.0.0.1:0"
default_service = "web"
[[listeners.routes]]
sni = "a.example"
service = "web"
[[listeners]]
name = "keyed"
address = "127.0.0.1:0"
service = "keyed"
"#,
        log.display(),
        ok.addr,
        ok.addr
    );
    let (_lb, _cfg, at) = lb_with_listeners(&toml, &["routes", "keyed"], &["--cores", "1"]);
    // A ClientHello whose session id claims 33 bytes (at most 32 exist).
    let mut body = vec![0x03, 0x03];
    body.extend([0u8; 32]);
    body.push(33);
    body.extend([0u8; 33]);
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    record.extend(&hs);
    for name in ["routes", "keyed"] {
        let mut s = TcpStream::connect(at[name]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client = s.local_addr().unwrap().to_string();
        s.write_all(&record).unwrap();
        let mut b = [0u8; 64];
        // Closed (or reset) without an answer from any backend.
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "{name}");
        let l = wait_line(&log, |l| l["client"] == client.as_str());
        assert_eq!(l["end"], "protocol", "{name}: {l}");
        assert_eq!(l["listener"], name, "{l}");
        assert!(l["backend"].is_null(), "{name}: {l}");
    }
}
