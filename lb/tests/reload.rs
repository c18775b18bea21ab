//! SIGHUP applies every key that can change live, each tested here on its own (limits and access
//! lists in limits.rs, the access log in access_log.rs, listeners and services in services.rs),
//! and names in `/lb/stats` the keys that only a restart applies.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

fn stats(lb: &Proc, token: Option<&str>) -> serde_json::Value {
    let (code, body) = admin_call(lb.admin.unwrap(), token, "GET", "/lb/stats", "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Rewrites the file, sends SIGHUP and waits until the reload is recorded (its uptime stamp
/// moves), returning its report.
fn reload(lb: &Proc, cfg: &tempfile_path::TempPath, text: &str) -> serde_json::Value {
    reload_with(lb, cfg, text, &[])
}

/// Like [`reload`], reading the stats with whichever of `tokens` works (a reload may rotate it).
fn reload_with(
    lb: &Proc,
    cfg: &tempfile_path::TempPath,
    text: &str,
    tokens: &[&str],
) -> serde_json::Value {
    let read = || {
        for t in tokens {
            let (code, body) = admin_call(lb.admin.unwrap(), Some(t), "GET", "/lb/stats", "");
            if code == 200 {
                return serde_json::from_str::<serde_json::Value>(&body).unwrap();
            }
        }
        if tokens.is_empty() {
            return stats(lb, None);
        }
        panic!("no token of {tokens:?} is accepted");
    };
    let before = read()["reload"]["at_uptime_s"].clone();
    std::fs::write(&cfg.0, text).unwrap();
    signal(&lb.child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = read()["reload"].clone();
        if !r.is_null() && r["at_uptime_s"] != before {
            assert_eq!(r["ok"], true, "reload refused: {r}");
            return r;
        }
        assert!(Instant::now() < deadline, "the reload was never recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn backends_toml(bs: &[&Proc]) -> String {
    bs.iter()
        .map(|b| {
            format!(
                "[[backends]]\nname = \"{0}\"\naddress = \"{1}\"\n",
                id_of(b),
                b.addr
            )
        })
        .collect()
}

fn id_of(b: &Proc) -> String {
    format!("b{}", b.addr.port())
}

fn ids(addr: SocketAddr, n: usize, header: Option<&str>) -> HashSet<String> {
    let mut seen = HashSet::new();
    for i in 0..n {
        let h = header.map(|h| format!("{h}: v{i}\r\n")).unwrap_or_default();
        seen.insert(request_id(addr, None, &h).unwrap());
    }
    seen
}

#[test]
fn the_algorithm_and_the_hash_key_change_live() {
    let bs: Vec<Proc> = (0..3).map(|i| backend(&format!("s{i}"))).collect();
    let refs: Vec<&Proc> = bs.iter().collect();
    let base = format!("[health]\ncheck = \"none\"\n{}", backends_toml(&refs));
    let (lb, cfg) = lb_with_config(&format!("algorithm = \"round_robin\"\n{base}"), &[]);
    assert_eq!(ids(lb.addr, 9, None).len(), 3);
    // consistent_hash on the client's address: every request from here to one backend.
    reload(
        &lb,
        &cfg,
        &format!("algorithm = \"consistent_hash\"\n[hash]\nkey = \"client_ip\"\n{base}"),
    );
    assert_eq!(stats(&lb, None)["algorithm"], "consistent_hash");
    assert_eq!(ids(lb.addr, 12, None).len(), 1);
    // The key from a header now: different values reach different backends.
    reload(
        &lb,
        &cfg,
        &format!("algorithm = \"consistent_hash\"\n[hash]\nkey = \"header:X-K\"\n{base}"),
    );
    assert!(ids(lb.addr, 30, Some("X-K")).len() >= 2);
}

#[test]
fn timeouts_and_retries_change_live() {
    let live = backend("live");
    let dead = free_port();
    let file = |idle: u64, tries: u32| {
        format!(
            "algorithm = \"round_robin\"\n[health]\ncheck = \"none\"\n[timeouts]\nidle_ms = {idle}\n\
             [retry]\ntries = {tries}\neject_ms = 1\neject_max_ms = 1\n\
             [[backends]]\nname = \"dead\"\naddress = \"127.0.0.1:{dead}\"\n\
             [[backends]]\nname = \"live\"\naddress = \"{}\"\n",
            live.addr
        )
    };
    let (lb, cfg) = lb_with_config(&file(60_000, 1), &[]);
    // One try: the requests that meet the dead backend fail.
    let failed = (0..10)
        .filter(|_| request_id(lb.addr, None, "").is_err())
        .count();
    assert!(failed >= 3, "{failed} of 10 failed with one try");
    reload(&lb, &cfg, &file(300, 2));
    for _ in 0..10 {
        assert_eq!(request_id(lb.addr, None, "").unwrap(), "live");
    }
    // The new idle timeout: a quiet connection is closed after 300 ms.
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 1];
    let _ = s.read(&mut b);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[test]
fn health_checks_change_live() {
    let live = backend("live");
    let dead = free_port();
    let file = |check: &str| {
        format!(
            "[health]\ncheck = \"{check}\"\ninterval_ms = 100\ntimeout_ms = 100\nfall = 1\nrise = 1\n\
             [[backends]]\nname = \"dead\"\naddress = \"127.0.0.1:{dead}\"\n\
             [[backends]]\nname = \"live\"\naddress = \"{}\"\n",
            live.addr
        )
    };
    let (lb, cfg) = lb_with_config(&file("none"), &[]);
    let state = |lb: &Proc| {
        stats(lb, None)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "dead")
            .unwrap()["state"]
            .clone()
    };
    std::thread::sleep(Duration::from_millis(400));
    assert_ne!(state(&lb), "down", "no checks yet");
    reload(&lb, &cfg, &file("tcp"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&lb) != "down" {
        assert!(
            Instant::now() < deadline,
            "the new checks never took the dead backend out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_discovery_interval_changes_live() {
    let a = start("backend", &["--listen", "127.0.0.1:0", "--id", "a"], &[]);
    let port = a.addr.port();
    // The same port on another loopback address: a second replica behind the same name.
    let b = start(
        "backend",
        &["--listen", &format!("127.0.0.2:{port}"), "--id", "b"],
        &[],
    );
    let hosts = tempfile_path::TempPath::new("lb-reload-hosts", "txt");
    std::fs::write(&hosts.0, "127.0.0.1 svc\n").unwrap();
    let file = |interval: u64| {
        format!(
            "[health]\ncheck = \"none\"\n[discovery]\ninterval_ms = {interval}\nhosts_file = \"{}\"\n\
             [[backends]]\naddress = \"svc:{port}\"\ndiscover = true\n",
            hosts.0.display()
        )
    };
    let (lb, cfg) = lb_with_config(&file(60_000), &[]);
    let count = |lb: &Proc| stats(lb, None)["backends"].as_array().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&lb) != 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&hosts.0, "127.0.0.1 svc\n127.0.0.2 svc\n").unwrap();
    reload(&lb, &cfg, &file(200));
    // Found within a few of the new intervals, not the old minute.
    let deadline = Instant::now() + Duration::from_secs(3);
    while count(&lb) != 2 {
        assert!(Instant::now() < deadline, "the new interval never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ids(lb.addr, 6, None),
        HashSet::from(["a".into(), "b".into()])
    );
    drop(b);
}

#[test]
fn the_shutdown_grace_changes_live() {
    let b = backend("b");
    let file = |grace: u64| {
        format!(
            "[health]\ncheck = \"none\"\n[shutdown]\ngrace_ms = {grace}\n{}",
            backends_toml(&[&b])
        )
    };
    let (mut lb, cfg) = lb_with_config(&file(60_000), &[]);
    reload(&lb, &cfg, &file(200));
    let held = TcpStream::connect(lb.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    signal(&lb.child, libc::SIGTERM);
    assert!(
        wait_exit(&mut lb.child, Duration::from_secs(5)).is_some(),
        "still running 5 s after SIGTERM: the old 60 s grace is in force"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(held);
}

#[test]
fn a_new_admin_token_applies_and_restart_only_keys_are_named() {
    let b = backend("b");
    let dir = TempDir::new("lb-reload-token");
    let token = dir.0.join("token");
    std::fs::write(&token, "first-token-0123456789\n").unwrap();
    let file = |extra: &str| {
        format!(
            "{extra}\n[admin]\ntoken_file = \"{}\"\n[health]\ncheck = \"none\"\n{}",
            token.display(),
            backends_toml(&[&b])
        )
    };
    let (lb, cfg) = lb_with_config(&file(""), &[]);
    let adm = lb.admin.unwrap();
    assert_eq!(
        admin_call(adm, Some("first-token-0123456789"), "GET", "/lb/stats", "").0,
        200
    );
    std::fs::write(&token, "second-token-0123456789\n").unwrap();
    let r = reload_with(
        &lb,
        &cfg,
        &file("pin = true\n[relay]\nbuffer_size = 32768\n"),
        &["first-token-0123456789", "second-token-0123456789"],
    );
    assert_eq!(
        admin_call(adm, Some("first-token-0123456789"), "GET", "/lb/stats", "").0,
        401,
        "the old token still works"
    );
    assert_eq!(
        admin_call(adm, Some("second-token-0123456789"), "GET", "/lb/stats", "").0,
        200
    );
    let names: Vec<&str> = r["not_applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(names, ["pin", "relay.buffer_size"], "{r}");
    // Traffic is unaffected by the keys that wait for a restart.
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("200 OK"));
}
