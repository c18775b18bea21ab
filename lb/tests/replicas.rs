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
