"""ECMP: three lb instances behind a multipath router, one instance killed, one backend removed.

The topology is the one of lb/tests/ecmp.rs, built in network namespaces named lbe-<pid>-...:
a client namespace with 50 source addresses, a router namespace that routes the virtual IP
10.252.100.1 over three lb namespaces (net.ipv4.fib_multipath_hash_policy = 1: the kernel hashes
the L4 tuple, so one client's connections spread over all instances), each lb holding the VIP on
its loopback and listening on it, and three backend namespaces b1..b3. Every instance runs the
same configuration (backends listed in a different order on each).

A client inside the client namespace (this script, re-executed there) opens new connections at
a steady rate, in turn from each of the 50 addresses, one request each, and holds 2 keep-alive
connections per address that send a request every 250 ms. It tells which instance accepted a
connection from the connection's MSS (each instance's route back advertises its own). Then:

  at --kill-at       lb1 is killed with SIGKILL;
  --withdraw-after   later, the router withdraws lb1's next hop, as a router whose BGP session or
                     health check drops does: new flows stop reaching lb1;
  at --remove-at     backend b2 is removed on every running instance through its admin API.

Variants: maglev, consistent_hash and round_robin behind a resilient nexthop group
(`ip nexthop add id 100 group 1/2/3 type resilient buckets 64`), and maglev behind a plain
multipath route (`ip route add VIP nexthop via A nexthop via B nexthop via C`, hash-threshold).
Measured: errors and connections per backend per 100 ms, which open connections failed at the
kill (on the killed instance or on a survivor), and which clients moved to another backend at
the kill and at the removal. Needs root, iproute2 and curl. All traffic stays inside
the namespaces, which are removed afterwards, also when the run fails or is interrupted.
"""

import csv
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lbbench  # noqa: E402
from expcommon import machine_line, out_dir  # noqa: E402
from lbbench import TARGET, log  # noqa: E402
from svgchart import bar_chart_err, timeline_chart  # noqa: E402

HELP = "ECMP: 3 lb instances behind a multipath router; one instance killed, one backend removed"
DIR = "ecmp"
NS_PREFIX = "lbe-"
INSTANCES, BACKENDS, CLIENTS = 3, 3, 50
VIP, VIP_PORT, BACKEND_PORT, ADMIN = "10.252.100.1", 80, 8000, "127.0.0.1:9900"
KILLED, REMOVED = 1, "b2"
BUCKET_MS = 100
NH_GROUP, NH_BUCKETS = 100, 64

# name, algorithm, multipath
VARIANTS = [
    ("maglev", "maglev", "resilient"),
    ("consistent_hash", "consistent_hash", "resilient"),
    ("round_robin", "round_robin", "resilient"),
    ("maglev (hash-threshold route)", "maglev", "hash-threshold"),
]
DEFAULTS = {"rate": 200, "duration": 12.0, "kill_at": 4.0, "withdraw_after": 0.25, "remove_at": 8.0,
            "held": 2, "ping_ms": 250}


def add_arguments(p):
    p.add_argument("--rate", type=int, default=DEFAULTS["rate"], help="new connections per second (default 200)")
    p.add_argument("--duration", type=float, default=DEFAULTS["duration"], help="seconds of load per variant (default 12)")
    p.add_argument("--kill-at", type=float, default=DEFAULTS["kill_at"], help="lb1 SIGKILLed at this second (default 4)")
    p.add_argument("--withdraw-after", type=float, default=DEFAULTS["withdraw_after"],
                   help="seconds from the kill until the router withdraws lb1's next hop (default 0.25)")
    p.add_argument("--remove-at", type=float, default=DEFAULTS["remove_at"],
                   help="b2 removed on every running instance at this second (default 8)")
    p.add_argument("--held", type=int, default=DEFAULTS["held"], help="keep-alive connections per client (default 2)")
    p.add_argument("--ping-ms", type=int, default=DEFAULTS["ping_ms"],
                   help="interval of the requests on held connections (default 250)")
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS),
                   help="comma-separated subset of: " + ", ".join(v[0] for v in VARIANTS))
    p.add_argument("--replot", action="store_true",
                   help=f"no measurement: redraw the charts and summary from the output folder's ecmp.json")


# ---------------------------------------------------------------------------------------------
# Addresses (the same plan as support::netns::EcmpTopology in lb/tests)
# ---------------------------------------------------------------------------------------------

def lb_ip(i):
    return f"10.252.1.{10 + i}"


def backend_ip(j):
    return f"10.252.1.{20 + j}"


def client_ips():
    return [f"10.252.0.{100 + k}" for k in range(1, CLIENTS + 1)]


