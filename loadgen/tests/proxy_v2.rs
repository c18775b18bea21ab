//! `--proxy-v2` on real sockets: the header each connection opens with carries that connection's
//! own addresses, and a real `lb` with `accept_proxy = "v2"` takes it (and refuses loadgen
//! without it).

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{loadgen, start_bin, Behavior, Http, Proc, Server};

fn strict_server() -> Server {
    Server::start(Behavior::Http(Http {
        require_proxy_v2: true,
        ..Http::default()
    }))
}

#[test]
fn every_new_connection_opens_with_the_header_of_its_own_addresses() {
    let server = strict_server();
    let run = loadgen(&[
        &server.url(),
        "-n",
        "60",
        "-c",
        "3",
        "--new-connection",
        "--proxy-v2",
    ]);
    assert_eq!(
        (run.code, run.u("/requests"), run.u("/errors")),
        (0, 60, 0),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(server.accepts.load(Ordering::SeqCst), 60);
    assert_eq!(run.json()["run"]["proxy_v2"], true);
    assert!(
        run.stdout.contains("PROXY v2 header first"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_keep_alive_connection_sends_the_header_once_before_its_first_request() {
    let server = strict_server();
    let run = loadgen(&[&server.url(), "-n", "200", "-c", "2", "--proxy-v2"]);
    assert_eq!(
        (run.code, run.u("/requests"), run.u("/errors")),
        (0, 200, 0),
        "{}",
        run.stderr
    );
    // A second header on the connection would have been read as a request and failed it.
    assert_eq!(server.accepts.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests.load(Ordering::SeqCst), 200);
}

#[test]
fn without_the_option_a_server_that_wants_the_header_gets_none() {
    let server = strict_server();
    let run = loadgen(&[&server.url(), "-n", "10", "-c", "1", "--new-connection"]);
    assert_eq!(run.u("/errors"), 10, "{}", run.stdout);
    assert_eq!(run.json()["run"]["proxy_v2"], false);
}

/// A real lb (one core, access log in JSON to `dir`) whose one listener takes PROXY v2 headers
/// from 127.0.0.0/8 and feeds `backend`.
fn lb_accepting_v2(backend: std::net::SocketAddr, dir: &std::path::Path) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("lb.toml");
    std::fs::write(
        &conf,
        format!(
            "[health]\ncheck = \"none\"\n\
             [access_log]\npath = \"{}\"\nformat = \"json\"\n\
             [[services]]\nname = \"app\"\n[[services.backends]]\nname = \"b\"\naddress = \"{backend}\"\n\
             [[listeners]]\nname = \"behind\"\naddress = \"127.0.0.1:0\"\nservice = \"app\"\n\
             accept_proxy = \"v2\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
            dir.join("access.log").display(),
        ),
    )
    .unwrap();
    start_bin(
        "lb",
        &[
            "--cores",
            "1",
            "--admin",
            "off",
            "--config",
            conf.to_str().unwrap(),
        ],
    )
}

fn test_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("loadgen-{name}-{}", std::process::id()))
}

#[test]
fn lb_accepting_proxy_v2_takes_the_header_as_the_client_address() {
    let backend = Server::start(Behavior::Http(Http::default()));
    let dir = test_dir("proxy-v2-http");
    let log = dir.join("access.log");
    let lb = lb_accepting_v2(backend.addr, &dir);
    let url = format!("http://{}/", lb.addr);
    // Three clients, 127.1.0.0 to 127.1.0.2, each connection with its own header.
    let run = loadgen(&[
        &url,
        "-n",
        "30",
        "-c",
        "3",
        "--new-connection",
        "--proxy-v2",
        "--keys",
        "3",
        "--key-dist",
        "seq",
        "--source-ip-per-key",
    ]);
    assert_eq!(
        (run.code, run.u("/requests"), run.u("/errors")),
        (0, 30, 0),
        "{}{}",
        run.stdout,
        run.stderr
    );
    // Lines are handed to the writer every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= 30 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 30, "{lines:#?}");
    let request_bytes = run.u("/run/request_bytes");
    let mut clients = BTreeSet::new();
    for l in &lines {
        assert_eq!(l["end"], "backend_fin", "{l}");
        // lb took exactly the header off: the backend got the request alone.
        assert_eq!(l["bytes_to_backend"], request_bytes, "{l}");
        // The header named the connection's own source, so no `via` (lb logs one only when the
        // header's client differs from the peer).
        assert!(l["via"].is_null(), "{l}");
        let client: std::net::SocketAddr = l["client"].as_str().unwrap().parse().unwrap();
        clients.insert(client.ip().to_string());
    }
    assert_eq!(
        clients,
        ["127.1.0.0", "127.1.0.1", "127.1.0.2"]
            .map(String::from)
            .into(),
    );
    // The same load without the header is refused: lb resets before the request reaches a
    // backend.
    let served = backend.requests.load(Ordering::SeqCst);
    let run = loadgen(&[&url, "-n", "5", "-c", "1", "--new-connection"]);
    assert_eq!(run.u("/errors"), 5, "{}", run.stdout);
    assert_eq!(backend.requests.load(Ordering::SeqCst), served);
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_loads_send_the_header_before_the_first_payload_and_expect_only_the_payload_back() {
    let backend = Server::start(Behavior::Echo);
    let dir = test_dir("proxy-v2-echo");
    let lb = lb_accepting_v2(backend.addr, &dir);
    let target = lb.addr.to_string();
    for extra in [&[][..], &["--new-connection"][..]] {
        let mut args = vec![
            target.as_str(),
            "--tcp-echo",
            "--payload",
            "100",
            "-n",
            "40",
            "-c",
            "2",
            "--proxy-v2",
        ];
        args.extend_from_slice(extra);
        let run = loadgen(&args);
        assert_eq!(
            (run.code, run.u("/requests"), run.u("/errors")),
            (0, 40, 0),
            "{extra:?}: {}{}",
            run.stdout,
            run.stderr
        );
    }
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
