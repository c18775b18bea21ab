//! Scaling out with ECMP, in network namespaces: three lb instances behind a router that spreads
//! the flows to one virtual IP over them by equal-cost multipath, three backends behind them, 50
//! client addresses in front (see `support::netns::EcmpTopology`). Every instance runs the same
//! configuration (backends listed in a different order on each), so with `maglev` or
//! `consistent_hash` on the client IP:
//!
//! 1. every instance sends a given client to the same backend;
//! 2. when an instance is killed (SIGKILL) and the router withdraws its next hop, only the
//!    connections open on it fail, and new connections from every client reach the same backend
//!    as before;
//! 3. a backend removed on every instance through its admin API moves only its own clients.
//!
//! `round_robin` is the contrast: a client's connections go to every backend, and after the kill
//! its new connections do not reach the one it had. A plain multipath route (hash-threshold)
//! instead of a resilient nexthop group is the other contrast: withdrawing one next hop moves
//! flows between the surviving instances too, and those connections fail although their
//! instance is alive.
//!
//! The client (this test binary re-executed inside the client namespace, see `ecmp_client`) binds
//! each of the 50 source addresses and reads from each connection's MSS which instance accepted
//! it (each instance's route back advertises its own). The harness checks that attribution
//! against every instance's accepted-connection counter. Needs root, `ip` and `curl`
//! (lb's admin API is reached from inside each instance's namespace); otherwise the tests print
//! `SKIPPED netns tests: <reason>` and pass, unless `LB_REQUIRE_NETNS=1`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use support::netns::{self, EcmpTopology, Multipath, NsProc};
use support::tempfile_path::TempPath;
use support::workspace_bin;

const INSTANCES: usize = 3;
const BACKENDS: usize = 3;
const CLIENTS: usize = 50;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8000;
/// Each instance's admin API, on the loopback of its own namespace.
const ADMIN: &str = "127.0.0.1:9900";
/// New connections a client may open to reach every live instance at least once (the router
/// hashes each connection's source port: with three instances the chance of missing one in 40
/// tries is 3 x (2/3)^40, about 3e-7).
const MAX_TRIES: usize = 40;
/// New connections each client opens at least, so that round robin (whose choice depends on
/// what every other client did) puts one client on a single backend by chance with probability
/// about (1/3)^(6-1) = 0.4%: at most 5 of 50 such clients is then a bound that holds.
const MIN_TRIES: usize = 6;
/// Connections each client holds open through the kill (150 in all, about 50 per instance).
const HELD_PER_CLIENT: usize = 3;
/// The instance killed: the first next hop, whose withdrawal makes a hash-threshold route shift
/// the second one's range (withdrawing the middle one of three would move nothing else).
const KILLED: usize = 1;
/// The backend removed in (3).
const REMOVED: usize = 2;
/// After an admin change, before the next connections: every core picks up the new snapshot at
/// its next connection; this only keeps the test from depending on that being immediate.
const SETTLE: Duration = Duration::from_millis(200);
/// A command of the client (a round of connections) ends well within this.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

const CLIENT_ENV: &str = "LBT_ECMP_CLIENT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Maglev,
    ConsistentHash,
    RoundRobin,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Maglev => "maglev",
            Algorithm::ConsistentHash => "consistent_hash",
            Algorithm::RoundRobin => "round_robin",
        }
    }

    fn hashes_client_ip(self) -> bool {
        self != Algorithm::RoundRobin
    }
}

// ---------------------------------------------------------------------------------------------
// The client, inside the client namespace

/// One connection as the client reported it: which client address opened it, which instance
/// accepted it (0: unknown, the connect failed) and the `X-Server-Id` answer or the error.
#[derive(Debug, Clone)]
struct Rec {
    client: usize,
    instance: usize,
    result: Result<String, String>,
}

