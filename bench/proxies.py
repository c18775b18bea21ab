#!/usr/bin/env python3
"""lb against HAProxy (mode tcp), nginx stream and the seed projects' Flask proxy, side by side.

The headline is the hop cost (bench/yardstick.py): whole-machine busy CPU per request (/proc/stat,
all CPUs, over loadgen's measured window) through a proxy, minus the same load sent direct to the
backends in the same round. Per-process CPU of the proxy is a secondary column only: on loopback
the kernel charges the receiver's TCP work to the sender and moves work to softirq and kworker
threads, so a proxy's own CPU time can mislead.

Setup: one thread or worker per proxy, pinned to CPU 0; loadgen (1 core) and the backends (one
nginx, one worker, `return 200` on three ports, the same for every proxy and for direct) pinned to
CPU 1. Load points: 5,000 and 20,000 req/s open loop at 64 connections, 5,000 req/s at 512, and
saturation (closed loop) at 64 and 512. Every round runs every point for direct, lb, HAProxy and
nginx stream, in an order that mirrors and rotates from round to round (yardstick.round_order);
medians over rounds with (min-max). The Flask proxy (bench/flask_proxy.py, Flask's own server)
runs at saturation with 64 connections only, in short runs.

Also measured: memory of 5,000 idle proxied connections (RSS growth), and the full stack on both
CPUs unpinned (loadgen -> lb --cores 2 -> 3 backend vs wrk -t2 -> HAProxy nbthread 2 -> 3 nginx).

Writes proxies.json (every run), proxies.md and SVG charts to --out DIR, by default a fresh
bench-results/runs/proxies-<time>/; the committed results are written only when asked with
--out bench-results/proxies.
Usage: bench/proxies.py [--rounds 7] [--duration 6] [--out DIR]
       bench/proxies.py --render-only [--out DIR]   (re-render proxies.md and the charts from
                                                     DIR/proxies.json; DIR: bench-results/proxies)
"""

import argparse
import json
import resource
import socket as so
import sys
import time
from pathlib import Path

import yardstick as ys
from lbbench import (RESULTS, Server, backend_proc, build_release, ensure_packages, environment, free_port,
                     haproxy_proc, lb_proc, loadgen_json, log, median_spread, nginx_http, nginx_stream_proc,
                     parse_wrk, run_dir, timed_client)
from svgchart import bar_chart_err, hbar_chart

HERE = Path(__file__).resolve().parent
BASELINE_DIR = None  # --baseline
SCHEMA = 2  # 1: per-process CPU only (before the hop-cost yardstick); 2: runs with whole-machine CPU
PROXIES = ["lb", "haproxy", "nginx"]
EXTRA_PROXIES = ["lb-readiness", "lb-multishot", "lb-coop", "lb-coop-multishot", "lb-multishot-eventfd",
                 "lb-baseline"]
# lb-baseline: the lb binary in --baseline DIR (another commit's build), to A/B a change in the
# same interleaved rounds.
BASELINE = "lb-baseline"
# lb variants: relay.mode and environment. LB_URING_TASKRUN=coop is the ring setup before
# DEFER_TASKRUN (issue 13's lever 1; common/src/runtime.rs), to compare each lever alone and both
# together; LB_RECV_RING_BRIDGE=eventfd wakes monoio through an eventfd instead of a poll on the
# multishot ring (common/src/uring.rs).
COOP = {"LB_URING_TASKRUN": "coop"}
LB_VARIANTS = {"lb": (None, None), "lb-readiness": ("readiness", None), "lb-multishot": ("multishot", None),
               "lb-coop": (None, COOP), "lb-coop-multishot": ("multishot", COOP),
               "lb-multishot-eventfd": ("multishot", {"LB_RECV_RING_BRIDGE": "eventfd"})}
FLASK = "flask"
FLASK_POINT = "sat-64"
PROXY_CPU, CLIENT_CPU = 0, 1
POOL = 16  # pre-connected connections per backend for the "lb+pool" variant
FULL_STACK_CONNS = 256
# The issue 13 targets (lb / HAProxy, same run): hop cost at these points...
HOP_TARGETS = {"rate-20k-64": 0.7, "sat-64": 0.7, "sat-512": 0.7}
P99_TARGET = ("rate-5k-64", 1.0)  # ...p99 added over direct at this point...
MEMORY_TARGET_KIB = 2.0  # ...memory per idle proxied connection...
FULL_STACK_TARGET = 1.4  # ...and the full stack.
FLASK_GOAL = 1.4  # the seed projects' goal: 40% more throughput than their Flask proxy
NOISY_CPUS = 0.1  # busy CPU outside the proxy, loadgen and nginx above which a run is flagged

LABELS = {"direct": "direct", "lb": "lb", "haproxy": "HAProxy", "nginx": "nginx stream",
          "lb-readiness": "lb (readiness relay)", "lb-multishot": "lb (multishot relay)",
          "lb-coop": "lb (COOP_TASKRUN ring)", "lb-coop-multishot": "lb (COOP ring, multishot relay)",
          "lb-multishot-eventfd": "lb (multishot relay, eventfd bridge)", "lb+pool": "lb + pool", FLASK: "Flask proxy",
          BASELINE: "lb (baseline build)"}