def advmss(i):
    """The MSS instance i advertises to clients; a client sees it less its TCP options (12 bytes
    with timestamps)."""
    return 1100 + 100 * i


def instance_of_mss(mss):
    return next((i for i in range(1, INSTANCES + 1) if 0 <= advmss(i) - mss < 60), 0)


# ---------------------------------------------------------------------------------------------
# Namespaces and processes
# ---------------------------------------------------------------------------------------------

def sh(*argv, stdin=None):
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def ip_batch(ns, cmds):
    sh("ip", "-n", ns, "-batch", "-", stdin="\n".join(cmds) + "\n")


def remove_stale_namespaces():
    """Namespaces lbe-<pid>-... of runs whose process is gone (killed before their cleanup)."""
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{NS_PREFIX}(\d+)-", name)
        if m and int(m.group(1)) != os.getpid() and not Path(f"/proc/{m.group(1)}").exists():
            log(f"removing {name}, left by process {m.group(1)} that no longer runs")
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Topology:
    """The namespaces of one variant; `close()` (also on failure) kills what runs in them, then
    deletes them with every link, route and address inside."""

    def __init__(self, tag, multipath):
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{tag}"
        self.multipath = multipath
        self.live = list(range(1, INSTANCES + 1))
        self.created = []
        self.procs = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, what):
        return f"{self.prefix}-{what}"

    def _add(self, name):
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self):
        client, router = self.ns("client"), self.ns("router")
        lbs = [self.ns(f"lb{i}") for i in range(1, INSTANCES + 1)]
        bes = [self.ns(f"b{j}") for j in range(1, BACKENDS + 1)]
        for n in [client, router] + lbs + bes:
            self._add(n)
        cmds = ["link add br0 type bridge", "addr add 10.252.1.1/24 dev br0", "link set br0 up",
                f"link add vc type veth peer name eth0 netns {client}", "addr add 10.252.0.1/24 dev vc",
                "link set vc up"]
        for port, n in [(f"vl{i + 1}", n) for i, n in enumerate(lbs)] + [(f"vb{j + 1}", n) for j, n in enumerate(bes)]:
            cmds += [f"link add {port} type veth peer name eth0 netns {n}", f"link set {port} master br0",
                     f"link set {port} up"]
        ip_batch(router, cmds)
        # /proc/sys/net is the namespace's own for a process inside it (no sysctl needed).
        sh("ip", "netns", "exec", router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && "
           "echo 1 > /proc/sys/net/ipv4/fib_multipath_hash_policy")
        ip_batch(client, ["addr add 10.252.0.2/24 dev eth0"] + [f"addr add {a}/24 dev eth0" for a in client_ips()]
                 + ["link set eth0 up", "route add default via 10.252.0.1"])
        for i, n in enumerate(lbs, 1):
            ip_batch(n, [f"addr add {lb_ip(i)}/24 dev eth0", "link set eth0 up", f"addr add {VIP}/32 dev lo",
                         f"route add default via 10.252.1.1 advmss {advmss(i)}"])
        for j, n in enumerate(bes, 1):
            ip_batch(n, [f"addr add {backend_ip(j)}/24 dev eth0", "link set eth0 up"])
        if self.multipath == "resilient":
            ip_batch(router, [f"nexthop add id {i} via {lb_ip(i)} dev br0" for i in self.live]
                     + [self.group_cmd("add"), f"route add {VIP}/32 nhid {NH_GROUP}"])
        else:
            ip_batch(router, [self.route_cmd("add")])

    def group_cmd(self, verb):
        return (f"nexthop {verb} id {NH_GROUP} group {'/'.join(map(str, self.live))} "
                f"type resilient buckets {NH_BUCKETS}")

    def route_cmd(self, verb):
        return f"route {verb} {VIP}/32" + "".join(f" nexthop via {lb_ip(i)} dev br0" for i in self.live)

    def withdraw(self, i):
        """Takes instance i's next hop out of the route (the router stops sending it new flows)."""
        self.live.remove(i)
        ip_batch(self.ns("router"), [self.group_cmd("replace") if self.multipath == "resilient"
                                     else self.route_cmd("replace")])

    def route_text(self):
        return " ".join(sh("ip", "-n", self.ns("router"), "route", "show", f"{VIP}/32").split())

    def buckets(self):
        """Buckets per instance of the resilient group (None for a hash-threshold route)."""
        if self.multipath != "resilient":
            return None
        out = sh("ip", "-n", self.ns("router"), "nexthop", "bucket", "show", "id", str(NH_GROUP))
        c = Counter(int(m) for m in re.findall(r"nhid (\d+)", out))
        return {f"lb{i}": c.get(i, 0) for i in range(1, INSTANCES + 1)}

    def spawn(self, ns, argv, log_path=None, **kw):
        """`ip netns exec NS argv...`: ip execs the program in place, so the PID is the program's.
        It is killed if this script dies (PR_SET_PDEATHSIG)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(ns)] + argv, preexec_fn=_die_with_parent,
                             stderr=open(log_path, "w") if log_path else subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def curl(self, ns, method, path, body=None, url=None):
        argv = ["ip", "netns", "exec", self.ns(ns), "curl", "-sS", "-f", "--max-time", "3", "-X", method]
        if method != "GET":
            # The admin API takes changes only as JSON (a guard against cross-site requests).
            argv += ["-H", "Content-Type: application/json"]
        if body is not None:
            argv += ["-d", body]
        return sh(*argv, url or f"http://{ADMIN}{path}")

    def wait_http(self, ns, url, limit=10.0):
        deadline = time.monotonic() + limit
        while True:
            try:
                return self.curl(ns, "GET", None, url=url)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self):
        for p in reversed(self.procs):
            stop(p)
        for n in reversed(self.created):
            r = subprocess.run(["ip", "netns", "del", n], capture_output=True, text=True)
            if r.returncode != 0:
                log(f"netns cleanup {n}: {r.stderr.strip()}")
        self.created = []


def _die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop(p, sig=signal.SIGTERM, wait=3.0):
    """Stops one process we started, by its PID."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def lb_config(algorithm, instance):
    lines = [f'listen = "{VIP}:{VIP_PORT}"', "cores = 2", f'algorithm = "{algorithm}"',
             "[hash]", 'key = "client_ip"', "[health]", 'check = "none"', "[shutdown]", "grace_ms = 1000",
             "[admin]", f'listen = "{ADMIN}"']
    for k in range(BACKENDS):
        j = (k + instance - 1) % BACKENDS + 1
        lines += ["[[backends]]", f'name = "b{j}"', f'address = "{backend_ip(j)}:{BACKEND_PORT}"']
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The client (runs inside the client namespace)
# ---------------------------------------------------------------------------------------------

