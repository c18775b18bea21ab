//! Kernel mode in network namespaces: clients in one, lb in another acting as their router, three
//! backends in three more (see `support::netns::KernelTopology`). lb programs netfilter to DNAT
//! the virtual IP's port 80 to the backends through its Maglev map; the backends answer through
//! lb's namespace, no SNAT. 60 client addresses each open connections to the VIP:
//!
//! 1. every client reaches the backend that lb's own `maglev` (jhash key hash) picks for its
//!    address, computed in this test process: the backend nft chose is lb's choice, so a flow
//!    lands where relay mode (and every other lb instance) would send it; the map's slots are
//!    the Maglev table's, in its weight proportions; each client always reaches the same one;
//!    nftables' counters in /lb/stats count what the clients saw; a killed lb leaves its table,
//!    the next one replaces it, a stopped one removes it; an lb without CAP_NET_ADMIN relays
//!    the service and sends every client to the same backend again;
//! 2. a drained backend leaves the map (only its clients move, where lb's choice says, and its
//!    open connections go on); a killed one leaves it within the health checks' bound.
//!
//! Needs root, `ip`, `nft` and `curl`; otherwise the tests print `SKIPPED netns tests: <reason>`
//! and pass, unless `LB_REQUIRE_NETNS=1`. No socket is opened from the root namespace: the
//! client is this test binary re-executed inside the client namespace (`kernel_client`).

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lb::balance::{key_from_ip, Algorithm, BackendSpec, Balancer, Candidate, HashConfig, HashFn};
use support::netns::{self, KernelTopology, NsProc};
use support::tempfile_path::TempPath;
use support::workspace_bin;

const BACKENDS: usize = 3;
/// b3 weighs twice as much: its share of the map (and of the clients) is half.
const WEIGHTS: [u32; BACKENDS] = [1, 1, 2];
const CLIENTS: usize = 60;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8000;
const ADMIN: &str = "127.0.0.1:9900";
/// Kernel mode's default table.
const SLOTS: u64 = 1_021;
const INTERVAL_MS: u64 = 200;
const CHECK_TIMEOUT_MS: u64 = 200;
const FALL: u64 = 2;
/// Slow 2-CPU VMs, other tests beside.
const SLACK_MS: u64 = 1000;
/// Out of rotation within fall x (interval + timeout) plus one interval, as in tests/netns.rs;
/// then the map, within the kernel loop's poll and one `nft` run.
const DETECT_BOUND_MS: u64 = FALL * (INTERVAL_MS + CHECK_TIMEOUT_MS) + INTERVAL_MS + SLACK_MS;
/// One command of the client ends well within this.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
const CLIENT_ENV: &str = "LBT_KERNEL_CLIENT";

// ---------------------------------------------------------------------------------------------
// The client, inside the client namespace

/// Not a test: the client of the tests below, run inside the client namespace with its settings
/// in `LBT_KERNEL_CLIENT`. Without that variable it does nothing. Commands on stdin, answered
/// with one line per connection then `<id> END`:
/// - `<id> new K`: each client, in parallel, opens K connections one after another, one
///   request each: `<id> NEW <client> ok <server>` or `<id> NEW <client> err <kind> <detail>`;
/// - `<id> hold C,C,...`: those clients open one connection each and send one keep-alive
///   request on it (`HELD`);
/// - `<id> reuse`: one more request on each held connection (`REUSE`).
#[test]
#[ignore = "helper: the kernel tests run it inside a namespace"]
fn kernel_client() {
    let Some(spec) = netns::NsClient::from_env(CLIENT_ENV, "kernel") else {
        return;
    };
    let vip: SocketAddr = spec.get("vip").parse().unwrap();
    let clients: Vec<Ipv4Addr> = spec
        .get("clients")
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    let mut held: Vec<(usize, TcpStream)> = Vec::new();
    spec.serve(|id, w| {
        let cmd = w[1];
        match cmd {
            "new" => {
                let k: usize = w[2].parse().unwrap();
                std::thread::scope(|s| {
                    for (c, &ip) in clients.iter().enumerate() {
                        s.spawn(move || {
                            for _ in 0..k {
                                let r = connect(ip, vip).and_then(|mut stream| {
                                    netns::http_get(&mut stream, true, deadline())
                                });
                                report(id, "NEW", c, &r);
                            }
                        });
                    }
                });
            }
            "hold" => {
                for c in w[2].split(',').filter(|c| !c.is_empty()) {
                    let c: usize = c.parse().unwrap();
                    let r = connect(clients[c], vip).and_then(|mut stream| {
                        let r = netns::http_get(&mut stream, false, deadline());
                        if r.is_ok() {
                            held.push((c, stream));
                        }
                        r
                    });
                    report(id, "HELD", c, &r);
                }
            }
            "reuse" => {
                for (c, mut stream) in held.drain(..) {
                    report(
                        id,
                        "REUSE",
                        c,
                        &netns::http_get(&mut stream, true, deadline()),
                    );
                }
            }
            other => panic!("unknown command {other:?}"),
        }
    });
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(3)
}

