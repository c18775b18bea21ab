//! Limits and access lists with real sockets: a backend's max_connections under many more
//! clients (the queue serves them, or gives up at its timeout), per-source limits, allow and
//! deny lists, and the listener's and process's max_connections.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// A backend written here that counts the connections it holds at once: each one reads a
/// request head, waits `hold`, answers and closes.
struct Counting {
    addr: SocketAddr,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    served: Arc<AtomicU64>,
}

fn counting_backend(hold: Duration) -> Counting {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (now, most, served) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (n, m, s) = (now.clone(), most.clone(), served.clone());
    // The thread ends with the test process; it serves only this test's lb.
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let (n, m, s) = (n.clone(), m.clone(), s.clone());
            std::thread::spawn(move || {
                let open = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(open, Ordering::SeqCst);
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => head.extend_from_slice(&b[..k]),
                    }
                }
                std::thread::sleep(hold);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nX-Server-Id: counted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                s.fetch_add(1, Ordering::SeqCst);
                // Counted out before the close, so that lb cannot see the slot free first.
                n.fetch_sub(1, Ordering::SeqCst);
                drop(c);
            });
        }
    });
    Counting {
        addr,
        now,
        most,
        served,
    }
}

/// One request; the whole response, or the error that ended it.
fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn stats(lb: &Proc) -> serde_json::Value {
    let (code, body) = admin_call(lb.admin.unwrap(), None, "GET", "/lb/stats", "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn metrics(lb: &Proc) -> String {
    http_request(lb.admin.unwrap(), "GET", "/metrics", &[], "").2
}

#[test]
fn a_backend_at_max_connections_never_sees_more_and_the_queue_serves_every_client() {
    let b = counting_backend(Duration::from_millis(40));
    let cfg = format!(
        r#"
[health]
check = "none"
[limits]
queue_timeout_ms = 30000
max_queue = 1000
[[backends]]
name = "small"
address = "{}"
max_connections = 10
"#,
        b.addr
    );
    // Two cores: slots are shared by both, and a slot freed on one core serves the other's
    // queue.
    let (lb, _cfg) = lb_with_config(&cfg, &["--cores", "2"]);
    let t0 = Instant::now();
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let a = lb.addr;
            std::thread::spawn(move || get(a))
        })
        .collect();
    let mut ok = 0;
    for c in clients {
        let r = c.join().unwrap();
        match r {
            Ok(body) if body.ends_with("ok") => ok += 1,
            other => panic!("a queued client was not served: {other:?}"),
        }
    }
    let took = t0.elapsed();
    assert_eq!(ok, 200);
    assert_eq!(b.served.load(Ordering::SeqCst), 200);
    let most = b.most.load(Ordering::SeqCst);
    assert!(most <= 10, "the backend saw {most} connections at once");
    assert!(
        most >= 5,
        "the limit should be used, saw only {most} at once"
    );
    // 200 clients, 10 at a time, 40 ms each: at least 0.8 s.
    assert!(took >= Duration::from_millis(700), "{took:?}");
    let s = stats(&lb);
    let q = &s["services"][0]["queue"];
    assert!(q["served"].as_u64().unwrap() >= 100, "{q}");
    assert_eq!(q["timeouts"], 0, "{q}");
    assert_eq!(q["queued"], 0, "{q}");
    assert_eq!(s["services"][0]["backends"][0]["max_connections"], 10);
    assert_eq!(s["services"][0]["backends"][0]["slots_taken"], 0);
    let m = metrics(&lb);
    assert!(
        m.contains(&format!(
            "lb_backend_max_connections{{service=\"default\",backend=\"small\",address=\"{}\"}} 10",
            b.addr
        )),
        "{m}"
    );
    assert!(
        m.contains("lb_service_queue_served_total{service=\"default\"}"),
        "{m}"
    );
}