def http_get(s, close, timeout):
    """One GET on an open socket; the X-Server-Id of a 200 answer. Raises OSError/ValueError."""
    s.settimeout(timeout)
    s.sendall(f"GET / HTTP/1.1\r\nHost: lb\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n".encode())
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed_early")
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            continue
        lines = head.decode("latin-1").split("\r\n")
        hdr = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if len(body) < int(hdr.get("content-length", "0")):
            continue
        if not lines[0].startswith("HTTP/1.1 200"):
            raise ValueError(f"status {lines[0]}")
        return hdr.get("x-server-id", "?")


def err_kind(e):
    if isinstance(e, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionError) and str(e) == "closed_early":
        return "closed_early"
    return type(e).__name__


def connect(src):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(1.0)
    s.connect((VIP, VIP_PORT))
    return s, instance_of_mss(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))


def client_main(spec):
    """Prints START <monotonic t0>, runs the load, prints one JSON document with every record."""
    if os.readlink("/proc/self/ns/net") == spec["parent_netns"]:
        sys.exit("the ecmp client must run inside the client namespace")
    ips, rate, duration = client_ips(), spec["rate"], spec["duration"]
    held = []
    for c, ip in enumerate(ips):
        for _ in range(spec["held"]):
            s, inst = connect(ip)
            held.append({"client": c, "instance": inst, "backend": http_get(s, False, 2.0), "sock": s})
    t0 = time.monotonic() + 0.2
    print(f"START {t0}", flush=True)
    new_recs = [[] for _ in ips]

    def opener(c):
        # Client c opens connection n (n = c, c + 50, ...) at t0 + n / rate: the steady rate in turn.
        n = c
        while n / rate < duration:
            at = t0 + n / rate
            time.sleep(max(0.0, at - time.monotonic()))
            inst, res = 0, None
            try:
                s, inst = connect(ips[c])
                with s:
                    res = ("ok", http_get(s, True, 2.0))
            except (OSError, ValueError) as e:
                res = ("err", err_kind(e))
            new_recs[c].append([round(at - t0, 4), inst, res[0], res[1]])
            n += len(ips)

    def pinger(h):
        period = spec["ping_ms"] / 1000.0
        k = 1 + random.Random(h["client"]).random()  # spread the held connections' requests out
        while k * period < duration:
            at = t0 + k * period
            time.sleep(max(0.0, at - time.monotonic()))
            try:
                server = http_get(h["sock"], False, 2.0)
                if server != h["backend"]:
                    raise ValueError(f"other backend {server}")
                h["ok"] = h.get("ok", 0) + 1
            except (OSError, ValueError) as e:
                h["failed_at"], h["kind"] = round(at - t0, 4), err_kind(e)
                break
            k += 1
        h["sock"].close()

    threads = [threading.Thread(target=opener, args=(c,)) for c in range(len(ips))]
    threads += [threading.Thread(target=pinger, args=(h,)) for h in held]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held_recs = [{k: v for k, v in h.items() if k != "sock"} for h in held]
    print(json.dumps({"new": new_recs, "held": held_recs}), flush=True)