COLORS = {"direct": "#bcbd22", "lb": "#1f77b4", "haproxy": "#7f7f7f", "nginx": "#2ca02c",
          "lb-readiness": "#aec7e8", "lb-multishot": "#ff7f0e", "lb-coop": "#9467bd",
          "lb-coop-multishot": "#e377c2", "lb-multishot-eventfd": "#8c564b", "lb+pool": "#17becf", FLASK: "#d62728",
          BASELINE: "#98df8a"}


def start_proxy(name, port, backends, cpu, threads=1):
    if name == BASELINE:
        return lb_proc(port, backends, cpu, cores=threads, binary=BASELINE_DIR / "lb")
    if name in LB_VARIANTS:
        mode, env = LB_VARIANTS[name]
        return lb_proc(port, backends, cpu, cores=threads, relay_mode=mode, env=env)
    if name == "lb+pool":
        return lb_proc(port, backends, cpu, cores=threads, pool=POOL)
    if name == "haproxy":
        return haproxy_proc(port, backends, cpu, threads=threads)
    if name == FLASK:
        argv = [sys.executable, str(HERE / "flask_proxy.py"), "--port", str(port)]
        for b in backends:
            argv += ["--backend", f"127.0.0.1:{b}"]
        return Server("flask", argv, port, cpu=cpu)
    return nginx_stream_proc(port, backends, cpu)


# ---------------------------------------------------------------------------------------------
# measure() -> JSON
# ---------------------------------------------------------------------------------------------

def labels_at(point, proxies, flask):
    return [ys.DIRECT, *proxies] + ([FLASK] if flask and point == FLASK_POINT else [])


def server_record(srv, ports):
    """A server's command line and config file (if it has one), its ports named, for the JSON."""
    def named(text):
        for name, port in ports.items():
            text = text.replace(str(port), f"{{{name}}}")
        return text
    args = [str(x) for x in srv.proc.args]
    rec = {"command": named(" ".join(args))}
    for flag in ("-f", "-c", "--config"):
        if flag in args[:-1]:
            path = Path(args[args.index(flag) + 1])
            if path.is_file():
                rec["config"] = named(path.read_text())
    return rec


def run_yardstick(a, backend_ports, backend, configs):
    proxies = a.proxies + ([FLASK] if a.flask else [])
    servers, ports = {}, {ys.DIRECT: backend_ports[0]}
    names = {f"BACKEND{i}": p for i, p in enumerate(backend_ports)}
    configs["nginx backends"] = server_record(backend, names)
    runs = []
    try:
        for p in proxies:
            ports[p] = free_port()
            servers[p] = start_proxy(p, ports[p], backend_ports, PROXY_CPU)
            configs[p] = server_record(servers[p], {"PORT": ports[p], **names})
        time.sleep(0.5)
        for r in range(a.rounds):
            log(f"round {r + 1} of {a.rounds}")
            for point in a.points:
                for t in ys.round_order(labels_at(point, a.proxies, a.flask), r):
                    roles = {"backends": [backend.pid]}
                    if t != ys.DIRECT:
                        roles["proxy"] = [servers[t].pid]
                    duration = min(a.duration, a.flask_duration) if t == FLASK else a.duration
                    run = ys.measure_run(f"http://127.0.0.1:{ports[t]}/", point, t, r, roles, duration, a.warmup,
                                         CLIENT_CPU)
                    run["command"] = run["command"].replace(str(ports[t]), "PORT")
                    log("  " + ys.describe(run))
                    runs.append(run)
    finally:
        for s in servers.values():
            s.stop()
    return runs