/// lb in front of `b` alone, which may hold one connection, with `limits` as its [limits] table;
/// and a client whose request holds that connection (it is at `b` on return) until `b` answers.
fn lb_with_one_slot(
    b: &Counting,
    limits: &str,
) -> (
    Proc,
    support::tempfile_path::TempPath,
    std::thread::JoinHandle<std::io::Result<String>>,
) {
    let cfg = format!(
        r#"
[health]
check = "none"
[limits]
{limits}
[[backends]]
name = "one"
address = "{}"
max_connections = 1
"#,
        b.addr
    );
    let (lb, cfg) = lb_with_config(&cfg, &[]);
    let a = lb.addr;
    let holder = std::thread::spawn(move || get(a));
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.now.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first client never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (lb, cfg, holder)
}

#[test]
fn a_client_queued_past_queue_timeout_is_closed_and_counted() {
    let b = counting_backend(Duration::from_millis(1500));
    let (lb, _cfg, first) = lb_with_one_slot(&b, "queue_timeout_ms = 200");
    let t0 = Instant::now();
    let second = get(lb.addr);
    let waited = t0.elapsed();
    assert!(
        !second.as_deref().unwrap_or("").contains("200 OK"),
        "{second:?}"
    );
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1200),
        "closed after {waited:?}, the timeout is 200 ms"
    );
    assert!(first.join().unwrap().unwrap().ends_with("ok"));
    assert_eq!(b.most.load(Ordering::SeqCst), 1);
    let q = &stats(&lb)["services"][0]["queue"];
    assert_eq!(q["timeouts"], 1, "{q}");
    assert_eq!(q["timeout_ms"], 200, "{q}");
}

#[test]
fn a_full_queue_refuses_at_once() {
    let b = counting_backend(Duration::from_millis(1500));
    let (lb, _cfg, held) = lb_with_one_slot(&b, "queue_timeout_ms = 5000\nmax_queue = 1");
    let a = lb.addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    let queued = std::thread::spawn(move || get(a));
    while stats(&lb)["services"][0]["queue"]["queued"] != 1 {
        assert!(Instant::now() < deadline, "the second client never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let third = get(lb.addr);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(!third.as_deref().unwrap_or("").contains("200 OK"));
    assert!(held.join().unwrap().unwrap().ends_with("ok"));
    assert!(
        queued.join().unwrap().unwrap().ends_with("ok"),
        "the queued one is served next"
    );
    assert_eq!(stats(&lb)["services"][0]["queue"]["full"], 1);
}

/// Whether lb refused a connection: reset, or closed before any response.
fn refused(r: &std::io::Result<String>) -> bool {
    match r {
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        ),
        Ok(s) => s.is_empty(),
    }
}

/// A connection from `ip` (a loopback address) holding until dropped, through lb.
fn hold_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2_connect(ip, addr);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock
}