# ---------------------------------------------------------------------------------------------
# One variant
# ---------------------------------------------------------------------------------------------

def run_variant(name, algorithm, multipath, args, tmp):
    tag = {"maglev": "mg", "consistent_hash": "ch", "round_robin": "rr"}[algorithm] + multipath[0]
    topo = Topology(tag, multipath)
    events = {}
    try:
        for j in range(1, BACKENDS + 1):
            topo.spawn(f"b{j}", [str(TARGET / "backend"), "--listen", f"{backend_ip(j)}:{BACKEND_PORT}",
                                 "--id", f"b{j}"], stdout=subprocess.DEVNULL)
        lbs = {}
        for i in range(1, INSTANCES + 1):
            conf = tmp / f"{tag}-lb{i}.toml"
            conf.write_text(lb_config(algorithm, i))
            lbs[i] = topo.spawn(f"lb{i}", [str(TARGET / "lb"), "--config", str(conf), "--upgrade-socket",
                                           str(tmp / f"{tag}-lb{i}.sock")],
                                log_path=tmp / f"{tag}-lb{i}.log", stdout=subprocess.DEVNULL)
        for i in lbs:
            topo.wait_http(f"lb{i}", f"http://{ADMIN}/health")
        for j in range(1, BACKENDS + 1):
            topo.wait_http("lb1", f"http://{backend_ip(j)}:{BACKEND_PORT}/health")
        spec = {"rate": args.rate, "duration": args.duration, "held": args.held, "ping_ms": args.ping_ms,
                "parent_netns": os.readlink("/proc/self/ns/net")}
        client = topo.spawn("client", [sys.executable, str(Path(__file__).resolve()), "_client", json.dumps(spec)],
                            log_path=tmp / f"{tag}-client.log", stdout=subprocess.PIPE, text=True)
        line = client.stdout.readline()
        if not line.startswith("START "):
            raise RuntimeError(f"the client did not start: {line!r}")
        t0 = float(line.split()[1])
        route_before, buckets_before = topo.route_text(), topo.buckets()

        def at(t):
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            return time.monotonic() - t0

        events["kill"] = at(args.kill_at)
        stop(lbs[KILLED], signal.SIGKILL)
        at(args.kill_at + args.withdraw_after)
        topo.withdraw(KILLED)
        # From here on no new flow reaches lb1 (the ip command takes a few milliseconds).
        events["withdraw"] = time.monotonic() - t0
        route_after, buckets_after = topo.route_text(), topo.buckets()
        at(args.remove_at)
        for i in lbs:
            if i != KILLED:
                topo.curl(f"lb{i}", "DELETE", f"/lb/backends/{REMOVED}")
        events["remove"] = time.monotonic() - t0
        out, _ = client.communicate(timeout=args.duration + 30)
        if client.returncode != 0:
            raise RuntimeError(f"the client failed ({client.returncode})")
        accepted = {}
        for i in lbs:
            if i != KILLED:
                st = json.loads(topo.curl(f"lb{i}", "GET", "/lb/stats"))
                accepted[f"lb{i}"] = sum(c["accepted"] for c in st["cores"])
    finally:
        topo.close()
    recs = json.loads(out.strip().splitlines()[-1])
    r = analyse(recs, events, args.duration)
    attributed = Counter(f"lb{rec[1]}" for per in recs["new"] for rec in per)
    attributed.update(f"lb{h['instance']}" for h in recs["held"])
    r.update({"variant": name, "algorithm": algorithm, "multipath": multipath,
              "events_s": {k: round(v, 3) for k, v in events.items()},
              "route_before": route_before, "route_after": route_after,
              "buckets_before": buckets_before, "buckets_after": buckets_after,
              # lb's own count of accepted connections against the client's attribution by MSS
              "accepted_check": {k: {"lb": v, "client": attributed.get(k, 0)} for k, v in accepted.items()},
              "lb_config_lb1": lb_config(algorithm, 1)})
    return r


