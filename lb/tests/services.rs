//! Many listeners and services in one lb: routing by listener, the admin API's service routes,
//! and a reload that adds and removes listeners and services under load.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn each_listener_feeds_its_service_and_the_admin_api_names_them() {
    let (a, b) = (backend("a"), backend("b"));
    let (lb, _cfg, at) = lb_with_listeners(&two_services(&a, &b), &["l1", "l2"], &["--cores", "2"]);
    for _ in 0..6 {
        assert_eq!(request_id(at["l1"], None, "").unwrap(), "a");
        assert_eq!(request_id(at["l2"], None, "").unwrap(), "b");
    }
    let adm = lb.admin.unwrap();
    let (code, body) = admin_call(adm, None, "GET", "/lb/services", "");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "api"]);
    let (_, body) = admin_call(adm, None, "GET", "/lb/listeners", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["name"], "l1");
    assert_eq!(v[0]["service"], "web");
    assert!(v[1]["accepted"].as_u64().unwrap() >= 6, "{v}");
    // Backend routes are per service; the single-service routes need a default.
    let (code, body) = admin_call(adm, None, "GET", "/lb/services/api/backends", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"b\""), "{body}");
    assert_eq!(admin_call(adm, None, "GET", "/lb/backends", "").0, 404);
    assert_eq!(
        admin_call(adm, None, "GET", "/lb/services/nope/backends", "").0,
        404
    );
    assert_eq!(
        admin_call(adm, None, "POST", "/lb/services/api/backends/b/drain", "").0,
        200
    );
    let stream = std::net::TcpStream::connect(at["l2"]).unwrap();
    let mut buf = [0u8; 1];
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_eq!(
        std::io::Read::read(&mut &stream, &mut buf).unwrap_or(0),
        0,
        "api's only backend drains"
    );
    assert_eq!(
        request_id(at["l1"], None, "").unwrap(),
        "a",
        "web is untouched"
    );
    let (_, metrics) = admin_call(adm, None, "GET", "/metrics", "");
    assert!(
        metrics.contains("lb_backend_up{service=\"api\",backend=\"b\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("lb_listener_accepted_connections_total{listener=\"l1\""),
        "{metrics}"
    );
}

#[test]
fn a_reload_adds_and_removes_listeners_and_services_without_a_failed_request() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let toml = two_services(&a, &b);
    let (lb, cfg, at) = lb_with_listeners(&toml, &["l1", "l2"], &["--cores", "2"]);
    let keep = loadgen_background(
        at["l1"],
        &["--rate", "400", "--conns", "8", "--duration", "4s"],
    );
    let fresh = loadgen_background(
        at["l2"],
        &[
            "--rate",
            "200",
            "--conns",
            "8",
            "--new-connection",
            "--duration",
            "4s",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    let third = format!(
        "{toml}\n[[services]]\nname = \"third\"\n[[services.backends]]\nname = \"c\"\naddress = \"{}\"\n[[listeners]]\nname = \"l3\"\naddress = \"127.0.0.1:0\"\nservice = \"third\"\n",
        c.addr
    );
    std::fs::write(&cfg.0, &third).unwrap();
    signal(&lb.child, libc::SIGHUP);
    let adm = lb.admin.unwrap();
    let l3 = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = admin_call(adm, None, "GET", "/lb/listeners", "");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(l) = v.as_array().unwrap().iter().find(|l| l["name"] == "l3") {
                break l["address"]
                    .as_str()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap();
            }
            assert!(Instant::now() < deadline, "l3 never appeared: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let id = loop {
        match request_id(l3, None, "") {
            Ok(id) => break id,
            Err(e) => assert!(Instant::now() < deadline, "l3: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(id, "c");
    for (name, report) in [("l1", keep.join().unwrap()), ("l2", fresh.join().unwrap())] {
        assert_eq!(report["errors"], 0, "{name}: {}", report["errors_by_kind"]);
        assert!(
            report["requests"].as_u64().unwrap() > 300,
            "{name}: {}",
            report["requests"]
        );
    }
    // Now l2 and its service go: l2's port stops answering, the others serve on.
    std::fs::write(
        &cfg.0,
        third
            .replace("[[listeners]]\nname = \"l2\"\naddress = \"127.0.0.1:0\"\nservice = \"api\"\n", "")
            .replace(&format!("[[services]]\nname = \"api\"\n[[services.backends]]\nname = \"b\"\naddress = \"{}\"\n", b.addr), ""),
    )
    .unwrap();
    signal(&lb.child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(at["l2"]).is_ok() {
        assert!(
            Instant::now() < deadline,
            "l2 still accepts after its removal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(request_id(at["l1"], None, "").unwrap(), "a");
    assert_eq!(request_id(l3, None, "").unwrap(), "c");
    let (_, body) = admin_call(adm, None, "GET", "/lb/services", "");
    assert!(!body.contains("\"api\""), "{body}");
}