fn socket2_connect(ip: &str, addr: SocketAddr) -> TcpStream {
    // std cannot bind before connect: do it by hand through libc.
    use std::os::fd::FromRawFd;
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor this function owns; it is handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from(ip).to_be();
        assert_eq!(
            libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0
        );
        let SocketAddr::V4(to) = addr else { panic!() };
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as u16;
        da.sin_port = to.port().to_be();
        da.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let rc = libc::connect(
            fd,
            &da as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// One request from `ip`.
fn get_from(ip: &str, addr: SocketAddr) -> std::io::Result<String> {
    let mut s = hold_from(ip, addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn a_source_over_its_limit_is_refused_while_another_is_served() {
    let b = backend("b");
    let cfg = format!(
        r#"
[health]
check = "none"
[limits]
max_connections_per_ip = 2
[[backends]]
name = "b"
address = "{}"
"#,
        b.addr
    );
    let (lb, _cfg) = lb_with_config(&cfg, &[]);
    // Two idle connections from 127.0.0.2 use its allowance.
    let h1 = hold_from("127.0.0.2", lb.addr);
    let h2 = hold_from("127.0.0.2", lb.addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&lb)["listeners"][0]["active"].as_u64().unwrap() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let third = get_from("127.0.0.2", lb.addr);
    assert!(refused(&third), "{third:?}");
    let other = get_from("127.0.0.3", lb.addr).unwrap();
    assert!(other.contains("X-Server-Id: b"), "{other}");
    drop((h1, h2));
    // Its slots come back when its connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get_from("127.0.0.2", lb.addr).is_ok_and(|r| r.contains("200 OK")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.2 never got its slots back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let l = &stats(&lb)["listeners"][0];
    // At least the third; a retry above may have come before lb saw h1 and h2 close.
    assert!(l["refused_per_ip"].as_u64().unwrap() >= 1, "{l}");
    assert_eq!(l["max_connections_per_ip"], 2, "{l}");
    let m = metrics(&lb);
    let line = format!(
        "lb_listener_refused_total{{listener=\"default\",address=\"{}\",reason=\"per_ip\"}} {}",
        lb.addr, l["refused_per_ip"]
    );
    assert!(m.contains(&line), "{line} not in {m}");
}

#[test]
fn new_connections_per_source_per_second_are_rate_limited() {
    let b = backend("b");
    let cfg = format!(
        r#"
[health]
check = "none"
[limits]
max_new_connections_per_ip_per_s = 5
[[backends]]
name = "b"
address = "{}"
"#,
        b.addr
    );
    let (lb, _cfg) = lb_with_config(&cfg, &[]);
    // A burst of 20 in well under a second: the first 5 (a second's worth) pass.
    let results: Vec<_> = (0..20).map(|_| get_from("127.0.0.4", lb.addr)).collect();
    let served = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|s| s.contains("200 OK")))
        .count();
    assert!((5..=7).contains(&served), "{served} of 20 served");
    assert!(results.iter().filter(|r| refused(r)).count() >= 13);
    // Another source has its own bucket.
    assert!(get_from("127.0.0.5", lb.addr).unwrap().contains("200 OK"));
    // Tokens come back at 5 per second.
    std::thread::sleep(Duration::from_millis(450));
    assert!(get_from("127.0.0.4", lb.addr).unwrap().contains("200 OK"));
    let l = &stats(&lb)["listeners"][0];
    assert!(l["refused_rate"].as_u64().unwrap() >= 13, "{l}");
}

#[test]
fn deny_and_allow_lists_reset_refused_sources_at_the_listener_and_the_service() {
    let (a, b) = (backend("a"), backend("b"));
    let toml = format!(
        r#"
[health]
check = "none"
[limits]
deny = ["127.0.0.9/32"]
[[services]]
name = "web"
[[services.backends]]
name = "a"
address = "{}"
[[services]]
name = "inner"
[services.limits]
allow = ["127.0.0.1/32"]
[[services.backends]]
name = "b"
address = "{}"
[[listeners]]
name = "pub"
address = "127.0.0.1:0"
service = "web"
allow = ["127.0.0.0/24"]
[[listeners]]
name = "in"
address = "127.0.0.1:0"
service = "inner"
"#,
        a.addr, b.addr
    );
    let (lb, _cfg, at) = lb_with_listeners(&toml, &["pub", "in"], &["--cores", "1"]);
    assert!(get_from("127.0.0.1", at["pub"])
        .unwrap()
        .contains("X-Server-Id: a"));
    // The listener's allow list replaces the top-level's (none), the top-level deny stays.
    for ip in ["127.0.0.9", "127.0.1.1"] {
        let r = get_from(ip, at["pub"]);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{ip}: {r:?}"
        );
    }
    assert!(get_from("127.0.0.1", at["in"])
        .unwrap()
        .contains("X-Server-Id: b"));
    let r = get_from("127.0.0.7", at["in"]);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{r:?}"
    );
    let s = stats(&lb);
    let pubs = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "pub")
        .unwrap();
    assert_eq!(pubs["denied"], 2, "{pubs}");
    assert_eq!(pubs["allow"][0], "127.0.0.0/24", "{pubs}");
    let m = metrics(&lb);
    assert!(
        m.contains(&format!(
            "lb_listener_refused_total{{listener=\"pub\",address=\"{}\",reason=\"denied\"}} 2",
            at["pub"]
        )),
        "{m}"
    );
}

