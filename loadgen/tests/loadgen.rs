//! Runs the real `loadgen` binary against small std::net servers written here. Runs on whichever
//! monoio driver the environment selects: `MONOIO_FORCE_LEGACY_DRIVER=1` forces epoll.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{closed_port, loadgen, Behavior, Http, Server};

fn expected_driver() -> &'static str {
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some() {
        "epoll"
    } else {
        "io_uring"
    }
}

#[test]
fn a_fixed_request_count_is_exact_and_split_between_server_ids() {
    let server = Server::start(Behavior::Http(Http {
        ids: vec!["a", "b"],
        ..Http::default()
    }));
    let before_ms = unix_ms();
    let run = loadgen(&[&server.url(), "--requests", "1000", "--conns", "8"]);
    let after_ms = unix_ms();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // t = 0 of the timeline, on the wall clock: after loadgen was started and before it ended.
    let started = run.f("/started_unix_ms");
    assert!(
        before_ms < started && started < after_ms,
        "{before_ms} < {started} < {after_ms}"
    );
    assert_eq!(run.u("/requests"), 1000);
    assert_eq!(run.u("/errors"), 0);
    assert_eq!(run.u("/servers/a"), 500);
    assert_eq!(run.u("/servers/b"), 500);
    assert_eq!(run.f("/server_share/a"), 0.5);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1000);
    // Keep-alive: one connection per --conns.
    assert_eq!(server.accepts.load(Ordering::SeqCst), 8);
    assert_eq!(run.u("/connections_opened"), 8);
    let j = run.json();
    for key in [
        "requests",
        "errors",
        "errors_by_kind",
        "rps",
        "bytes_per_sec",
        "duration_s",
        "latency_ms",
        "servers",
        "timeline",
        "cpu_seconds",
        "requests_per_cpu_second",
        "env",
    ] {
        assert!(j.get(key).is_some(), "missing key {key}");
    }
    for key in ["p50", "p90", "p99", "p999", "max", "mean", "min"] {
        assert!(j["latency_ms"][key].is_number(), "missing latency_ms.{key}");
    }
    for key in [
        "host",
        "cores",
        "kernel",
        "io_driver",
        "loadgen_version",
        "args",
    ] {
        assert!(j["env"].get(key).is_some(), "missing env.{key}");
    }
    assert_eq!(j["env"]["io_driver"], expected_driver());
    assert!(j["env"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "1000"));
    let timeline_total: u64 = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(timeline_total, 1000);
    // Each bucket says which servers answered in it; over all buckets that is `servers`.
    for id in ["a", "b"] {
        let per_bucket: u64 = j["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["servers"][id].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(per_bucket, 500, "{id}");
    }
    assert!(run.f("/rps") > 0.0);
    assert!(run.u("/bytes") > 0);
    assert!(run.stdout.contains("a 500 (50.0%)"), "{}", run.stdout);
}

#[test]
fn requests_split_exactly_over_several_cores() {
    let server = Server::start(Behavior::Http(Http::default()));
    let run = loadgen(&[&server.url(), "-n", "1001", "-c", "5", "--cores", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.u("/requests"), 1001);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1001);
    assert_eq!(run.u("/env/cores"), 2);
    // Without an id header, every response counts under "-".
    assert_eq!(run.u("/servers/-"), 1001);
}

