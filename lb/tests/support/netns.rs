//! Network namespaces for multi-host tests. `Topology`: one `lb` host and N backend hosts, each
//! its own namespace, joined by veth pairs on a bridge that lives inside the lb namespace
//! (`10.251.S.1/24` on the bridge, backend i at `10.251.S.(10+i)/24`). `EcmpTopology`: a client
//! host, a multipath router, several lb hosts sharing one virtual IP and the backend hosts
//! (10.252.0.0/16).
//!
//! Safety rule: no code in the root namespace ever opens a socket to these addresses. Every
//! program that talks to them (lb, the backends, the test clients, curl or the client's polling
//! of the admin API) is started with `ip netns exec`, and the clients refuse to run in the
//! namespace of PID 1 or in that of the test process. The
//! veths and the bridge are created inside the namespaces (`ip -n`), never in the root one, so
//! deleting the namespaces removes all of it, firewall tables included.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every namespace name starts with this, then the test process id.
pub const NS_PREFIX: &str = "lbt-";

/// Microseconds on CLOCK_MONOTONIC: one clock for every namespace of the machine, so the test and
/// the client it runs inside a namespace compare times directly.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Sleeps until `mono_us() >= at`.
pub fn sleep_until_us(at: u64) {
    let now = mono_us();
    if at > now {
        std::thread::sleep(Duration::from_micros(at - now));
    }
}

// ---------------------------------------------------------------------------------------------
// Skip policy

/// Whether the netns tests can run here. When they cannot: prints `SKIPPED netns tests: <reason>`
/// to stderr and returns false, or panics when `LB_REQUIRE_NETNS=1` (CI) asks for them.
pub fn ready(test: &str, need_firewall: bool) -> bool {
    let reason = unavailable_reason().or_else(|| {
        (need_firewall && firewall_tool().is_none())
            .then(|| "neither `nft` (nftables) nor `iptables` is installed".to_string())
    });
    skip_unless_ready(test, reason)
}

/// `ready` for a test that also runs `tools` (each must answer `TOOL --version`), e.g. `curl`
/// for an admin API inside a namespace.
pub fn ready_with_tools(test: &str, tools: &[&str]) -> bool {
    let reason = unavailable_reason().or_else(|| {
        tools
            .iter()
            .find(|t| run(Command::new(t).arg("--version")).is_err())
            .map(|t| format!("`{t}` is not installed"))
    });
    skip_unless_ready(test, reason)
}

/// True when `reason` is None; otherwise the skip (or, under `LB_REQUIRE_NETNS=1`, the panic).
fn skip_unless_ready(test: &str, reason: Option<String>) -> bool {
    let Some(reason) = reason else {
        return true;
    };
    if std::env::var("LB_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("LB_REQUIRE_NETNS=1 but the netns test {test} cannot run: {reason}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED netns tests: {reason} ({test})"
    );
    false
}

/// Why namespaces cannot be used here (checked once per process), or None.
fn unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            if uid != 0 {
                return Some(format!("not running as root (euid {uid})"));
            }
            if let Err(e) = run(Command::new("ip").arg("-V")) {
                return Some(format!("`ip` (iproute2) is not usable: {e}"));
            }
            remove_stale_namespaces();
            let probe = format!("{NS_PREFIX}{}-probe", std::process::id());
            if let Err(e) = ip(&["netns", "add", &probe]) {
                return Some(format!("cannot create a network namespace: {e}"));
            }
            let _ = ip(&["netns", "del", &probe]);
            None
        })
        .clone()
}

/// `nft` or, failing that, `iptables`, whichever is installed.
pub fn firewall_tool() -> Option<&'static str> {
    static TOOL: OnceLock<Option<&'static str>> = OnceLock::new();
    *TOOL.get_or_init(|| {
        ["nft", "iptables"]
            .into_iter()
            .find(|t| run(Command::new(t).arg("--version")).is_ok())
    })
}

/// Removes namespaces that an earlier test process (killed before its cleanup ran) left behind:
/// only `lbt-<pid>-...` names whose process no longer exists.
fn remove_stale_namespaces() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing {name}, left by process {pid} that no longer runs");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

// ---------------------------------------------------------------------------------------------
// Output lines of a child, with the time each one arrived

struct LinesInner {
    lines: Vec<(u64, String)>,
    closed: bool,
}

/// The lines a child writes to one pipe, each with its arrival time (`mono_us`), read by a thread.
#[derive(Clone)]
pub struct Lines(Arc<(Mutex<LinesInner>, Condvar)>);

