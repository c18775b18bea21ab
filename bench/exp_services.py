#!/usr/bin/env python3
"""Issue 11's measurements: what many listeners and services, TLS routing by SNI and the PROXY
protocol cost, by the yardstick of bench/yardstick.py (whole-machine busy CPU, /proc/stat, over
the client's measured window, per request or per new connection).

1. `listeners`: lb with one listener feeding one service, against the same load spread over three
   listeners feeding three services (each with the same three backends). Three loadgen processes
   in both cases, each at a third of the rate: in A all three target the one listener, in B each
   its own. Per round: B - A, beside the spread of A over the rounds (the noise). Points:
   keep-alive at 15,000 req/s (3 x 32 connections) and 1,500 new connections/s (3 x 16).
2. `sni`: new TLS connections routed by the ClientHello's server name, lb (`[[listeners.routes]]`)
   against HAProxy (`req.ssl_sni`), one thread each, and direct (client straight to a TLS
   backend). Backends: one nginx (one worker) terminating TLS (an ECDSA P-256 certificate made by
   this script) with `return 200` on four ports, two pools of two, one pool per server name.
   Client: bench/tls_load.py (Python `ssl`, full handshakes, no resumption; `openssl s_time`
   cannot send a server name), names in turn. Points: a fixed rate below saturation (CPU per new
   connection, and the hop: through the proxy minus direct, per round) and closed loop
   (connections per second at saturation).
3. `proxy`: PROXY v2 in and out, per new connection: lb plain, `send_proxy = "v2"` to nginx
   `listen ... proxy_protocol`, `accept_proxy = "v2"` fed by `loadgen --proxy-v2`, and both; each
   against plain in the same round; direct beside them for the hop.

Pinning: the proxy (lb --cores 1, HAProxy nbthread 1) on CPU 0; the clients and the nginx backends
on CPU 1. Every round runs every target of a point in a mirrored, rotating order
(yardstick.round_order); medians with (min-max) over the rounds. Health checks are off in every lb
(`[health] check = "none"`), so that three services do not mean three times the probes.

Writes services.json and services.md to --out DIR (default a fresh bench-results/runs/
services-<time>/; the committed figures: --out bench-results/services).
Usage: bench/exp_services.py [--rounds 7] [--duration 5] [--only listeners|sni|proxy ...]
       bench/exp_services.py --render-only --out DIR    (services.md again from DIR/services.json)
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yardstick as ys
from expcommon import wait_quiet
from lbbench import (HAPROXY_PROLOGUE, NGINX_HTTP_PROLOGUE, RESULTS, ROOT, TARGET, Server, build_release, child_cpu, ensure_packages, environment, free_port,
                     log, median_spread, pinned, run_dir, tmpdir, wait_port, write_results)

HERE = Path(__file__).resolve().parent
PROXY_CPU, CLIENT_CPU = 0, 1
PARTS = ("listeners", "sni", "proxy")
SCHEMA = 1

# Part 1. Per loadgen process: three of them run at once, so the totals are three times these.
CLIENTS = 3
LISTENER_POINTS = {
    "ka-15k": {"label": "keep-alive, 15,000 req/s in total (3 x 5,000, 3 x 32 connections)",
               "conns": 32, "rate": 5000, "args": []},
    "new-1500": {"label": "new connections, 1,500/s in total (3 x 500, 3 x 16 connections)",
                 "conns": 16, "rate": 500, "args": ["--new-connection"]},
}
ONE, THREE = "one-listener", "three-listeners"

# Part 2. One TLS client process pool; the rate is the whole pool's.
SNI_NAMES = ("a.example", "b.example")
SNI_POINTS = {
    "tls-rate": {"label": "300 new TLS connections/s", "rate": 300, "procs": 2},
    "tls-sat": {"label": "saturation (closed loop, 3 client processes)", "rate": None, "procs": 3},
}
SNI_TARGETS = ("lb", "haproxy")

# Part 3. Below what one lb core and one CPU for loadgen and nginx sustain in new connections
# (about 3,600/s through lb, bench/exp_access_log.py).
PROXY_POINTS = {
    "new-1500": {"label": "1,500 new connections/s, 16 connections", "conns": 16, "rate": 1500,
                 "args": ["--new-connection"]},
}
# variant: (accept_proxy, send_proxy)
PROXY_VARIANTS = {
    "plain": (False, False),
    "out": (False, True),
    "in": (True, False),
    "both": (True, True),
}
PLAIN = "plain"

# Busy CPUs outside the proxy, the clients and nginx above which a run is repeated (RETRIES times
# at most). Without other work on the machine this is softirq and kworker time, under 0.15 CPUs
# at every point here (measured in quiet runs); the shared machine's other users add up to 1.5.
NOISY_CPUS = 0.3
RETRIES = 2
RETRY_SHARE = 0.3
# Every new connection leaves two sockets in TIME_WAIT, both on the server side (nginx's and lb's
# accepted ones: the servers close first), so they hold no client port; the wait before a run
# only keeps the count below the kernel's table (tcp_max_tw_buckets, 131,072 here), past which
# it would destroy them early.
TW_LIMIT = 100000

LABELS = {ys.DIRECT: "direct", ONE: "A: one listener, one service", THREE: "B: three listeners, three services",
          "lb": "lb", "haproxy": "HAProxy", "plain": "lb plain", "out": "lb send_proxy v2",
          "in": "lb accept_proxy v2", "both": "lb accept_proxy + send_proxy v2"}


# ---------------------------------------------------------------------------------------------
# Configurations (pure)
# ---------------------------------------------------------------------------------------------

LB_HEAD = "[health]\ncheck = \"none\"\n"


def backends_toml(ports, prefix="b"):
    return "".join(f"[[services.backends]]\nname = \"{prefix}{i}\"\naddress = \"127.0.0.1:{p}\"\n"
                   for i, p in enumerate(ports))


def listeners_toml(listen_ports, backend_ports):
    """One service per listener port (s0, s1, ...), each with every backend; listener l{i} on
    port i feeds service s{i}."""
    text = LB_HEAD
    for i, _ in enumerate(listen_ports):
        text += f"\n[[services]]\nname = \"s{i}\"\nalgorithm = \"round_robin\"\n" + backends_toml(backend_ports)
    for i, p in enumerate(listen_ports):
        text += f"\n[[listeners]]\nname = \"l{i}\"\naddress = \"127.0.0.1:{p}\"\nservice = \"s{i}\"\n"
    return text


def sni_toml(port, pools):
    """A TLS listener routing by server name: pools = [(name, sni, [ports])], the first also the
    default service."""
    text = LB_HEAD
    for name, _, ports in pools:
        text += f"\n[[services]]\nname = \"{name}\"\nalgorithm = \"round_robin\"\n" + backends_toml(ports, name)
    text += f"\n[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{port}\"\ndefault_service = \"{pools[0][0]}\"\n"
    for name, sni, _ in pools:
        text += f"[[listeners.routes]]\nsni = \"{sni}\"\nservice = \"{name}\"\n"
    return text


def proxy_toml(port, backend_ports, accept, send):
    """One listener, one service; PROXY v2 taken from 127.0.0.0/8 (`accept`) and written to the
    backends (`send`)."""
    text = LB_HEAD + "\n[[services]]\nname = \"app\"\nalgorithm = \"round_robin\"\n"
    if send:
        text += "send_proxy = \"v2\"\n"
    text += backends_toml(backend_ports)
    text += f"\n[[listeners]]\nname = \"in\"\naddress = \"127.0.0.1:{port}\"\nservice = \"app\"\n"
    if accept:
        text += "accept_proxy = \"v2\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n"
    return text


HAPROXY_SNI_CFG = HAPROXY_PROLOGUE.replace("{threads}", "1") + """frontend tls
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
{uses}    default_backend {default}
{backends}"""


def haproxy_sni_cfg(port, pools):
    uses = "".join(f"    use_backend {name} if {{ req.ssl_sni -i {sni} }}\n" for name, sni, _ in pools)
    backends = ""
    for name, _, ports in pools:
        backends += f"backend {name}\n    balance roundrobin\n"
        backends += "".join(f"    server {name}{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports))
    return HAPROXY_SNI_CFG.format(port=port, uses=uses, default=pools[0][0], backends=backends)


NGINX_CONF = NGINX_HTTP_PROLOGUE + """{tls}{servers}
}}
"""

NGINX_TLS = """    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    # Every connection a full handshake: no session cache, no tickets.
    ssl_session_cache off;
    ssl_session_tickets off;
