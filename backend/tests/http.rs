//! The HTTP mode through raw std sockets: routes, health toggles, keep-alive, pipelining,
//! closes, bodies, failure and latency injection, bad input and timeouts.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn root_answers_with_the_server_id_and_a_growing_count() {
    let s = start(&["--id", "s1"]);
    assert!(
        s.line.starts_with(&format!(
            "backend s1 listening on {} (http, 1 cores, ",
            s.addr
        )),
        "{}",
        s.line
    );
    let a = get(s.addr, "/");
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-server-id"), Some("s1"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json()["server"], "s1");
    let b = get(s.addr, "/");
    assert_eq!(b.count(), a.count() + 1);
}

#[test]
fn any_path_is_answered_like_root_and_every_answer_carries_the_server_id() {
    let s = start(&["--id", "s-any"]);
    let mut c = Client::new(s.addr);
    for path in ["/", "/anything/else?q=1", "/health", "/admin/unknown"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-server-id"), Some("s-any"), "{path}");
    }
    let r = c.get("/admin/health/fail");
    assert_eq!(r.status, 405, "admin paths want POST");
    assert_eq!(r.header("x-server-id"), Some("s-any"));
}

#[test]
fn health_fails_and_recovers_through_the_admin_paths() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    assert_eq!(c.get("/health").status, 200);
    assert_eq!(c.get("/health").json()["status"], "ok");
    let r = c.post("/admin/health/fail");
    assert_eq!(
        (r.status, r.json()["healthy"].as_bool()),
        (200, Some(false))
    );
    let r = c.get("/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-server-id"), Some(host_name().as_str()));
    // The main route keeps working while unhealthy.
    assert_eq!(get(s.addr, "/").status, 200);
    assert_eq!(c.post("/admin/health/ok").status, 200);
    assert_eq!(c.get("/health").status, 200);
}

#[test]
fn health_fails_and_recovers_through_signals() {
    let s = start(&[]);
    assert_eq!(get(s.addr, "/health").status, 200);
    s.signal(libc::SIGUSR1);
    assert!(eventually(|| get(s.addr, "/health").status == 503));
    s.signal(libc::SIGUSR1);
    assert_eq!(
        get(s.addr, "/health").status,
        503,
        "SIGUSR1 only ever makes it unhealthy"
    );
    s.signal(libc::SIGUSR2);
    assert!(eventually(|| get(s.addr, "/health").status == 200));
    // Back to back, in order: the later signal wins.
    for _ in 0..5 {
        s.signal(libc::SIGUSR1);
        s.signal(libc::SIGUSR2);
        assert!(eventually(|| get(s.addr, "/health").status == 200));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(get(s.addr, "/health").status, 200);
    }
    // The process survived all the signals and still serves.
    assert_eq!(get(s.addr, "/").status, 200);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    let first = c.get("/").count();
    for i in 1..10 {
        let r = c.get("/");
        assert_eq!(r.header("connection"), None);
        assert_eq!(r.count(), first + i);
    }
}

#[test]
fn pipelined_requests_get_their_answers_in_order() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /other HTTP/1.1\r\nHost: t\r\n\r\n");
    let a = c.read();
    let b = c.read();
    let d = c.read();
    assert_eq!(a.json()["server"], host_name().as_str());
    assert_eq!(b.json()["status"], "ok");
    assert_eq!(d.count(), a.count() + 1);
    // The connection is still usable.
    assert_eq!(c.get("/health").status, 200);
}

#[test]
fn connection_close_is_answered_then_closed() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.read();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn http10_closes_unless_it_asks_for_keep_alive() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read();
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/1.0"));
    assert!(c.is_closed());

    let mut c = Client::new(s.addr);
    for _ in 0..3 {
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read();
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn request_bodies_are_read_and_discarded() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    let big = vec![b'x'; 100_000];
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    c.send(&big);
    assert_eq!(c.read().status, 200);
    c.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: t\r\n\r\n");
    assert_eq!(c.read().status, 200);
    assert_eq!(c.get("/health").status, 200);
}

