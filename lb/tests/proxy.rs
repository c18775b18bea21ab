//! End-to-end: real `backend` processes behind a real `lb`, on loopback.
//! Run on both drivers: `cargo test` and `MONOIO_FORCE_LEGACY_DRIVER=1 cargo test`.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Sends `n` new-connection requests from `threads` threads; returns counts per server id and
/// the number of failed requests.
fn spread(addr: std::net::SocketAddr, n: usize, threads: usize) -> (HashMap<String, usize>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut counts: HashMap<String, usize> = HashMap::new();
                let mut failed = 0;
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match request_id(addr, None, "") {
                        Ok(id) => *counts.entry(id).or_default() += 1,
                        Err(_) => failed += 1,
                    }
                }
                (counts, failed)
            })
        })
        .collect();
    let mut total: HashMap<String, usize> = HashMap::new();
    let mut failed = 0;
    for h in handles {
        let (c, f) = h.join().unwrap();
        failed += f;
        for (k, v) in c {
            *total.entry(k).or_default() += v;
        }
    }
    (total, failed)
}

#[test]
fn round_robin_spreads_10000_new_connections_within_2_percent_of_a_third() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let lb = lb(&[&a, &b, &c], &["--algorithm", "round_robin"]);
    let (counts, failed) = spread(lb.addr, 10_000, 4);
    assert_eq!(failed, 0);
    for id in ["a", "b", "c"] {
        let share = counts[id] as f64 / 10_000.0;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.02,
            "{id}: {share} of {counts:?}"
        );
    }
}

#[test]
fn round_robin_on_two_cores_still_spreads_evenly() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let lb = lb(
        &[&a, &b, &c],
        &["--algorithm", "round_robin", "--cores", "2"],
    );
    let (counts, failed) = spread(lb.addr, 3_000, 4);
    assert_eq!(failed, 0);
    for id in ["a", "b", "c"] {
        let share = counts[id] as f64 / 3_000.0;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.03,
            "{id}: {share} of {counts:?}"
        );
    }
}

#[test]
fn weights_are_honoured() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let toml = format!(
        "algorithm = \"weighted_round_robin\"\n\
         [[backends]]\naddress = \"{}\"\nweight = 1\n\
         [[backends]]\naddress = \"{}\"\nweight = 2\n\
         [[backends]]\naddress = \"{}\"\nweight = 3\n",
        a.addr, b.addr, c.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let (counts, failed) = spread(lb.addr, 600, 1);
    assert_eq!(failed, 0);
    assert_eq!((counts["a"], counts["b"], counts["c"]), (100, 200, 300));
}

#[test]
fn the_same_client_ip_always_reaches_the_same_backend() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    for alg in ["consistent_hash", "maglev"] {
        let lb = lb(&[&a, &b, &c], &["--algorithm", alg]);
        let mut seen = std::collections::HashSet::new();
        for i in 1..=20 {
            let ip = format!("127.0.0.{i}");
            let first = request_id(lb.addr, Some(&ip), "").unwrap();
            for _ in 0..5 {
                assert_eq!(
                    request_id(lb.addr, Some(&ip), "").unwrap(),
                    first,
                    "{alg} {ip}"
                );
            }
            seen.insert(first);
        }
        assert!(
            seen.len() >= 2,
            "{alg}: 20 client IPs all went to one backend"
        );
    }
}

#[test]
fn the_same_cookie_always_reaches_the_same_backend_across_lb_instances() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let toml = format!(
        "algorithm = \"consistent_hash\"\n[hash]\nkey = \"cookie:session\"\n\
         [[backends]]\naddress = \"{}\"\n[[backends]]\naddress = \"{}\"\n[[backends]]\naddress = \"{}\"\n",
        a.addr, b.addr, c.addr
    );
    let (lb1, _c1) = lb_with_config(&toml, &["--cores", "2"]);
    let (lb2, _c2) = lb_with_config(&toml, &[]);
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let h = format!("Cookie: theme=dark; session=user-{user}\r\n");
        let first = request_id(lb1.addr, None, &h).unwrap();
        for _ in 0..3 {
            assert_eq!(request_id(lb1.addr, None, &h).unwrap(), first);
        }
        assert_eq!(
            request_id(lb2.addr, None, &h).unwrap(),
            first,
            "another instance agrees"
        );
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "30 sessions should reach all 3 backends");
    // Without the cookie the request is still served.
    request_id(lb1.addr, None, "").unwrap();
}

