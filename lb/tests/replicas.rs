//! The built-in default: with no backend configured, lb starts and supervises local replicas.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Three consecutive free loopback ports (checked by binding them; another process could still
/// take one before lb does, which would show as a test failure naming the port).
fn free_port_run(n: u16) -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = l.local_addr().unwrap().port();
        drop(l);
        if base < 60000
            && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no run of free ports");
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        if let Ok(s) = std::fs::read_to_string(path) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

#[test]
fn with_no_backend_lb_starts_replicas_and_restarts_a_killed_one() {
    let base = free_port_run(3);
    let toml = format!("[replicas]\ncount = 3\nbase_port = {base}\n");
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(request_id(lb.addr, None, "").unwrap());
    }
    assert_eq!(
        seen,
        ["s1", "s2", "s3"].iter().map(|s| s.to_string()).collect()
    );

    let kids = children_of(lb.child.id());
    assert_eq!(kids.len(), 3, "{kids:?}");
    // SAFETY: plain kill(2) of a child this test's lb started.
    unsafe { libc::kill(kids[0] as i32, libc::SIGKILL) };
    // Bound: the supervisor polls every 200 ms and restarts after 100-200 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = children_of(lb.child.id());
        if now.len() == 3 && !now.contains(&kids[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replica not restarted: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(id) = request_id(lb.addr, None, "") {
            seen.insert(id);
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "restarted replica back in rotation: {seen:?}"
    );
}

/// The `--id` a replica process was started with.
fn replica_id(pid: u32) -> String {
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
    let i = args.iter().position(|a| *a == b"--id").unwrap();
    String::from_utf8(args[i + 1].to_vec()).unwrap()
}

#[test]
fn a_restarted_replica_is_not_held_out_by_passive_ejection() {
    // Regression: the refused connects at a replica's death ejected it for eject_ms on the core
    // that saw them, so lb kept skipping the replacement although it listened within 300 ms.
    let base = free_port_run(3);
    let toml = format!(
        "[replicas]\ncount = 3\nbase_port = {base}\n[retry]\neject_ms = 20000\neject_max_ms = 20000\n"
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let kids = children_of(lb.child.id());
    assert_eq!(kids.len(), 3, "{kids:?}");
    let victim = replica_id(kids[0]);
    // SAFETY: plain kill(2) of a child this test's lb started.
    unsafe { libc::kill(kids[0] as i32, libc::SIGKILL) };
    let killed = Instant::now();
    // Round robin reaches the dead replica within three requests: its connect is refused, the
    // client is retried elsewhere, and the core ejects it for 20 s. (A request may also fail: the
    // dying process's socket can accept a connection and reset it after the bytes went out.)
    for _ in 0..6 {
        let _ = request_id(lb.addr, None, "");
    }
    loop {
        if request_id(lb.addr, None, "").ok().as_deref() == Some(victim.as_str()) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the restarted replica {victim} got no request within 5 s of its death (ejection is 20 s)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replicas_stop_when_lb_stops() {
    let base = free_port_run(2);
    let toml = format!("[replicas]\ncount = 2\nbase_port = {base}\n");
    let (mut lb, _cfg) = lb_with_config(&toml, &[]);
    let kids = children_of(lb.child.id());
    assert_eq!(kids.len(), 2);
    lb.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while kids.iter().any(|k| {
        std::path::Path::new(&format!("/proc/{k}")).exists()
            && !std::fs::read_to_string(format!("/proc/{k}/stat"))
                .unwrap_or_default()
                .contains(") Z")
    }) {
        assert!(Instant::now() < deadline, "replicas outlived lb");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_declared_replica_that_fails_its_checks_is_restarted_and_rejoins() {
    let base = free_port_run(2);
    let bin = workspace_bin("backend");
    let toml = format!(
        "[health]\ncheck = \"http\"\ninterval_ms = 100\ntimeout_ms = 100\nrise = 2\nfall = 2\nslow_start_ms = 0\n\
         [replicas]\ncount = 2\nbase_port = {base}\ncommand = [\"{}\", \"--listen\", \"127.0.0.1:{{port}}\", \"--id\", \"r-{{id}}\"]\n",
        bin.display()
    );
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let ids: std::collections::HashSet<String> = (0..6)
        .map(|_| request_id(lb.addr, None, "").unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let before = children_of(lb.child.id());
    assert_eq!(before.len(), 2);
    // Make replica s1 fail its checks while it keeps running.
    let s1: std::net::SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    let mut s = std::net::TcpStream::connect(s1).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"POST /admin/health/fail HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Bound: out after fall checks (~0.4 s), restarted once past the 3 s start grace, healthy
    // again after rise checks: well within 8 s.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let now = children_of(lb.child.id());
        let ids: std::collections::HashSet<String> = (0..4)
            .filter_map(|_| request_id(lb.addr, None, "").ok())
            .collect();
        if now.len() == 2 && now.iter().any(|p| !before.contains(p)) && ids.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica not replaced: {before:?} -> {now:?}, serving {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The seed 003 API: `GET /rep`, `POST /add`, `DELETE /rm` with the seed's JSON shapes.
#[test]
fn the_seed_replica_api_lists_adds_and_removes_replicas_that_serve() {
    let base = free_port_run(3);
    let toml = format!("[health]\ncheck = \"none\"\n[replicas]\ncount = 3\nbase_port = {base}\n");
    let (lb, _cfg) = lb_with_config(&toml, &[]);
    let adm = lb.admin.unwrap();
    let call = |m: &str, p: &str, body: &str| {
        let (code, body) = admin_call(adm, None, m, p, body);
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        )
    };
    let (code, v) = call("GET", "/rep", "");
    assert_eq!(code, 200);
    assert_eq!(
        v,
        serde_json::json!({"message": {"N": 3, "replicas": ["s1", "s2", "s3"]}, "status": "successful"})
    );
    let t = Instant::now();
    let (code, v) = call("POST", "/add", "{\"n\": 2, \"hostnames\": [\"web4\"]}");
    // The answer must come as soon as the replicas listen: before close-on-exec was set on
    // admin connections, the new replica inherited this one and the client waited 15 s.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "/add answered after {:?}",
        t.elapsed()
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"]["N"], 5, "{v}");
    assert_eq!(
        v["message"]["replicas"],
        serde_json::json!(["s1", "s2", "s3", "web4", "s4"])
    );
    assert_eq!(children_of(lb.child.id()).len(), 5);
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 5 {
        if let Ok(id) = request_id(lb.addr, None, "") {
            seen.insert(id);
        }
        assert!(
            Instant::now() < deadline,
            "the new replicas never served: {seen:?}"
        );
    }
    assert!(seen.contains("web4") && seen.contains("s4"), "{seen:?}");
    let (code, v) = call(
        "DELETE",
        "/rm",
        "{\"n\": 3, \"hostnames\": [\"web4\", \"s4\", \"s1\"]}",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"]["replicas"], serde_json::json!(["s2", "s3"]));
    let deadline = Instant::now() + Duration::from_secs(8);
    while children_of(lb.child.id()).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the removed replicas' processes still run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..6 {
        let id = request_id(lb.addr, None, "").unwrap();
        assert!(id == "s2" || id == "s3", "{id}");
    }
    let (code, v) = call("POST", "/add", "{\"n\": 1, \"hostnames\": [\"a\", \"b\"]}");
    assert_eq!(code, 400);
    assert_eq!(v["status"], "failure");
    assert!(v["message"].as_str().unwrap().starts_with("<Error>"), "{v}");
}