fn report(id: &str, what: &str, client: usize, r: &Result<String, (&str, String)>) {
    match r {
        Ok(server) => println!("{id} {what} {client} ok {server}"),
        Err((kind, detail)) => println!(
            "{id} {what} {client} err {kind} {}",
            detail.replace('\n', " ")
        ),
    }
}

fn connect(ip: Ipv4Addr, vip: SocketAddr) -> Result<TcpStream, (&'static str, String)> {
    use socket2::{Domain, Socket, Type};
    let io = |e: std::io::Error| (netns::error_kind(&e), e.to_string());
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
    sock.bind(&SocketAddr::from((ip, 0)).into()).map_err(io)?;
    sock.connect_timeout(&vip.into(), Duration::from_secs(2))
        .map_err(io)?;
    Ok(sock.into())
}

// ---------------------------------------------------------------------------------------------
// The harness

/// One connection as the client reported it.
#[derive(Debug, Clone)]
struct Rec {
    client: usize,
    result: Result<String, String>,
}

struct Client {
    proc: NsProc,
}

impl Client {
    fn run(&mut self, cmd: &str) -> Vec<Rec> {
        self.proc
            .ask(cmd, ROUND_LIMIT)
            .iter()
            .filter_map(|l| {
                let w: Vec<&str> = l.splitn(4, ' ').collect();
                if w.len() < 4 {
                    return None;
                }
                Some(Rec {
                    client: w[1].parse().ok()?,
                    result: if w[2] == "ok" {
                        Ok(w[3].to_string())
                    } else {
                        Err(w[3].to_string())
                    },
                })
            })
            .collect()
    }

    /// One new connection per client: the backend each reached, all of them must succeed.
    fn round(&mut self, what: &str) -> Vec<String> {
        let recs = self.run("new 1");
        assert_eq!(recs.len(), CLIENTS, "{what}: one record per client");
        let mut by = vec![String::new(); CLIENTS];
        for r in recs {
            by[r.client] = r
                .result
                .unwrap_or_else(|e| panic!("{what}: client {} failed: {e}", r.client));
        }
        by
    }
}

/// Fields drop in declaration order: the processes first, the namespaces last.
struct Deployment {
    client: Client,
    lb: Option<NsProc>,
    backends: Vec<Option<NsProc>>,
    files: Vec<TempPath>,
    topo: KernelTopology,
}