def majority(counter):
    if not counter:
        return None
    top = max(counter.values())
    return min(b for b, n in counter.items() if n == top)


def analyse(recs, events, duration):
    """Per phase and client: backends and instances; per bucket: the timeline."""
    kill, withdraw, remove = events["kill"], events["withdraw"], events["remove"]
    settle = 0.1
    phases = {"before": (0.0, kill), "gap": (kill, withdraw), "after_kill": (withdraw + settle, remove),
              "after_removal": (remove + settle, duration)}

    def phase_of(t):
        return next((p for p, (a, b) in phases.items() if a <= t < b), None)

    per = {p: [{"backends": Counter(), "instances": set()} for _ in range(CLIENTS)] for p in phases}
    # Errors by when the connection started: before the kill, between kill and withdrawal, after.
    errors, started = Counter(), Counter()
    for c, rs in enumerate(recs["new"]):
        for t, inst, status, what in rs:
            started["before_kill" if t < kill else "kill_to_withdrawal" if t < withdraw else "after_withdrawal"] += 1
            if status != "ok":
                errors["before_kill" if t < kill else "kill_to_withdrawal" if t < withdraw else "after_withdrawal"] += 1
                continue
            p = phase_of(t)
            if p:
                per[p][c]["backends"][what] += 1
                per[p][c]["instances"].add(inst)
    home = [majority(x["backends"]) for x in per["before"]]
    mid = [majority(x["backends"]) for x in per["after_kill"]]
    end = [majority(x["backends"]) for x in per["after_removal"]]
    consistent = sum(1 for x in per["before"] if len(x["instances"]) >= 2 and len(x["backends"]) == 1)
    multi_instance = sum(1 for x in per["before"] if len(x["instances"]) >= 2)
    moved_kill = sum(1 for a, b in zip(home, mid) if a != b)
    moved_removal = [c for c in range(CLIENTS) if mid[c] != end[c]]
    moved_others = [c for c in moved_removal if mid[c] != REMOVED]

    held = recs["held"]
    on_killed = [h for h in held if h["instance"] == KILLED]
    on_survivors = [h for h in held if h["instance"] != KILLED]
    failed_after_kill = [h for h in held if h.get("failed_at") is not None and h["failed_at"] >= kill]

    # The timeline: new connections per backend, their errors, failed held connections, and new
    # connections that did not reach their client's backend from before the kill.
    n_buckets = max(1, round(duration * 1000 / BUCKET_MS))
    tl = [{"t_s": round(k * BUCKET_MS / 1000, 3), "ok": Counter(), "errors": 0, "held_failed": 0, "off_home": 0,
           "instances": Counter()} for k in range(n_buckets)]
    for c, rs in enumerate(recs["new"]):
        for t, inst, status, what in rs:
            b = tl[min(int(t * 1000 / BUCKET_MS), n_buckets - 1)]
            if status == "ok":
                b["ok"][what] += 1
                b["instances"][f"lb{inst}"] += 1
                if t >= kill and what != home[c]:
                    b["off_home"] += 1
            else:
                b["errors"] += 1
    for h in held:
        if h.get("failed_at") is not None:
            tl[min(int(h["failed_at"] * 1000 / BUCKET_MS), n_buckets - 1)]["held_failed"] += 1
    for b in tl:
        b["ok"], b["instances"] = dict(sorted(b["ok"].items())), dict(sorted(b["instances"].items()))
    kinds_killed = Counter(h["kind"] for h in failed_after_kill if h["instance"] == KILLED)
    kinds_survivors = Counter(h["kind"] for h in failed_after_kill if h["instance"] != KILLED)
    # New connections between the withdrawal and the removal that missed their client's backend.
    window = [b for b in tl if withdraw + settle <= b["t_s"] and b["t_s"] + BUCKET_MS / 1000 <= remove]
    ok_window = sum(sum(b["ok"].values()) for b in window)
    return {
        "new_connections": sum(len(rs) for rs in recs["new"]),
        "errors_by_phase": dict(errors),
        "started_by_phase": dict(started),
        "clients_on_several_instances_before": multi_instance,
        "clients_consistent_before": consistent,
        "clients_moved_by_kill": moved_kill,
        "clients_moved_by_removal": len(moved_removal),
        "clients_of_removed": sum(1 for m in mid if m == REMOVED),
        "clients_moved_by_removal_not_on_removed": len(moved_others),
        "held": len(held), "held_on_killed": len(on_killed),
        "held_failed_on_killed": sum(1 for h in on_killed if h.get("failed_at") is not None),
        "held_failed_on_survivors": sum(1 for h in on_survivors if h.get("failed_at") is not None),
        "held_failed_before_kill": sum(1 for h in held if h.get("failed_at") is not None and h["failed_at"] < kill),
        "held_failed_kinds_on_killed": dict(kinds_killed),
        "held_failed_kinds_on_survivors": dict(kinds_survivors),
        "off_home_share_after_kill": round(sum(b["off_home"] for b in window) / ok_window, 4) if ok_window else None,
        "held_failed_on_removed_backend_after_removal": sum(
            1 for h in held if h["backend"] == REMOVED and h.get("failed_at") is not None and h["failed_at"] >= remove),
        "home_backend": home, "backend_after_kill": mid, "backend_after_removal": end,
        "timeline": tl,
    }


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def smooth(points, width):
    out = []
    for i in range(len(points)):
        w = points[max(0, i - width + 1):i + 1]
        out.append(sum(w) / len(w))
    return out


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def chart_variant(d, v, params):
    tl = v["timeline"]
    xs = [b["t_s"] + BUCKET_MS / 2000 for b in tl]
    per_s = 1000 / BUCKET_MS
    # Each client connects every 250 ms at the default rate: a 500 ms mean hides that beat.
    series = {f"{b} (new conns/s)": smooth([x["ok"].get(b, 0) * per_s for x in tl], 5) for b in ("b1", "b2", "b3")}
    series["not on pre-kill backend"] = smooth([x["off_home"] * per_s for x in tl], 5)
    series["new conns failed /s"] = [x["errors"] * per_s for x in tl]
    series["open conns failed /s"] = [x["held_failed"] * per_s for x in tl]
    e = v["events_s"]
    events = [(e["kill"], "lb1 SIGKILL"), (e["withdraw"], "router withdraws lb1"), (e["remove"], "b2 removed")]
    timeline_chart(d / f"ecmp-{slug(v['variant'])}.svg",
                   f"ECMP, {v['variant']}: lb1 killed at {e['kill']:.1f} s, b2 removed at {e['remove']:.1f} s",
                   xs, series, "time since the load started (s)", "per second (100 ms buckets)",
                   events=events, width=1000, height=460,
                   note=f"{params['rate']} new conns/s, 50 clients;\n"
                        f"{params['held'] * CLIENTS} open conns, a request\n"
                        f"every {params['ping_ms']} ms on each;\n"
                        f"{v['multipath']} multipath.\n"
                        f"Load lines: 500 ms mean.\n"
                        f"'not on pre-kill backend': new\n"
                        f"conns not on their client's\n"
                        f"backend from before the kill")