#[test]
fn new_connection_opens_one_connection_per_request() {
    let server = Server::start(Behavior::Http(Http {
        ids: vec!["x"],
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "200", "-c", "4", "--new-connection"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.u("/requests"), 200);
    assert_eq!(run.u("/errors"), 0);
    assert_eq!(server.accepts.load(Ordering::SeqCst), 200);
    assert_eq!(run.u("/connections_opened"), 200);
}

#[test]
fn server_closing_after_each_response_is_followed_transparently() {
    let server = Server::start(Behavior::Http(Http {
        close_each: true,
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "100", "-c", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((run.u("/requests"), run.u("/errors")), (100, 0));
    assert_eq!(server.accepts.load(Ordering::SeqCst), 100);
}

#[test]
fn close_delimited_bodies_are_read_to_the_end() {
    let server = Server::start(Behavior::Http(Http {
        read_to_close: true,
        body: "body without length",
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "50", "-c", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((run.u("/requests"), run.u("/errors")), (50, 0));
}

#[test]
fn chunked_responses_are_decoded() {
    let server = Server::start(Behavior::Http(Http {
        chunked: true,
        ids: vec!["c1", "c2"],
        body: "a chunked body of some length",
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "300", "-c", "3"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((run.u("/requests"), run.u("/errors")), (300, 0));
    assert_eq!((run.u("/servers/c1"), run.u("/servers/c2")), (150, 150));
    // Keep-alive survived the chunked bodies.
    assert_eq!(server.accepts.load(Ordering::SeqCst), 3);
}

#[test]
fn large_bodies_are_read_completely() {
    let body: &'static str = Box::leak("0123456789".repeat(20_000).into_boxed_str());
    for chunked in [false, true] {
        let server = Server::start(Behavior::Http(Http {
            body,
            chunked,
            ..Http::default()
        }));
        let run = loadgen(&[&server.url(), "-n", "50", "-c", "2"]);
        assert_eq!(
            (run.code, run.u("/requests"), run.u("/errors")),
            (0, 50, 0),
            "{}",
            run.stderr
        );
        assert!(run.u("/bytes") > 50 * 200_000);
        assert_eq!(server.accepts.load(Ordering::SeqCst), 2);
    }
}

#[test]
fn server_errors_are_responses_and_5xx_errors() {
    let server = Server::start(Behavior::Http(Http {
        status: 500,
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "100", "-c", "4"]);
    assert_eq!(
        run.code, 0,
        "a run with error statuses still completed: {}",
        run.stderr
    );
    assert_eq!(run.u("/requests"), 100);
    assert_eq!(run.u("/errors"), 100);
    assert_eq!(run.u("/errors_by_kind/5xx"), 100);
    assert_eq!(run.u("/status/5xx"), 100);
    let by_kind: u64 = run.json()["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["errors_by_kind"]["5xx"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(by_kind, 100);
    assert!(run.stdout.contains("5xx 100"), "{}", run.stdout);
}

#[test]
fn a_closed_port_gives_connect_refused_and_exit_code_1() {
    let addr = closed_port();
    let run = loadgen(&[&format!("http://{addr}/"), "-d", "5s", "-c", "4"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.u("/errors_by_kind/connect_refused") >= 4);
    assert_eq!(run.u("/requests"), 0);
    assert!(run.json()["aborted"].as_bool().unwrap());
    assert!(run.stderr.contains("connect_refused"), "{}", run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("refused"),
        "{}",
        run.stderr
    );
    // Fail fast: no waiting out the 5 s.
    assert!(run.f("/duration_s") < 2.0);
}

#[test]
fn a_server_that_never_answers_gives_timeouts() {
    let server = Server::start(Behavior::Silent);
    let run = loadgen(&[&server.url(), "-d", "1s", "-c", "2", "--timeout", "200ms"]);
    // Nothing was measured, so the exit code says so.
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let timeouts = run.u("/errors_by_kind/timeout");
    // 2 connections x about 1 s / 200 ms.
    assert!((4..=14).contains(&timeouts), "{timeouts} timeouts");
    assert_eq!(run.u("/requests"), 0);
    // Each timeout closed its connection and opened a new one.
    assert!(server.accepts.load(Ordering::SeqCst) >= timeouts as usize);
}

#[test]
fn resets_are_counted_and_the_connection_reopened() {
    let server = Server::start(Behavior::Http(Http {
        reset_every_second: true,
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "100", "-c", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (ok, resets) = (run.u("/requests"), run.u("/errors_by_kind/reset"));
    let closed = run.u("/errors_by_kind/closed_early");
    assert!(resets > 0, "{:#}", run.json());
    // Every attempt ended as a response or an error.
    assert_eq!(ok + resets + closed, 100, "{:#}", run.json());
}

#[test]
fn open_loop_rate_is_kept() {
    let server = Server::start(Behavior::Http(Http::default()));
    let run = loadgen(&[
        &server.url(),
        "--rate",
        "200",
        "--duration",
        "2s",
        "-c",
        "8",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let n = run.u("/requests");
    assert!((360..=440).contains(&n), "{n} requests");
    assert_eq!(run.json()["run"]["mode"], "open");
    assert!(run.json()["schedule_lag_ms"]["p99"].is_number());
}

#[test]
fn timeline_buckets_have_the_asked_width() {
    let server = Server::start(Behavior::Http(Http::default()));
    let run = loadgen(&[
        &server.url(),
        "--rate",
        "400",
        "--duration",
        "1200ms",
        "-c",
        "4",
        "--timeline-ms",
        "100",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["run"]["timeline_ms"], 100);
    let timeline = j["timeline"].as_array().unwrap();
    assert!((12..=14).contains(&timeline.len()), "{}", timeline.len());
    let mut total = 0;
    for (i, b) in timeline.iter().enumerate() {
        let t_ms = b["t_ms"].as_u64().unwrap();
        assert_eq!(t_ms, 100 * i as u64);
        assert_eq!(b["second"].as_u64().unwrap(), t_ms / 1000);
        assert!(b["errors_by_kind"].as_object().unwrap().is_empty());
        total += b["requests"].as_u64().unwrap();
    }
    assert_eq!(total, run.u("/requests"));
    // 400 req/s: about 40 per full bucket.
    let mid = timeline[5]["requests"].as_u64().unwrap();
    assert!((30..=50).contains(&mid), "{mid}");
}

#[test]
fn latency_matches_a_slow_server() {
    let server = Server::start(Behavior::Http(Http {
        delay: Duration::from_millis(20),
        ..Http::default()
    }));
    let run = loadgen(&[&server.url(), "-n", "100", "-c", "4"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let p50 = run.f("/latency_ms/p50");
    assert!((20.0..30.0).contains(&p50), "p50 {p50} ms");
    assert!(run.f("/latency_ms/min") >= 20.0);
}

#[test]
fn open_loop_latency_counts_the_queueing_behind_a_slow_response() {
    // 50 ms responses on one connection asked for every 10 ms: the connection falls behind and
    // latencies measured from the due times grow far beyond 50 ms (no coordinated omission).
    let server = Server::start(Behavior::Http(Http {
        delay: Duration::from_millis(50),
        ..Http::default()
    }));
    let run = loadgen(&[
        &server.url(),
        "--rate",
        "100",
        "-d",
        "1s",
        "-c",
        "1",
        "--timeout",
        "10s",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let max = run.f("/latency_ms/max");
    assert!(max > 300.0, "max {max} ms");
    assert!(
        run.stdout.contains("target rate was not reached"),
        "{}",
        run.stdout
    );
}

#[test]
fn tcp_echo_round_trips_payloads() {
    let server = Server::start(Behavior::Echo);
    let target = format!("tcp://{}", server.addr);
    let run = loadgen(&[
        &target,
        "--tcp-echo",
        "--payload",
        "1024",
        "-n",
        "500",
        "-c",
        "4",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((run.u("/requests"), run.u("/errors")), (500, 0));
    assert_eq!(run.u("/bytes"), 500 * 1024);
    assert_eq!(run.json()["run"]["protocol"], "tcp_echo");
    // host:port works as well, and payloads larger than a socket buffer do not deadlock.
    let run = loadgen(&[
        &server.addr.to_string(),
        "--tcp-echo",
        "--payload",
        "300000",
        "-n",
        "20",
        "-c",
        "2",
    ]);
    assert_eq!((run.code, run.u("/requests"), run.u("/errors")), (0, 20, 0));
}

#[test]
fn method_headers_and_body_are_sent() {
    let server = Server::start(Behavior::Http(Http {
        require_header: Some(("x-test", "yes")),
        require_body: Some("payload!"),
        ..Http::default()
    }));
    let url = server.url();
    let run = loadgen(&[
        &url,
        "-n",
        "20",
        "-c",
        "2",
        "-X",
        "POST",
        "-H",
        "X-Test: yes",
        "--body",
        "payload!",
    ]);
    assert_eq!(
        (run.code, run.u("/requests"), run.u("/errors")),
        (0, 20, 0),
        "{}",
        run.stderr
    );
    // Without the header the server answers 400, counted as 4xx.
    let run = loadgen(&[
        &url, "-n", "20", "-c", "2", "-X", "POST", "--body", "payload!",
    ]);
    assert_eq!(run.u("/errors_by_kind/4xx"), 20);
    // --body-file reads the body from a file.
    let file = std::env::temp_dir().join(format!("loadgen-body-{}", std::process::id()));
    std::fs::write(&file, "payload!").unwrap();
    let run = loadgen(&[
        &url,
        "-n",
        "20",
        "-c",
        "2",
        "-X",
        "POST",
        "-H",
        "X-Test: yes",
        "--body-file",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(run.u("/errors"), 0, "{}", run.stderr);
}

#[test]
fn warmup_requests_are_not_counted() {
    let server = Server::start(Behavior::Http(Http::default()));
    let run = loadgen(&[
        &server.url(),
        "--rate",
        "100",
        "-d",
        "1s",
        "--warmup",
        "500ms",
        "-c",
        "2",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let counted = run.u("/requests");
    let served = server.requests.load(Ordering::SeqCst) as u64;
    assert!((90..=110).contains(&counted), "{counted}");
    assert!(served >= counted + 40, "served {served}, counted {counted}");
    assert_eq!(run.f("/run/warmup_s"), 0.5);
}

#[test]
fn bad_arguments_exit_with_2() {
    for args in [
        vec!["https://example.com/"],
        vec!["ftp://example.com/"],
        vec!["http://127.0.0.1:1/", "--conns", "0"],
        vec!["http://127.0.0.1:1/", "--duration", "10x"],
        vec!["http://127.0.0.1:1/", "--duration", "1s", "--requests", "5"],
        vec!["http://127.0.0.1:1/", "-H", "no colon"],
        vec!["http://127.0.0.1:1/", "--cores", "4", "--conns", "2"],
        vec!["127.0.0.1", "--tcp-echo"],
        vec!["http://127.0.0.1:1/", "--timeline-ms", "0"],
        vec!["http://127.0.0.1:1/", "--timeline-ms", "1", "-d", "1h"],
    ] {
        let run = support::loadgen_within(&args, Duration::from_secs(20));
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.json.is_none());
        assert!(!run.stderr.is_empty());
    }
}

#[test]
fn https_is_refused_with_a_clear_message() {
    let run = loadgen(&["https://127.0.0.1/"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("https is not supported"),
        "{}",
        run.stderr
    );
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}