/// Not a test: the client of the tests below, which run this test binary again inside the client
/// namespace (`ip netns exec NS <this binary> ecmp_client --exact --ignored`) with its settings
/// in `LBT_ECMP_CLIENT`. Without that variable it does nothing.
///
/// It reads commands from stdin, `<id> <command> <args>`, and answers each with one line per
/// connection, `<id> NEW|HELD|REUSE <client> <instance> ok <server>` or
/// `<id> ... <client> <instance> err <kind> <detail>`, then `<id> END`:
/// - `new WANT MIN MAX`: each client, in parallel, opens new connections (one request each,
///   `Connection: close`) until WANT distinct instances have accepted one and it has opened at
///   least MIN, at most MAX;
/// - `hold K`: each client opens K connections and sends one keep-alive request on each;
/// - `reuse`: a second request (`Connection: close`) on each held connection.
#[test]
#[ignore = "helper: the ecmp tests run it inside a namespace"]
fn ecmp_client() {
    let Some(spec) = netns::NsClient::from_env(CLIENT_ENV, "ecmp") else {
        return;
    };
    let vip: SocketAddr = spec.get("vip").parse().unwrap();
    let instances: usize = spec.get("instances").parse().unwrap();
    let clients: Vec<Ipv4Addr> = spec
        .get("clients")
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    let mut held: Vec<(usize, usize, TcpStream, String)> = Vec::new();
    spec.serve(|id, w| {
        let cmd = w[1];
        match cmd {
            "new" => {
                let [want, min, max]: [usize; 3] =
                    std::array::from_fn(|k| w[2 + k].parse().unwrap());
                std::thread::scope(|s| {
                    for (c, &ip) in clients.iter().enumerate() {
                        s.spawn(move || {
                            let mut seen = BTreeSet::new();
                            for n in 1..=max {
                                let (instance, result) = match connect(ip, vip, instances) {
                                    Ok((mut stream, instance)) => {
                                        let r = netns::http_get(&mut stream, true, deadline());
                                        (instance, r)
                                    }
                                    Err(e) => (0, Err(e)),
                                };
                                report(id, "NEW", c, instance, &result);
                                if instance != 0 {
                                    seen.insert(instance);
                                }
                                if seen.len() >= want && n >= min {
                                    break;
                                }
                            }
                        });
                    }
                });
            }
            "hold" => {
                let k: usize = w[2].parse().unwrap();
                held = std::thread::scope(|s| {
                    let handles: Vec<_> = clients
                        .iter()
                        .enumerate()
                        .map(|(c, &ip)| {
                            s.spawn(move || {
                                let mut mine = Vec::new();
                                for _ in 0..k {
                                    match connect(ip, vip, instances) {
                                        Ok((mut stream, instance)) => {
                                            let r = netns::http_get(&mut stream, false, deadline());
                                            report(id, "HELD", c, instance, &r);
                                            if let Ok(server) = r {
                                                mine.push((c, instance, stream, server));
                                            }
                                        }
                                        Err(e) => report(id, "HELD", c, 0, &Err(e)),
                                    }
                                }
                                mine
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().unwrap())
                        .collect()
                });
            }
            "reuse" => {
                std::thread::scope(|s| {
                    for (c, instance, mut stream, first) in held.drain(..) {
                        s.spawn(move || {
                            // One client connection is one backend connection: the same
                            // backend answers, or something is badly wrong.
                            let r =
                                netns::http_get(&mut stream, true, deadline()).and_then(|server| {
                                    if server == first {
                                        Ok(server)
                                    } else {
                                        Err(("other_backend", format!("{first} then {server}")))
                                    }
                                });
                            report(id, "REUSE", c, instance, &r);
                        });
                    }
                });
            }
            other => panic!("unknown command {other:?}"),
        }
    });
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(3)
}

fn report(
    id: &str,
    what: &str,
    client: usize,
    instance: usize,
    r: &Result<String, (&str, String)>,
) {
    match r {
        Ok(server) => println!("{id} {what} {client} {instance} ok {server}"),
        Err((kind, detail)) => println!(
            "{id} {what} {client} {instance} err {kind} {}",
            detail.replace('\n', " ")
        ),
    }
}

/// A connection from `ip` to the virtual IP, and the instance that accepted it (from the MSS
/// that instance advertised; 0 if it is none of theirs).
fn connect(
    ip: Ipv4Addr,
    vip: SocketAddr,
    instances: usize,
) -> Result<(TcpStream, usize), (&'static str, String)> {
    use socket2::{Domain, Socket, Type};
    let io = |e: std::io::Error| (netns::error_kind(&e), e.to_string());
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
    sock.bind(&SocketAddr::from((ip, 0)).into()).map_err(io)?;
    sock.connect_timeout(&vip.into(), Duration::from_secs(2))
        .map_err(|e| match netns::error_kind(&e) {
            "connect_refused" | "timeout" => (netns::error_kind(&e), e.to_string()),
            _ => ("connect_other", e.to_string()),
        })?;
    let stream: TcpStream = sock.into();
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mss`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut mss as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    let instance = if rc == 0 {
        netns::instance_of_mss(mss as u16, instances).unwrap_or(0)
    } else {
        0
    };
    Ok((stream, instance))
}

// ---------------------------------------------------------------------------------------------
// The harness

/// The client process.
struct Client {
    proc: NsProc,
}

impl Client {
    /// Sends `cmd` and returns the connections it reported.
    fn run(&mut self, cmd: &str) -> Vec<Rec> {
        self.proc
            .ask(cmd, ROUND_LIMIT)
            .iter()
            .filter_map(|l| {
                let w: Vec<&str> = l.splitn(5, ' ').collect();
                if w.len() < 5 {
                    return None;
                }
                let result = match w[3] {
                    "ok" => Ok(w[4].to_string()),
                    _ => Err(w[4].to_string()),
                };
                Some(Rec {
                    client: w[1].parse().ok()?,
                    instance: w[2].parse().ok()?,
                    result,
                })
            })
            .collect()
    }

    /// New connections until each client has reached `want` instances and opened `MIN_TRIES`.
    fn new_connections(&mut self, want: usize) -> Vec<Rec> {
        self.run(&format!("new {want} {MIN_TRIES} {MAX_TRIES}"))
    }
}

/// Everything one scenario runs. Fields drop in declaration order: the processes first, the
/// namespaces last.
struct Deployment {
    client: Client,
    /// lb instance i at index i - 1; None once killed.
    lbs: Vec<Option<NsProc>>,
    _backends: Vec<NsProc>,
    _files: Vec<TempPath>,
    topo: EcmpTopology,
}

impl Deployment {
    fn start(tag: &str, alg: Algorithm, multipath: Multipath) -> Deployment {
        let topo = EcmpTopology::new(tag, INSTANCES, BACKENDS, CLIENTS, multipath);
        let backends: Vec<NsProc> = (1..=BACKENDS)
            .map(|j| {
                let listen = format!("{}:{BACKEND_PORT}", topo.backend_ip(j));
                let id = format!("b{j}");
                NsProc::spawn(
                    &topo.backend_ns(j),
                    &workspace_bin("backend"),
                    &["--listen", &listen, "--id", &id],
                    &[],
                )
            })
            .collect();
        for b in &backends {
            b.expect_stdout("listening on", Duration::from_secs(10));
        }
        let mut files = Vec::new();
        let mut lbs = Vec::new();
        for i in 1..=INSTANCES {
            let config = TempPath::new("lbt-ecmp", "toml");
            std::fs::write(&config.0, lb_config(&topo, alg, i)).unwrap();
            // Three instances listen on the same port: each needs its own upgrade socket.
            let upgrade = TempPath::new("lbt-ecmp-upgrade", "sock");
            let lb = NsProc::spawn(
                &topo.lb_ns(i),
                &workspace_bin("lb"),
                &[
                    "--config",
                    config.0.to_str().unwrap(),
                    "--upgrade-socket",
                    upgrade.0.to_str().unwrap(),
                ],
                &[("RUST_LOG", "info")],
            );
            files.extend([config, upgrade]);
            lbs.push(Some(lb));
        }
        for lb in lbs.iter().flatten() {
            lb.expect_stdout("admin listening on", Duration::from_secs(10));
        }
        let spec = format!(
            "vip={}:{VIP_PORT} instances={INSTANCES} clients={}",
            topo.vip(),
            topo.client_ips().join(",")
        );
        let proc = NsProc::spawn_interactive(
            &topo.client_ns(),
            &std::env::current_exe().unwrap(),
            &[
                "ecmp_client",
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
            lbs,
            _backends: backends,
            _files: files,
            topo,
        }
    }

    /// A request to instance i's admin API, from inside its namespace; the response body.
    fn admin(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> String {
        let url = format!("http://{ADMIN}{path}");
        let mut args = vec!["-sS", "-f", "--max-time", "5", "-X", method];
        if method != "GET" {
            // The admin API takes changes only as JSON (a guard against cross-site requests).
            args.extend(["-H", "Content-Type: application/json"]);
        }
        if let Some(b) = body {
            args.extend(["-d", b]);
        }
        args.push(&url);
        netns::exec_in(&self.topo.lb_ns(i), "curl", &args, None)
    }

    /// Connections instance i has accepted, over all its cores.
    fn accepted(&self, i: usize) -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&self.admin(i, "GET", "/lb/stats", None)).unwrap();
        stats["cores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["accepted"].as_u64().unwrap())
            .sum()
    }

    /// Checks the client's attribution of connections to instances against what each live
    /// instance counted: `seen` are all connections the client reported so far.
    fn check_attribution(&self, name: &str, seen: &[&Rec]) {
        for (i, lb) in self.lbs.iter().enumerate() {
            if lb.is_none() {
                continue;
            }
            let by_client = seen.iter().filter(|r| r.instance == i + 1).count() as u64;
            assert_eq!(
                self.accepted(i + 1),
                by_client,
                "{name}: lb{} counted other connections than the client attributed to it by MSS",
                i + 1
            );
        }
    }
}

/// The same configuration on every instance, but the backends listed in a different order on
/// each: what has to match is their names, not their order.
fn lb_config(topo: &EcmpTopology, alg: Algorithm, instance: usize) -> String {
    let mut s = format!(
        "listen = \"{}:{VIP_PORT}\"\ncores = 2\nalgorithm = \"{}\"\n\
         [hash]\nkey = \"client_ip\"\n[health]\ncheck = \"none\"\n[admin]\nlisten = \"{ADMIN}\"\n",
        topo.vip(),
        alg.name()
    );
    for k in 0..BACKENDS {
        let j = (k + instance - 1) % BACKENDS + 1;
        s.push_str(&format!(
            "[[backends]]\nname = \"b{j}\"\naddress = \"{}:{BACKEND_PORT}\"\n",
            topo.backend_ip(j)
        ));
    }
    s
}

/// Per client, the backends its successful connections reached.
fn backends_per_client(recs: &[Rec]) -> Vec<BTreeSet<String>> {
    let mut out = vec![BTreeSet::new(); CLIENTS];
    for r in recs {
        if let Ok(s) = &r.result {
            out[r.client].insert(s.clone());
        }
    }
    out
}

/// Per client, the instances that accepted its connections.
fn instances_per_client(recs: &[Rec]) -> Vec<BTreeSet<usize>> {
    let mut out = vec![BTreeSet::new(); CLIENTS];
    for r in recs {
        out[r.client].insert(r.instance);
    }
    out
}

/// Per client, the backend most of its connections reached (ties: the first name).
fn majority_backend(recs: &[Rec]) -> Vec<Option<String>> {
    let mut counts = vec![BTreeMap::<String, usize>::new(); CLIENTS];
    for r in recs {
        if let Ok(s) = &r.result {
            *counts[r.client].entry(s.clone()).or_default() += 1;
        }
    }
    counts
        .iter()
        .map(|m| {
            let top = m.values().copied().max()?;
            m.iter().find(|(_, &n)| n == top).map(|(b, _)| b.clone())
        })
        .collect()
}

/// Every connection succeeded, and every client reached exactly the instances `live`.
fn check_round(name: &str, what: &str, recs: &[Rec], live: &[usize]) {
    let failed: Vec<&Rec> = recs.iter().filter(|r| r.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{name}: {what}: {} of {} new connections failed: {failed:?}",
        failed.len(),
        recs.len()
    );
    let want: BTreeSet<usize> = live.iter().copied().collect();
    for (c, seen) in instances_per_client(recs).iter().enumerate() {
        assert_eq!(
            seen, &want,
            "{name}: {what}: client {c}'s connections reached instances {seen:?}, expected {want:?}"
        );
    }
}

/// The one backend of every client whose connections all reached one backend.
fn single_backend(per_client: &[BTreeSet<String>]) -> Vec<Option<String>> {
    per_client
        .iter()
        .map(|s| (s.len() == 1).then(|| s.iter().next().unwrap().clone()))
        .collect()
}

/// (3): removes backend `REMOVED` on every instance through its admin API and checks that only
/// its clients moved (with a client-IP hash), then adds it back and checks that every client has
/// its first backend again. Returns how many clients moved.
fn remove_and_restore(
    d: &mut Deployment,
    name: &str,
    alg: Algorithm,
    home: &[Option<String>],
    history: &mut Vec<Rec>,
) -> usize {
    let all: Vec<usize> = (1..=INSTANCES).collect();
    let removed = format!("b{REMOVED}");
    for i in 1..=INSTANCES {
        d.admin(i, "DELETE", &format!("/lb/backends/{removed}"), None);
    }
    std::thread::sleep(SETTLE);
    let without = d.client.new_connections(INSTANCES);
    check_round(name, "(3)", &without, &all);
    history.extend(without.iter().cloned());
    let reached_removed = without
        .iter()
        .filter(|r| r.result.as_deref() == Ok(removed.as_str()))
        .count();
    assert_eq!(
        reached_removed, 0,
        "{name}: (3) {removed} still served after its removal"
    );
    let home_without = single_backend(&backends_per_client(&without));
    let mut moved = 0;
    let mut moved_others = Vec::new();
    if alg.hashes_client_ip() {
        for c in 0..CLIENTS {
            let (was, now) = (home[c].as_deref(), home_without[c].as_deref());
            assert!(
                now.is_some(),
                "{name}: (3) client {c} reached several backends after the removal: {:?}",
                backends_per_client(&without)[c]
            );
            if was != now {
                moved += 1;
                if was != Some(removed.as_str()) {
                    moved_others.push((c, was, now));
                }
            }
        }
        let own = home
            .iter()
            .filter(|h| h.as_deref() == Some(removed.as_str()))
            .count();
        assert!(
            moved_others.is_empty(),
            "{name}: (3) removing {removed} moved clients of other backends: {moved_others:?}"
        );
        assert_eq!(moved, own, "{name}: (3) every client of {removed} moved");
    }
    // Back in, on every instance: the same set again gives every client its old backend.
    for i in 1..=INSTANCES {
        let body = format!(
            "{{\"address\":\"{}:{BACKEND_PORT}\",\"name\":\"{removed}\"}}",
            d.topo.backend_ip(REMOVED)
        );
        d.admin(i, "POST", "/lb/backends", Some(&body));
    }
    std::thread::sleep(SETTLE);
    let again = d.client.new_connections(INSTANCES);
    check_round(name, "(3) re-added", &again, &all);
    history.extend(again.iter().cloned());
    d.check_attribution(name, &history.iter().collect::<Vec<_>>());
    if alg.hashes_client_ip() {
        assert_eq!(
            single_backend(&backends_per_client(&again)),
            *home,
            "{name}: (3) re-adding {removed} did not give every client its first backend back"
        );
    }

    moved
}

fn scenario(alg: Algorithm, multipath: Multipath) {
    let name = format!("ecmp {} {multipath:?}", alg.name());
    if !netns::ready_with_tools(&name, &["curl"]) {
        return;
    }
    let started = Instant::now();
    let tag = match (alg, multipath) {
        (Algorithm::Maglev, Multipath::Resilient) => "mg",
        (Algorithm::ConsistentHash, Multipath::Resilient) => "ch",
        (Algorithm::RoundRobin, Multipath::Resilient) => "rr",
        (_, Multipath::HashThreshold) => "ht",
    };
    let mut d = Deployment::start(tag, alg, multipath);
    let all: Vec<usize> = (1..=INSTANCES).collect();
    let mut history: Vec<Rec> = Vec::new();

    // (1) Every client's connections reach every instance; with a client-IP hash they all reach
    // one backend.
    let first = d.client.new_connections(INSTANCES);
    check_round(&name, "(1)", &first, &all);
    history.extend(first.iter().cloned());
    d.check_attribution(&name, &history.iter().collect::<Vec<_>>());
    let before = backends_per_client(&first);
    let home = single_backend(&before);
    let consistent = home.iter().filter(|h| h.is_some()).count();
    if alg.hashes_client_ip() {
        assert_eq!(
            consistent,
            CLIENTS,
            "{name}: (1) clients whose connections, over all three instances, reached more than \
             one backend: {:?}",
            before
                .iter()
                .enumerate()
                .filter(|(_, s)| s.len() != 1)
                .collect::<Vec<_>>()
        );
        for j in 1..=BACKENDS {
            let b = format!("b{j}");
            assert!(
                home.iter().any(|h| h.as_deref() == Some(b.as_str())),
                "{name}: no client hashed to {b}: {home:?}"
            );
        }
    } else {
        assert!(
            consistent <= 5,
            "{name}: (1) {consistent} of {CLIENTS} clients stayed on one backend under round robin"
        );
    }

    // (3) (already covered by the resilient maglev scenario when the route is hash-threshold)
    let removal = match multipath {
        Multipath::Resilient => {
            let moved = remove_and_restore(&mut d, &name, alg, &home, &mut history);
            match alg.hashes_client_ip() {
                true => format!("{moved} clients moved, all of them b{REMOVED}'s"),
                false => "no client has a backend to keep".to_string(),
            }
        }
        Multipath::HashThreshold => "not run".to_string(),
    };

    // (2) Connections held open through the kill of one instance and the withdrawal of its
    // next hop: only those on the killed instance may fail.
    let held = d.client.run(&format!("hold {HELD_PER_CLIENT}"));
    let failed: Vec<&Rec> = held.iter().filter(|r| r.result.is_err()).collect();
    assert!(failed.is_empty(), "{name}: (2) held: {failed:?}");
    for i in 1..=INSTANCES {
        let n = held.iter().filter(|r| r.instance == i).count();
        assert!(n >= 10, "{name}: (2) only {n} held connections on lb{i}");
    }
    history.extend(held.iter().cloned());
    d.check_attribution(&name, &history.iter().collect::<Vec<_>>());
    let buckets_before = d.topo.buckets();
    let route_before = d.topo.route_text();
    let killed_at = Instant::now();
    d.lbs[KILLED - 1].take().unwrap().kill();
    d.topo.withdraw(KILLED);
    let withdrawn_ms = killed_at.elapsed().as_millis();
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != KILLED).collect();
    if let (Some(b0), Some(b1)) = (&buckets_before, d.topo.buckets()) {
        for (k, (was, now)) in b0.iter().zip(&b1).enumerate() {
            if *was == KILLED {
                assert!(survivors.contains(now), "{name}: bucket {k} went to {now}");
            } else {
                assert_eq!(was, now, "{name}: bucket {k} moved from lb{was} to lb{now}");
            }
        }
    }
    let reused = d.client.run("reuse");
    assert_eq!(
        reused.len(),
        held.len(),
        "{name}: (2) one answer per held one"
    );
    let fails_on = |i: usize| {
        reused
            .iter()
            .filter(|r| r.instance == i && r.result.is_err())
            .count()
    };
    let on_killed = held.iter().filter(|r| r.instance == KILLED).count();
    let failed_killed = fails_on(KILLED);
    let failed_survivors: usize = survivors.iter().map(|&i| fails_on(i)).sum();
    assert_eq!(
        failed_killed, on_killed,
        "{name}: (2) connections open on the killed lb{KILLED} that still worked"
    );
    match multipath {
        Multipath::Resilient => assert_eq!(
            failed_survivors,
            0,
            "{name}: (2) connections on surviving instances failed: {:?}",
            reused
                .iter()
                .filter(|r| r.instance != KILLED && r.result.is_err())
                .collect::<Vec<_>>()
        ),
        Multipath::HashThreshold => assert!(
            failed_survivors > 0,
            "{name}: (2) the hash-threshold route moved no flow between the surviving instances"
        ),
    }
    let after = d.client.new_connections(survivors.len());
    check_round(&name, "(2) after the kill", &after, &survivors);
    // Where each client's new connections go now, against the backend most of its connections
    // reached in (1) (with a client-IP hash, the only one).
    let usual = majority_backend(&first);
    let same = after
        .iter()
        .filter(|r| r.result.as_ref().ok() == usual[r.client].as_ref())
        .count();
    let share_same = same as f64 / after.len() as f64;
    let per_client_after = backends_per_client(&after);
    let kept = (0..CLIENTS)
        .filter(|&c| home[c].is_some() && per_client_after[c] == before[c])
        .count();
    if alg.hashes_client_ip() {
        assert_eq!(
            kept, CLIENTS,
            "{name}: (2) clients whose new connections after the kill reach another backend"
        );
    } else {
        assert!(
            share_same < 0.8,
            "{name}: (2) {same} of {} new connections after the kill reached their client's usual              backend under round robin",
            after.len()
        );
    }
    // The survivors' counters still agree with the client (the killed one's are gone with it).
    history.extend(after.iter().cloned());
    d.check_attribution(&name, &history.iter().collect::<Vec<_>>());

    let mut kinds = BTreeMap::<&str, usize>::new();
    for r in &reused {
        if let Err(e) = &r.result {
            *kinds.entry(e.split(' ').next().unwrap_or("")).or_default() += 1;
        }
    }
    let held_on: Vec<usize> = all
        .iter()
        .map(|&i| held.iter().filter(|r| r.instance == i).count())
        .collect();
    eprintln!(
        "{name}: (1) {consistent}/{CLIENTS} clients on one backend over all {INSTANCES} instances \
         ({} connections); (3) removing b{REMOVED} everywhere: {removal}; (2) lb{KILLED} killed and withdrawn in {withdrawn_ms} ms: held {held_on:?} per instance, \
         failed {failed_killed} on lb{KILLED} and {failed_survivors} on the survivors ({kinds:?}); \
         {kept}/{CLIENTS} clients kept their backend, {:.0}% of new connections reached the \
         client's usual one; route before: {route_before}; \
         after: {}; {:.1} s",
        first.len(),
        100.0 * share_same,
        d.topo.route_text(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn maglev_instances_behind_ecmp_agree_and_survive_an_instance_kill() {
    scenario(Algorithm::Maglev, Multipath::Resilient);
}

#[test]
fn consistent_hash_instances_behind_ecmp_agree_and_survive_an_instance_kill() {
    scenario(Algorithm::ConsistentHash, Multipath::Resilient);
}

#[test]
fn round_robin_instances_behind_ecmp_move_clients() {
    scenario(Algorithm::RoundRobin, Multipath::Resilient);
}

#[test]
fn a_hash_threshold_route_breaks_connections_on_surviving_instances() {
    scenario(Algorithm::Maglev, Multipath::HashThreshold);
}