fn lb_config(topo: &KernelTopology) -> String {
    let snat = if topo.routed {
        ""
    } else {
        "[services.kernel]\nsnat = \"masquerade\"\n"
    };
    let mut s = format!(
        "cores = 1\n[admin]\nlisten = \"{ADMIN}\"\n[shutdown]\ngrace_ms = 5000\nlame_duck_ms = 0\n\
         [[services]]\nname = \"web\"\nmode = \"kernel\"\n{snat}\
         [services.health]\ncheck = \"tcp\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {CHECK_TIMEOUT_MS}\nfall = {FALL}\nrise = 2\n"
    );
    for (j, w) in (1..=BACKENDS).zip(WEIGHTS) {
        s.push_str(&format!(
            "[[services.backends]]\nname = \"b{j}\"\naddress = \"{}:{BACKEND_PORT}\"\nweight = {w}\n",
            topo.backend_ip(j)
        ));
    }
    s.push_str(&format!(
        "[[listeners]]\nname = \"vip\"\naddress = \"{}:{VIP_PORT}\"\nservice = \"web\"\n",
        topo.vip()
    ));
    s
}

impl Deployment {
    /// `routed`: the backends route their replies through lb; else lb masquerades.
    fn start(tag: &str, routed: bool) -> Deployment {
        let topo = KernelTopology::new(tag, BACKENDS, CLIENTS, routed);
        let backends: Vec<Option<NsProc>> = (1..=BACKENDS)
            .map(|j| {
                let listen = format!("{}:{BACKEND_PORT}", topo.backend_ip(j));
                let id = format!("b{j}");
                Some(NsProc::spawn(
                    &topo.backend_ns(j),
                    &workspace_bin("backend"),
                    &["--listen", &listen, "--id", &id],
                    &[],
                ))
            })
            .collect();
        for b in backends.iter().flatten() {
            b.expect_stdout("listening on", Duration::from_secs(10));
        }
        let config = TempPath::new("lbt-kernel", "toml");
        std::fs::write(&config.0, lb_config(&topo)).unwrap();
        let spec = format!(
            "vip={}:{VIP_PORT} clients={}",
            topo.vip(),
            topo.client_ips().join(",")
        );
        let proc = NsProc::spawn_interactive(
            &topo.client_ns(),
            &std::env::current_exe().unwrap(),
            &[
                "kernel_client",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
            &[
                (CLIENT_ENV, &spec),
                (netns::PARENT_NETNS_ENV, &netns::own_netns()),
            ],
        );
        proc.expect_stdout("READY", Duration::from_secs(15));
        Deployment {
            client: Client { proc },
            lb: None,
            backends,
            files: vec![config],
            topo,
        }
    }

    /// Starts lb (with CAP_NET_ADMIN unless `capable` is false) and waits until every backend
    /// is up and, when it may program netfilter, the map holds the current backend set.
    fn start_lb(&mut self, capable: bool) {
        let upgrade = TempPath::new("lbt-kernel-upgrade", "sock");
        let lb = workspace_bin("lb");
        let (config, upgrade_path) = (self.files[0].0.clone(), upgrade.0.clone());
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--upgrade-socket",
            upgrade_path.to_str().unwrap(),
        ];
        let proc = if capable {
            NsProc::spawn(&self.topo.lb_ns(), &lb, &args, &[("RUST_LOG", "info")])
        } else {
            // Without CAP_NET_ADMIN in any set, as an unprivileged lb would run; setpriv
            // execs lb in place, so the PID is lb's.
            let lb = lb.to_str().unwrap().to_string();
            let mut a = vec![
                "--inh-caps=-net_admin",
                "--bounding-set=-net_admin",
                "--",
                &lb,
            ];
            a.append(&mut args);
            NsProc::spawn(
                &self.topo.lb_ns(),
                std::path::Path::new("setpriv"),
                &a,
                &[("RUST_LOG", "info")],
            )
        };
        self.files.push(upgrade);
        proc.expect_stdout("admin listening on", Duration::from_secs(10));
        self.lb = Some(proc);
        self.wait_until("every backend up and the map programmed", |s| {
            let svc = &s["services"][0];
            svc["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["state"] == "up")
                && (!capable || svc["kernel"]["generation"] == svc["generation"])
        });
    }

    fn admin(&self, method: &str, path: &str) -> String {
        let url = format!("http://{ADMIN}{path}");
        let mut args = vec!["-sS", "-f", "--max-time", "5", "-X", method];
        if method != "GET" {
            args.extend(["-H", "Content-Type: application/json"]);
        }
        args.push(&url);
        netns::exec_in(&self.topo.lb_ns(), "curl", &args, None)
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin("GET", "/lb/stats")).unwrap()
    }

