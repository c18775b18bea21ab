//! `GET`/`POST /admin/latency` against the real binary: the delay of `/` changes at run time, on
//! every core and on connections already open, and bad requests change nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn post_json(c: &mut Client, path: &str, body: &str) -> Resp {
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read()
}

/// How long one `GET /` takes on `c`.
fn timed_get(c: &mut Client) -> Duration {
    let t = Instant::now();
    assert_eq!(c.get("/").status, 200);
    t.elapsed()
}

#[test]
fn a_latency_change_applies_at_once_to_every_core_and_to_open_connections() {
    let s = start(&["--id", "l1", "--cores", "2", "--min-latency", "0"]);
    let mut admin = Client::new(s.addr);
    let r = admin.get("/admin/latency");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"server": "l1", "min_ms": 0, "max_ms": 0})
    );
    // Connections opened before the change: SO_REUSEPORT spreads them over both cores.
    let mut open: Vec<Client> = (0..8).map(|_| Client::new(s.addr)).collect();
    for c in &mut open {
        assert_eq!(c.get("/health").status, 200);
    }

    let r = post_json(&mut admin, "/admin/latency", r#"{"min_ms": 300}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"server": "l1", "min_ms": 300, "max_ms": 300})
    );
    assert_eq!(admin.get("/admin/latency").json()["max_ms"], 300);
    // Every connection, old or new, on whichever core, now waits at least 300 ms; in parallel so
    // that the test takes about 0.3 s, not 16 x 0.3 s.
    open.extend((0..8).map(|_| Client::new(s.addr)));
    let took: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = open
            .iter_mut()
            .map(|c| scope.spawn(move || timed_get(c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(took.len(), 16);
    for t in &took {
        assert!(*t >= Duration::from_millis(300), "{took:?}");
    }

    // And back: the health and admin paths were never delayed, `/` is fast again.
    let r = post_json(
        &mut admin,
        "/admin/latency",
        r#"{"min_ms": 0, "max_ms": 0}"#,
    );
    assert_eq!((r.status, r.json()["min_ms"].as_u64()), (200, Some(0)));
    for c in &mut open {
        let t = timed_get(c);
        assert!(t < Duration::from_millis(250), "{t:?}");
    }
}

#[test]
fn bad_latency_requests_get_an_error_that_says_why_and_change_nothing() {
    let s = start(&["--min-latency", "1", "--max-latency", "2"]);
    let mut c = Client::new(s.addr);
    for (body, status, says) in [
        (r#"{"min_ms": 50, "max_ms": 10}"#, 400, "must not exceed"),
        (r#"{"min_ms": 5000000}"#, 400, "at most 3600000"),
        (r#"{"latency": 5}"#, 400, "min_ms"),
        ("fast please", 400, "min_ms"),
    ] {
        let r = post_json(&mut c, "/admin/latency", body);
        assert_eq!(r.status, status, "{body}");
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(says), "{body}: {err}");
    }
    let big = format!(r#"{{"min_ms": 1{}}}"#, " ".repeat(2000));
    assert_eq!(post_json(&mut c, "/admin/latency", &big).status, 413);
    c.send(b"DELETE /admin/latency HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));
    // The same keep-alive connection still works and nothing changed.
    let r = c.get("/admin/latency");
    assert_eq!(
        (r.json()["min_ms"].as_u64(), r.json()["max_ms"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn curl_sets_and_reads_the_latency() {
    if !matches!(Command::new("curl").arg("--version").output(), Ok(o) if o.status.success()) {
        println!("note: curl not found, skipping the curl check");
        return;
    }
    let s = start(&["--id", "c1"]);
    let url = format!("http://{}/admin/latency", s.addr);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "-d",
        r#"{"min_ms": 20, "max_ms": 30}"#,
        &url,
    ]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"server": "c1", "min_ms": 20, "max_ms": 30})
    );
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", &url]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["min_ms"], 20);
    // The delay is in force: a request takes at least 20 ms.
    let t = Instant::now();
    assert_eq!(get(s.addr, "/").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(20));
}