def write(data, d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "ecmp.json").write_text(json.dumps(data, indent=1) + "\n")
    render(data, d)


def render(data, d):
    """CSV, SVG and summary.md from the measured data (also with --replot)."""
    results, p = data["results"], data["params"]
    with open(d / "ecmp.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "t_s", "b1", "b2", "b3", "new_errors", "open_failed", "off_home", "lb1", "lb2", "lb3"])
        for v in results:
            for b in v["timeline"]:
                w.writerow([v["variant"], b["t_s"]] + [b["ok"].get(x, 0) for x in ("b1", "b2", "b3")]
                           + [b["errors"], b["held_failed"], b["off_home"]]
                           + [b["instances"].get(f"lb{i}", 0) for i in (1, 2, 3)])
    for v in results:
        chart_variant(d, v, p)
    names = [v["variant"] for v in results]
    bar_chart_err(d / "ecmp-open-connections.svg", "ECMP: open connections that failed when lb1 was killed",
                  names, ["open on lb1", "failed on lb1 (killed)", "failed on lb2, lb3 (alive)"],
                  [[v["held_on_killed"] for v in results], [v["held_failed_on_killed"] for v in results],
                   [v["held_failed_on_survivors"] for v in results]],
                  f"variant ({results[0]['held']} open connections in all, about a third on each instance)",
                  "open connections (count)", colors=["#c7c7c7", "#7f7f7f", "#d62728"], width=980, right=210)
    (d / "summary.md").write_text(markdown(data))


def kinds(counter):
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items())) or "none"


def fmt_buckets(b):
    return " / ".join(f"{k} {n}" for k, n in sorted(b.items()))


