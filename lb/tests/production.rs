//! What an operator needs in production (issue 12): lame-duck shutdown, limits, access lists,
//! the access log, keepalive and lifetimes, reloads and upgrades that keep state, the seed
//! projects' interfaces.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_lame_duck_answers_503_at_once_keeps_serving_for_its_delay_then_stops() {
    let a = backend("a");
    let toml = format!(
        "[health]\ncheck = \"none\"\n[shutdown]\nlame_duck_ms = 1500\ngrace_ms = 2000\n[[backends]]\nname = \"a\"\naddress = \"{}\"\n",
        a.addr
    );
    let (mut lb, _cfg) = lb_with_config(&toml, &[]);
    let adm = lb.admin.unwrap();
    assert_eq!(admin_call(adm, None, "GET", "/health", "").0, 200);
    let t0 = Instant::now();
    signal(&lb.child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (code, body) = admin_call(adm, None, "GET", "/health", "");
        if code == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health still {code} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // Still accepting and serving during the lame duck.
    while t0.elapsed() < Duration::from_millis(1200) {
        assert_eq!(
            request_id(lb.addr, None, "").unwrap(),
            "a",
            "refused during the lame duck"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then it stops accepting and exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(lb.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after the lame duck"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "stopped early: {:?}",
        t0.elapsed()
    );
    assert!(wait_exit(&mut lb.child, Duration::from_secs(5)).is_some());
}

#[test]
fn backend_servers_take_urls_and_weights_and_a_name_that_does_not_resolve_yet_is_retried() {
    let (a, b) = (backend("a"), backend("b"));
    let hosts = tempfile_path::TempPath::new("lb-hosts", "txt");
    std::fs::write(&hosts.0, "# nothing yet\n").unwrap();
    let cfg = tempfile_path::TempPath::new("lb-seed4", "toml");
    std::fs::write(
        &cfg.0,
        format!(
            "[health]\ncheck = \"none\"\n[discovery]\ninterval_ms = 100\nhosts_file = \"{}\"\n",
            hosts.0.display()
        ),
    )
    .unwrap();
    let servers = format!(
        "http://{}/any/path*3, lb-seed-not-yet.invalid:{}",
        a.addr,
        b.addr.port()
    );
    let lb = start(
        "lb",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--config",
            cfg.0.to_str().unwrap(),
        ],
        &[("BACKEND_SERVERS", servers.as_str())],
    );
    // lb runs: the URL form with its weight serves, the name that does not resolve waits.
    for _ in 0..4 {
        assert_eq!(request_id(lb.addr, None, "").unwrap(), "a");
    }
    let (_, body) = admin_call(lb.admin.unwrap(), None, "GET", "/lb/backends", "");
    assert!(body.contains("\"weight\":3"), "{body}");
    // Once the name resolves, its backend joins.
    std::fs::write(&hosts.0, "127.0.0.1 lb-seed-not-yet.invalid\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if (0..8).any(|_| request_id(lb.addr, None, "").ok().as_deref() == Some("b")) {
            break;
        }
        assert!(Instant::now() < deadline, "the name never joined");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_takeover_keeps_api_backends_weights_drains_and_ejections() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = gone.local_addr().unwrap();
    drop(gone);
    let sock = tempfile_path::TempPath::new("lb-carry", "sock");
    let sock_path = sock.0.to_str().unwrap().to_string();
    let toml = format!(
        "[health]\ncheck = \"none\"\n[retry]\neject_ms = 60000\neject_max_ms = 60000\n[shutdown]\ngrace_ms = 2000\n\
         [[backends]]\nname = \"a\"\naddress = \"{}\"\n[[backends]]\nname = \"b\"\naddress = \"{}\"\n[[backends]]\nname = \"dead\"\naddress = \"{dead}\"\n",
        a.addr, b.addr
    );
    let (mut old, cfg) = lb_with_config(&toml, &["--upgrade-socket", &sock_path]);
    let adm = old.admin.unwrap();
    let ok = |m: &str, p: &str, body: &str| admin_ok(adm, m, p, body);
    ok(
        "POST",
        "/lb/backends",
        &format!("{{\"address\": \"{}\", \"name\": \"c\"}}", c.addr),
    );
    ok("PUT", "/lb/backends/a/weight", "{\"weight\": 7}");
    ok("POST", "/lb/backends/b/drain", "");
    // Traffic finds `dead` refusing: this core ejects it for a minute.
    for _ in 0..6 {
        let _ = request_id(old.addr, None, "");
    }
    let new = start(
        "lb",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--config",
            cfg.0.to_str().unwrap(),
            "--takeover",
            "--upgrade-socket",
            &sock_path,
        ],
        &[],
    );
    assert_eq!(new.addr, old.addr);
    assert!(
        wait_exit(&mut old.child, Duration::from_secs(10)).is_some(),
        "the old lb did not exit"
    );
    let (code, body) = admin_call(new.admin.unwrap(), None, "GET", "/lb/stats", "");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let get = |n: &str| {
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no backend {n} after the takeover: {v}"))
    };
    assert_eq!(get("a")["weight"], 7, "{v}");
    assert_eq!(get("b")["state"], "draining", "{v}");
    assert_eq!(get("c")["state"], "up", "{v}");
    assert_eq!(get("dead")["ejected_cores"], serde_json::json!([0]), "{v}");
    assert_eq!(
        get("dead")["connect_failures"],
        0,
        "the new process never tried it: {v}"
    );
    let overrides = v["overrides"].to_string();
    for want in ["\"added\"", "\"weight\"", "\"drained\""] {
        assert!(overrides.contains(want), "{overrides}");
    }
    // And it serves, from a and c only.
    for _ in 0..8 {
        let id = request_id(new.addr, None, "").unwrap();
        assert!(id == "a" || id == "c", "{id}");
    }
}