#[test]
fn at_max_connections_lb_stops_accepting_and_resumes_below_it() {
    let b = backend("b");
    for (where_, extra) in [
        ("[limits]\nmax_connections = 2", "process"),
        ("", "listener"),
    ] {
        let listener_key = if extra == "listener" {
            "max_connections = 2"
        } else {
            ""
        };
        let toml = format!(
            r#"
[health]
check = "none"
{where_}
[[backends]]
name = "b"
address = "{}"
[[listeners]]
name = "l"
address = "127.0.0.1:0"
service = "default"
{listener_key}
"#,
            b.addr
        );
        let (lb, _cfg, at) = lb_with_listeners(&toml, &["l"], &["--cores", "1"]);
        let h1 = hold_from("127.0.0.1", at["l"]);
        let h2 = hold_from("127.0.0.1", at["l"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats(&lb)["listeners"][0]["active"].as_u64().unwrap() < 2 {
            assert!(Instant::now() < deadline, "{extra}");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The third is left in the kernel's queue: connected, but nothing answers it.
        let mut third = hold_from("127.0.0.1", at["l"]);
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        let e = third.read(&mut buf).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{extra}: {e:?}"
        );
        let s = stats(&lb);
        assert_eq!(s["listeners"][0]["accepted"], 2, "{extra}: {s}");
        assert!(
            s["listeners"][0]["limit_pauses"].as_u64().unwrap() > 0,
            "{extra}"
        );
        // One closes: the waiting client is accepted and served.
        drop(h1);
        third
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = Vec::new();
        third.read_to_end(&mut out).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("200 OK"), "{extra}");
        drop(h2);
        if extra == "process" {
            assert_eq!(s["max_connections"], 2);
        } else {
            assert_eq!(s["listeners"][0]["max_connections"], 2);
        }
    }
}

#[test]
fn limits_that_make_no_sense_are_refused_with_the_key_named() {
    for (toml, key) in [
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        ("[limits]\ndeny = [\"10.0.0.0/33\"]\n", "limits.deny"),
        ("[limits]\nmax_queue = 99999999\n", "limits.max_queue"),
        (
            "[[backends]]\nname = \"x\"\naddress = \"127.0.0.1:1\"\nmax_connections = 0\n",
            "max_connections",
        ),
        ("[limits]\nmaxconn = 3\n", "maxconn"),
    ] {
        let path = tempfile_path::TempPath::new("lb-limits", "toml");
        std::fs::write(
            &path.0,
            format!("{toml}\n[[backends]]\nname = \"y\"\naddress = \"127.0.0.1:2\"\n"),
        )
        .unwrap();
        let out = std::process::Command::new(workspace_bin("lb"))
            .args(["--check-config", "--config", path.0.to_str().unwrap()])
            .env_remove("BACKEND_SERVERS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(err.contains(key), "{toml}: {err}");
    }
}

#[test]
fn sighup_applies_new_limits_and_access_lists() {
    let b = counting_backend(Duration::from_millis(300));
    let file = |extra: &str, max: &str| {
        format!(
            "[health]\ncheck = \"none\"\n{extra}\n[[backends]]\nname = \"b\"\naddress = \"{}\"\n{max}\n",
            b.addr
        )
    };
    let (mut lb, cfg) = lb_with_config(&file("", ""), &[]);
    assert!(get_from("127.0.0.6", lb.addr).unwrap().ends_with("ok"));
    std::fs::write(
        &cfg.0,
        file(
            "[limits]\ndeny = [\"127.0.0.6\"]\nqueue_timeout_ms = 5000",
            "max_connections = 1",
        ),
    )
    .unwrap();
    signal(&lb.child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&lb)["services"][0]["backends"][0]["max_connections"] != 1 {
        assert!(Instant::now() < deadline, "the reload never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = get_from("127.0.0.6", lb.addr);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{r:?}"
    );
    // Five at once through a backend now capped at one: served one at a time.
    let a = lb.addr;
    let c: Vec<_> = (0..5).map(|_| std::thread::spawn(move || get(a))).collect();
    for c in c {
        assert!(c.join().unwrap().unwrap().ends_with("ok"));
    }
    assert_eq!(b.most.load(Ordering::SeqCst), 1);
    let s = stats(&lb);
    assert_eq!(s["listeners"][0]["deny"][0], "127.0.0.6/32", "{s}");
    assert_eq!(s["services"][0]["queue"]["timeout_ms"], 5000);
    lb.kill();
}