#[test]
fn a_backend_killed_mid_run_costs_no_failed_new_connections() {
    let (a, b) = (backend("a"), backend("b"));
    let mut c = backend("c");
    let lb = lb(&[&a, &b, &c], &["--algorithm", "round_robin"]);
    let addr = lb.addr;
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    let client = std::thread::spawn(move || {
        // Start time of every failed request: only one already under way when the backend died
        // may fail (its bytes had gone upstream, so it cannot be retried).
        let mut failed_at = Vec::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..1500 {
            let started = std::time::Instant::now();
            match request_id(addr, None, "") {
                Ok(id) => *counts.entry(id).or_default() += 1,
                Err(e) => failed_at.push((started, e.to_string())),
            }
            d2.fetch_add(1, Ordering::Relaxed);
        }
        (counts, failed_at)
    });
    while done.load(Ordering::Relaxed) < 500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let c_addr = c.addr;
    c.kill();
    // A process killed while io_uring holds its listener keeps that listener open until the ring
    // is torn down in the background: connects still succeed for a few ms and then get reset,
    // after lb already sent the request. "After the kill" starts when the port refuses.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(c_addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "killed backend still accepts"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = std::time::Instant::now();
    let (counts, failed_at) = client.join().unwrap();
    let after_kill: Vec<_> = failed_at.iter().filter(|(t, _)| *t >= killed).collect();
    assert!(
        after_kill.is_empty(),
        "new connections failed after the kill: {after_kill:?} {counts:?}"
    );
    // Requests under way at the kill may fail: their bytes had gone upstream.
    assert!(failed_at.len() <= 3, "{failed_at:?}");
    assert!(counts["c"] < 600, "{counts:?}");
    assert!(counts["a"] + counts["b"] > 900, "{counts:?}");
}

#[test]
fn a_request_head_split_across_packets_is_peeked_whole_and_replayed() {
    let (a, b) = (backend("a"), backend("b"));
    let toml = format!(
        "algorithm = \"maglev\"\n[hash]\nkey = \"header:X-User\"\n\
         [[backends]]\naddress = \"{}\"\n[[backends]]\naddress = \"{}\"\n",
        a.addr, b.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let expected = request_id(lb.addr, None, "X-User: alice\r\n").unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Us").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"er: alice\r\nConnection: close\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains(&format!("X-Server-Id: {expected}")), "{resp}");
    }
}

/// 8 MiB through the relay, then a half-close: the echo must send everything back and close.
fn half_close_and_large_transfer(mode: &str) {
    let echo = echo_backend();
    let toml = format!(
        "[[backends]]\naddress = \"{}\"\n[relay]\nmode = \"{mode}\"\n",
        echo.addr
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut reader = s.try_clone().unwrap();
    let expected = data.len();
    let rx = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(expected);
        reader.read_to_end(&mut got).unwrap();
        got
    });
    s.write_all(&data).unwrap();
    // Half-close: the echo keeps sending what it has, then closes its side.
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx.join().unwrap();
    assert_eq!(got.len(), data.len(), "{mode}");
    assert!(got == data, "{mode}: echoed bytes differ");
}

#[test]
fn half_close_and_a_large_transfer_arrive_byte_exact_with_the_completion_relay() {
    half_close_and_large_transfer("completion");
}

#[test]
fn half_close_and_a_large_transfer_arrive_byte_exact_with_the_readiness_relay() {
    half_close_and_large_transfer("readiness");
}

#[test]
fn half_close_and_a_large_transfer_arrive_byte_exact_with_the_multishot_relay() {
    half_close_and_large_transfer("multishot");
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout_in_every_relay_mode() {
    let echo = echo_backend();
    for mode in RELAY_MODES {
        let toml = format!(
            "[[backends]]\naddress = \"{}\"\n[relay]\nmode = \"{mode}\"\n[timeouts]\nidle_ms = 300\n",
            echo.addr
        );
        let (lb, _cfg) = lb_with_config(&toml, &[]);
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Active for longer than the timeout: not closed while bytes move.
        for _ in 0..6 {
            s.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        let start = std::time::Instant::now();
        let mut b = [0u8; 1];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "{mode}: expected close");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
            "{mode}: {waited:?}"
        );
    }
}

#[test]
fn when_every_backend_is_down_clients_are_closed_quickly() {
    let mut a = backend("a");
    let lb = lb(&[&a], &[]);
    a.kill();
    let start = std::time::Instant::now();
    assert!(request_id(lb.addr, None, "").is_err());
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn pooled_connections_serve_requests_and_stale_ones_are_skipped() {
    let a = backend("a");
    let addr = a.addr.to_string();
    let toml = format!("[[backends]]\naddress = \"{addr}\"\n[pool]\nidle_per_backend = 4\n");
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let (counts, failed) = spread(lb.addr, 50, 1);
    assert_eq!((counts["a"], failed), (50, 0));
    // Restart the backend on the same port: every pooled connection is now closed by its peer.
    drop(a);
    let _a2 = start("backend", &["--listen", &addr, "--id", "a2"], &[]);
    std::thread::sleep(Duration::from_millis(100));
    let (counts, failed) = spread(lb.addr, 50, 1);
    assert_eq!(
        (counts.get("a2").copied(), failed),
        (Some(50), 0),
        "{counts:?}"
    );
}