impl Lines {
    fn pump(r: impl Read + Send + 'static) -> Lines {
        let lines = Lines(Arc::new((
            Mutex::new(LinesInner {
                lines: Vec::new(),
                closed: false,
            }),
            Condvar::new(),
        )));
        let l = lines.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf).unwrap_or(0);
                let (m, cv) = &*l.0;
                let mut inner = m.lock().unwrap();
                if n == 0 {
                    inner.closed = true;
                    cv.notify_all();
                    return;
                }
                let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                inner.lines.push((mono_us(), text));
                cv.notify_all();
            }
        });
        lines
    }

    /// The first line (from the start) matching `pred`, waiting up to `limit`.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<(u64, String)> {
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.0;
        let mut inner = m.lock().unwrap();
        loop {
            if let Some(hit) = inner.lines.iter().find(|(_, l)| pred(l)) {
                return Some(hit.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if inner.closed || left.is_zero() {
                return None;
            }
            inner = cv.wait_timeout(inner, left).unwrap().0;
        }
    }

    /// Waits up to `limit` for the pipe to close (the child exited); true if it did.
    pub fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.0;
        let mut inner = m.lock().unwrap();
        while !inner.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = cv.wait_timeout(inner, left).unwrap().0;
        }
        true
    }

    pub fn all(&self) -> Vec<(u64, String)> {
        self.0 .0.lock().unwrap().lines.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes inside a namespace

/// A program started with `ip netns exec NS program ...`. `ip` execs the program in place, so the
/// child's PID is the program's: it is killed (SIGCONT first if stopped) by that PID when dropped,
/// and its stderr is printed if the test is failing.
pub struct NsProc {
    pub what: String,
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    /// The child's stdin, for programs started with `spawn_interactive`.
    stdin: Option<ChildStdin>,
    stopped: bool,
    /// Requests sent by `ask`.
    asked: u32,
}

impl NsProc {
    /// Starts `program` in `ns` with stdin from /dev/null.
    pub fn spawn(ns: &str, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> NsProc {
        Self::start(ns, program, args, envs, false)
    }

    /// Starts `program` in `ns` with a pipe to its stdin, for `send_line`.
    pub fn spawn_interactive(
        ns: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> NsProc {
        Self::start(ns, program, args, envs, true)
    }

    /// Writes `line` and a newline to the child's stdin (`spawn_interactive` only).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{} was not started with a stdin pipe", self.what));
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("write {line:?} to {}: {e}", self.what));
    }

    /// Sends `cmd` as the next numbered request, `N cmd`, to a program that answers each with
    /// lines `N ...` and then `N END` (the namespace tests' client scripts), and returns the
    /// answer's lines without the `N `. Panics when the answer is not complete within `limit`.
    pub fn ask(&mut self, cmd: &str, limit: Duration) -> Vec<String> {
        self.asked += 1;
        let id = self.asked.to_string();
        self.send_line(&format!("{id} {cmd}"));
        let end = format!("{id} END");
        if self.stdout.wait_for(limit, |l| l == end).is_none() {
            panic!(
                "{} did not finish {cmd:?} within {limit:?}; stderr: {:?}",
                self.what,
                self.stderr.all()
            );
        }
        let prefix = format!("{id} ");
        self.stdout
            .all()
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(&prefix))
            .filter(|l| *l != "END")
            .map(str::to_string)
            .collect()
    }

    fn start(
        ns: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        interactive: bool,
    ) -> NsProc {
        let what = format!(
            "{} in {ns}",
            program.file_name().unwrap_or_default().to_string_lossy()
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // If the test process dies without cleaning up (SIGKILL, a CI timeout), the kernel kills
        // the program too (the setting survives `ip`'s exec). The signal also comes when the
        // spawning thread ends: every test kills its processes before its thread ends.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != parent
                {
                    return Err(std::io::Error::other("the test process is gone"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdout = Lines::pump(child.stdout.take().unwrap());
        let stderr = Lines::pump(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        NsProc {
            what,
            child,
            stdout,
            stderr,
            stdin,
            stopped: false,
            asked: 0,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a stdout line containing `needle` (e.g. "listening on"); panics with the
    /// process's stderr if it does not come.
    pub fn expect_stdout(&self, needle: &str, limit: Duration) -> (u64, String) {
        self.stdout
            .wait_for(limit, |l| l.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "{} printed no {needle:?} within {limit:?}; stdout: {:?}; stderr: {:?}",
                    self.what,
                    self.stdout.all(),
                    self.stderr.all()
                )
            })
    }

    /// The executable the PID runs now (after `ip netns exec` replaced itself with the program).
    pub fn exe(&self) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.pid())).unwrap_or_default()
    }

    pub fn signal(&mut self, sig: i32) {
        // SAFETY: kill on our own, not yet reaped child: the PID cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) on {}", self.pid(), self.what);
        if sig == libc::SIGSTOP {
            self.stopped = true;
        } else if sig == libc::SIGCONT {
            self.stopped = false;
        }
    }

    pub fn kill(&mut self) {
        if self.stopped {
            self.signal(libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let err = self.stderr.all();
            let tail = &err[err.len().saturating_sub(40)..];
            eprintln!("---- last stderr lines of {} ----", self.what);
            for (_, l) in tail {
                eprintln!("{l}");
            }
        }
        if self.stopped {
            // SAFETY: as in `signal`; errors are irrelevant during cleanup.
            unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Topology

/// The network namespaces one test created, deleted when this is dropped (with the veths,
/// bridges, routes and firewall tables inside them), also when the test panics.
#[derive(Default)]
pub struct Namespaces {
    created: Vec<String>,
}

impl Namespaces {
    /// Creates namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]).map(drop)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // A namespace whose last process is gone disappears with its name; one that still has a
        // process (killed later) disappears when that process exits.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

/// Runs a short command inside `ns` (with `stdin` fed to it if given); its stdout. Panics with
/// the command's stderr if it fails.
pub fn exec_in(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lbt-<pid>-<tag>-lb` with a bridge `br0` (10.251.S.1/24) and `lbt-<pid>-<tag>-b<i>` with `eth0`
/// (10.251.S.(10+i)/24), one veth pair each (`vb<i>` on the bridge side). Every namespace is
/// deleted when this is dropped (with the veths, the bridge and any firewall table in them).
/// Declare it before the processes that run in it, so that they are killed first.
pub struct Topology {
    pub prefix: String,
    pub subnet: u8,
    pub backends: usize,
    ns: Namespaces,
}

impl Topology {
    pub fn new(tag: &str, subnet: u8, backends: usize) -> Topology {
        let mut t = Topology {
            prefix: format!("{NS_PREFIX}{}-{tag}", std::process::id()),
            subnet,
            backends,
            ns: Namespaces::default(),
        };
        t.build()
            .unwrap_or_else(|e| panic!("netns setup for {tag}: {e}"));
        t
    }

    fn build(&mut self) -> Result<(), String> {
        let lb = self.lb_ns();
        self.ns.add(&lb)?;
        let bridge_addr = format!("{}/24", self.lb_ip());
        for args in [
            &["link", "add", "br0", "type", "bridge"][..],
            &["addr", "add", &bridge_addr, "dev", "br0"],
            &["link", "set", "br0", "up"],
        ] {
            ip(&[&["-n", &lb][..], args].concat())?;
        }
        for i in 1..=self.backends {
            let ns = self.backend_ns(i);
            self.ns.add(&ns)?;
            let veth = format!("vb{i}");
            let addr = format!("{}/24", self.backend_ip(i));
            // Both ends are created inside namespaces: nothing ever appears in the root one.
            ip(&[
                "-n", &lb, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &lb, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &lb, "link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    pub fn lb_ns(&self) -> String {
        format!("{}-lb", self.prefix)
    }

    pub fn backend_ns(&self, i: usize) -> String {
        format!("{}-b{i}", self.prefix)
    }

    pub fn lb_ip(&self) -> String {
        format!("10.251.{}.1", self.subnet)
    }

    pub fn backend_ip(&self, i: usize) -> String {
        format!("10.251.{}.{}", self.subnet, 10 + i)
    }

    /// Runs a short command inside `ns` (with `stdin` fed to it if given); its stdout.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> String {
        exec_in(ns, program, args, stdin)
    }

    /// A firewall rule inside `ns` on input to TCP `port`: `reset = false` drops the packets,
    /// `reset = true` answers them with a TCP reset. nft when installed, else iptables.
    pub fn block_port(&self, ns: &str, port: u16, reset: bool) {
        match firewall_tool() {
            Some("nft") => {
                let verdict = if reset {
                    "reject with tcp reset"
                } else {
                    "drop"
                };
                let script = format!(
                    "table inet lbt {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp dport {port} {verdict}\n  }}\n}}\n"
                );
                self.exec(ns, "nft", &["-f", "-"], Some(&script));
            }
            Some(_) => {
                let port = port.to_string();
                let mut args = vec!["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j"];
                if reset {
                    args.extend(["REJECT", "--reject-with", "tcp-reset"]);
                } else {
                    args.push("DROP");
                }
                self.exec(ns, "iptables", &args, None);
            }
            None => panic!("no firewall tool (nft or iptables)"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scaling out: lb instances behind a multipath router

/// How the router spreads the flows to the virtual IP over the lb instances (both hash the L4
/// tuple: `net.ipv4.fib_multipath_hash_policy = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multipath {
    /// A resilient nexthop group, `ip nexthop add id 100 group 1/2/3 type resilient buckets 64`,
    /// routed with `ip route add VIP/32 nhid 100`: flows hash to 64 buckets, each bucket names
    /// a next hop, and when a next hop leaves only its own buckets are given to the others.
    Resilient,
    /// A plain multipath route, `ip route add VIP/32 nexthop via A nexthop via B nexthop via C`
    /// (hash-threshold): each next hop owns a range of the hash space, and when one leaves the
    /// ranges of the others shift too, so some of their flows land on another instance.
    HashThreshold,
}

/// The resilient group's id in the router namespace (the next hops are ids 1..=instances).
const NH_GROUP: u32 = 100;
const NH_BUCKETS: u32 = 64;

/// Several lb instances behind a router, as Maglev and Katran deploy them:
///
/// ```text
///   <p>-client                <p>-router                       <p>-lb<i>  (i = 1..instances)
///   eth0 10.252.0.2/24 ------ vc 10.252.0.1/24                eth0 10.252.1.(10+i)/24
///   clients 10.252.0.101..    br0 10.252.1.1/24 --- vl<i> --- lo   10.252.100.1/32 (the VIP)
///   default via 10.252.0.1    |                               default via 10.252.1.1 advmss M(i)
///                             +-------------------- vb<j> --- <p>-b<j>  (j = 1..backends)
///                             VIP/32 over lb1..lbN              eth0 10.252.1.(20+j)/24
///                             (`Multipath`, L4 hash)
/// ```
///
/// Every lb instance holds the virtual IP on its loopback and listens on it; it reaches the
/// backends on the shared segment and answers clients through the router. Its route back to the
/// clients advertises its own TCP MSS (`advmss`), so a client can tell from a connection's MSS
/// which instance accepted it. As with `Topology`, every link is created inside the namespaces
/// and all of it goes when this is dropped.
pub struct EcmpTopology {
    pub prefix: String,
    pub instances: usize,
    pub backends: usize,
    pub clients: usize,
    pub multipath: Multipath,
    /// Instances whose next hop is in the route.
    live: Vec<usize>,
    ns: Namespaces,
}

impl EcmpTopology {
    pub fn new(
        tag: &str,
        instances: usize,
        backends: usize,
        clients: usize,
        multipath: Multipath,
    ) -> EcmpTopology {
        assert!(instances <= 9 && backends <= 9 && clients <= 150);
        let mut t = EcmpTopology {
            prefix: format!("{NS_PREFIX}{}-{tag}", std::process::id()),
            instances,
            backends,
            clients,
            multipath,
            live: (1..=instances).collect(),
            ns: Namespaces::default(),
        };
        t.build()
            .unwrap_or_else(|e| panic!("netns setup for {tag}: {e}"));
        t
    }

    fn build(&mut self) -> Result<(), String> {
        let (client, router) = (self.client_ns(), self.router_ns());
        let lbs: Vec<String> = (1..=self.instances).map(|i| self.lb_ns(i)).collect();
        let backends: Vec<String> = (1..=self.backends).map(|j| self.backend_ns(j)).collect();
        for ns in [&client, &router].into_iter().chain(&lbs).chain(&backends) {
            self.ns.add(ns)?;
        }
        // The router: a link to the client, a bridge for the lb instances and the backends.
        let mut cmds = vec![
            "link add br0 type bridge".to_string(),
            "addr add 10.252.1.1/24 dev br0".into(),
            "link set br0 up".into(),
            format!("link add vc type veth peer name eth0 netns {client}"),
            "addr add 10.252.0.1/24 dev vc".into(),
            "link set vc up".into(),
        ];
        let ports = lbs
            .iter()
            .enumerate()
            .map(|(i, ns)| (format!("vl{}", i + 1), ns))
            .chain(
                backends
                    .iter()
                    .enumerate()
                    .map(|(j, ns)| (format!("vb{}", j + 1), ns)),
            );
        for (port, ns) in ports {
            cmds.push(format!(
                "link add {port} type veth peer name eth0 netns {ns}"
            ));
            cmds.push(format!("link set {port} master br0"));
            cmds.push(format!("link set {port} up"));
        }
        ip_batch(&router, &cmds)?;
        // /proc/sys/net is the namespace's own for a process inside it (no `sysctl` needed).
        let settings = "echo 1 > /proc/sys/net/ipv4/ip_forward && \
                        echo 1 > /proc/sys/net/ipv4/fib_multipath_hash_policy";
        run(Command::new("ip").args(["netns", "exec", &router, "sh", "-c", settings]))?;

        let mut cmds = vec!["addr add 10.252.0.2/24 dev eth0".to_string()];
        cmds.extend(
            self.client_ips()
                .iter()
                .map(|a| format!("addr add {a}/24 dev eth0")),
        );
        cmds.push("link set eth0 up".into());
        cmds.push("route add default via 10.252.0.1".into());
        ip_batch(&client, &cmds)?;

        for (i, ns) in (1..=self.instances).zip(&lbs) {
            ip_batch(
                ns,
                &[
                    format!("addr add {}/24 dev eth0", self.lb_ip(i)),
                    "link set eth0 up".into(),
                    format!("addr add {}/32 dev lo", self.vip()),
                    format!("route add default via 10.252.1.1 advmss {}", advmss(i)),
                ],
            )?;
        }
        for (j, ns) in (1..=self.backends).zip(&backends) {
            ip_batch(
                ns,
                &[
                    format!("addr add {}/24 dev eth0", self.backend_ip(j)),
                    "link set eth0 up".into(),
                ],
            )?;
        }

        let mut cmds = Vec::new();
        match self.multipath {
            Multipath::Resilient => {
                for i in 1..=self.instances {
                    cmds.push(format!("nexthop add id {i} via {} dev br0", self.lb_ip(i)));
                }
                cmds.push(self.group_cmd("add"));
                cmds.push(format!("route add {}/32 nhid {NH_GROUP}", self.vip()));
            }
            Multipath::HashThreshold => cmds.push(self.multipath_route_cmd("add")),
        }
        ip_batch(&router, &cmds)
    }

    fn group_cmd(&self, verb: &str) -> String {
        let members: Vec<String> = self.live.iter().map(|i| i.to_string()).collect();
        format!(
            "nexthop {verb} id {NH_GROUP} group {} type resilient buckets {NH_BUCKETS}",
            members.join("/")
        )
    }

    fn multipath_route_cmd(&self, verb: &str) -> String {
        let hops: String = self
            .live
            .iter()
            .map(|&i| format!(" nexthop via {} dev br0", self.lb_ip(i)))
            .collect();
        format!("route {verb} {}/32{hops}", self.vip())
    }

    /// Takes instance `i`'s next hop out of the route, as a router does when BGP or its health
    /// checks withdraw the instance: new flows no longer reach it.
    pub fn withdraw(&mut self, i: usize) {
        self.live.retain(|&x| x != i);
        let cmd = match self.multipath {
            Multipath::Resilient => self.group_cmd("replace"),
            Multipath::HashThreshold => self.multipath_route_cmd("replace"),
        };
        ip_batch(&self.router_ns(), &[cmd]).unwrap_or_else(|e| panic!("withdraw lb{i}: {e}"));
    }

    /// For a resilient group: the instance each bucket sends its flows to, by bucket index.
    pub fn buckets(&self) -> Option<Vec<usize>> {
        if self.multipath != Multipath::Resilient {
            return None;
        }
        let out = exec_in(
            &self.router_ns(),
            "ip",
            &["nexthop", "bucket", "show", "id", &NH_GROUP.to_string()],
            None,
        );
        let mut by_index = vec![0; NH_BUCKETS as usize];
        for line in out.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let field = |k: &str| {
                w.iter()
                    .position(|x| *x == k)
                    .and_then(|p| w.get(p + 1)?.parse::<usize>().ok())
            };
            if let (Some(index), Some(nh)) = (field("index"), field("nhid")) {
                by_index[index] = nh;
            }
        }
        Some(by_index)
    }

    /// `ip route show VIP` in the router, for logs.
    pub fn route_text(&self) -> String {
        exec_in(
            &self.router_ns(),
            "ip",
            &["route", "show", &format!("{}/32", self.vip())],
            None,
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
    }

    pub fn client_ns(&self) -> String {
        format!("{}-client", self.prefix)
    }

    pub fn router_ns(&self) -> String {
        format!("{}-router", self.prefix)
    }

    pub fn lb_ns(&self, i: usize) -> String {
        format!("{}-lb{i}", self.prefix)
    }

    pub fn backend_ns(&self, j: usize) -> String {
        format!("{}-b{j}", self.prefix)
    }

    /// The virtual IP every instance serves.
    pub fn vip(&self) -> &'static str {
        "10.252.100.1"
    }

    pub fn lb_ip(&self, i: usize) -> String {
        format!("10.252.1.{}", 10 + i)
    }

    pub fn backend_ip(&self, j: usize) -> String {
        format!("10.252.1.{}", 20 + j)
    }

    /// The clients' source addresses, all on the client namespace's `eth0`.
    pub fn client_ips(&self) -> Vec<String> {
        (1..=self.clients)
            .map(|k| format!("10.252.0.{}", 100 + k))
            .collect()
    }
}

/// The MSS that instance `i` advertises to clients (its route's `advmss`): 1200, 1300, ...
/// A client reads its connection's MSS with `TCP_MAXSEG`, that value less the TCP options
/// (12 bytes with timestamps), and finds the instance with `instance_of_mss`.
pub fn advmss(i: usize) -> u16 {
    1100 + 100 * i as u16
}

/// The instance whose `advmss` produced a connection's `TCP_MAXSEG` value, if any.
pub fn instance_of_mss(mss: u16, instances: usize) -> Option<usize> {
    (1..=instances).find(|&i| (0..60).contains(&(advmss(i) as i32 - mss as i32)))
}

/// Runs `ip -n NS -batch -` with `cmds`, one command a line.
fn ip_batch(ns: &str, cmds: &[String]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut script = cmds.join("\n");
    script.push('\n');
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -n {ns} -batch: {}: {} (commands: {cmds:?})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The client, run inside the lb namespace by re-executing the test binary

/// Environment variable that carries the client's settings into the re-executed test binary.
pub const CLIENT_ENV: &str = "LBT_CLIENT";

/// What the client does, passed through `CLIENT_ENV` as `key=value` words.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// lb's listener.
    pub target: SocketAddr,
    /// lb's admin API (inside the same namespace), polled for backend states.
    pub admin: SocketAddr,
    /// Requests per second, each on a new connection, open loop (one thread per request).
    pub rate: u32,
    pub duration_ms: u64,
    /// Hard per-request limit of the client itself: a request still open then is a `timeout`.
    pub timeout_ms: u64,
    /// Backends that must all be "up" in /lb/stats before the load starts.
    pub backends: Vec<String>,
}

impl ClientSpec {
    pub fn to_env(&self) -> String {
        format!(
            "target={} admin={} rate={} duration_ms={} timeout_ms={} backends={}",
            self.target,
            self.admin,
            self.rate,
            self.duration_ms,
            self.timeout_ms,
            self.backends.join(",")
        )
    }

    fn from_env(s: &str) -> ClientSpec {
        let get = |k: &str| spec_value(CLIENT_ENV, s, k);
        ClientSpec {
            target: get("target").parse().unwrap(),
            admin: get("admin").parse().unwrap(),
            rate: get("rate").parse().unwrap(),
            duration_ms: get("duration_ms").parse().unwrap(),
            timeout_ms: get("timeout_ms").parse().unwrap(),
            backends: get("backends").split(',').map(String::from).collect(),
        }
    }

    /// Requests the run sends in all.
    pub fn total(&self) -> u64 {
        self.rate as u64 * self.duration_ms / 1000
    }
}

/// Environment variable with the network namespace of the test process that started the client.
pub const PARENT_NETNS_ENV: &str = "LBT_PARENT_NETNS";

/// This process's network namespace, e.g. `net:[4026531833]`.
pub fn own_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The client side of [`NsProc::ask`], in a namespace test's client process (the test binary
/// started again, inside a namespace, with its spec in an environment variable).
pub struct NsClient {
    env: &'static str,
    spec: String,
}

impl NsClient {
    /// The spec of `KEY=VALUE` words in `env`; None when this run is not the client (`env` is
    /// unset). Panics in the root network namespace: the client must never run there.
    pub fn from_env(env: &'static str, what: &str) -> Option<NsClient> {
        let spec = std::env::var(env).ok()?;
        assert!(
            !maybe_in_root_netns(),
            "the {what} test client must run inside a test namespace, never in the root one"
        );
        Some(NsClient { env, spec })
    }

    /// The value of `key`; panics when the spec lacks it.
    pub fn get(&self, key: &str) -> String {
        spec_value(self.env, &self.spec, key)
    }

    /// Says READY, then answers every request line `N cmd ...` on stdin: `handle(N, words)`
    /// (the line's words, `N` and `cmd` included) prints the answer's `N ...` lines, then `N END`.
    pub fn serve(&self, mut handle: impl FnMut(&str, &[&str])) {
        // End the test harness's `test NAME ... ` line: each of ours starts a line.
        println!();
        println!("READY");
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap();
            let w: Vec<&str> = line.split_whitespace().collect();
            handle(w[0], &w);
            println!("{} END", w[0]);
        }
    }
}

/// The value of `key` among the `KEY=VALUE` words of `spec` (from the variable `env`); panics
/// when it is missing.
fn spec_value(env: &str, spec: &str, key: &str) -> String {
    spec.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{env} lacks {key}: {spec:?}"))
        .to_string()
}

/// True unless this process is certainly in another network namespace than the test process that
/// started it (which runs in the root one) and than PID 1 (when that one is readable).
pub fn maybe_in_root_netns() -> bool {
    let me = own_netns();
    let parent = std::env::var(PARENT_NETNS_ENV).unwrap_or_default();
    let init = std::fs::read_link("/proc/1/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .ok();
    me.is_empty() || parent.is_empty() || me == parent || init.is_some_and(|i| i == me)
}

/// The client's main, inside the lb namespace. Prints on stdout:
/// `STATE <us> b1=up,b2=up,...` whenever the backend states in /lb/stats change (polled every
/// 20 ms), `START <us>` once all backends are up and the load begins, one
/// `REQ <start_us> <end_us> ok <X-Server-Id>` or `REQ <start_us> <end_us> err <kind> <detail>`
/// per request, and `DONE <n>` when every request has ended.
pub fn client_main() {
    let Ok(spec) = std::env::var(CLIENT_ENV) else {
        return;
    };
    assert!(
        !maybe_in_root_netns(),
        "the netns test client must run inside a test namespace, never in the root one"
    );
    let spec = ClientSpec::from_env(&spec);
    // End the test harness's `test netns_client ... ` line: each of ours starts a line.
    println!();

    // Wait for lb's view: every backend up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(states) = backend_states(spec.admin) {
            if spec
                .backends
                .iter()
                .all(|b| states.contains(&format!("{b}=up")))
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "backends never all up in lb");
        std::thread::sleep(Duration::from_millis(20));
    }

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, admin) = (done.clone(), spec.admin);
        std::thread::spawn(move || {
            let mut last = String::new();
            while !done.load(Ordering::Relaxed) {
                let states = backend_states(admin).unwrap_or_else(|e| format!("admin_error:{e}"));
                if states != last {
                    println!("STATE {} {states}", mono_us());
                    last = states;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let start = mono_us();
    println!("START {start}");
    let total = spec.total();
    let mut handles = Vec::with_capacity(total as usize);
    for n in 0..total {
        sleep_until_us(start + n * 1_000_000 / spec.rate as u64);
        let (target, limit) = (spec.target, Duration::from_millis(spec.timeout_ms));
        handles.push(std::thread::spawn(move || {
            let t0 = mono_us();
            let result = request(target, Instant::now() + limit);
            let t1 = mono_us();
            match result {
                Ok(id) => println!("REQ {t0} {t1} ok {id}"),
                Err((kind, detail)) => {
                    println!("REQ {t0} {t1} err {kind} {}", detail.replace('\n', " "))
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    println!("DONE {total}");
}

/// `b1=up,b2=down,...` from lb's /lb/stats.
fn backend_states(admin: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /lb/stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let body = resp.split_once("\r\n\r\n").ok_or("no body")?.1;
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let mut states: Vec<String> = v["backends"]
        .as_array()
        .ok_or("no backends")?
        .iter()
        .map(|b| {
            format!(
                "{}={}",
                b["name"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    states.sort();
    Ok(states.join(","))
}

pub fn error_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connect_refused",
        ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
        WouldBlock | TimedOut => "timeout",
        _ => "io_other",
    }
}

/// One `GET /` on a new connection; the `X-Server-Id` of a 200 answer, or (kind, detail).
fn request(target: SocketAddr, deadline: Instant) -> Result<String, (&'static str, String)> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut s =
        TcpStream::connect_timeout(&target, left.max(Duration::from_millis(1))).map_err(|e| {
            match error_kind(&e) {
                "connect_refused" => ("connect_refused", e.to_string()),
                "timeout" => ("timeout", e.to_string()),
                _ => ("connect_other", e.to_string()),
            }
        })?;
    // On return the stream is dropped, closing first (the TIME_WAIT stays in this namespace).
    http_get(&mut s, true, deadline)
}

/// One `GET /` on an open connection (`Connection: close` if `close`, else keep-alive), reading
/// exactly one response: the `X-Server-Id` of a 200 answer, or (kind, detail).
pub fn http_get(
    s: &mut TcpStream,
    close: bool,
    deadline: Instant,
) -> Result<String, (&'static str, String)> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let io = |e: std::io::Error| (error_kind(&e), e.to_string());
    s.set_nodelay(true).map_err(io)?;
    s.set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .map_err(io)?;
    let connection = if close { "close" } else { "keep-alive" };
    s.write_all(
        format!("GET / HTTP/1.1\r\nHost: lb\r\nConnection: {connection}\r\n\r\n").as_bytes(),
    )
    .map_err(io)?;
    let mut resp = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let l = left();
        if l.is_zero() {
            return Err(("timeout", format!("{} bytes read", resp.len())));
        }
        s.set_read_timeout(Some(l)).map_err(io)?;
        let n = s.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(("closed_early", format!("{} bytes read", resp.len())));
        }
        resp.extend_from_slice(&chunk[..n]);
        let Some(head_end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or(("bad_response", "no content-length".to_string()))?;
        if resp.len() < head_end + 4 + len {
            continue;
        }
        if !head.starts_with("http/1.1 200") {
            let status = head.lines().next().unwrap_or("").to_string();
            return Err(("status", status));
        }
        return head
            .lines()
            .find_map(|l| l.strip_prefix("x-server-id:"))
            .map(|v| v.trim().to_string())
            .ok_or(("bad_response", "no x-server-id".to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel mode: lb as the router between the clients and the backends

/// lb as a router, the topology of kernel mode (netfilter DNAT, no proxy):
///
/// ```text
///   <p>-client                  <p>-lb                             <p>-b<j>  (j = 1..backends)
///   eth0 10.254.0.2/24 -------- vc 10.254.0.1/24                  eth0 10.254.1.(10+j)/24
///   clients 10.254.0.101..      lo 10.254.100.1/32 (the VIP)       default via 10.254.1.1
///   default via 10.254.0.1      br0 10.254.1.1/24 --- vb<j> -----
///                               ip_forward = 1
/// ```
///
/// The backends' default route goes through lb's namespace, so their replies to a DNATed flow
/// come back through it and need no SNAT (`routed = false`: they have no route to the clients,
/// and only SNAT brings the replies back). As with the others, every link is made inside the
/// namespaces and all of it (nftables tables included) goes when this is dropped.
pub struct KernelTopology {
    pub prefix: String,
    pub backends: usize,
    pub clients: usize,
    pub routed: bool,
    ns: Namespaces,
}

impl KernelTopology {
    pub fn new(tag: &str, backends: usize, clients: usize, routed: bool) -> KernelTopology {
        assert!(backends <= 9 && clients <= 150);
        let mut t = KernelTopology {
            prefix: format!("{NS_PREFIX}{}-{tag}", std::process::id()),
            backends,
            clients,
            routed,
            ns: Namespaces::default(),
        };
        t.build()
            .unwrap_or_else(|e| panic!("netns setup for {tag}: {e}"));
        t
    }

    fn build(&mut self) -> Result<(), String> {
        let (client, lb) = (self.client_ns(), self.lb_ns());
        let backends: Vec<String> = (1..=self.backends).map(|j| self.backend_ns(j)).collect();
        for ns in [&client, &lb].into_iter().chain(&backends) {
            self.ns.add(ns)?;
        }
        let mut cmds = vec![
            format!("link add vc type veth peer name eth0 netns {client}"),
            "addr add 10.254.0.1/24 dev vc".to_string(),
            "link set vc up".into(),
            "link add br0 type bridge".into(),
            "addr add 10.254.1.1/24 dev br0".into(),
            "link set br0 up".into(),
            format!("addr add {}/32 dev lo", self.vip()),
        ];
        for (j, ns) in (1..=self.backends).zip(&backends) {
            cmds.push(format!(
                "link add vb{j} type veth peer name eth0 netns {ns}"
            ));
            cmds.push(format!("link set vb{j} master br0"));
            cmds.push(format!("link set vb{j} up"));
        }
        ip_batch(&lb, &cmds)?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &lb,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]))?;
        let mut cmds = vec!["addr add 10.254.0.2/24 dev eth0".to_string()];
        cmds.extend(
            self.client_ips()
                .iter()
                .map(|a| format!("addr add {a}/24 dev eth0")),
        );
        cmds.push("link set eth0 up".into());
        cmds.push("route add default via 10.254.0.1".into());
        ip_batch(&client, &cmds)?;
        for (j, ns) in (1..=self.backends).zip(&backends) {
            let mut cmds = vec![
                format!("addr add {}/24 dev eth0", self.backend_ip(j)),
                "link set eth0 up".to_string(),
            ];
            if self.routed {
                cmds.push("route add default via 10.254.1.1".into());
            }
            ip_batch(ns, &cmds)?;
        }
        Ok(())
    }

    pub fn client_ns(&self) -> String {
        format!("{}-client", self.prefix)
    }

    pub fn lb_ns(&self) -> String {
        format!("{}-lb", self.prefix)
    }

    pub fn backend_ns(&self, j: usize) -> String {
        format!("{}-b{j}", self.prefix)
    }

    /// The address lb's kernel-mode listener matches (on lb's loopback).
    pub fn vip(&self) -> &'static str {
        "10.254.100.1"
    }

    pub fn backend_ip(&self, j: usize) -> String {
        format!("10.254.1.{}", 10 + j)
    }

    /// The clients' source addresses, all on the client namespace's `eth0`.
    pub fn client_ips(&self) -> Vec<String> {
        (1..=self.clients)
            .map(|k| format!("10.254.0.{}", 100 + k))
            .collect()
    }
}