def markdown(data):
    results, p, env = data["results"], data["params"], data["environment"]
    by = {v["variant"]: v for v in results}
    rows = []
    for v in results:
        err = v["errors_by_phase"]
        hashing = v["algorithm"] != "round_robin"
        removal = (f"{v['clients_moved_by_removal']} ({v['clients_moved_by_removal_not_on_removed']} not on b2)"
                   if hashing else f"{v['clients_moved_by_removal']} (no client has a backend)")
        rows.append(
            f"| {v['variant']} | {v['clients_consistent_before']} of {v['clients_on_several_instances_before']} | "
            f"{v['held_failed_on_killed']} of {v['held_on_killed']} | "
            f"**{v['held_failed_on_survivors']}** of {v['held'] - v['held_on_killed']} | "
            f"{err.get('before_kill', 0)} / {err.get('kill_to_withdrawal', 0)} / {err.get('after_withdrawal', 0)} | "
            f"**{v['clients_moved_by_kill']}** | {v['clients_of_removed'] if hashing else '-'} | {removal} |")
    charts = "\n".join(f"![{v['variant']}](ecmp-{slug(v['variant'])}.svg)" for v in results)
    checks = "; ".join(f"{v['variant']}: " + ", ".join(f"{k} {c['lb']}/{c['client']}" for k, c in v["accepted_check"].items())
                       for v in results)
    findings = []
    mg, ch, rr, ht = (by.get(k) for k in ("maglev", "consistent_hash", "round_robin", "maglev (hash-threshold route)"))
    for v in (x for x in (mg, ch) if x):
        findings.append(
            f"- `{v['algorithm']}` behind the resilient group: all {v['clients_consistent_before']} clients that "
            f"reached several instances before the kill reached one backend from all of them. The kill cost the "
            f"{v['held_failed_on_killed']} connections open on lb1 and {v['held_failed_on_survivors']} elsewhere; "
            f"{v['clients_moved_by_kill']} clients changed backend and {100 * v['off_home_share_after_kill']:.0f}% of "
            f"the new connections until the removal missed their client's backend, although every client that "
            f"used lb1 now goes through lb2 or lb3. Removing b2 moved {v['clients_moved_by_removal']} clients, "
            f"{v['clients_moved_by_removal_not_on_removed']} of them not b2's ({v['clients_of_removed']} were b2's); "
            f"the connections already open to b2 went on working "
            f"({v['held_failed_on_removed_backend_after_removal']} failed after the removal): lb lets them finish.")
    if rr:
        findings.append(
            f"- `round_robin`: the router and the kill behave the same ({rr['held_failed_on_killed']} failed on lb1, "
            f"{rr['held_failed_on_survivors']} elsewhere), but no client has a backend: "
            f"{rr['clients_consistent_before']} of {rr['clients_on_several_instances_before']} clients stayed on one "
            f"backend before the kill, {rr['clients_moved_by_kill']} of {CLIENTS} clients' most-used backend "
            f"changed across it, and {100 * rr['off_home_share_after_kill']:.0f}% of the new connections after it "
            f"missed their client's most-used backend from before (a pick at random among three would miss 67%).")
    if ht:
        findings.append(
            f"- A plain multipath route (hash-threshold) with the same lb instances: the kill also broke "
            f"**{ht['held_failed_on_survivors']}** of the {ht['held'] - ht['held_on_killed']} connections open on "
            f"the instances that stayed up. Withdrawing the first of three next hops re-divides the hash space "
            f"into halves, so part of lb2's flows now hash to lb3, which has no socket for them and answers with a "
            f"reset ({kinds(ht['held_failed_kinds_on_survivors'])}; on lb1: "
            f"{kinds(ht['held_failed_kinds_on_killed'])}, the close from the killed process's kernel). lb's "
            f"choice is still consistent ({ht['clients_moved_by_kill']} clients moved), but consistent hashing in "
            f"lb cannot save a connection that the router delivers to an instance that never saw it.")
    early = sum(v["errors_by_phase"].get("before_kill", 0) for v in results)
    if early:
        findings.append(f"- {early} new connection(s) over all variants started before the kill and failed: "
                        f"requests in flight on lb1 when it died.")
    gap = sum(v["errors_by_phase"].get("kill_to_withdrawal", 0) for v in results)
    gap_started = sum(v["started_by_phase"].get("kill_to_withdrawal", 0) for v in results)
    late = sum(v["errors_by_phase"].get("after_withdrawal", 0) for v in results)
    findings.append(
        f"- Between the kill and the withdrawal ({p['withdraw_after'] * 1000:.0f} ms, the router's detection "
        f"time in this model) the new connections that hashed to lb1 failed: {gap} of the {gap_started} started in "
        f"that window over all variants ({100 * gap / gap_started:.0f}%; lb1 had a third of the buckets), and "
        f"{late} after the withdrawal. A real router's detection time (BGP hold timer, BFD, health checks) sets "
        f"this window.")
    seen = {}
    for v in results:
        if v["buckets_before"]:
            key = (fmt_buckets(v["buckets_before"]), fmt_buckets(v["buckets_after"]))
            seen.setdefault(key, []).append(v["variant"])
    buckets = "; ".join(f"{a} buckets, then {b}" + ("" if len(seen) == 1 else f" ({', '.join(n)})")
                        for (a, b), n in seen.items())
    table = "\n".join(rows)
    return f"""# ECMP: lb instances behind a multipath router

Three lb instances (2 cores each, `hash.key = "client_ip"`, no health checks, the same backends
listed in a different order on each) behind a router namespace that routes the virtual IP
{VIP}:{VIP_PORT} over them with `net.ipv4.fib_multipath_hash_policy = 1` (the L4 tuple is
hashed, so each client's connections spread over all instances). A client namespace with 50 source
addresses opens {p['rate']} new connections per second, in turn from each address, one request each,
and holds {p['held']} keep-alive connections per address with a request every {p['ping_ms']} ms. Which
instance accepted a connection is read from its MSS (each instance advertises its own); lb's accepted
counters agree (lb / client: {checks}). At {p['kill_at']:g} s lb1 is killed with SIGKILL; {p['withdraw_after']:g} s
later the router withdraws its next hop, as a router whose BGP session or health check to the instance
drops would; at {p['remove_at']:g} s b2 is removed on lb2 and lb3 through their admin APIs. Everything
runs in network namespaces, removed afterwards.

"Clients moved" compares each client's most-used backend (over its new connections) in the phase
before and after the event: before the kill, after the withdrawal, after the removal.

| variant | clients on one backend through all their instances, before the kill | open connections failed on lb1 (killed) | open connections failed on lb2, lb3 (alive) | new connections failed, by start: before the kill / kill to withdrawal / after | clients moved by the kill | clients of b2 | clients moved by removing b2 |
|---|---|---|---|---|---|---|---|
{table}

![open connections](ecmp-open-connections.svg)

{charts}

What it shows:

{chr(10).join(findings)}
- The resilient group gives lb1's buckets to the others and leaves theirs alone: {buckets}.

Machine: {machine_line(env)}.

Rerun (from the repository root, as root, after `cargo build --release --bins`):

```sh
{data['rerun']}
```

Raw data: [ecmp.json](ecmp.json) (per variant: events, routes, buckets, per-client backends per phase,
100 ms timeline), [ecmp.csv](ecmp.csv) (the timelines: new connections per backend and per instance,
errors).
"""