"""


def nginx_conf(d, servers, cert=None, key=None):
    """One nginx (one worker, no master) with one `return 200` server block per (port, listen
    options) in `servers`; TLS settings when a certificate is given."""
    blocks = "\n".join(
        f"    server {{\n        listen 127.0.0.1:{port}{' ' + opts if opts else ''};\n"
        f"        location / {{\n            add_header X-Server-Id n{i};\n"
        f"            return 200 '{{\"server\":\"n{i}\",\"requests\":0}}\\n';\n        }}\n    }}"
        for i, (port, opts) in enumerate(servers))
    tls = NGINX_TLS.format(cert=cert, key=key) if cert else ""
    return NGINX_CONF.format(dir=d, tls=tls, servers=blocks)


def named(text, ports):
    """`text` with each port replaced by its {NAME}: configs and commands are recorded without
    the run's ports. Longer numbers first, so that no port is a prefix of another's name."""
    for name, port in sorted(ports.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(port), f"{{{name}}}")
    return text


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def nginx_proc(servers, cpu, cert=None, key=None, name="nginx-backends"):
    d = tmpdir("bench-svc-nginx-")
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(d, servers, cert, key))
    srv = Server(name, ["nginx", "-p", str(d), "-c", str(conf)], servers[0][0], cpu=cpu, cleanup=[d])
    for p, _ in servers[1:]:
        wait_port(p)
    srv.config = conf.read_text().replace(str(d), "DIR")
    return srv


def lb_proc(toml_text, ports, cpu):
    """lb --cores 1 with `toml_text` as its config; waits for every port in `ports`."""
    d = tmpdir("bench-svc-lb-")
    conf = d / "lb.toml"
    conf.write_text(toml_text)
    argv = [str(TARGET / "lb"), "--cores", "1", "--admin", "off", "--config", str(conf)]
    srv = Server("lb", argv, ports[0], cpu=cpu, env={"RUST_LOG": "warn"}, cleanup=[d])
    for p in ports[1:]:
        wait_port(p)
    srv.config = toml_text
    srv.command = f"lb --cores 1 --admin off --config lb.toml (pinned to CPU {cpu})"
    return srv


def haproxy_proc(cfg_text, port, cpu):
    d = tmpdir("bench-svc-haproxy-")
    conf = d / "haproxy.cfg"
    conf.write_text(cfg_text)
    srv = Server("haproxy", ["haproxy", "-db", "-f", str(conf)], port, cpu=cpu, cleanup=[d])
    srv.config = cfg_text
    srv.command = f"haproxy -db -f haproxy.cfg (pinned to CPU {cpu})"
    return srv


def make_cert(d, names):
    """A self-signed ECDSA P-256 certificate for `names` (the first as CN, all as SANs)."""
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={names[0]}",
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in names)],
                   check=True, capture_output=True)
    return cert, key


# ---------------------------------------------------------------------------------------------
# Measuring: clients in parallel, CPU over their common window
# ---------------------------------------------------------------------------------------------

def loadgen_argv(url, spec, duration, warmup, extra=()):
    argv = [str(TARGET / "loadgen"), url, "--cores", "1", "--conns", str(spec["conns"]),
            "--duration", f"{duration:g}s", "--warmup", f"{warmup:g}s"]
    if spec.get("rate"):
        argv += ["--rate", str(spec["rate"])]
    return argv + list(spec.get("args", [])) + list(extra)


def tls_argv(port, spec, duration, warmup):
    argv = [sys.executable, str(HERE / "tls_load.py"), "--connect", f"127.0.0.1:{port}",
            "--names", ",".join(SNI_NAMES), "--procs", str(spec["procs"]),
            "--duration", f"{duration:g}", "--warmup", f"{warmup:g}"]
    if spec.get("rate"):
        argv += ["--rate", str(spec["rate"])]
    return argv


def common_window(reports):
    """What several clients that ran at once measured together: their measured windows'
    intersection [t0, t1] (unix s), the sum of their rates, the requests that rate gives over the
    window, errors summed, and how far apart they started (`skew_s`)."""
    starts = [r["started_unix_ms"] / 1000 for r in reports]
    ends = [s + r["duration_s"] for s, r in zip(starts, reports)]
    t0, t1 = max(starts), min(ends)
    if t1 <= t0:
        raise ValueError(f"the clients' measured windows do not overlap: {starts} {ends}")
    rps = sum(r["rps"] for r in reports)
    kinds = {}
    for r in reports:
        for k, v in r.get("errors_by_kind", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    return {"t0": t0, "t1": t1, "window_s": t1 - t0, "rps": rps, "requests_in_window": rps * (t1 - t0),
            "requests": sum(r["requests"] for r in reports), "errors": sum(r["errors"] for r in reports),
            "errors_by_kind": kinds, "skew_s": max(starts) - min(starts),
            "latency_ms": {"p50": sorted(r["latency_ms"]["p50"] for r in reports)[len(reports) // 2],
                           "p99": max(r["latency_ms"]["p99"] for r in reports)}}


def run_clients(argvs, cpu, timeout):
    """Runs every client at once (each with --json into a temp file), pinned to `cpu`; returns
    their reports and the CPU seconds they used."""
    d = tmpdir("bench-svc-clients-")
    procs, paths = [], []
    before = child_cpu()
    try:
        for i, argv in enumerate(argvs):
            path = d / f"client{i}.json"
            err = open(d / f"client{i}.err", "w")
            procs.append(subprocess.Popen(pinned(cpu, [*argv, "--json", str(path)]), stdout=subprocess.DEVNULL,
                                          stderr=err))
            err.close()
            paths.append(path)
        deadline = time.time() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    if q.poll() is None:
                        q.kill()
                        q.wait()
                raise RuntimeError(f"a client did not finish within {timeout:.0f}s: {argvs}")
        reports = []
        for i, (p, path) in enumerate(zip(procs, paths)):
            if not path.exists():
                err = (d / f"client{i}.err").read_text()[-2000:]
                raise RuntimeError(f"client {argvs[i][:2]} exited {p.returncode} without results: {err}")
            reports.append(json.loads(path.read_text()))
        return reports, child_cpu() - before
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def measure(argvs, point, target, round_no, roles, duration, warmup, ports):
    """One run: every client in `argvs` at once on CLIENT_CPU; the machine's busy CPU over their
    common window, per request (or connection) of it. `roles`: {"proxy": [pid], "backends":
    [pid]} ("proxy" left out when direct); `ports` names the ports in the recorded commands."""
    with ys.Sampler(roles, 0.1) as s:
        reports, client_cpu = run_clients(argvs, CLIENT_CPU, duration + warmup + 60)
    w = common_window(reports)
    n = max(w["requests_in_window"], 1.0)
    machine = ys.busy_window(s.samples, w["t0"], w["t1"])
    proxy = ys.window(s.samples, w["t0"], w["t1"], "proxy") if "proxy" in roles else 0.0
    backends = ys.window(s.samples, w["t0"], w["t1"], "backends")
    client = client_cpu * w["window_s"] / (duration + warmup)  # the clients' CPU, prorated to the window
    return {"round": round_no, "point": point, "target": target, "clients": len(argvs),
            "requests": w["requests"], "requests_in_window": w["requests_in_window"], "errors": w["errors"],
            "errors_by_kind": w["errors_by_kind"], "rps": w["rps"], "duration_s": w["window_s"],
            "skew_s": w["skew_s"], "machine_cpu_s": machine, "machine_us_per_req": machine / n * 1e6,
            "proxy_cpu_s": proxy, "proxy_us_per_req": proxy / n * 1e6, "client_cpu_s": client,
            "backend_cpu_s": backends, "rest_us_per_req": (machine - proxy - client - backends) / n * 1e6,
            "latency_ms": w["latency_ms"], "started_unix_ms": w["t0"] * 1000,
            "late_ms": [r["late_ms"] for r in reports if "late_ms" in r],
            "commands": [named(" ".join(pinned(CLIENT_CPU, a)).replace(str(ROOT) + "/", ""), ports) for a in argvs]}


def rounds(a, labels_of, points, run_one):
    """Every point of every round, its targets in yardstick.round_order. A run during which other
    work kept the machine busy (more than NOISY_CPUS outside the proxy, the clients and nginx) is
    run again, at most RETRIES times, and in all at most RETRY_SHARE of the planned runs (so that
    a machine busy for good does not triple the time); the attempts set aside stay in the run
    (`noisy_attempts`)."""
    runs = []
    budget = int(RETRY_SHARE * a.rounds * sum(len(labels_of(p)) for p in points) + 0.999)
    for r in range(a.rounds):
        log(f"  round {r + 1} of {a.rounds}")
        for point in points:
            for t in ys.round_order(labels_of(point), r):
                set_aside = []
                while True:
                    wait_quiet(TW_LIMIT)
                    run = run_one(point, t, r)
                    log("    " + ys.describe(run))
                    if rest_cpus(run) <= NOISY_CPUS or len(set_aside) == RETRIES or budget == 0:
                        break
                    budget -= 1
                    log(f"    {rest_cpus(run):.2f} CPUs busy outside this benchmark: again")
                    set_aside.append({k: v for k, v in run.items() if k != "commands"})
                run["noisy_attempts"] = set_aside
                runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# The three parts
# ---------------------------------------------------------------------------------------------

def part_listeners(a):
    bports = [free_port() for _ in range(3)]
    one_port, three_ports = free_port(), [free_port() for _ in range(CLIENTS)]
    names = {**{f"BACKEND{i}": p for i, p in enumerate(bports)}, "A_PORT": one_port,
             **{f"B_PORT{i}": p for i, p in enumerate(three_ports)}}
    backend = nginx_proc([(p, "") for p in bports], CLIENT_CPU)
    servers = {}
    try:
        servers[ONE] = lb_proc(listeners_toml([one_port], bports), [one_port], PROXY_CPU)
        servers[THREE] = lb_proc(listeners_toml(three_ports, bports), three_ports, PROXY_CPU)
        time.sleep(0.5)
        targets = {ys.DIRECT: bports, ONE: [one_port] * CLIENTS, THREE: three_ports}

        def one(point, t, r):
            spec = LISTENER_POINTS[point]
            argvs = [loadgen_argv(f"http://127.0.0.1:{p}/", spec, a.duration, a.warmup) for p in targets[t]]
            roles = {"backends": [backend.pid], **({"proxy": [servers[t].pid]} if t in servers else {})}
            return measure(argvs, point, t, r, roles, a.duration, a.warmup, names)

        runs = rounds(a, lambda _: [ys.DIRECT, ONE, THREE], a.listener_points, one)
        configs = {LABELS[k]: {"command": s.command, "config": named(s.config, names)} for k, s in servers.items()}
        configs["nginx backends"] = {"config": named(backend.config, names)}
        return {"runs": runs, "servers": configs, "points": {p: LISTENER_POINTS[p] for p in a.listener_points}}
    finally:
        for s in servers.values():
            s.stop()
        backend.stop()


def part_sni(a):
    d = tmpdir("bench-svc-cert-")
    cert, key = make_cert(d, SNI_NAMES)
    bports = [free_port() for _ in range(4)]
    pools = [("pool_a", SNI_NAMES[0], bports[:2]), ("pool_b", SNI_NAMES[1], bports[2:])]
    lb_port, ha_port = free_port(), free_port()
    names = {**{f"BACKEND{i}": p for i, p in enumerate(bports)}, "LB_PORT": lb_port, "HAPROXY_PORT": ha_port}
    backend = nginx_proc([(p, "ssl") for p in bports], CLIENT_CPU, cert, key, name="nginx-tls")
    servers = {}
    try:
        servers["lb"] = lb_proc(sni_toml(lb_port, pools), [lb_port], PROXY_CPU)
        servers["haproxy"] = haproxy_proc(haproxy_sni_cfg(ha_port, pools), ha_port, PROXY_CPU)
        time.sleep(0.5)
        ports = {ys.DIRECT: bports[0], "lb": lb_port, "haproxy": ha_port}

        def one(point, t, r):
            argv = tls_argv(ports[t], SNI_POINTS[point], a.duration, a.warmup)
            roles = {"backends": [backend.pid], **({"proxy": [servers[t].pid]} if t in servers else {})}
            run = measure([argv], point, t, r, roles, a.duration, a.warmup, names)
            run["commands"] = [c.replace(sys.executable, "python3") for c in run["commands"]]
            return run

        runs = rounds(a, lambda _: [ys.DIRECT, *SNI_TARGETS], a.sni_points, one)
        configs = {LABELS[k]: {"command": s.command, "config": named(s.config, names)} for k, s in servers.items()}
        configs["nginx TLS backends"] = {"config": named(backend.config.replace(str(d), "CERTDIR"), names)}
        configs["certificate"] = ("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
                                  f"-subj /CN={SNI_NAMES[0]} -addext subjectAltName="
                                  + ",".join(f"DNS:{n}" for n in SNI_NAMES))
        return {"runs": runs, "servers": configs, "points": {p: SNI_POINTS[p] for p in a.sni_points}}
    finally:
        for s in servers.values():
            s.stop()
        backend.stop()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def part_proxy(a):
    plain_ports, pp_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    lb_ports = {v: free_port() for v in PROXY_VARIANTS}
    names = {**{f"BACKEND{i}": p for i, p in enumerate(plain_ports)},
             **{f"PP_BACKEND{i}": p for i, p in enumerate(pp_ports)},
             **{f"{v.upper()}_PORT": p for v, p in lb_ports.items()}}
    backend = nginx_proc([(p, "") for p in plain_ports] + [(p, "proxy_protocol") for p in pp_ports], CLIENT_CPU)
    servers = {}
    try:
        for v, (accept, send) in PROXY_VARIANTS.items():
            servers[v] = lb_proc(proxy_toml(lb_ports[v], pp_ports if send else plain_ports, accept, send),
                                 [lb_ports[v]], PROXY_CPU)
        time.sleep(0.5)

        def one(point, t, r):
            spec = PROXY_POINTS[point]
            port = plain_ports[0] if t == ys.DIRECT else lb_ports[t]
            extra = ["--proxy-v2"] if t != ys.DIRECT and PROXY_VARIANTS[t][0] else []
            argv = loadgen_argv(f"http://127.0.0.1:{port}/", spec, a.duration, a.warmup, extra)
            roles = {"backends": [backend.pid], **({"proxy": [servers[t].pid]} if t in servers else {})}
            return measure([argv], point, t, r, roles, a.duration, a.warmup, names)

        runs = rounds(a, lambda _: [ys.DIRECT, *PROXY_VARIANTS], a.proxy_points, one)
        configs = {LABELS[k]: {"command": s.command, "config": named(s.config, names)} for k, s in servers.items()}
        configs["nginx backends"] = {"config": named(backend.config, names)}
        return {"runs": runs, "servers": configs, "points": {p: PROXY_POINTS[p] for p in a.proxy_points}}
    finally:
        for s in servers.values():
            s.stop()
        backend.stop()


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return ["?"] * 3


def measure_all(a):
    t0 = time.time()
    bg = ys.background_busy()
    log(f"machine busy with nothing of this benchmark running: {bg:.2f} CPUs (load average {' '.join(loadavg())})")
    data = {"schema": SCHEMA,
            "env": environment({"background_busy_cpus_before": round(bg, 3), "loadavg_before": loadavg()}),
            "config": {"rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup, "parts": a.parts,
                       "command": "python3 bench/exp_services.py" + "".join(f" {x}" for x in sys.argv[1:]),
                       "pinning": f"lb or HAProxy on CPU {PROXY_CPU}; the clients and the nginx backends on CPU "
                                  f"{CLIENT_CPU}"}}
    for part, fn in (("listeners", part_listeners), ("sni", part_sni), ("proxy", part_proxy)):
        if part in a.parts:
            log(f"part {part}")
            data[part] = fn(a)
    data["env"]["background_busy_cpus_after"] = round(ys.background_busy(), 3)
    data["env"]["loadavg_after"] = loadavg()
    data["elapsed_s"] = round(time.time() - t0)
    return data


# ---------------------------------------------------------------------------------------------
# Summaries (pure)
# ---------------------------------------------------------------------------------------------

def diffs(by, point, a, b, key="machine_us_per_req"):
    """Per round: b's key minus a's, in round order."""
    return ys.paired(by, point, b, a, lambda x, y: x[key] - y[key])


def ratio_per_round(by, point, a, b, key):
    """Per round: a's key over b's."""
    return ys.paired(by, point, a, b, lambda x, y: x[key] / y[key] if y[key] else None)


def within_noise(s):
    """A per-round difference is inside the noise when it changes sign from round to round."""
    return s is not None and s["min"] <= 0 <= s["max"]


def target_summary(by, point, t):
    runs = by.get((point, t), {})
    rs = [runs[r] for r in sorted(runs)]
    return {"rps": median_spread([r["rps"] for r in rs]),
            "machine_us": median_spread([r["machine_us_per_req"] for r in rs]),
            "proxy_us": median_spread([r["proxy_us_per_req"] for r in rs]),
            "rest_cpus": median_spread([rest_cpus(r) for r in rs]),
            "hop_us": None if t == ys.DIRECT else ys.summarize(ys.hop_costs(by, point, t)),
            "p99_ms": median_spread([r["latency_ms"]["p99"] for r in rs]),
            "errors": sum(r["errors"] for r in rs), "runs": len(rs)}


def rest_cpus(run):
    """Busy CPUs outside the proxy, the clients and the backends during a run (other people's
    work on a shared machine, softirq, kworkers)."""
    return run["rest_us_per_req"] * run["requests_in_window"] / 1e6 / run["duration_s"]


def summarize_listeners(part):
    by = ys.index(part["runs"])
    out = {}
    for point in part["points"]:
        s = {t: target_summary(by, point, t) for t in (ys.DIRECT, ONE, THREE) if (point, t) in by}
        a_vals = s[ONE]["machine_us"] if ONE in s else None
        d = ys.summarize(diffs(by, point, ONE, THREE))
        out[point] = {"targets": s, "b_minus_a_us": d,
                      "b_minus_a_pct": ys.summarize(ys.paired(
                          by, point, THREE, ONE,
                          lambda x, y: (x["machine_us_per_req"] - y["machine_us_per_req"]) / y["machine_us_per_req"]
                          * 100)),
                      "a_spread_us": None if a_vals is None else a_vals["max"] - a_vals["min"],
                      "within_noise": within_noise(d)}
    return out


def summarize_sni(part):
    by = ys.index(part["runs"])
    out = {}
    for point in part["points"]:
        s = {t: target_summary(by, point, t) for t in (ys.DIRECT, *SNI_TARGETS) if (point, t) in by}
        out[point] = {"targets": s,
                      "rps_lb_over_haproxy": ys.summarize(ratio_per_round(by, point, "lb", "haproxy", "rps")),
                      "hop_lb_over_haproxy": ys.hop_ratio(by, point, "lb"),
                      "hop_lb_minus_haproxy_us": ys.summarize(diffs(by, point, "haproxy", "lb"))}
    return out


def summarize_proxy(part):
    by = ys.index(part["runs"])
    out = {}
    for point in part["points"]:
        s = {t: target_summary(by, point, t) for t in (ys.DIRECT, *PROXY_VARIANTS) if (point, t) in by}
        for v in PROXY_VARIANTS:
            if v != PLAIN and v in s:
                s[v]["vs_plain_us"] = ys.summarize(diffs(by, point, PLAIN, v))
        out[point] = {"targets": s}
    return out


# ---------------------------------------------------------------------------------------------
# render(JSON) -> md
# ---------------------------------------------------------------------------------------------

def fmt(s, digits=2, unit="", sign=False):
    """'median (min-max)' of a summary, '-' for none."""
    if not s:
        return "-"
    f = f"{{:{'+' if sign else ''},.{digits}f}}"
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])} to {f.format(s['max'])})"


def fmt_x(s):
    return "-" if not s else f"{s['median']:.2f}x ({s['min']:.2f} to {s['max']:.2f})"


def noisy_runs(runs, limit=NOISY_CPUS):
    return sum(1 for r in runs if rest_cpus(r) > limit)


def config_block(servers):
    L = []
    for name, rec in servers.items():
        if isinstance(rec, str):
            L += [f"{name}: `{rec}`", ""]
            continue
        L.append(f"**{name}**" + (f": `{rec['command']}`" if rec.get("command") else "") + "\n")
        L += ["```", rec["config"].rstrip(), "```", ""]
    return L


def commands_line(part, point, labels):
    seen, L = set(), []
    for r in part["runs"]:
        if r["point"] == point and r["target"] not in seen:
            seen.add(r["target"])
            L.append(f"- {labels.get(r['target'], r['target'])}: " + " and ".join(command_groups(r["commands"])))
    return L


def command_groups(commands):
    """`N x` before a command run N times at once, in first-seen order."""
    counts = {}
    for c in commands:
        counts[c] = counts.get(c, 0) + 1
    return [f"{n} x `{c}`" if n > 1 else f"`{c}`" for c, n in counts.items()]


def noise_note(runs):
    """How often other work got in the way: runs repeated, and runs kept although still noisy."""
    again = sum(len(r.get("noisy_attempts", [])) for r in runs)
    n = noisy_runs(runs)
    rest = median_spread([rest_cpus(r) for r in runs])
    text = (f"Busy CPUs outside the proxy, the clients and nginx during the runs kept: {fmt(rest)} (softirq and "
            f"kworkers, and other people's work on this shared machine). {again} runs were repeated because more "
            f"than {NOISY_CPUS:g} CPUs were busy outside them (at most {RETRIES} times each, and at most "
            f"{RETRY_SHARE:.0%} of the runs in all); {n} of the "
            f"{len(runs)} runs kept were still over that.")
    if n > len(runs) / 4:
        text = "**Noisy.** " + text
    return [text, ""]


def report_listeners(part, cfg):
    summ = summarize_listeners(part)
    L = ["## 1. One listener against three", "",
         "lb (one core) with one listener feeding one service (A), against three listeners feeding three "
         "services, each service with the same three backends (B). Three loadgen processes in both cases, each at "
         "a third of the rate; in A all three target the one listener, in B each its own; direct: each its own "
         "nginx port. Whole-machine busy CPU per request over the three clients' common measured window "
         f"(requests = their summed rate x the window). {cfg['rounds']} rounds, targets interleaved.", ""]
    L += noise_note(part["runs"])
    for point, row in summ.items():
        t = row["targets"]
        L += [f"### {part['points'][point]['label']}", "",
              "| | req/s | machine CPU per request | hop (minus direct) | lb process | p99 ms | errors |",
              "|---|---|---|---|---|---|---|"]
        for k, v in t.items():
            L.append(f"| {LABELS[k]} | {fmt(v['rps'], 0)} | {fmt(v['machine_us'], unit=' us')} | "
                     f"{fmt(v['hop_us'], unit=' us')} | {'-' if k == ys.DIRECT else fmt(v['proxy_us'], unit=' us')} | "
                     f"{v['p99_ms']['median']:.2f} | {v['errors']} |")
        d = row["b_minus_a_us"]
        if d:
            verdict = ("**no measurable cost**: the difference changes sign from round to round"
                       if row["within_noise"] else
                       f"**a measurable difference**: B - A has the same sign in every round")
            L += ["", f"B - A per round: **{fmt(d, sign=True, unit=' us')}** per request "
                      f"({fmt(row['b_minus_a_pct'], 1, '%', sign=True)}); the noise, A's own spread over the rounds: "
                      f"{row['a_spread_us']:.2f} us ({t[ONE]['machine_us']['min']:.2f} to "
                      f"{t[ONE]['machine_us']['max']:.2f}). Verdict: {verdict}.", ""]
        L += ["Commands:", *commands_line(part, point, LABELS), ""]
    L += ["Configurations (ports named):", ""] + config_block(part["servers"])
    return L


def report_sni(part, cfg):
    summ = summarize_sni(part)
    L = ["## 2. New TLS connections routed by SNI: lb against HAProxy", "",
         "lb (`--cores 1`, a listener with `[[listeners.routes]]`) and HAProxy (`nbthread 1`, `req.ssl_sni`) route "
         f"each new TLS connection by its server name ({' and '.join(SNI_NAMES)}, in turn) to one of two pools of "
         "two nginx TLS ports (one nginx, one worker, TLS 1.3, ECDSA P-256, no session cache or tickets, `return "
         "200`); direct: the client straight to one nginx TLS port. Neither proxy terminates TLS. Client: "
         "bench/tls_load.py, Python `ssl` in several processes, a full handshake per connection, `GET /` with "
         "`Connection: close`, read to the close (`openssl s_time` cannot send a server name). Per connection: "
         "whole-machine busy CPU over the client's measured window / connections completed.", ""]
    L += noise_note(part["runs"])
    for point, row in summ.items():
        t = row["targets"]
        sat = part["points"][point]["rate"] is None
        L += [f"### {part['points'][point]['label']}", "",
              "| | new connections/s | machine CPU per connection | hop (minus direct) | proxy process | p99 ms | "
              "errors |", "|---|---|---|---|---|---|---|"]
        for k, v in t.items():
            L.append(f"| {LABELS[k]} | {fmt(v['rps'], 0)} | {fmt(v['machine_us'], 1, ' us')} | "
                     f"{fmt(v['hop_us'], 1, ' us')} | {'-' if k == ys.DIRECT else fmt(v['proxy_us'], 1, ' us')} | "
                     f"{v['p99_ms']['median']:.2f} | {v['errors']} |")
        L.append("")
        if sat:
            r = row["rps_lb_over_haproxy"]
            L.append(f"lb / HAProxy, connections per second, per round: **{fmt_x(r)}**. Target lb >= HAProxy: "
                     f"{verdict_ge(r, 1.0)}.")
            cpus = cpu_use(part["runs"], point)
            if cpus:
                L += ["", "Who is the limit: " + "; ".join(
                    f"{LABELS[k]}: client + nginx {c['client_backend']:.2f} CPUs, proxy {c['proxy']:.2f}"
                    for k, c in cpus.items()) + " (medians; CPU 1 holds the client and nginx, CPU 0 the proxy). "
                    "When client + nginx are near 1 CPU, the rate is the client's and nginx's limit on their one "
                    "CPU, not the proxy's: the proxy's own limit is far higher (see its CPU per connection)."]
        else:
            r = row["hop_lb_over_haproxy"]
            dd = row["hop_lb_minus_haproxy_us"]
            L.append(f"lb's hop over HAProxy's, per round: **{fmt_x(r)}**; lb - HAProxy: "
                     f"{fmt(dd, 1, ' us', sign=True)} per connection. Target lb at least equal (hop <= HAProxy's): "
                     f"{verdict_le(r, 1.0)}.")
        L += ["", "Commands:", *commands_line(part, point, LABELS), ""]
    L += ["Configurations (ports named):", ""] + config_block(part["servers"])
    return L


def cpu_use(runs, point):
    """Per target at `point`: median CPUs used by the client and nginx together, and by the proxy."""
    out = {}
    for t in (ys.DIRECT, *SNI_TARGETS):
        rs = [r for r in runs if r["point"] == point and r["target"] == t]
        if rs:
            out[t] = {"client_backend": median_spread([(r["client_cpu_s"] + r["backend_cpu_s"]) / r["duration_s"]
                                                       for r in rs])["median"],
                      "proxy": median_spread([r["proxy_cpu_s"] / r["duration_s"] for r in rs])["median"]}
    return out


def verdict_ge(s, limit):
    if not s:
        return "undefined"
    if s["median"] >= limit:
        return "**met**"
    return "**not met**" + (" (but the per-round ratio crosses 1: within the noise)" if s["max"] >= limit else "")


def verdict_le(s, limit):
    if not s:
        return "undefined (a round measured a hop of zero or less: noise)"
    if s["median"] <= limit:
        return "**met**"
    return "**not met**" + (" (but the per-round ratio crosses 1: within the noise)" if s["min"] <= limit else "")


def report_proxy(part, cfg):
    summ = summarize_proxy(part)
    L = ["## 3. What PROXY v2 in and out adds per new connection", "",
         "lb (one core) plain; with `send_proxy = \"v2\"` to nginx `listen ... proxy_protocol` (out); with "
         "`accept_proxy = \"v2\"` (`trusted_proxies = [\"127.0.0.0/8\"]`) fed by `loadgen --proxy-v2`, which "
         "writes the 28-byte header in the same write as its request (in); and both. Same nginx process for all, "
         "`return 200` on three plain and three `proxy_protocol` ports. Every request a new connection. "
         "The cost of a variant = its whole-machine CPU per connection minus plain's in the same round, so it "
         "includes everything the header costs anyone: loadgen writing 28 more bytes (in), nginx parsing it "
         "(out).", ""]
    L += noise_note(part["runs"])
    for point, row in summ.items():
        t = row["targets"]
        L += [f"### {part['points'][point]['label']}", "",
              "| | connections/s | machine CPU per connection | minus plain, per round | hop (minus direct) | "
              "lb process | errors |", "|---|---|---|---|---|---|---|"]
        for k, v in t.items():
            L.append(f"| {LABELS[k]} | {fmt(v['rps'], 0)} | {fmt(v['machine_us'], 1, ' us')} | "
                     f"{fmt(v.get('vs_plain_us'), 1, ' us', sign=True)} | {fmt(v['hop_us'], 1, ' us')} | "
                     f"{'-' if k == ys.DIRECT else fmt(v['proxy_us'], 1, ' us')} | {v['errors']} |")
        L.append("")
        notes = []
        for v in PROXY_VARIANTS:
            if v in t and "vs_plain_us" in t[v]:
                s = t[v]["vs_plain_us"]
                notes.append(f"{LABELS[v]}: {fmt(s, 1, ' us', sign=True)}"
                             + (" (inside the noise: changes sign between rounds)" if within_noise(s) else ""))
        if notes:
            L += ["Added per new connection over plain, per round: " + "; ".join(notes) + ".", ""]
        L += ["Commands:", *commands_line(part, point, LABELS), ""]
    L += ["Configurations (ports named):", ""] + config_block(part["servers"])
    return L


def report(data):
    env, cfg = data["env"], data["config"]
    L = ["# Services, SNI and PROXY protocol (issue 11)", "",
         f"Taken {env['date_utc']} on {env['host']}: {env['cpus']} x {env['cpu_model']}, {env['mem_gib']} GiB, "
         f"Linux {env['kernel']}; {env['haproxy']}; {env['nginx']}; {env['rustc']}; lb commit {env['git_commit']}. "
         f"Busy CPU with nothing of this benchmark running: {env.get('background_busy_cpus_before', '?')} CPUs "
         f"before, {env.get('background_busy_cpus_after', '?')} after (load average "
         f"{' '.join(env.get('loadavg_before', ['?']))} before, {' '.join(env.get('loadavg_after', ['?']))} after: "
         "the machine is shared).", "",
         f"{cfg['pinning']}. {cfg['rounds']} rounds; in each, every target of a point in a mirrored, rotating "
         f"order (A B C, C B A, B C A, ...); each run {cfg['warmup_s']:g} s of warm-up, then {cfg['duration_s']:g} s "
         f"measured. Medians with (min to max) over the rounds; differences and ratios are taken per round. "
         f"Elapsed {data.get('elapsed_s', '?')} s.", "",
         f"Command: `{cfg['command']}` (re-render: `python3 bench/exp_services.py --render-only --out DIR`).", "",
         "The yardstick (bench/yardstick.py): whole-machine busy CPU (/proc/stat, all CPUs, CPUs x wall - idle) "
         "over the clients' measured window, divided by the requests (or connections) in it; the hop = through "
         "the proxy minus direct in the same round. The proxy's own process CPU is a secondary column.", ""]
    for part, fn in (("listeners", report_listeners), ("sni", report_sni), ("proxy", report_proxy)):
        if part in data:
            L += fn(data[part], cfg)
    L.append("Every run (CPU, requests, latency, commands), in the order run: `services.json` beside this file.")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--duration", type=float, default=5, help="measured seconds per run (default 5)")
    ap.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each run (default 1)")
    ap.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable; default all)")
    ap.add_argument("--listener-points", default=",".join(LISTENER_POINTS),
                    help=f"part 1's points, of {', '.join(LISTENER_POINTS)}")
    ap.add_argument("--sni-points", default=",".join(SNI_POINTS), help=f"part 2's points, of {', '.join(SNI_POINTS)}")
    ap.add_argument("--proxy-points", default=",".join(PROXY_POINTS),
                    help=f"part 3's points, of {', '.join(PROXY_POINTS)}")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release --bins")
    ap.add_argument("--out", help="output folder (default: a fresh bench-results/runs/services-<time>/; "
                                  "bench-results/services replaces the committed results)")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: services.md again from OUT/services.json (OUT default "
                         "bench-results/services)")
    a = ap.parse_args(argv)
    a.parts = [p for p in PARTS if p in (a.only or PARTS)]
    for name, table in (("listener_points", LISTENER_POINTS), ("sni_points", SNI_POINTS),
                        ("proxy_points", PROXY_POINTS)):
        pts = [p for p in getattr(a, name).split(",") if p]
        for p in pts:
            if p not in table:
                ap.error(f"unknown point {p!r} for --{name.replace('_', '-')}: choose from {', '.join(table)}")
        setattr(a, name, pts)
    if a.rounds < 1 or a.duration <= 0:
        ap.error("--rounds must be at least 1 and --duration positive")
    return a


def main():
    a = parse_args()
    if a.render_only:
        out = Path(a.out) if a.out else RESULTS / "services"
        data = json.loads((out / "services.json").read_text())
        md = report(data)
        (out / "services.md").write_text(md)
        log(f"wrote {out / 'services.md'}")
        return
    ensure_packages({"nginx-light": "nginx", "haproxy": "haproxy", "openssl": "openssl"})
    if not a.no_build:
        build_release()
    out = run_dir("services", a.out)
    data = measure_all(a)
    md = report(data)
    write_results(out, "services", data, md)
    print(md)


if __name__ == "__main__":
    main()
