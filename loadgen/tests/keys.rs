//! Key populations (`--keys`) with real sockets: placeholders on the wire, one source address per
//! key, and through a real `lb` with hash algorithms, every key on one backend.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{loadgen, start_bin, Behavior, Http, IdFrom, Proc, Run, Server};

/// `keys.per_key` as key -> server id -> responses.
fn per_key(run: &support::Run) -> BTreeMap<String, BTreeMap<String, u64>> {
    serde_json::from_value(run.json()["keys"]["per_key"].clone()).expect("per_key object")
}

#[test]
fn placeholders_carry_each_connections_key_in_path_query_and_headers() {
    let server = Server::start(Behavior::Http(Http {
        id_from: Some(IdFrom::TargetAndCookie),
        ..Http::default()
    }));
    let url = format!("http://{}/u/{{key}}?q={{key}}", server.addr);
    // seq: 100 connects over 10 keys give every key exactly 10 requests.
    let run = loadgen(&[
        &url,
        "-n",
        "100",
        "-c",
        "4",
        "--new-connection",
        "--keys",
        "10",
        "--key-dist",
        "seq",
        "-H",
        "Cookie: sid={key}",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let keys = per_key(&run);
    assert_eq!(keys.len(), 10);
    for (k, servers) in &keys {
        let want = format!("/u/{k}?q={k} sid={k}");
        assert_eq!(servers.len(), 1, "{k}: {servers:?}");
        assert_eq!(servers.get(&want), Some(&10), "{k}: {servers:?}");
    }
    let j = &run.json()["keys"];
    assert_eq!(j["distinct"], 10);
    assert_eq!(j["dist"], "seq");
    assert_eq!(j["keys_seen"], 10);
    assert_eq!(j["requests"], 100);
    assert_eq!(j["stickiness_pct"], 100.0);
    assert!(run.stdout.contains("keys        10 seq"), "{}", run.stdout);
}

#[test]
fn keep_alive_connections_keep_the_key_drawn_at_connect() {
    let server = Server::start(Behavior::Http(Http {
        id_from: Some(IdFrom::TargetAndCookie),
        ..Http::default()
    }));
    let url = format!("http://{}/{{key}}", server.addr);
    let run = loadgen(&[
        &url, "-n", "200", "-c", "4", "--cores", "2", "--keys", "1000",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Four connections: at most four keys, each always with its own path (no cookie: the id
    // is "/kN " with the trailing space trimmed).
    let keys = per_key(&run);
    assert!((1..=4).contains(&keys.len()), "{keys:?}");
    for (k, servers) in &keys {
        assert_eq!(servers.keys().collect::<Vec<_>>(), vec![&format!("/{k}")]);
    }
    assert_eq!(run.u("/keys/requests"), 200);
}

#[test]
fn each_key_connects_from_its_own_loopback_address() {
    let server = Server::start(Behavior::Http(Http {
        id_from: Some(IdFrom::PeerIp),
        ..Http::default()
    }));
    let run = loadgen(&[
        &server.url(),
        "-n",
        "300",
        "-c",
        "6",
        "--cores",
        "2",
        "--new-connection",
        "--keys",
        "300",
        "--source-ip-per-key",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.u("/errors"), 0);
    let keys = per_key(&run);
    assert!(keys.len() > 150, "{} keys seen", keys.len());
    for (k, servers) in &keys {
        let i: u32 = k[1..].parse().unwrap();
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 1, 0, 0)) + i);
        assert_eq!(
            servers.keys().collect::<Vec<_>>(),
            vec![&ip.to_string()],
            "{k}"
        );
    }
    assert_eq!(run.json()["keys"]["source_ip_per_key"], true);
    assert_eq!(run.u("/keys/keys_on_several_servers"), 0);
}

#[test]
fn zipf_keys_are_skewed_and_the_same_for_the_same_seed() {
    let server = Server::start(Behavior::Http(Http {
        ids: vec!["a"],
        ..Http::default()
    }));
    let args = |seed: &'static str| {
        loadgen(&[
            &server.url(),
            "-n",
            "2000",
            "-c",
            "4",
            "--new-connection",
            "--keys",
            "100",
            "--key-dist",
            "zipf:1.2",
            "--key-seed",
            seed,
        ])
    };
    let (a, b, c) = (args("5"), args("5"), args("6"));
    for r in [&a, &b, &c] {
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let count =
        |r: &support::Run, k: &str| r.json()["keys"]["per_key"][k]["a"].as_u64().unwrap_or(0);
    // zipf 1.2 over 100 keys: k0 has ~25% of the requests, k9 ~1.6%.
    let k0 = count(&a, "k0");
    assert!((400..=600).contains(&k0), "k0: {k0}");
    assert!(k0 > 5 * count(&a, "k9"));
    assert_eq!(a.u("/keys/max_key_requests"), k0);
    // One core: the n-th connect's key depends only on the seed.
    assert_eq!(per_key(&a), per_key(&b));
    assert_ne!(per_key(&a), per_key(&c));
}

#[test]
fn key_arguments_are_checked() {
    for args in [
        vec!["http://127.0.0.1:1/{key}"],
        vec!["http://127.0.0.1:1/", "-H", "Cookie: sid={key}"],
        vec!["http://127.0.0.1:1/", "--key-dist", "zipf:1"],
        vec!["http://127.0.0.1:1/", "--source-ip-per-key"],
        vec!["http://127.0.0.1:1/", "--keys", "0"],
        vec![
            "http://127.0.0.1:1/",
            "--keys",
            "10",
            "--key-dist",
            "zipf:0",
        ],
        vec![
            "http://127.0.0.1:1/",
            "--keys",
            "10",
            "--key-dist",
            "normal",
        ],
        // Not on 127.0.0.0/8: rejected before any connect.
        vec![
            "http://192.0.2.1:80/",
            "--keys",
            "10",
            "--source-ip-per-key",
        ],
        vec!["http://[::1]:80/", "--keys", "10", "--source-ip-per-key"],
    ] {
        let run = support::loadgen_within(&args, std::time::Duration::from_secs(20));
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(!run.stderr.is_empty());
    }
    let run = loadgen(&["http://192.0.2.1:80/", "--keys", "1", "--source-ip-per-key"]);
    assert!(run.stderr.contains("127.0.0.0/8"), "{}", run.stderr);
}

/// Three real backends behind a real lb with `extra` config; returns the lb (backends kept
/// alive in the second value).
fn lb_with(toml: &str, algorithm: &str) -> (Proc, Vec<Proc>, std::path::PathBuf) {
    let backends: Vec<Proc> = ["s1", "s2", "s3"]
        .iter()
        .map(|id| start_bin("backend", &["--listen", "127.0.0.1:0", "--id", id]))
        .collect();
    let list = backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let conf = std::env::temp_dir().join(format!(
        "loadgen-keys-{}-{algorithm}.toml",
        std::process::id()
    ));
    std::fs::write(&conf, toml).unwrap();
    let lb = start_bin(
        "lb",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--algorithm",
            algorithm,
            "--backend",
            &list,
            "--config",
            conf.to_str().unwrap(),
        ],
    );
    (lb, backends, conf)
}

fn assert_sticky(j: &Value) {
    let keys = &j["keys"];
    assert_eq!(keys["keys_on_several_servers"], 0, "{keys:#}");
    assert_eq!(keys["stickiness_pct"], 100.0);
    // 200 keys spread over all three backends.
    let per_server = keys["keys_per_server"].as_object().unwrap();
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    assert!(per_server.values().all(|n| n.as_u64().unwrap() > 20));
}

/// lb with `algorithm` and `toml` in front of three backends, then `requests` new-connection
/// requests from a population of `keys` keys plus `extra` loadgen flags; lb is stopped after.
fn through_lb(toml: &str, algorithm: &str, requests: u32, keys: u32, extra: &[&str]) -> Run {
    let (lb, _backends, conf) = lb_with(toml, algorithm);
    let (url, requests, keys) = (
        format!("http://{}/", lb.addr),
        requests.to_string(),
        keys.to_string(),
    );
    let mut args = vec![
        url.as_str(),
        "-n",
        &requests,
        "-c",
        "4",
        "--new-connection",
        "--keys",
        &keys,
    ];
    args.extend_from_slice(extra);
    let run = loadgen(&args);
    let _ = std::fs::remove_file(conf);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.u("/errors"), 0);
    run
}

#[test]
fn through_lb_cookie_hashing_keeps_every_key_on_one_backend() {
    let toml = "[hash]\nkey = \"cookie:sid\"\n";
    let run = through_lb(
        toml,
        "consistent_hash",
        800,
        200,
        &["-H", "Cookie: sid={key}"],
    );
    assert_sticky(run.json());
}

#[test]
fn through_lb_client_ip_hashing_sees_one_client_per_key() {
    let toml = "[hash]\nkey = \"client_ip\"\n";
    let run = through_lb(toml, "maglev", 800, 200, &["--source-ip-per-key"]);
    assert_sticky(run.json());
}

#[test]
fn through_lb_round_robin_scatters_the_keys() {
    let run = through_lb("", "round_robin", 600, 50, &["--source-ip-per-key"]);
    // 12 requests per key dealt in turn over 3 backends: nearly every key sees several.
    assert!(
        run.u("/keys/keys_on_several_servers") > 40,
        "{:#}",
        run.json()["keys"]
    );
    assert!(run.f("/keys/stickiness_pct") < 80.0);
}