def run(args):
    d = Path(args.out) if args.out else out_dir(DIR, replot=args.replot)
    if args.replot:
        return render(json.loads((d / "ecmp.json").read_text()), d)
    if os.geteuid() != 0:
        raise SystemExit("the ecmp experiment needs root (network namespaces)")
    if not 0 < args.kill_at < args.kill_at + args.withdraw_after < args.remove_at < args.duration:
        raise SystemExit("need 0 < kill-at < kill-at + withdraw-after < remove-at < duration")
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in {v[0] for v in VARIANTS}]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(v[0] for v in VARIANTS)}")
    remove_stale_namespaces()
    # SIGTERM ends the run like Ctrl-C does, through the finally blocks that remove the namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    # lb's configs and logs; kept when a variant fails, for the post-mortem.
    tmp = Path(tempfile.mkdtemp(prefix="lb-ecmp-"))
    results = []
    try:
        for name, algorithm, multipath in VARIANTS:
            if name not in names:
                continue
            log(f"ECMP {name}")
            v = run_variant(name, algorithm, multipath, args, tmp)
            log(f"  open connections failed: {v['held_failed_on_killed']} on lb1, {v['held_failed_on_survivors']} "
                f"on survivors; clients moved by the kill {v['clients_moved_by_kill']}, by the removal "
                f"{v['clients_moved_by_removal']}")
            results.append(v)
    except BaseException:
        log(f"lb configs and logs kept in {tmp}")
        raise
    shutil.rmtree(tmp)
    params = {k: getattr(args, k) for k in DEFAULTS}
    rerun = "python3 bench/experiments.py ecmp" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k):g}" for k in DEFAULTS if getattr(args, k) != DEFAULTS[k])
    if len(names) != len(VARIANTS):
        rerun += f" --variants '{','.join(names)}'"
    data = {"experiment": "ECMP", "rerun": rerun, "params": params,
            "environment": lbbench.environment({"netns": "client, router, lb1-3, b1-3"}), "results": results}
    write(data, d)
    log(f"wrote {d}")
    return data


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "_client":
    client_main(json.loads(sys.argv[2]))