def idle_memory(n, backend_port, proxies):
    """Opens n connections through each proxy, one request each, holds them, and reports RSS growth."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    res = {}
    for p in proxies:
        port = free_port()
        with start_proxy(p, port, [backend_port], PROXY_CPU) as proc:
            time.sleep(0.3)
            before = proc.rss()
            socks = []
            try:
                for _ in range(n):
                    s = so.create_connection(("127.0.0.1", port), timeout=10)
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    socks.append(s)
                for s in socks:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = s.recv(4096)
                        if not chunk:
                            raise RuntimeError(f"{p} closed an idle connection")
                        data += chunk
                time.sleep(1.0)
                after = proc.rss()
            finally:
                for s in socks:
                    s.close()
            res[p] = {"connections": n, "rss_before": before, "rss_after": after,
                      "bytes_per_conn": (after - before) / n}
            log(f"  memory {p:12} {res[p]['bytes_per_conn'] / 1024:.2f} KiB per idle connection")
    return res


def full_stack(rounds, duration, conns):
    """Both cores, unpinned. Ours: loadgen --cores 2 -> lb --cores 2 -> 3 backends.
    Theirs: wrk -t2 -> haproxy nbthread 2 -> 3 nginx (one worker each)."""
    res = {"ours": [], "theirs": []}
    ours_b = [free_port() for _ in range(3)]
    theirs_b = [free_port() for _ in range(3)]
    lb_port, ha_port = free_port(), free_port()
    servers, cmds = [], {}
    try:
        servers += [backend_proc(p, None, f"s{i}") for i, p in enumerate(ours_b)]
        servers += [nginx_http(p, None, f"n{i}") for i, p in enumerate(theirs_b)]
        servers.append(lb_proc(lb_port, ours_b, None, cores=2))
        servers.append(haproxy_proc(ha_port, theirs_b, None, threads=2))
        for r in range(rounds):
            for side in ys.round_order(["ours", "theirs"], r):
                if side == "ours":
                    res_ = loadgen_json(f"http://127.0.0.1:{lb_port}/",
                                        ["--cores", "2", "--conns", str(conns), "--duration", f"{duration:g}s"])
                    row = {"rps": res_["rps"], "errors": res_["errors"], "p99_ms": res_["latency_ms"]["p99"]}
                    cmds["ours"] = res_["command"].replace(str(lb_port), "PORT")
                else:
                    argv = ["wrk", "-t2", f"-c{conns}", f"-d{duration:g}s", "--latency", f"http://127.0.0.1:{ha_port}/"]
                    out, err, code, _ = timed_client(argv, None, timeout=duration + 60)
                    w = parse_wrk(out)
                    row = {"rps": w["rps"], "errors": w["errors"], "p99_ms": w["latency_ms"].get("p99")}
                    cmds["theirs"] = " ".join(argv).replace(str(ha_port), "PORT")
                row["round"] = r
                log(f"  full-stack {side:6} {row['rps']:>9.0f} req/s errors {row['errors']}")
                res[side].append(row)
    finally:
        for s in servers:
            s.stop()
    return res, cmds


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return ["?"] * 3


def measure(a):
    """Runs everything asked for; returns the JSON document that render() turns into md and svg."""
    t0 = time.time()
    config = {"rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup, "points": a.points,
              "proxies": a.proxies, "flask": a.flask, "flask_point": FLASK_POINT,
              "flask_duration_s": min(a.duration, a.flask_duration), "idle": a.idle,
              "fullstack_conns": FULL_STACK_CONNS, "parts": sorted(a.parts),
              "command": "python3 bench/proxies.py" + "".join(f" {x}" for x in sys.argv[1:]),
              "pinning": f"proxies on CPU {PROXY_CPU}; loadgen and the nginx backends on CPU {CLIENT_CPU} "
                         "(full stack: unpinned)",
              "backends": "one nginx (1 worker, no master), `return 200` on 3 ports, one server block each"}
    bg = ys.background_busy()
    log(f"machine busy with nothing of this benchmark running: {bg:.2f} CPUs (load average {' '.join(loadavg())})")
    data = {"schema": SCHEMA, "env": environment({"background_busy_cpus_before": round(bg, 3),
                                                  "loadavg_before": loadavg()}),
            "config": config}
    bports = [free_port() for _ in range(3)]
    backend = None
    try:
        if {"yardstick", "memory"} & a.parts:
            backend = ys.nginx_backends(bports, CLIENT_CPU)
        if "yardstick" in a.parts:
            log("part 1: hop cost at fixed rates and at saturation")
            configs = {}
            data["yardstick"] = {"runs": run_yardstick(a, bports, backend, configs), "servers": configs}
        if "memory" in a.parts:
            log("part 2: idle connection memory")
            data["memory"] = idle_memory(a.idle, bports[0], a.proxies + [p for p in EXTRA_PROXIES
                                                                          if p not in a.proxies and p != BASELINE])
    finally:
        if backend:
            backend.stop()
    if "fullstack" in a.parts:
        log("part 3: full stack, both cores, unpinned")
        data["fullstack"], data["fullstack_commands"] = full_stack(a.rounds, a.duration, FULL_STACK_CONNS)
    data["env"]["background_busy_cpus_after"] = round(ys.background_busy(), 3)
    data["env"]["loadavg_after"] = loadavg()
    data["elapsed_s"] = round(time.time() - t0)
    return data


# ---------------------------------------------------------------------------------------------
# render(JSON) -> md + svg
# ---------------------------------------------------------------------------------------------

def fmt(s, digits=2, unit="", sign=False):
    """'median (min-max)' of a summary, '-' for none."""
    if s is None:
        return "-"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}-{f.format(s['max'])})"


def fmt_x(s):
    return "-" if s is None else f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "**not met**")


def summaries(data):
    """Everything the report and the charts show, from the raw runs: {point: {target: {...}}}."""
    y = data.get("yardstick")
    if not y:
        return {}
    by = ys.index(y["runs"])
    out = {}
    for point in data["config"]["points"]:
        row = {}
        for (pt, target), rounds in by.items():
            if pt != point:
                continue
            runs = [rounds[r] for r in sorted(rounds)]
            row[target] = {
                "rps": median_spread([r["rps"] for r in runs]),
                "machine_us_per_req": median_spread([r["machine_us_per_req"] for r in runs]),
                "proxy_us_per_req": median_spread([r["proxy_us_per_req"] for r in runs]),
                "rest_cpus": median_spread([rest_cpus(r) for r in runs]),
                "p50_ms": median_spread([r["latency_ms"]["p50"] for r in runs]),
                "p99_ms": median_spread([r["latency_ms"]["p99"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                "hop_us": None if target == ys.DIRECT else ys.summarize(ys.hop_costs(by, point, target)),
                "p99_added_ms": None if target == ys.DIRECT else ys.summarize(ys.p99_added(by, point, target)),
                "hop_vs_haproxy": (ys.hop_ratio(by, point, target) if target not in (ys.DIRECT, "haproxy")
                                   else None),
                "p99_vs_haproxy": (ys.p99_ratio(by, point, target) if target not in (ys.DIRECT, "haproxy")
                                   else None),
                "hop_vs_baseline": (ys.hop_ratio(by, point, target, reference=BASELINE)
                                    if target == "lb" and (point, BASELINE) in by else None),
            }
        out[point] = row
    return out


def rest_cpus(run):
    """Busy CPUs outside the proxy, loadgen and the backends during a run."""
    return run["rest_us_per_req"] * run["requests"] / 1e6 / run["duration_s"]


def flask_throughput_ratio(data):
    """lb's req/s over the Flask proxy's at FLASK_POINT, per round."""
    by = ys.index(data["yardstick"]["runs"])
    return ys.summarize(ys.paired(by, FLASK_POINT, "lb", FLASK, lambda a, b: a["rps"] / b["rps"] if b["rps"] else None))


def targets(data, summ):
    """(target, measured, met: bool or None) for the issue 13 targets this run can judge."""
    rows = []
    for point, limit in HOP_TARGETS.items():
        if "lb" not in summ.get(point, {}) or "haproxy" not in summ[point]:
            continue
        s = summ[point]["lb"]["hop_vs_haproxy"]
        name = f"hop cost, {ys.POINTS[point]['label']}: lb / HAProxy <= {limit}x"
        if s is None:
            rows.append((name, "undefined (a round measured a hop of zero or less: noise)", None))
        else:
            rows.append((name, fmt_x(s), s["median"] <= limit))
    point, limit = P99_TARGET
    s = summ.get(point, {}).get("lb", {}).get("p99_vs_haproxy")
    if s is not None:
        rows.append((f"p99 added over direct, {ys.POINTS[point]['label']}: lb / HAProxy <= {limit}x", fmt_x(s),
                     s["median"] <= limit))
    elif summ.get(point, {}).get("lb"):
        rows.append((f"p99 added over direct, {ys.POINTS[point]['label']}: lb / HAProxy <= {limit}x",
                     "undefined (HAProxy added nothing in a round)", None))
    if "memory" in data and "lb" in data["memory"]:
        kib = data["memory"]["lb"]["bytes_per_conn"] / 1024
        rows.append((f"memory per idle proxied connection <= {MEMORY_TARGET_KIB:g} KiB", f"{kib:.2f} KiB",
                     kib <= MEMORY_TARGET_KIB))
    fs = full_stack_ratio(data)
    if fs is not None:
        rows.append((f"full stack, loadgen -> lb -> backend vs wrk -> HAProxy -> nginx >= {FULL_STACK_TARGET}x",
                     fmt_x(fs), fs["median"] >= FULL_STACK_TARGET))
    if data.get("yardstick") and any(r["target"] == FLASK for r in data["yardstick"]["runs"]):
        s = flask_throughput_ratio(data)
        if s is not None:
            rows.append((f"throughput, lb / the Flask proxy >= {FLASK_GOAL}x (the seed's \"40% more\")", fmt_x(s),
                         s["median"] >= FLASK_GOAL))
    return rows


def full_stack_ratio(data):
    fs = data.get("fullstack")
    if not fs or not fs["ours"] or not fs["theirs"]:
        return None
    if all("round" in r for r in fs["ours"] + fs["theirs"]):
        o, t = {r["round"]: r["rps"] for r in fs["ours"]}, {r["round"]: r["rps"] for r in fs["theirs"]}
        return ys.summarize([o[r] / t[r] for r in sorted(o) if r in t and t[r] > 0])
    return ys.summarize([x / y for x, y in zip([r["rps"] for r in fs["ours"]], [r["rps"] for r in fs["theirs"]])])


def order_note(data):
    """The order of the first rounds at the first point, as run (so a reader sees the interleaving)."""
    runs = data["yardstick"]["runs"]
    first = runs[0]["point"]
    per = {}
    for r in runs:
        if r["point"] == first:
            per.setdefault(r["round"], []).append(LABELS.get(r["target"], r["target"]))
    return "; ".join(f"round {k + 1}: {', '.join(v)}" for k, v in sorted(per.items())[:3])


def report(data):
    env, cfg = data["env"], data["config"]
    summ = summaries(data)
    proxies = [p for p in cfg["proxies"]]
    L = [f"# lb vs HAProxy vs nginx stream, and the Flask proxy: the hop cost\n",
         f"Taken {env['date_utc']} on {env['host']}: {env['cpus']} x {env['cpu_model']}, {env['mem_gib']} GiB, "
         f"Linux {env['kernel']}; {env['haproxy']}; {env['nginx']}; {env['rustc']}; lb commit {env['git_commit']}. "
         f"Machine busy with nothing of this benchmark running: {env.get('background_busy_cpus_before', '?')} CPUs "
         f"before, {env.get('background_busy_cpus_after', '?')} after (load average "
         f"{' '.join(env.get('loadavg_before', ['?']))} before).",
         f"{cfg['pinning']}. Backends: {cfg['backends']}. {cfg['rounds']} interleaved rounds; each run "
         f"{cfg['warmup_s']:g} s of warm-up, then {cfg['duration_s']:g} s measured (the Flask proxy: "
         f"{cfg['flask_duration_s']:g} s). Medians with (min-max) over the rounds. "
         f"Elapsed {data.get('elapsed_s', '?')} s. Command: `{cfg['command']}`; "
         f"`python3 bench/proxies.py --render-only --out DIR` re-renders this file and the charts from "
         f"DIR/proxies.json.\n",
         "**Hop cost** = whole-machine busy CPU (/proc/stat, all CPUs: user + nice + system + irq + softirq + "
         "steal) over loadgen's measured window, divided by the requests completed in it, through the proxy, "
         "minus the same for the same load sent direct (loadgen -> nginx) in the same round. Ratios (lb / "
         "HAProxy) are per round, then the median and (min-max) of those; lower is better. *Process* = the "
         "proxy's own utime + stime per request (secondary: loopback receive work is charged to the sender "
         "and some work runs in softirq and kworker threads). Busy is taken as CPUs x wall time - (idle + "
         "iowait): the kernel times idle exactly, while its busy fields are sampled one 4 ms tick at a time "
         "(see bench/yardstick.py); the tick-sampled figure is kept in the JSON as `machine_tick_cpu_s`. "
         "*Rest* = machine busy minus proxy, loadgen and "
         "backend process time, in CPUs: softirq and kernel threads, and anything else running on the machine.\n"]
    if summ:
        L.append("![hop cost](headline.svg)\n")
        L.append("## 1. Hop cost: whole-machine CPU per request, minus direct (us)\n")
        head = ["load", "direct (machine us/req)"] + [LABELS[p] for p in proxies] + \
               [f"{LABELS[p]} / HAProxy" for p in proxies if p != "haproxy"]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        for point, row in summ.items():
            if ys.DIRECT not in row:
                continue
            cells = [ys.POINTS[point]["label"], fmt(row[ys.DIRECT]["machine_us_per_req"])]
            cells += [fmt(row[p]["hop_us"]) if p in row else "-" for p in proxies]
            cells += [fmt_x(row[p]["hop_vs_haproxy"]) if p in row else "-" for p in proxies if p != "haproxy"]
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
        ab = [(ys.POINTS[point]["label"], row["lb"]["hop_vs_baseline"]) for point, row in summ.items()
              if row.get("lb", {}).get("hop_vs_baseline")]
        if ab:
            L.append("**lb against the baseline build** (`--baseline`), in the same rounds: the hop cost of lb / "
                     "lb (baseline build), per round, median (min-max): "
                     + "; ".join(f"{label} {fmt_x(x)}" for label, x in ab) + ".\n")
        L.append("![hop cost relative to HAProxy](hop-ratio.svg)\n")
        L.append("## 2. Every target at every load point (medians over the rounds)\n")
        L.append("| load | target | req/s | machine us/req | hop us/req | process us/req | rest (CPUs) | p50 ms | "
                 "p99 ms | p99 added ms | errors |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        short = []
        for point, row in summ.items():
            for t in labels_at(point, proxies, True):
                if t not in row:
                    continue
                s = row[t]
                L.append(f"| {ys.POINTS[point]['label']} | {LABELS.get(t, t)} | {fmt(s['rps'], 0)} | "
                         f"{fmt(s['machine_us_per_req'])} | {fmt(s['hop_us'])} | "
                         f"{'-' if t == ys.DIRECT else fmt(s['proxy_us_per_req'])} | {fmt(s['rest_cpus'])} | "
                         f"{s['p50_ms']['median']:.3f} | {s['p99_ms']['median']:.3f} | "
                         f"{fmt(s['p99_added_ms'], 3, sign=True)} | {s['errors']} |")
                rate = ys.POINTS[point]["rate"]
                if rate and s["rps"]["min"] < 0.97 * rate:
                    short.append(f"{LABELS.get(t, t)} at {ys.POINTS[point]['label']} ({s['rps']['min']:.0f} req/s "
                                 "in its slowest round)")
        L.append("")
        if short:
            L.append("Short of the offered rate (so not a fixed-rate figure): " + "; ".join(short) + ".\n")
        errs = [(r["point"], r["target"], r["round"], r["errors"]) for r in data["yardstick"]["runs"] if r["errors"]]
        if errs:
            L.append("Runs with errors: " + "; ".join(f"{LABELS.get(t, t)} at {p}, round {k + 1}: {e}"
                                                       for p, t, k, e in errs) + ".\n")
        noisy = [r for r in data["yardstick"]["runs"] if rest_cpus(r) > NOISY_CPUS]
        if noisy:
            L.append(f"Runs with more than {NOISY_CPUS:g} CPUs busy outside the proxy, loadgen and nginx (other work "
                     f"on the machine: noisy, {len(noisy)} of {len(data['yardstick']['runs'])}): " +
                     "; ".join(f"{LABELS.get(r['target'], r['target'])} at {r['point']}, round {r['round'] + 1}: "
                               f"{rest_cpus(r):.2f}" for r in noisy[:12]) + ("; ..." if len(noisy) > 12 else "") + ".\n")
        L.append(f"Order of the runs (first point): {order_note(data)}; every point alike.\n")
        fixed = [p for p in summ if ys.POINTS[p]["rate"]]
        if fixed:
            L.append("## 3. p99 latency added over direct at fixed rates (ms)\n")
            L.append("![p99 latency added](latency-added.svg)\n")
            head = ["load", "direct p99"] + [LABELS[p] for p in proxies] + \
                   [f"{LABELS[p]} / HAProxy" for p in proxies if p != "haproxy"]
            L.append("| " + " | ".join(head) + " |")
            L.append("|" + "---|" * len(head))
            for point in fixed:
                row = summ[point]
                if ys.DIRECT not in row:
                    continue
                cells = [ys.POINTS[point]["label"], fmt(row[ys.DIRECT]["p99_ms"], 3)]
                cells += [fmt(row[p]["p99_added_ms"], 3, sign=True) if p in row else "-" for p in proxies]
                cells += [fmt_x(row[p]["p99_vs_haproxy"]) if p in row else "-" for p in proxies if p != "haproxy"]
                L.append("| " + " | ".join(cells) + " |")
            L.append("\nA ratio is undefined (-) when HAProxy added nothing (or less than nothing) in some round.\n")
        if FLASK in summ.get(FLASK_POINT, {}):
            row = summ[FLASK_POINT]
            L.append("## 4. The seed projects' Flask proxy\n")
            L.append("![throughput against the Flask proxy](flask.svg)\n")
            L.append(f"bench/flask_proxy.py: a Flask app forwarding each request to the next backend with "
                     f"`requests.get`, run with Flask's own server (`app.run`, threaded), pinned to CPU {PROXY_CPU}; "
                     f"{ys.POINTS[FLASK_POINT]['label']}, the same backends and client.\n")
            L.append("| target | req/s | machine us/req | hop us/req | process us/req | p99 ms |")
            L.append("|---|---|---|---|---|---|")
            for t in [FLASK, *proxies, ys.DIRECT]:
                if t in row:
                    s = row[t]
                    L.append(f"| {LABELS.get(t, t)} | {fmt(s['rps'], 0)} | {fmt(s['machine_us_per_req'])} | "
                             f"{fmt(s['hop_us'])} | {'-' if t == ys.DIRECT else fmt(s['proxy_us_per_req'])} | "
                             f"{s['p99_ms']['median']:.3f} |")
            ratio = flask_throughput_ratio(data)
            if ratio:
                L.append(f"\n**lb: {ratio['median']:.1f} x the Flask proxy's throughput** (per round "
                         f"{ratio['min']:.1f}-{ratio['max']:.1f}); the seed projects' goal, \"40% more "
                         f"throughput\", is 1.4x: {verdict(ratio['median'] >= FLASK_GOAL)}.\n")
    if "memory" in data:
        m = data["memory"]
        n = next(iter(m.values()))["connections"]
        L.append(f"## 5. Memory of {n:,} idle proxied connections (RSS growth)\n")
        L.append("![memory per idle connection](memory-per-conn.svg)\n")
        L.append("| proxy | RSS before (MiB) | RSS after (MiB) | per connection (KiB) |")
        L.append("|---|---|---|---|")
        for p, v in m.items():
            L.append(f"| {LABELS.get(p, p)} | {v['rss_before'] / 2**20:.1f} | {v['rss_after'] / 2**20:.1f} | "
                     f"{v['bytes_per_conn'] / 1024:.2f} |")
        L.append(f"\nOne measurement each. Target: lb <= {MEMORY_TARGET_KIB:g} KiB per idle connection.\n")
    if "fullstack" in data:
        fs = data["fullstack"]
        o, t = median_spread([r["rps"] for r in fs["ours"]]), median_spread([r["rps"] for r in fs["theirs"]])
        L.append(f"## 6. Full stack on both cores, unpinned, {cfg.get('fullstack_conns', FULL_STACK_CONNS)} "
                 "connections\n")
        L.append("![full stack](full-stack.svg)\n")
        L.append("| stack | req/s |")
        L.append("|---|---|")
        L.append(f"| loadgen -> lb (2 cores) -> 3 backend | {fmt(o, 0)} |")
        L.append(f"| wrk -t2 -> HAProxy (2 threads) -> 3 nginx | {fmt(t, 0)} |")
        L.append(f"\nRatio per round: {fmt_x(full_stack_ratio(data))} (target >= {FULL_STACK_TARGET}x).\n")
        L.append("Commands: " + "; ".join(f"{k}: `{v}`" for k, v in data.get("fullstack_commands", {}).items()) + "\n")
    rows = targets(data, summ)
    if rows:
        L.append("## Targets (issue 13; ratios against HAProxy in the same run)\n")
        if data.get("yardstick"):
            runs = data["yardstick"]["runs"]
            noisy = sum(1 for r in runs if rest_cpus(r) > NOISY_CPUS)
            if noisy > len(runs) / 4:
                L.append(f"**This run was noisy**: {noisy} of {len(runs)} runs had more than {NOISY_CPUS:g} CPUs "
                         "busy outside the proxy, loadgen and nginx. Do not judge the targets by it.\n")
        L.append("| target | this run | |")
        L.append("|---|---|---|")
        for name, value, ok in rows:
            L.append(f"| {name} | {value} | {verdict(ok)} |")
        L.append("\nMeasured elsewhere: backend CPU per request against nginx `return 200` (target <= 0.7x) by "
                 "`python3 bench/instruments.py`; `lb --cores 2` against `--cores 1` at saturation by "
                 "`python3 bench/experiments.py saturation`.\n")
    L.append("Every run (CPU, requests, latency, command), in the order run, and each server's command line and "
             "config: `proxies.json` beside this file.\n")
    return "\n".join(L)


def charts(data, out):
    """The SVG charts beside proxies.md; returns their names."""
    env, cfg = data["env"], data["config"]
    summ = summaries(data)
    proxies = cfg["proxies"]
    sub = f"{cfg['rounds']} interleaved rounds, median, whiskers min-max"
    machine = f"{env['cpus']} x {env['cpu_model']}, Linux {env['kernel']}, {env['date_utc'][:10]}"
    written = []
    points = [p for p in summ if ys.DIRECT in summ[p]]

    def floor(s):
        return None if s is None else (max(0.0, s["min"]), max(0.0, s["max"]))

    if points:
        vals = [[max(0.0, summ[pt][p]["hop_us"]["median"]) if p in summ[pt] and summ[pt][p]["hop_us"] else None
                 for pt in points] for p in proxies]
        sps = [[floor(summ[pt][p]["hop_us"]) if p in summ[pt] else None for pt in points] for p in proxies]
        bar_chart_err(out / "headline.svg", "Hop cost: whole-machine CPU per request, minus going direct",
                      [ys.POINTS[p]["label"] for p in points],
                      [LABELS[p] for p in proxies], vals, f"load ({sub})", "microseconds per request (lower is better)",
                      spreads=sps, colors=[COLORS[p] for p in proxies], fmt=lambda v: f"{v:.1f}", width=1060,
                      note="busy CPU of all CPUs\n(/proc/stat) over the\nmeasured window /\nrequests, minus the\n"
                           "same load direct to\nthe backends, same\nround; one thread\nper proxy on CPU 0,\n"
                           "load + nginx on CPU 1;\nnegative drawn at 0")
        written.append("headline.svg")
        others = [p for p in proxies if p != "haproxy"]
        if "haproxy" in proxies and others:
            rows = [ys.POINTS[p]["label"] for p in points]
            vals = [[summ[pt][p]["hop_vs_haproxy"]["median"] if p in summ[pt] and summ[pt][p]["hop_vs_haproxy"]
                     else None for pt in points] for p in others]
            sps = [[(summ[pt][p]["hop_vs_haproxy"]["min"], summ[pt][p]["hop_vs_haproxy"]["max"])
                    if p in summ[pt] and summ[pt][p]["hop_vs_haproxy"] else None for pt in points] for p in others]
            hbar_chart(out / "hop-ratio.svg", "Hop cost relative to HAProxy's, same round (< 1 = cheaper)", rows,
                       [f"{LABELS[p]} / HAProxy" for p in others], vals, "ratio of hop costs (lower is better)",
                       spreads=sps, colors=[COLORS[p] for p in others],
                       refs=[(0.7, "target 0.7"), (1.0, "HAProxy")],
                       note=f"Bars: median of the per-round ratios; whiskers: their min-max ({cfg['rounds']} "
                            f"interleaved rounds). {machine}.\nTargets (issue 13): lb <= 0.7x HAProxy at 20,000 req/s "
                            "with 64 connections and at saturation. Source: proxies.json.")
            written.append("hop-ratio.svg")
        fixed = [p for p in points if ys.POINTS[p]["rate"]]
        if fixed:
            vals = [[summ[pt][p]["p99_added_ms"]["median"] * 1000 if p in summ[pt] else None for pt in fixed]
                    for p in proxies]
            sps = [[floor({k: v * 1000 for k, v in summ[pt][p]["p99_added_ms"].items() if k in ("min", "max",
                                                                                             "median")})
                    if p in summ[pt] else None for pt in fixed] for p in proxies]
            bar_chart_err(out / "latency-added.svg", "p99 latency added over going direct (open loop)",
                          [ys.POINTS[p]["label"] for p in fixed], [LABELS[p] for p in proxies],
                          [[None if v is None else max(0.0, v) for v in row] for row in vals],
                          f"offered load ({sub} of per-round differences)", "added p99 (microseconds, lower is better)",
                          spreads=sps, colors=[COLORS[p] for p in proxies], fmt=lambda v: f"+{v:.0f} us", width=960,
                          note="the proxy's p99 minus\ndirect's, same round;\nnegative drawn at 0")
            written.append("latency-added.svg")
        if FLASK in summ.get(FLASK_POINT, {}):
            row = summ[FLASK_POINT]
            ts = [t for t in [ys.DIRECT, *proxies, FLASK] if t in row]
            bar_chart_err(out / "flask.svg", f"Throughput at {ys.POINTS[FLASK_POINT]['label']}, one CPU for the proxy",
                          [LABELS[t] for t in ts], ["req/s"], [[row[t]["rps"]["median"] for t in ts]],
                          f"target ({sub})", "requests per second (higher is better)",
                          spreads=[[(row[t]["rps"]["min"], row[t]["rps"]["max"]) for t in ts]],
                          bar_colors=[COLORS[t] for t in ts], legend=False, fmt=lambda v: f"{v:,.0f}", width=900,
                          note="Flask proxy: the seed\nprojects' Flask app +\nrequests, Flask's own\nserver; "
                               "direct: loadgen\nto nginx, no proxy")
            written.append("flask.svg")
    if "memory" in data:
        m = data["memory"]
        ps = list(m)
        n = next(iter(m.values()))["connections"]
        bar_chart_err(out / "memory-per-conn.svg", f"Memory per idle proxied connection ({n:,} held open)",
                      [LABELS.get(p, p) for p in ps], ["RSS growth per connection"],
                      [[m[p]["bytes_per_conn"] / 1024 for p in ps]], "proxy (one thread or worker)",
                      "KiB per idle connection (lower is better)", bar_colors=[COLORS.get(p, "#999") for p in ps],
                      legend=False, fmt=lambda v: f"{v:.2f} KiB", ref_line=MEMORY_TARGET_KIB,
                      ref_label=f"target {MEMORY_TARGET_KIB:g} KiB", width=820,
                      note="(RSS after - RSS before)\n/ connections held open,\none request on each;\n"
                           "one measurement")
        written.append("memory-per-conn.svg")
    if "fullstack" in data:
        fs = data["fullstack"]
        sides = [("ours", "loadgen -> lb -> 3 backend"), ("theirs", "wrk -> HAProxy -> 3 nginx")]
        ms = {k: median_spread([r["rps"] for r in fs[k]]) for k, _ in sides}
        bar_chart_err(out / "full-stack.svg",
                      f"Full stack on both CPUs, unpinned, {cfg.get('fullstack_conns', FULL_STACK_CONNS)} keep-alive "
                      "connections", [name for _, name in sides], ["req/s"], [[ms[k]["median"] for k, _ in sides]],
                      f"stack ({sub})", "requests per second (higher is better)",
                      spreads=[[(ms[k]["min"], ms[k]["max"]) for k, _ in sides]],
                      bar_colors=[COLORS["lb"], COLORS["haproxy"]], legend=False, fmt=lambda v: f"{v:,.0f}",
                      width=820, note="lb --cores 2, loadgen\n--cores 2; HAProxy\nnbthread 2, wrk -t2;\n"
                                      "3 backends (backend or\nnginx, 1 worker each)")
        written.append("full-stack.svg")
    return written


def render(data, out):
    """proxies.md and the charts into the folder `out`, from the JSON document alone."""
    if data.get("schema") != SCHEMA:
        raise SystemExit(f"proxies.json has schema {data.get('schema', 1)}, this script renders {SCHEMA}: it "
                         "predates the hop-cost yardstick; measure again (python3 bench/proxies.py)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = report(data)
    (out / "proxies.md").write_text(md)
    written = charts(data, out)
    log(f"wrote {out / 'proxies.md'} and {', '.join(written)}")
    return md


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--duration", type=float, default=6, help="measured seconds per run (default 6)")
    ap.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each run (default 1)")
    ap.add_argument("--points", default=",".join(ys.POINTS),
                    help=f"comma-separated load points (default all: {','.join(ys.POINTS)})")
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help=f"comma-separated, from {','.join(PROXIES + EXTRA_PROXIES)} (default {','.join(PROXIES)})")
    ap.add_argument("--no-flask", dest="flask", action="store_false", help="leave out the Flask proxy")
    ap.add_argument("--flask-duration", type=float, default=4,
                    help=f"measured seconds per Flask run, at {FLASK_POINT} only (default 4)")
    ap.add_argument("--idle", type=int, default=5000, help="idle connections for the memory figure")
    ap.add_argument("--only", choices=["yardstick", "memory", "fullstack"], action="append",
                    help="run only this part (repeatable; default all three)")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release --bins")
    ap.add_argument("--baseline", metavar="DIR",
                    help="a directory holding another build's lb (e.g. a worktree's target/release), "
                         "run as the proxy lb-baseline")
    ap.add_argument("--out", help="output folder (default: a fresh bench-results/runs/proxies-<time>/; "
                                  "bench-results/proxies replaces the committed results)")
    ap.add_argument("--render-only", "--charts-only", dest="render_only", action="store_true",
                    help="measure nothing: re-render proxies.md and the charts from OUT/proxies.json "
                         "(OUT: --out, default bench-results/proxies)")
    a = ap.parse_args(argv)
    a.points = [p.strip() for p in a.points.split(",") if p.strip()]
    a.proxies = [p.strip() for p in a.proxies.split(",") if p.strip()]
    for p in a.points:
        if p not in ys.POINTS:
            ap.error(f"unknown load point {p!r}: choose from {', '.join(ys.POINTS)}")
    for p in a.proxies:
        if p not in PROXIES + EXTRA_PROXIES:
            ap.error(f"unknown proxy {p!r}: choose from {', '.join(PROXIES + EXTRA_PROXIES)}")
    if (BASELINE in a.proxies) != bool(a.baseline):
        ap.error("--baseline DIR and the proxy lb-baseline go together")
    if a.baseline and not (Path(a.baseline) / "lb").is_file():
        ap.error(f"no lb binary in {a.baseline}")
    if a.flask and FLASK_POINT not in a.points:
        a.flask = False
    a.parts = set(a.only or ["yardstick", "memory", "fullstack"])
    if a.rounds < 1 or a.duration <= 0:
        ap.error("--rounds must be at least 1 and --duration positive")
    return a


def main():
    global BASELINE_DIR
    a = parse_args()
    BASELINE_DIR = Path(a.baseline) if a.baseline else None
    if a.render_only:
        out = Path(a.out) if a.out else RESULTS / "proxies"
        render(json.loads((out / "proxies.json").read_text()), out)
        return
    ensure_packages({"haproxy": "haproxy", "nginx-light": "nginx", "libnginx-mod-stream":
                     "/usr/lib/nginx/modules/ngx_stream_module.so", "wrk": "wrk"})
    if a.flask:
        import flask_proxy
        flask_proxy.ensure_installed()
    if not a.no_build:
        build_release()
    out = run_dir("proxies", a.out)
    try:
        data = measure(a)
    except BaseException:
        if not any(out.iterdir()):
            out.rmdir()
        raise
    (out / "proxies.json").write_text(json.dumps(data, indent=2) + "\n")
    md = render(data, out)
    print(md)
    log(f"results in {out}")


if __name__ == "__main__":
    main()