    /// Polls /lb/stats every 20 ms until `pred` holds (at most 10 s); how long it took.
    fn wait_until(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let s = self.stats();
            if pred(&s) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: not within 10 s; /lb/stats: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nftables tables in lb's namespace.
    fn tables(&self) -> String {
        netns::exec_in(&self.topo.lb_ns(), "nft", &["list", "tables"], None)
    }

    /// The map's slots per backend address, from `nft list map`.
    fn slots_per_backend(&self) -> BTreeMap<String, u64> {
        let text = netns::exec_in(
            &self.topo.lb_ns(),
            "nft",
            &["list", "map", "ip", "lb", "s0_slots"],
            None,
        );
        let body = text
            .split_once("elements = {")
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("no elements in {text}"));
        let mut out = BTreeMap::new();
        for e in body.split(',') {
            let w: Vec<&str> = e.split_whitespace().collect();
            assert_eq!(w.len(), 5, "element {e:?}");
            *out.entry(w[2].to_string()).or_default() += 1;
        }
        out
    }

    fn stop_lb(&mut self, sig: i32) {
        let mut lb = self.lb.take().expect("lb runs");
        lb.signal(sig);
        assert!(
            lb.stdout.wait_closed(Duration::from_secs(10)),
            "lb did not exit after signal {sig}"
        );
        lb.kill();
    }
}

/// What lb's own maglev picks for each client with `down` ineligible: the backends' names.
fn lbs_choice(topo: &KernelTopology, down: &[usize]) -> Vec<String> {
    let hash = HashConfig {
        key_hash: HashFn::Jhash,
        maglev_table_size: SLOTS,
        ..HashConfig::default()
    };
    let specs: Vec<BackendSpec> = (1..=BACKENDS)
        .zip(WEIGHTS)
        .map(|(j, w)| BackendSpec::new(format!("b{j}"), w))
        .collect();
    let mut c = Candidate::all_eligible(&specs);
    for &d in down {
        c[d - 1].eligible = false;
    }
    let mut m = Balancer::new(Algorithm::Maglev, &specs, &hash, 0);
    topo.client_ips()
        .iter()
        .map(|ip| {
            let ip: IpAddr = ip.parse().unwrap();
            let b = m.pick(&c, Some(key_from_ip(&hash, ip))).unwrap();
            specs[b].name.clone()
        })
        .collect()
}

fn backend_of<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap()
}

fn count<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for n in names {
        *out.entry(n.clone()).or_default() += 1;
    }
    out
}