/// The `ss -tno` line of the established socket from `local` to `peer`.
fn ss_line(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> String {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 4 && cols[2] == local.to_string() && cols[3] == peer.to_string()
        })
        .unwrap_or("")
        .to_string()
}

#[test]
fn tcp_keepalive_is_set_on_the_client_and_the_backend_socket() {
    let echo = echo_backend();
    let toml = format!(
        "[health]\ncheck = \"none\"\n[timeouts]\nkeepalive_idle_ms = 30000\nkeepalive_interval_ms = 5000\nkeepalive_count = 3\n[[backends]]\nname = \"e\"\naddress = \"{}\"\n",
        echo.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    std::io::Write::write_all(&mut c, b"x").unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut c, &mut b).unwrap();
    let client_side = ss_line(lb.addr, c.local_addr().unwrap());
    assert!(
        client_side.contains("timer:(keepalive"),
        "lb's client socket: {client_side:?}"
    );
    // lb's socket to the echo backend: the one connected to the backend from lb's process.
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let backend_side = text
        .lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 4 && cols[3] == echo.addr.to_string()
        })
        .unwrap_or("");
    assert!(
        backend_side.contains("timer:(keepalive"),
        "lb's backend socket: {backend_side:?}\n{text}"
    );
}

#[test]
fn a_connection_past_its_lifetime_is_closed_cleanly_once_quiet_not_while_busy() {
    let a = backend("a");
    let toml = format!(
        "[health]\ncheck = \"none\"\n[timeouts]\nmax_lifetime_ms = 300\n[[backends]]\nname = \"a\"\naddress = \"{}\"\n",
        a.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    // Busy for 1.5 s, a request every 100 ms: never quiet for long enough to be closed.
    let mut buf = vec![0u8; 4096];
    while t0.elapsed() < Duration::from_millis(1500) {
        std::io::Write::write_all(&mut c, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let n = std::io::Read::read(&mut c, &mut buf).unwrap();
        assert!(
            n > 0 && buf.starts_with(b"HTTP/1.1 200"),
            "cut while busy after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Quiet now: closed with a FIN (read gives 0), not a reset, within about a second.
    let quiet = Instant::now();
    let n = std::io::Read::read(&mut c, &mut buf).expect("a clean close, not a reset");
    assert_eq!(n, 0);
    assert!(
        quiet.elapsed() < Duration::from_secs(3),
        "{:?}",
        quiet.elapsed()
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(800),
        "closed before it was quiet: {:?}",
        quiet.elapsed()
    );
}

#[test]
fn a_drain_with_a_deadline_closes_what_is_still_open_then_and_one_without_does_not() {
    use std::io::{ErrorKind, Read, Write};
    let (e1, e2) = (echo_backend(), echo_backend());
    let toml = format!(
        "algorithm = \"round_robin\"\n[health]\ncheck = \"none\"\n\
         [[backends]]\nname = \"one\"\naddress = \"{}\"\n[[backends]]\nname = \"two\"\naddress = \"{}\"\n",
        e1.addr, e2.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let adm = lb.admin.unwrap();
    // Four echo connections, two on each backend.
    let mut conns: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(lb.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"hi").unwrap();
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    let bad = admin_call(
        adm,
        None,
        "POST",
        "/lb/backends/one/drain",
        r#"{"deadline_ms": 0}"#,
    );
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert_eq!(
        admin_call(
            adm,
            None,
            "POST",
            "/lb/backends/one/drain",
            r#"{"deadline_ms": 400}"#
        )
        .0,
        200
    );
    assert_eq!(
        admin_call(adm, None, "POST", "/lb/backends/two/drain", "").0,
        200
    );
    let (_, body) = admin_call(adm, None, "GET", "/lb/stats", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let left = v["backends"][0]["drain_deadline_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 400, "{left}");
    assert!(v["backends"][1]["drain_deadline_ms"].is_null());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    // The connections of "one" were reset at its deadline; those of "two" still echo.
    let mut cut = 0;
    let mut alive = 0;
    for s in conns.iter_mut() {
        let mut b = [0u8; 2];
        let r = s.write_all(b"hi").and_then(|_| s.read_exact(&mut b));
        match r {
            Ok(()) => alive += 1,
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                    "{e:?}"
                );
                cut += 1;
            }
        }
    }
    assert_eq!((cut, alive), (2, 2), "after {:?}", t0.elapsed());
    let (_, body) = admin_call(adm, None, "GET", "/lb/stats", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["backends"][0]["active_connections"], 0,
        "{}",
        v["backends"][0]
    );
    // Undrained: the deadline is gone with the drain.
    assert_eq!(
        admin_call(adm, None, "POST", "/lb/backends/one/undrain", "").0,
        200
    );
    let (_, body) = admin_call(adm, None, "GET", "/lb/stats", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["backends"][0]["drain_deadline_ms"].is_null());
}

/// Clients the kernel queued for lb but lb had not accepted when it stopped get their answer,
/// not a reset: closing a listener resets its accept queue. SIGSTOP holds lb so that the queue
/// fills; SIGTERM (no lame duck) and SIGCONT then race its worker against the stop.
#[test]
fn clients_queued_when_lb_stops_are_served_not_reset() {
    const QUEUED: usize = 32;
    let a = backend("a");
    let toml = format!(
        "cores = 1\n[health]\ncheck = \"none\"\n[shutdown]\nlame_duck_ms = 0\ngrace_ms = 5000\n[[backends]]\nname = \"a\"\naddress = \"{}\"\n",
        a.addr
    );
    let (mut lb, _cfg) = lb_with_config(&toml, &[]);
    assert_eq!(request_id(lb.addr, None, "").unwrap(), "a");
    signal(&lb.child, libc::SIGSTOP);
    let mut queued: Vec<TcpStream> = (0..QUEUED)
        .map(|_| {
            let mut c = TcpStream::connect(lb.addr).expect("connect while lb is stopped");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            std::io::Write::write_all(
                &mut c,
                b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            c
        })
        .collect();
    signal(&lb.child, libc::SIGTERM);
    signal(&lb.child, libc::SIGCONT);
    let failed: Vec<String> = queued
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| {
            let mut got = Vec::new();
            match std::io::Read::read_to_end(c, &mut got) {
                Ok(_) if got.starts_with(b"HTTP/1.1 200") => None,
                Ok(_) => Some(format!("#{i}: {:?}", String::from_utf8_lossy(&got))),
                Err(e) => Some(format!("#{i}: {e} after {} bytes", got.len())),
            }
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {QUEUED} queued clients not served: {failed:?}",
        failed.len()
    );
    // The clients close their side too (lb relays each direction until its own FIN).
    drop(queued);
    let status = wait_exit(&mut lb.child, Duration::from_secs(3)).expect("lb did not exit");
    assert!(status.success(), "{status:?}");
}
