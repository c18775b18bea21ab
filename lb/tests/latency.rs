//! least_response_time with backends of different speed (issue 17): by time to first byte the
//! fast backend takes most clients, while connect times (the kernel's handshake, the same for
//! all) cannot tell the backends apart; a backend that stops answering is avoided; the
//! estimates are in the stats and the metrics.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::*;

fn slow_backend(id: &str, ms: u32) -> Proc {
    start(
        "backend",
        &[
            "--listen",
            "127.0.0.1:0",
            "--id",
            id,
            "--min-latency",
            &ms.to_string(),
        ],
        &[],
    )
}

fn shares(lb: &Proc, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen
            .entry(request_id(lb.addr, None, "").unwrap())
            .or_insert(0) += 1;
    }
    seen
}

fn config(metric: &str, bs: &[&Proc]) -> String {
    let mut s = format!(
        "algorithm = \"least_response_time\"\n[response_time]\nmetric = \"{metric}\"\n[health]\ncheck = \"none\"\n"
    );
    for (b, name) in bs.iter().zip(["fast", "mid", "slow"]) {
        s += &format!(
            "[[backends]]\nname = \"{name}\"\naddress = \"{}\"\n",
            b.addr
        );
    }
    s
}

fn stats(lb: &Proc) -> serde_json::Value {
    let (_, body) = admin_call(lb.admin.unwrap(), None, "GET", "/lb/stats", "");
    serde_json::from_str(&body).unwrap()
}

/// Core 0's estimate of `name`, ms.
fn estimate(v: &serde_json::Value, name: &str) -> Option<f64> {
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap()["response_time_ms"][0]
        .as_f64()
}

#[test]
fn by_first_byte_the_fast_backend_gets_most_clients_and_connect_times_cannot_tell() {
    // Far apart, so that a scheduling hiccup of this shared machine (tens of ms at worst) on
    // the fast one does not make it look slower than the others.
    let (fast, mid, slow) = (
        slow_backend("fast", 1),
        slow_backend("mid", 40),
        slow_backend("slow", 80),
    );
    let bs = [&fast, &mid, &slow];
    let (lb, _c) = lb_with_config(&config("first_byte", &bs), &[]);
    let s = shares(&lb, 120);
    let n = |k: &str| s.get(k).copied().unwrap_or(0);
    assert!(
        n("fast") >= 90 && n("fast") > n("mid") && n("fast") > n("slow"),
        "{s:?}"
    );
    let v = stats(&lb);
    assert_eq!(v["services"][0]["response_time_metric"], "first_byte");
    let (f, m, sl) = (
        estimate(&v, "fast").unwrap(),
        estimate(&v, "mid").unwrap(),
        estimate(&v, "slow").unwrap(),
    );
    assert!(f < m && m < sl && sl >= 75.0, "fast {f} mid {m} slow {sl}");
    let metrics = http_request(lb.admin.unwrap(), "GET", "/metrics", &[], "").2;
    assert!(
        metrics.contains(&format!(
            "lb_backend_response_time_seconds{{service=\"default\",backend=\"slow\",address=\"{}\",core=\"0\"}}",
            slow.addr
        )),
        "{metrics}"
    );

    // By connect time: the 80 ms backend's estimate is a handshake, like the 1 ms one's.
    let (lb2, _c2) = lb_with_config(&config("connect", &bs), &[]);
    let _ = shares(&lb2, 30);
    let v = stats(&lb2);
    assert_eq!(v["services"][0]["response_time_metric"], "connect");
    for name in ["fast", "mid", "slow"] {
        if let Some(ms) = estimate(&v, name) {
            assert!(ms < 20.0, "{name}: a connect time of {ms} ms");
        }
    }
}

#[test]
fn a_backend_that_stops_answering_is_avoided() {
    let fast = slow_backend("fast", 1);
    // Accepts, reads, never answers; holds what it accepted until the test ends.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let stall = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    let toml = format!(
        "algorithm = \"least_response_time\"\n[health]\ncheck = \"none\"\n\
         [[backends]]\nname = \"fast\"\naddress = \"{}\"\n[[backends]]\nname = \"stall\"\naddress = \"{stall}\"\n",
        fast.addr
    );
    let (lb, _c) = lb_with_config(&toml, &[]);
    // Clients that give up after 200 ms: one stuck on the stalled backend is recorded as slow.
    let mut stuck = 0;
    let mut last = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let ok = s.read_to_end(&mut out).is_ok() && !out.is_empty();
        if !ok {
            stuck += 1;
        }
        if i >= 30 {
            last.push(ok);
        }
    }
    assert!(
        stuck <= 3,
        "{stuck} of 40 went to the backend that never answers"
    );
    assert!(last.iter().all(|&ok| ok), "the last ten: {last:?}");
}