#[test]
fn kernel_mode_sends_each_client_where_lbs_maglev_does_in_its_proportions_and_relays_alike() {
    if !netns::ready_with_tools("kernel agreement", &["curl", "nft", "setpriv"]) {
        return;
    }
    let t0 = Instant::now();
    let mut d = Deployment::start("ka", true);
    let want = lbs_choice(&d.topo, &[]);
    d.start_lb(true);

    // The map is lb's Maglev table: b3 (weight 2) holds half the slots.
    let slots = d.slots_per_backend();
    assert_eq!(slots.values().sum::<u64>(), SLOTS, "{slots:?}");
    for (j, w) in (1..=BACKENDS).zip(WEIGHTS) {
        let got = slots[&d.topo.backend_ip(j)] as f64;
        let share = SLOTS as f64 * f64::from(w) / 4.0;
        assert!(
            (got - share).abs() < 0.01 * share,
            "b{j}: {got} slots of {SLOTS}, want {share}"
        );
    }

    // Three connections per client: every one reaches lb's choice for the client's address.
    let recs = d.client.run("new 3");
    assert_eq!(recs.len(), 3 * CLIENTS);
    for r in &recs {
        match &r.result {
            Ok(server) => assert_eq!(
                server, &want[r.client],
                "client {} reached {server}; lb's maglev picks {}",
                r.client, want[r.client]
            ),
            Err(e) => panic!("client {}: {e}", r.client),
        }
    }
    let served = count(recs.iter().map(|r| r.result.as_ref().unwrap()));
    assert_eq!(served.len(), BACKENDS, "every backend serves: {served:?}");
    eprintln!(
        "kernel mode: clients per backend {:?} (of {CLIENTS}); slots {slots:?}",
        count(&want)
    );

    // nftables counted those flows; lb relayed none.
    let s = d.stats();
    assert_eq!(s["services"][0]["mode"], "kernel");
    assert_eq!(s["services"][0]["kernel"]["active"], true, "{s}");
    for j in 1..=BACKENDS {
        let b = backend_of(&s, &format!("b{j}"));
        assert_eq!(
            b["kernel"]["connections"].as_u64(),
            served.get(&format!("b{j}")).copied(),
            "b{j}: {b}"
        );
        assert!(
            b["kernel"]["packets"].as_u64().unwrap()
                >= 6 * b["kernel"]["connections"].as_u64().unwrap()
        );
        assert_eq!(b["connections_total"], 0, "b{j} relayed: {b}");
    }
    let metrics = d.admin("GET", "/metrics");
    assert!(
        metrics.contains("lb_kernel_backend_connections_total{service=\"web\",backend=\"b3\""),
        "{metrics}"
    );

    // A killed lb leaves its table and the flows it forwarded; the next one replaces the table
    // in one transaction, and the open flow goes on.
    let held = d.client.run("hold 0");
    assert_eq!(held[0].result.as_deref(), Ok(want[0].as_str()));
    d.stop_lb(libc::SIGKILL);
    assert!(d.tables().contains("table ip lb"), "{}", d.tables());
    d.start_lb(true);
    let reused = d.client.run("reuse");
    assert_eq!(
        reused[0].result.as_deref(),
        Ok(want[0].as_str()),
        "through the replacement"
    );
    assert_eq!(d.client.round("after a restart"), want);

    // A stop takes the DNAT rules out at once, keeps the table while a flow it forwarded is
    // open (without a nat chain the kernel would stop translating it), then removes it.
    let held = d.client.run("hold 1");
    assert_eq!(held[0].result.as_deref(), Ok(want[1].as_str()));
    let mut lb = d.lb.take().unwrap();
    lb.signal(libc::SIGTERM);
    lb.stderr
        .wait_for(Duration::from_secs(5), |l| l.contains("no longer DNATed"))
        .unwrap_or_else(|| panic!("no stop of new flows: {:?}", lb.stderr.all()));
    assert!(
        d.tables().contains("table ip lb"),
        "removed under an open flow"
    );
    let reused = d.client.run("reuse");
    assert_eq!(
        reused[0].result.as_deref(),
        Ok(want[1].as_str()),
        "the open flow goes on after the stop"
    );
    assert!(
        lb.stdout.wait_closed(Duration::from_secs(10)),
        "lb did not exit once its flows ended"
    );
    lb.kill();
    assert!(!d.tables().contains("table ip lb"), "left: {}", d.tables());

    // Without CAP_NET_ADMIN lb says so, relays, and sends each client to the same backend.
    d.start_lb(false);
    let lb = d.lb.as_ref().unwrap();
    lb.stderr
        .wait_for(Duration::from_secs(5), |l| {
            l.contains("kernel mode unavailable") && l.contains("CAP_NET_ADMIN")
        })
        .unwrap_or_else(|| panic!("no warning: {:?}", lb.stderr.all()));
    assert_eq!(
        d.client.round("relayed"),
        want,
        "relay mode agrees with kernel mode"
    );
    let s = d.stats();
    assert_eq!(s["services"][0]["kernel"]["active"], false, "{s}");
    let relayed: u64 = (1..=BACKENDS)
        .map(|j| {
            backend_of(&s, &format!("b{j}"))["connections_total"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(relayed, CLIENTS as u64, "{s}");
    d.stop_lb(libc::SIGTERM);
    eprintln!("kernel agreement: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_drained_or_killed_backend_leaves_the_kernel_map_and_only_its_clients_move() {
    if !netns::ready_with_tools("kernel health", &["curl", "nft"]) {
        return;
    }
    let t0 = Instant::now();
    let mut d = Deployment::start("kh", true);
    d.start_lb(true);
    let all = lbs_choice(&d.topo, &[]);
    assert_eq!(d.client.round("baseline"), all);

    // Drain b2: its clients go where lb's maglev sends them without b2, nobody else moves, and
    // the connections open on b2 go on there.
    let on_b2: Vec<String> = (0..CLIENTS)
        .filter(|&c| all[c] == "b2")
        .map(|c| c.to_string())
        .collect();
    assert!(!on_b2.is_empty());
    let held = d.client.run(&format!("hold {}", on_b2.join(",")));
    assert!(
        held.iter().all(|r| r.result.as_deref() == Ok("b2")),
        "{held:?}"
    );
    d.admin("POST", "/lb/services/web/backends/b2/drain");
    d.wait_until("the drain in the map", |s| {
        let svc = &s["services"][0];
        svc["kernel"]["generation"] == svc["generation"]
    });
    let drained = d.client.round("b2 drained");
    assert_eq!(drained, lbs_choice(&d.topo, &[2]));
    for c in 0..CLIENTS {
        if all[c] != "b2" {
            assert_eq!(
                drained[c], all[c],
                "client {c} moved although its backend stayed"
            );
        }
    }
    let reused = d.client.run("reuse");
    assert_eq!(reused.len(), on_b2.len());
    assert!(
        reused.iter().all(|r| r.result.as_deref() == Ok("b2")),
        "open connections stay on the drained backend: {reused:?}"
    );
    d.admin("POST", "/lb/services/web/backends/b2/undrain");
    d.wait_until("the undrain in the map", |s| {
        let svc = &s["services"][0];
        svc["kernel"]["generation"] == svc["generation"]
    });
    assert_eq!(d.client.round("b2 back"), all);

    // Kill b3's process: the health checks take it out, and the map follows.
    let mut b3 = d.backends[2].take().unwrap();
    let killed = Instant::now();
    b3.kill();
    let took = d.wait_until("b3 down and out of the map", |s| {
        let svc = &s["services"][0];
        backend_of(s, "b3")["state"] == "down" && svc["kernel"]["generation"] == svc["generation"]
    });
    let took_ms = killed.elapsed().as_millis() as u64;
    assert!(
        took_ms <= DETECT_BOUND_MS,
        "b3 left the map after {took_ms} ms (poll {took:?}), bound {DETECT_BOUND_MS} ms"
    );
    let after = d.client.round("b3 killed");
    assert_eq!(after, lbs_choice(&d.topo, &[3]));
    for c in 0..CLIENTS {
        if all[c] != "b3" {
            assert_eq!(
                after[c], all[c],
                "client {c} moved although its backend lives"
            );
        }
    }
    d.stop_lb(libc::SIGTERM);
    assert!(!d.tables().contains("table ip lb"), "left: {}", d.tables());
    eprintln!(
        "kernel health: b3 out of the map {took_ms} ms after its kill (bound {DETECT_BOUND_MS} ms); {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn with_snat_masquerade_backends_without_a_route_back_answer_through_lb() {
    if !netns::ready_with_tools("kernel snat", &["curl", "nft"]) {
        return;
    }
    let mut d = Deployment::start("ks", false);
    d.start_lb(true);
    // The backends have no route to the clients: every answer came back through lb's SNAT.
    assert_eq!(d.client.round("masqueraded"), lbs_choice(&d.topo, &[]));
    let s = d.stats();
    for j in 1..=BACKENDS {
        let b = backend_of(&s, &format!("b{j}"));
        assert!(b["kernel"]["packets"].as_u64().unwrap() > 0, "b{j}: {b}");
    }
    d.stop_lb(libc::SIGTERM);
}