#[test]
fn body_size_sets_the_exact_root_body_length() {
    let s = start(&["--body-size", "1000"]);
    let mut c = Client::new(s.addr);
    let r = c.get("/");
    assert_eq!(r.body.len(), 1000);
    let text = String::from_utf8(r.body).unwrap();
    let json: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(json["server"], host_name().as_str());
    c.send(b"HEAD / HTTP/1.1\r\n\r\n");
    let h = c.read_head_only();
    assert_eq!(h.header("content-length"), Some("1000"));
    assert_eq!(c.get("/health").status, 200, "HEAD left no body behind");

    let s = start_with_env(&[], &[("BODY_SIZE", "0")]);
    let r = get(s.addr, "/");
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn failure_rate_one_answers_500_with_the_server_id() {
    let s = start_with_env(&["--id", "f1"], &[("FAILURE_RATE", "1")]);
    let mut c = Client::new(s.addr);
    for _ in 0..5 {
        let r = c.get("/");
        assert_eq!(r.status, 500);
        assert_eq!(r.header("x-server-id"), Some("f1"));
    }
    assert_eq!(c.get("/health").status, 200, "health is never failed");
}

#[test]
fn failure_rate_half_fails_roughly_half_of_400_requests() {
    let s = start(&["--failure-rate", "0.5"]);
    let mut c = Client::new(s.addr);
    let failed = (0..400).filter(|_| c.get("/").status == 500).count();
    assert!((120..=280).contains(&failed), "{failed} of 400 failed");
}

#[test]
fn latency_delays_every_answer() {
    let s = start(&["--min-latency", "150", "--max-latency", "150"]);
    let mut c = Client::new(s.addr);
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(c.get("/").status, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }
    // Pipelined: each answer waits its own delay, in order.
    let t = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    let a = c.read();
    let b = c.read();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(b.count(), a.count() + 1);
}

#[test]
fn latency_from_the_environment_stays_within_its_range() {
    let s = start_with_env(&[], &[("MIN_LATENCY", "100"), ("MAX_LATENCY", "200")]);
    let mut c = Client::new(s.addr);
    let t = Instant::now();
    assert_eq!(c.get("/").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(c.get("/health").status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "health is not delayed"
    );
}

#[test]
fn a_malformed_request_gets_400_and_a_close() {
    let s = start(&[]);
    for bad in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nNo-Colon-Here\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let mut c = Client::new(s.addr);
        c.send(bad);
        let r = c.read();
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.header("x-server-id"), Some(host_name().as_str()));
        assert!(c.is_closed());
    }
    assert_eq!(get(s.addr, "/").status, 200, "still serving");
}

#[test]
fn a_head_over_the_limit_gets_431_and_a_close() {
    let s = start(&[]);
    let mut c = Client::new(s.addr);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    c.send(huge.as_bytes());
    let r = c.read();
    assert_eq!(r.status, 431);
    assert!(c.is_closed());

    let s = start(&["--max-head", "1024"]);
    let mut c = Client::new(s.addr);
    c.send(format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000)).as_bytes());
    assert_eq!(c.read().status, 431);
    assert_eq!(get(s.addr, "/").status, 200);
}

#[test]
fn a_stalled_head_is_closed_after_the_header_timeout() {
    let s = start(&["--header-timeout", "300ms"]);
    let mut c = Client::new(s.addr);
    let t = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    assert!(c.is_closed(), "not closed within the 5s read timeout");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    // Dripping bytes does not extend the deadline: it covers the whole head.
    let mut c = Client::new(s.addr);
    c.send(b"GET / HTTP/1.1\r\n");
    let t = Instant::now();
    let mut closed = false;
    while t.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(50));
        if c.stream().write_all(b"X-Drip: 1\r\n").is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed || c.is_closed());
    // A connection that has not sent anything is idle, not stalled.
    let mut idle = Client::new(s.addr);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(idle.get("/").status, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = start(&["--idle-timeout", "300ms"]);
    let mut c = Client::new(s.addr);
    assert_eq!(c.get("/").status, 200);
    let t = Instant::now();
    assert!(c.is_closed());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn garbage_and_abrupt_clients_do_not_hurt_the_server() {
    let s = start(&[]);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..30 {
        let mut junk = Vec::new();
        for _ in 0..(200 + i * 37) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        if i % 3 == 0 {
            junk.splice(0..0, b"GET / HTTP/1.1\r\n".iter().copied());
        }
        let mut c = Client::new(s.addr);
        let _ = c.stream().write_all(&junk);
        if i % 2 == 0 {
            drop(c); // hang up without reading
        } else {
            let _ = c.is_closed();
        }
    }
    // Half a request, then a reset.
    let c = connect(s.addr);
    (&c).write_all(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    drop(c);
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn several_cores_share_the_port_and_the_count() {
    let s = start(&["--cores", "2", "--id", "mc"]);
    assert!(s.line.contains("(http, 2 cores, "), "{}", s.line);
    let mut max = 0;
    for _ in 0..40 {
        let r = get(s.addr, "/");
        assert_eq!(r.header("x-server-id"), Some("mc"));
        max = max.max(r.count());
    }
    assert!(max <= 40, "{max}");
}

#[test]
fn a_backend_without_an_id_names_itself_after_its_host_name() {
    // In a container that is the container's host name, so that every replica of a compose
    // service answers with its own id (they all used to answer `backend`).
    let host = host_name();
    let s = start(&[]);
    assert!(
        s.line.starts_with(&format!("backend {host} listening on ")),
        "{}",
        s.line
    );
    let r = get(s.addr, "/");
    assert_eq!(r.header("x-server-id"), Some(host.as_str()));
    assert_eq!(r.json()["server"], host.as_str());
    assert_eq!(
        get(s.addr, "/health").header("x-server-id"),
        Some(host.as_str())
    );
}

#[test]
fn host_and_port_variables_choose_the_address_without_listen() {
    let s = start_raw(
        &[],
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("SERVER_ID", "env-id"),
        ],
    );
    assert_eq!(s.addr.ip().to_string(), "127.0.0.1");
    assert!(
        s.line.starts_with("backend env-id listening on 127.0.0.1:"),
        "{}",
        s.line
    );
    assert_eq!(get(s.addr, "/").header("x-server-id"), Some("env-id"));
}
