"""Saturation: how lb behaves when the machine runs out of CPU.

Sweep 1 (cores): loadgen --conns 512, keep-alive, closed loop, through lb --cores 1, 2 and 4 to three
  backends: req/s, latency p50/p90/p99/p99.9 and lb CPU per request (from /proc).
Sweep 2 (connections): 64, 128, ..., 4096 keep-alive connections through lb --cores 1 and --cores 2,
  and through HAProxy (mode tcp, 1 thread) as a reference: req/s and p50/p99/p99.9.

Pinning on a 2-CPU machine: lb --cores 1 and HAProxy on CPU 0, loadgen on CPU 1; lb --cores 2/4 and
their loadgen unpinned; the three backends always unpinned. loadgen always runs 1 worker (--cores 1).
Every point of a round runs once, rounds walk the points in alternating order (A B C, C B A, ...),
so that the slow speed drift of the VM hits every point alike; figures are medians with min-max.
lb's CPU per request is read from /proc/PID/stat every 100 ms during the run and taken over the
interior of the measured window (no connection setup or teardown in it); /proc/stat over the same
window gives the load of everything else on the machine ("other CPU").

--from-json re-renders the charts and summary.md from an existing saturation.json (no measurement).
"""

import csv
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time

import lbbench
from lbbench import CLK_TCK, PAGE, TARGET, backend_proc, free_port, haproxy_proc, lb_proc, log, pinned
from expcommon import LB_CPU, LG_CPU, NCPU, machine_line, out_dir, time_wait_sockets, wait_quiet
from svgchart import bar_chart_err, xy_chart

HELP = "saturation: req/s, latency and lb CPU per request vs lb cores (512 conns) and vs connections (64..4096)"

DEFAULT_CONNS = [64, 128, 256, 512, 1024, 2048, 4096]
SWEEP1_CONNS = 512
N_BACKENDS = 3
PCT = ["p50", "p90", "p99", "p999"]
PCT_LABEL = {"p50": "p50", "p90": "p90", "p99": "p99", "p999": "p99.9"}

# Series: how the proxy runs. "pinned" series put the proxy on LB_CPU and loadgen on LG_CPU.
SERIES = {
    "lb-1": {"label": "lb --cores 1", "kind": "lb", "cores": 1, "pinned": True},
    "lb-2": {"label": "lb --cores 2", "kind": "lb", "cores": 2, "pinned": False},
    "lb-4": {"label": "lb --cores 4", "kind": "lb", "cores": 4, "pinned": False},
    "haproxy": {"label": "HAProxy 1 thread", "kind": "haproxy", "cores": 1, "pinned": True},
}


def add_arguments(p):
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before each point, s (default 1)")
    p.add_argument("--warmup-per-1k", type=float, default=0.5,
                   help="extra warmup per 1024 connections, s (default 0.5: 3 s in all at 4096)")
    p.add_argument("--conns", default=",".join(map(str, DEFAULT_CONNS)),
                   help="sweep-2 connection counts (default 64,...,4096)")
    p.add_argument("--sweep1-cores", default="1,2,4", help="lb --cores values at 512 connections (default 1,2,4)")
    p.add_argument("--sweep2-cores", default="1,2", help="lb --cores values swept over connections (default 1,2)")
    p.add_argument("--no-haproxy", action="store_true", help="leave out the HAProxy reference line")
    p.add_argument("--quick", action="store_true",
                   help="short development run: 1 round, 2 s per point, conns 64,512,4096, cores 1,2")
    p.add_argument("--from-json", action="store_true",
                   help="no measurement: re-render charts and summary.md from bench-results/saturation/saturation.json")


# ---------------------------------------------------------------------------------------------
# /proc sampling
# ---------------------------------------------------------------------------------------------

def proc_cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return None


def proc_rss(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def system_ticks():
    """(busy, total, steal) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


class Sampler(threading.Thread):
    """Every `period` s: time, the proxy's CPU ticks and RSS, the backends' and loadgen's CPU ticks,
    this script's, and /proc/stat."""

    def __init__(self, proxy_pid, backend_pids, period=0.1):
        super().__init__(daemon=True)
        self.proxy_pid, self.backend_pids, self.period = proxy_pid, list(backend_pids), period
        self.loadgen_pid = None
        self.samples = []
        self.stop_ev = threading.Event()

    def snap(self):
        backends = sum(proc_cpu_ticks(pid) or 0 for pid in self.backend_pids)
        lg = proc_cpu_ticks(self.loadgen_pid) if self.loadgen_pid else 0
        me = proc_cpu_ticks(os.getpid()) or 0
        busy, total, steal = system_ticks()
        self.samples.append({"t": time.time(), "proxy": proc_cpu_ticks(self.proxy_pid),
                             "rss": proc_rss(self.proxy_pid), "backends": backends, "loadgen": lg,
                             "own": backends + (lg or 0) + me, "busy": busy, "total": total, "steal": steal})

    def run(self):
        while not self.stop_ev.is_set():
            self.snap()
            self.stop_ev.wait(self.period)

    def set_loadgen(self, pid):
        self.loadgen_pid = pid

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.snap()


class AcceptProbe(threading.Thread):
    """Reads the listening sockets' accept queue (`ss -ltn`, Recv-Q summed over the SO_REUSEPORT
    group) every 0.2 s from the start of loadgen until it is empty again (or `limit` s): how long the
    proxy took to accept the burst of keep-alive connections loadgen opens at its start."""

    def __init__(self, port, limit):
        super().__init__(daemon=True)
        self.port, self.limit = port, limit
        self.samples = []
        self.stop_ev = threading.Event()

    def queue(self):
        try:
            out = subprocess.run(["ss", "-ltnH", f"sport = :{self.port}"], capture_output=True, text=True,
                                 timeout=5).stdout
            return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def run(self):
        t0 = time.time()
        while not self.stop_ev.is_set() and time.time() - t0 < self.limit:
            q = self.queue()
            t = time.time() - t0
            self.samples.append([round(t, 2), q])
            if t >= 0.5 and q == 0:
                break
            self.stop_ev.wait(0.2)

    def result(self):
        self.stop_ev.set()
        self.join()
        qs = [q for _, q in self.samples if q is not None]
        drained = next((t for t, q in self.samples if t >= 0.5 and q == 0), None)
        return {"max_queue": max(qs) if qs else None, "drained_after_s": drained,
                "last_queue": qs[-1] if qs else None, "samples": self.samples}


def interp(samples, key, t):
    """Linear interpolation of a cumulative counter at time t."""
    prev = None
    for s in samples:
        if s[key] is None:
            continue
        if s["t"] >= t:
            if prev is None:
                return s[key]
            f = (t - prev["t"]) / ((s["t"] - prev["t"]) or 1e-9)
            return prev[key] + f * (s[key] - prev[key])
        prev = s
    return prev[key] if prev else None


def window_stats(samples, t0, t1):
    """CPU use over [t0, t1] in CPUs (CPU-seconds per second): the proxy; this run's other processes
    (backends, loadgen, this script); the whole machine busy (/proc/stat); steal; and "other" = busy
    minus the proxy and our processes, i.e. everything else on the host plus softirq time that the
    kernel does not charge to any process."""
    dt = t1 - t0
    if dt <= 0.2:
        return None

    def rate(key):
        a, b = interp(samples, key, t0), interp(samples, key, t1)
        return None if a is None or b is None else (b - a) / CLK_TCK / dt

    busy_total = interp(samples, "total", t1) - interp(samples, "total", t0)
    ncpu_seen = busy_total / CLK_TCK / dt if busy_total else NCPU
    proxy, own, busy, steal = rate("proxy"), rate("own"), rate("busy"), rate("steal")
    rss = [s["rss"] for s in samples if t0 <= s["t"] <= t1 and s["rss"]]
    return {"window_s": dt, "proxy_cpus": proxy, "own_cpus": own, "busy_cpus": busy, "steal_cpus": steal,
            "backends_cpus": rate("backends"), "loadgen_cpus": rate("loadgen"),
            "other_cpus": max(0.0, busy - own - proxy) if None not in (busy, own, proxy) else None,
            "cpus_accounted": ncpu_seen, "proxy_rss_max": max(rss) if rss else None}


# ---------------------------------------------------------------------------------------------
# One point
# ---------------------------------------------------------------------------------------------

def start_proxy(series, backend_ports):
    sp = SERIES[series]
    port = free_port()
    cpu = LB_CPU if sp["pinned"] else None
    if sp["kind"] == "lb":
        return lb_proc(port, backend_ports, cpu, cores=sp["cores"])
    return haproxy_proc(port, backend_ports, cpu, threads=sp["cores"])


def warmup_for(args, conns):
    """A saturated proxy needs a while to accept a burst of thousands of connections (see
    AcceptProbe): the warmup grows with the connection count so that the measured window is steady."""
    return round(args.warmup + args.warmup_per_1k * conns / 1024, 3)


def run_point(series, conns, proxy, backends, args):
    sp = SERIES[series]
    lg_cpu = LG_CPU if sp["pinned"] else None
    warmup = warmup_for(args, conns)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        argv = [str(TARGET / "loadgen"), f"http://127.0.0.1:{proxy.port}/", "--cores", "1",
                "--conns", str(conns), "--warmup", f"{int(warmup * 1000)}ms",
                "--duration", f"{int(args.duration * 1000)}ms", "--json", f.name]
        full = pinned(lg_cpu, argv) if lg_cpu is not None else argv
        sampler = Sampler(proxy.pid, [b.pid for b in backends])
        sampler.start()
        t_start = time.time()
        p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler.set_loadgen(p.pid)
        probe = AcceptProbe(proxy.port, warmup + args.duration)
        probe.start()
        try:
            out, err = p.communicate(timeout=warmup + args.duration + 90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            sampler.stop()
            probe.result()
            raise RuntimeError(f"loadgen timed out: {' '.join(full)}")
        t_exit = time.time()
        sampler.stop()
        accept = probe.result()
        if p.returncode != 0:
            raise RuntimeError(f"loadgen failed ({p.returncode}): {err[-2000:]}")
        r = json.load(open(f.name))
    # The measurement ends just before loadgen exits and started duration_s earlier; keep 0.3 s off
    # each edge so that neither the warmup, the connection setup nor the teardown is in the window.
    m_start = t_exit - r["duration_s"]
    w = window_stats(sampler.samples, m_start + 0.3, t_exit - 0.3)
    rps = r["rps"]
    cpu_us = (w["proxy_cpus"] / rps * 1e6) if (w and w["proxy_cpus"] is not None and rps) else None
    alive = proxy.proc.poll() is None
    row = {
        "series": series, "proxy": sp["kind"], "cores": sp["cores"], "pinned": sp["pinned"], "conns": conns,
        "rps": rps, "requests": r["requests"], "errors": r["errors"], "errors_by_kind": r["errors_by_kind"],
        "error_samples": r.get("error_samples", {}), "latency_ms": r["latency_ms"],
        "duration_s": r["duration_s"], "connections_opened": r["connections_opened"],
        "servers": r["servers"], "timeline": r["timeline"],
        # Requests that started in the window and were answered after it (loadgen's last timeline entry).
        "inflight_at_end": sum(t["requests"] for t in r["timeline"] if t["second"] >= int(args.duration)),
        "warmup_s": warmup, "accept": accept,
        "proxy_cpu_us_per_req": cpu_us, "window": w,
        "backends_cpu_us_per_req": (w["backends_cpus"] / rps * 1e6) if (w and rps) else None,
        "loadgen_cpu_us_per_req": (w["loadgen_cpus"] / rps * 1e6) if (w and w["loadgen_cpus"] and rps) else None, "loadgen_cpu_s": r.get("cpu_seconds"),
        "loadgen_wall_s": t_exit - t_start, "proxy_alive_after": alive,
        "time_wait_after": time_wait_sockets(),
        "command": " ".join(full[:-2]).replace(str(proxy.port), "PORT"),
    }
    return row


def fmt_row(row):
    w = row["window"] or {}
    cpu = row["proxy_cpu_us_per_req"]
    lat = row["latency_ms"]
    return (f"{row['series']:8} {row['conns']:>5} conns {row['rps']:>9,.0f} req/s  p50 {lat['p50']:.2f} "
            f"p99 {lat['p99']:.2f} p99.9 {lat['p999']:.2f} ms  {'-' if cpu is None else f'{cpu:.2f}'} us/req  "
            f"errors {row['errors']}  other CPU {w.get('other_cpus', 0) or 0:.2f}  accept queue max "
            f"{row['accept']['max_queue']} drained {row['accept']['drained_after_s']} s  in flight at end "
            f"{row['inflight_at_end']}")


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

def plan(args):
    conns = [int(c) for c in args.conns.split(",")]
    s1 = [int(c) for c in args.sweep1_cores.split(",")]
    s2 = [int(c) for c in args.sweep2_cores.split(",")]
    if args.quick:
        conns = [64, 512, 4096]
        s1, s2 = [1, 2], [1, 2]
    for c in set(s1 + s2):
        if f"lb-{c}" not in SERIES:
            SERIES[f"lb-{c}"] = {"label": f"lb --cores {c}", "kind": "lb", "cores": c, "pinned": c == 1}
    s2_series = [f"lb-{c}" for c in s2] + ([] if args.no_haproxy else ["haproxy"])
    s1_series = [f"lb-{c}" for c in s1] + ([] if args.no_haproxy else ["haproxy"])
    # Small and large counts alternate (64, 4096, 128, 2048, ...): the large ones leave thousands of
    # sockets in TIME_WAIT and heat the machine, so they are spread over the round; the series at one
    # count stay next to each other, so that they are compared under the same machine speed.
    by_size = sorted(set(conns + [SWEEP1_CONNS]))
    order = []
    while by_size:
        order.append(by_size.pop(0))
        if by_size:
            order.append(by_size.pop())
    points = []
    for c in order:
        for s in SERIES:
            if (c in conns and s in s2_series) or (c == SWEEP1_CONNS and s in s1_series):
                points.append((s, c))
    return conns, s1_series, s2_series, points


def rerun_command(args):
    cmd = "python3 bench/experiments.py saturation"
    if args.quick:
        return cmd + " --quick"
    defaults = {"rounds": 5, "duration": 4.0, "warmup": 1.0, "warmup_per_1k": 0.5, "conns": ",".join(map(str, DEFAULT_CONNS)),
                "sweep1_cores": "1,2,4", "sweep2_cores": "1,2", "no_haproxy": False}
    for k, d in defaults.items():
        v = getattr(args, k)
        if v != d:
            cmd += f" --{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v:g}" if isinstance(v, float) else f" {v}")
    return cmd


def load_snapshot():
    try:
        la = open("/proc/loadavg").read().split()[:3]
    except OSError:
        la = ["?"] * 3
    return {"loadavg_1_5_15": la, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run(args):
    d = out_dir("saturation", replot=args.from_json)
    if args.from_json:
        data = json.loads((d / "saturation.json").read_text())
        render(d, data)
        return data
    rounds = 1 if args.quick else args.rounds
    if args.quick:
        args.duration, args.warmup, args.warmup_per_1k = 2.0, 0.5, 0.25
    conns, s1_series, s2_series, points = plan(args)
    if "haproxy" in s2_series + s1_series:
        lbbench.ensure_packages({"haproxy": "haproxy"})
    before = load_snapshot()
    # The environment (git commit, versions) as the run starts; the load after it is added at the end.
    env = lbbench.environment({
        "pinning": (f"lb --cores 1 and HAProxy pinned to CPU {LB_CPU}, their loadgen to CPU {LG_CPU}; "
                    f"lb --cores 2/4 and their loadgen unpinned; backends unpinned")
        if LB_CPU is not None else "nothing pinned (1 CPU)",
        "load_before": before})
    log(f"saturation: {len(points)} points x {rounds} rounds, {args.warmup:g}+{args.duration:g} s each; "
        f"load average before: {' '.join(before['loadavg_1_5_15'])}")
    rows, failed = [], []
    t0 = time.time()
    for rnd in range(rounds):
        order = points if rnd % 2 == 0 else list(reversed(points))
        log(f"round {rnd + 1}/{rounds}")
        bports = [free_port() for _ in range(N_BACKENDS)]
        started = []
        try:
            backends = [lbbench.backend_proc(p, None, f"s{i + 1}") for i, p in enumerate(bports)]
            started += backends
            proxies = {}
            for s in sorted({s for s, _ in points}):
                proxies[s] = start_proxy(s, bports)
                started.append(proxies[s])
            for s, c in order:
                tw, tq = time_wait_sockets(), time.time()
                wait_quiet(max_wait=20)
                waited = round(time.time() - tq, 1)
                if proxies[s].proc.poll() is not None:
                    log(f"  {s} had exited (code {proxies[s].proc.returncode}); starting it again")
                    proxies[s] = start_proxy(s, bports)
                    started.append(proxies[s])
                try:
                    row = run_point(s, c, proxies[s], backends, args)
                except RuntimeError as ex:
                    # One failed point (loadgen error or timeout) is recorded and the run goes on.
                    log(f"  {s} {c} conns FAILED: {ex}")
                    failed.append({"series": s, "conns": c, "round": rnd + 1, "error": str(ex)[-2000:]})
                    continue
                row["round"] = rnd + 1
                row["time_wait_before"], row["waited_for_time_wait_s"] = tw, waited
                row["proxy_command"] = " ".join(proxies[s].proc.args).replace(str(proxies[s].port), "PORT")
                for p_ in bports:
                    row["proxy_command"] = row["proxy_command"].replace(str(p_), "BPORT")
                rows.append(row)
                log("  " + fmt_row(row))
        finally:
            for s in reversed(started):
                s.stop()
    env["load_after"] = load_snapshot()
    data = {
        "experiment": "saturation", "rerun": rerun_command(args), "quick": bool(args.quick),
        "rounds": rounds, "duration_s": args.duration, "warmup_s": args.warmup,
        "warmup_per_1k_conns_s": args.warmup_per_1k,
        "conns": conns, "sweep1_conns": SWEEP1_CONNS, "sweep1_series": s1_series, "sweep2_series": s2_series,
        "series": {s: SERIES[s] for s in {s for s, _ in points}}, "backends": N_BACKENDS,
        "backend_command": f"{TARGET / 'backend'} --listen 127.0.0.1:BPORT --id sI --cores 1 (unpinned)",
        "wall_s": time.time() - t0, "environment": env, "runs": rows, "failed_points": failed,
    }
    data["summary"] = summarise(rows)
    (d / "saturation.json").write_text(json.dumps(data, indent=1) + "\n")
    render(d, data)
    log(f"wrote {d} in {time.time() - t0:.0f} s")
    return data


# ---------------------------------------------------------------------------------------------
# Summaries, CSV, charts, summary.md
# ---------------------------------------------------------------------------------------------

def ms(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}


def summarise(rows):
    out = {}
    keys = sorted({(r["series"], r["conns"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for s, c in keys:
        rs = [r for r in rows if r["series"] == s and r["conns"] == c]
        e = {"series": s, "conns": c, "rps": ms(r["rps"] for r in rs),
             "proxy_cpu_us_per_req": ms(r["proxy_cpu_us_per_req"] for r in rs),
             "proxy_cpus": ms((r["window"] or {}).get("proxy_cpus") for r in rs),
             "backends_cpu_us_per_req": ms(r.get("backends_cpu_us_per_req") for r in rs),
             "loadgen_cpu_us_per_req": ms(r.get("loadgen_cpu_us_per_req") for r in rs),
             "busy_cpus": ms((r["window"] or {}).get("busy_cpus") for r in rs),
             "other_cpus": ms((r["window"] or {}).get("other_cpus") for r in rs),
             "steal_cpus": ms((r["window"] or {}).get("steal_cpus") for r in rs),
             "proxy_rss_max": ms((r["window"] or {}).get("proxy_rss_max") for r in rs),
             "mean_latency_ms": ms(r["latency_ms"]["mean"] for r in rs),
             "max_latency_ms": ms(r["latency_ms"]["max"] for r in rs),
             "errors": sum(r["errors"] for r in rs),
             "errors_by_kind": {k: sum(r["errors_by_kind"].get(k, 0) for r in rs)
                                for k in rs[0]["errors_by_kind"] if sum(r["errors_by_kind"].get(k, 0) for r in rs)},
             "proxy_exited": sum(1 for r in rs if not r["proxy_alive_after"]),
             "accept_max_queue": ms(r["accept"]["max_queue"] for r in rs),
             "accept_drained_s": ms(r["accept"]["drained_after_s"] for r in rs),
             "accept_not_drained": sum(1 for r in rs if r["accept"]["drained_after_s"] is None),
             "accept_last_queue": ms(r["accept"]["last_queue"] for r in rs),
             "inflight_at_end": ms(r["inflight_at_end"] for r in rs),
             "reconnects": sum(r["connections_opened"] - r["conns"] for r in rs)}
        for p in PCT:
            e[p] = ms(r["latency_ms"][p] for r in rs)
        out[f"{s}@{c}"] = e
    return out


def write_csv(d, data):
    with open(d / "saturation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "series", "proxy", "cores", "pinned", "conns", "rps", "p50_ms", "p90_ms", "p99_ms",
                    "p999_ms", "max_ms", "proxy_cpu_us_per_req", "proxy_cpus", "other_cpus", "steal_cpus",
                    "proxy_rss_max_bytes", "errors"])
        for r in data["runs"]:
            wd = r["window"] or {}
            lat = r["latency_ms"]
            w.writerow([r["round"], r["series"], r["proxy"], r["cores"], r["pinned"], r["conns"], f"{r['rps']:.0f}",
                        lat["p50"], lat["p90"], lat["p99"], lat["p999"], lat["max"],
                        "" if r["proxy_cpu_us_per_req"] is None else f"{r['proxy_cpu_us_per_req']:.3f}",
                        f"{wd.get('proxy_cpus') or 0:.3f}", f"{wd.get('other_cpus') or 0:.3f}",
                        f"{wd.get('steal_cpus') or 0:.3f}", wd.get("proxy_rss_max") or "", r["errors"]])
    with open(d / "saturation-summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        head = ["series", "conns", "n"]
        for k in ["rps", "p50", "p90", "p99", "p999", "proxy_cpu_us_per_req"]:
            head += [f"{k}_median", f"{k}_min", f"{k}_max"]
        w.writerow(head + ["errors"])
        for e in data["summary"].values():
            row = [e["series"], e["conns"], e["rps"]["n"]]
            for k in ["rps", "p50", "p90", "p99", "p999", "proxy_cpu_us_per_req"]:
                v = e[k]
                row += [f"{v['median']:.4g}", f"{v['min']:.4g}", f"{v['max']:.4g}"] if v else ["", "", ""]
            w.writerow(row + [e["errors"]])


def label(data, s):
    sp = data["series"][s]
    pin = "pinned" if sp["pinned"] else "unpinned"
    if sp["kind"] == "lb" and sp["cores"] > (data["environment"].get("cpus") or 2):
        pin += ", oversubscribed"
    return f"{sp['label']} ({pin})"


def charts(d, data):
    S = data["summary"]
    s1, s2, conns = data["sweep1_series"], data["sweep2_series"], data["conns"]
    c1 = data["sweep1_conns"]
    n, dur = data["rounds"], data["duration_s"]
    sub = f"{n} round{'s' if n > 1 else ''} x {dur:g} s, median, whiskers min-max"

    def get(s, c, k):
        e = S.get(f"{s}@{c}")
        return e[k] if e else None

    def med(s, c, k):
        v = get(s, c, k)
        return v["median"] if v else None

    def rng(s, c, k):
        v = get(s, c, k)
        return (v["min"], v["max"]) if v and v["n"] > 1 else None

    cats = [label(data, s) for s in s1]
    bcol = ["#7f7f7f" if s == "haproxy" else ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"][i % 4] for i, s in enumerate(s1)]
    cats_short = [data["series"][s]["label"] for s in s1]
    bar_chart_err(d / "cores-rps.svg", f"Throughput at {c1} keep-alive connections, 3 backends",
                  cats_short, ["req/s"], [[med(s, c1, "rps") for s in s1]],
                  f"proxy configuration ({sub})", "requests per second (closed loop)",
                  spreads=[[rng(s, c1, "rps") for s in s1]], fmt=lambda v: f"{v:,.0f}", bar_colors=bcol, legend=False,
                  note="\n".join(cats + [f"{data['environment']['cpus']} CPUs; loadgen 1 worker"]), width=980, right=230)
    bar_chart_err(d / "cores-latency.svg", f"Latency at {c1} keep-alive connections, 3 backends",
                  cats_short, [PCT_LABEL[p] for p in PCT],
                  [[med(s, c1, p) for s in s1] for p in PCT], f"proxy configuration ({sub})",
                  "latency (ms)", spreads=[[rng(s, c1, p) for s in s1] for p in PCT],
                  fmt=lambda v: f"{v:.1f}" if v >= 10 else f"{v:.2f}", width=980)
    bar_chart_err(d / "cores-cpu.svg", f"Proxy CPU per request at {c1} keep-alive connections",
                  cats_short, ["proxy CPU per request"], [[med(s, c1, "proxy_cpu_us_per_req") for s in s1]],
                  f"proxy configuration ({sub})", "proxy CPU time per request (microseconds)",
                  spreads=[[rng(s, c1, "proxy_cpu_us_per_req") for s in s1]], fmt=lambda v: f"{v:.2f}",
                  bar_colors=bcol, legend=False, right=230,
                  note="CPU = utime + stime of the\nproxy process (/proc/PID/stat),\nover the interior of the\nmeasured window", width=980)

    styles = {}
    for i, s in enumerate(s2):
        styles[label(data, s)] = {"color": "#7f7f7f" if s == "haproxy" else ["#1f77b4", "#ff7f0e", "#2ca02c"][i % 3],
                                  "dash": "6 3" if s == "haproxy" else ""}
    starved = [f"{data['series'][s]['label']} at {c:,}: its\naccept queue never emptied\n"
               f"({get(s, c, 'accept_last_queue')['median']:,.0f} still waiting {warmup_of(data, c) + data['duration_s']:g} s\n"
               f"after the start): part of its\nconnections waited seconds\nfor their first answer"
               for s in s2 for c in conns if get(s, c, "accept_drained_s") is None and get(s, c, "rps")
               and get(s, c, "accept_last_queue")]
    snote = "\n".join(starved) if starved else None
    xy_chart(d / "conns-rps.svg", "Throughput vs keep-alive connections (3 backends)", conns,
             {label(data, s): [med(s, c, "rps") for c in conns] for s in s2},
             f"concurrent keep-alive connections (log2 scale; {sub})", "requests per second (closed loop)",
             spreads={label(data, s): [rng(s, c, "rps") for c in conns] for s in s2}, styles=styles,
             log2_x=True, width=960, legend_width=290, note=snote)
    xy_chart(d / "conns-cpu.svg", "Proxy CPU per request vs keep-alive connections", conns,
             {label(data, s): [med(s, c, "proxy_cpu_us_per_req") for c in conns] for s in s2},
             f"concurrent keep-alive connections (log2 scale; {sub})", "proxy CPU per request (microseconds)",
             spreads={label(data, s): [rng(s, c, "proxy_cpu_us_per_req") for c in conns] for s in s2},
             styles=styles, log2_x=True, width=960, legend_width=290)

    pcol = {"p50": "#1f77b4", "p99": "#ff7f0e", "p999": "#d62728"}
    for fname, pair, title in (("conns-latency.svg", ["lb-1", "haproxy"], "lb --cores 1 vs HAProxy, both pinned"),
                               ("conns-latency-cores.svg", ["lb-1", "lb-2"], "lb --cores 1 vs --cores 2")):
        pair = [s for s in pair if s in s2]
        if len(pair) < 1:
            continue
        series, spreads, st = {}, {}, {}
        for j, s in enumerate(pair):
            for p in ("p50", "p99", "p999"):
                name = f"{data['series'][s]['label']} {PCT_LABEL[p]}"
                series[name] = [med(s, c, p) for c in conns]
                spreads[name] = [rng(s, c, p) for c in conns]
                st[name] = {"color": pcol[p], "dash": "" if j == 0 else "6 3", "width": 2.5 if j == 0 else 2.0}
        xy_chart(d / fname, f"Latency vs keep-alive connections: {title}", conns, series,
                 f"concurrent keep-alive connections (log2 scale; {sub})", "latency (ms, log scale)",
                 spreads=spreads, styles=st, log2_x=True, log_y=True, width=960, legend_width=250,
                 note="closed loop: mean latency =\nconnections / throughput\n(Little's law), so latency\ngrows with connections once\nthe CPUs are saturated"
                      + ("\n\n" + snote if snote and "haproxy" in pair else ""))


def f0(v):
    return f"{v:,.0f}"


def f2(v):
    return f"{v:.2f}"


def mm(e, fmt=f0):
    if not e:
        return "-"
    if e["n"] == 1:
        return fmt(e["median"])
    return f"{fmt(e['median'])} ({fmt(e['min'])}-{fmt(e['max'])})"


def warmup_of(data, conns):
    return round(data["warmup_s"] + data.get("warmup_per_1k_conns_s", 0) * conns / 1024, 3)


def accept_cell(x):
    """When the proxy had accepted loadgen's whole burst of connections (accept queue empty)."""
    if x["accept_drained_s"] is None:
        return f"never (queue {mm(x['accept_last_queue'])} at the end)"
    if x["accept_not_drained"]:
        return f"{mm(x['accept_drained_s'], f2)}; never in {x['accept_not_drained']} runs"
    if x["accept_max_queue"] and x["accept_max_queue"]["max"] == 0:
        return "no queue seen"
    return mm(x["accept_drained_s"], f2)


def render(d, data):
    write_csv(d, data)
    charts(d, data)
    S = data["summary"]
    env = data["environment"]
    s1, s2, conns, c1 = data["sweep1_series"], data["sweep2_series"], data["conns"], data["sweep1_conns"]
    n = data["rounds"]

    def e(s, c):
        return S.get(f"{s}@{c}")

    def med(s, c, k):
        x = e(s, c)
        return x[k]["median"] if x and x[k] else None

    t1 = []
    for s in s1:
        x = e(s, c1)
        t1.append(f"| {label(data, s)} | {mm(x['rps'])} | {mm(x['p50'], f2)} | {mm(x['p90'], f2)} | "
                  f"{mm(x['p99'], f2)} | {mm(x['p999'], f2)} | {mm(x['proxy_cpu_us_per_req'], f2)} | "
                  f"{mm(x['proxy_cpus'], f2)} | {x['errors']} |")
    t2 = []
    for c in conns:
        for s in s2:
            x = e(s, c)
            if not x:
                continue
            t2.append(f"| {c:,} | {data['series'][s]['label']} | {mm(x['rps'])} | {mm(x['p50'], f2)} | "
                      f"{mm(x['p99'], f2)} | {mm(x['p999'], f2)} | {mm(x['proxy_cpu_us_per_req'], f2)} | "
                      f"{accept_cell(x)} | "
                      f"{x['errors']} |")

    t3 = []
    for c in conns:
        for s in ("lb-1", "haproxy"):
            x = e(s, c)
            if not x:
                continue
            t3.append(f"| {c:,} | {data['series'][s]['label']} | {mm(x['proxy_cpu_us_per_req'], f2)} | "
                      f"{mm(x.get('backends_cpu_us_per_req'), f2)} | {mm(x.get('loadgen_cpu_us_per_req'), f2)} | "
                      f"{mm(x.get('busy_cpus'), f2)} |")

    # Findings, computed from the data.
    notes = []
    if "lb-1" in s2:
        r = [med("lb-1", c, "rps") for c in conns]
        best = max(range(len(conns)), key=lambda i: r[i])
        drop = 100 * (r[-1] / r[best] - 1)
        shape = ("the throughput stays on a plateau once the CPUs are saturated" if drop > -15 else
                 "the throughput does not collapse, but it falls as connections are added")
        notes.append(f"- lb --cores 1 peaks at {r[best]:,.0f} req/s ({conns[best]:,} connections) and serves "
                     f"{r[-1]:,.0f} req/s at {conns[-1]:,} connections ({drop:+.0f}% from the peak; "
                     f"{100 * (r[-1] / r[0] - 1):+.0f}% from {conns[0]:,}): {shape}.")
        cpu = [med("lb-1", c, "proxy_cpu_us_per_req") for c in conns]
        if all(cpu):
            busy = [med("lb-1", c, "proxy_cpus") for c in conns]
            mach = [med("lb-1", c, "busy_cpus") for c in conns]
            be = [med("lb-1", c, "backends_cpu_us_per_req") for c in conns]
            lg = [med("lb-1", c, "loadgen_cpu_us_per_req") for c in conns]
            txt = (f"- What grows is the proxy's own CPU per request: lb's goes from {cpu[0]:.2f} us at {conns[0]:,} "
                   f"connections to {cpu[-1]:.2f} us at {conns[-1]:,} ({100 * (cpu[-1] / cpu[0] - 1):+.0f}%), while the "
                   f"backends' goes from {be[0]:.2f} to {be[-1]:.2f} us and loadgen's from {lg[0]:.2f} to {lg[-1]:.2f} us "
                   f"(table above).")
            if "haproxy" in s2 and med("haproxy", conns[0], "proxy_cpu_us_per_req"):
                h0, h1 = med("haproxy", conns[0], "proxy_cpu_us_per_req"), med("haproxy", conns[-1], "proxy_cpu_us_per_req")
                txt += (f" HAProxy's grows the same way ({h0:.2f} to {h1:.2f} us, {100 * (h1 / h0 - 1):+.0f}%), so most "
                        f"of it is likely the kernel's work per socket once thousands of sockets no longer fit the "
                        f"caches, rather than something particular to lb (not profiled here).")
            hi = max(range(len(conns)), key=lambda i: busy[i])
            txt += (f" lb uses {min(busy):.2f}-{max(busy):.2f} of its CPU across the points (1.00 = all of CPU {LB_CPU}; "
                    f"the unpinned backends take some of it); at {conns[hi]:,} connections it uses {busy[hi]:.2f} while "
                    f"the whole machine is busy {mach[hi]:.2f} of {env['cpus']} CPUs, so there lb's one core is the "
                    f"bottleneck and the other CPU waits for it.")
            notes.append(txt)
        if "lb-2" in s1 and "lb-4" in s1 and "lb-1" in s2:
            per_core = []
            for sname, cores in (("lb-1", 1), ("lb-2", 2), ("lb-4", 4)):
                v = med(sname, c1, "proxy_cpu_us_per_req")
                if v:
                    per_core.append(f"{data['series'][sname]['label']} at {c1} ({c1 // cores} per core): {v:.2f} us")
            for c in (128, 256):
                v = med("lb-1", c, "proxy_cpu_us_per_req")
                if v:
                    per_core.append(f"lb --cores 1 at {c}: {v:.2f} us")
            notes.append("- lb's CPU per request follows the connections per core rather than the total: "
                         + "; ".join(per_core) + ".")
        lit = []
        for c in (conns[0], conns[-1]):
            x = e("lb-1", c)
            lit.append(f"{c:,}: mean {x['mean_latency_ms']['median']:.2f} ms vs connections / req/s = "
                       f"{1000 * c / x['rps']['median']:.2f} ms")
        notes.append(f"- Latency grows linearly with the connections, as a closed loop must (Little's law; {'; '.join(lit)}). "
                     f"At {conns[-1]:,} connections lb --cores 1 has p50 "
                     f"{med('lb-1', conns[-1], 'p50'):.1f} ms, p99 {med('lb-1', conns[-1], 'p99'):.1f} ms, "
                     f"p99.9 {med('lb-1', conns[-1], 'p999'):.1f} ms (p99.9 = "
                     f"{med('lb-1', conns[-1], 'p999') / med('lb-1', conns[-1], 'p50'):.1f}x the p50; at {conns[0]:,} "
                     f"connections {med('lb-1', conns[0], 'p999') / med('lb-1', conns[0], 'p50'):.1f}x).")
    if "haproxy" in s2 and "lb-1" in s2:
        rat = [(c, med("lb-1", c, "rps") / med("haproxy", c, "rps")) for c in conns]
        p99r = [(c, med("lb-1", c, "p99") / med("haproxy", c, "p99")) for c in conns]
        starved_at = [c for c in conns if e("haproxy", c)["accept_drained_s"] is None or
                      e("haproxy", c)["accept_not_drained"] or e("haproxy", c)["accept_drained_s"]["max"] > warmup_of(data, c)]
        cpur = [(c, med("haproxy", c, "proxy_cpu_us_per_req") / med("lb-1", c, "proxy_cpu_us_per_req"))
                for c in conns if med("lb-1", c, "proxy_cpu_us_per_req") and med("haproxy", c, "proxy_cpu_us_per_req")]
        notes.append("- Against HAProxy (1 thread, pinned the same way), lb --cores 1's req/s ratio per connection count: "
                     + ", ".join(f"{c:,}: {v:.2f}x" for c, v in rat) + "; p99 ratio (lb / HAProxy, lower is better): "
                     + ", ".join(f"{c:,}: {v:.2f}{'*' if c in starved_at else ''}" for c, v in p99r)
                     + "; HAProxy's CPU per request over lb's: "
                     + ", ".join(f"{c:,}: {v:.2f}x" for c, v in cpur) + "."
                     + (" (* HAProxy had not accepted all of loadgen's connections by the start of the measured "
                        "window in at least one run: see the accept bullet below.)" if starved_at else ""))
    if "lb-2" in s1 and "lb-1" in s1:
        a, b = e("lb-1", c1), e("lb-2", c1)
        txt = (f"- At {c1} connections lb --cores 2 (unpinned) serves {b['rps']['median']:,.0f} req/s against "
               f"{a['rps']['median']:,.0f} for --cores 1 ({100 * (b['rps']['median'] / a['rps']['median'] - 1):+.0f}%), "
               f"using {b['proxy_cpus']['median']:.2f} CPUs instead of {a['proxy_cpus']['median']:.2f}. "
               f"With only {env['cpus']} CPUs for lb, loadgen and three backends together, a second lb core takes CPU "
               f"time from loadgen and the backends; the machine, not lb, is the limit.")
        if "lb-4" in s1:
            c4 = e("lb-4", c1)
            txt += (f" --cores 4 on {env['cpus']} CPUs (oversubscribed): {c4['rps']['median']:,.0f} req/s, "
                    f"p99 {c4['p99']['median']:.2f} ms, {c4['proxy_cpu_us_per_req']['median']:.2f} us of CPU per request.")
        notes.append(txt)
    acc = []
    for s in s2:
        for c in conns:
            x = e(s, c)
            # Only bursts worth the name: at least a tenth of the connections waited to be accepted.
            if not x or not x["accept_max_queue"] or x["accept_max_queue"]["max"] < max(c / 10, 100):
                continue
            who = data["series"][s]["label"]
            if x["accept_drained_s"] is None:
                acc.append(f"{who} at {c:,}: never emptied it (up to {x['accept_max_queue']['max']:,} waiting, "
                           f"{mm(x['accept_last_queue'])} still waiting {warmup_of(data, c) + data['duration_s']:g} s "
                           f"after loadgen's start, at the end of the measured window)")
            else:
                wu = warmup_of(data, c)
                late = x["accept_drained_s"]["max"] > wu
                acc.append(f"{who} at {c:,}: up to {x['accept_max_queue']['max']:,} waiting, all accepted after "
                           f"{mm(x['accept_drained_s'], f2)} s (warmup {wu:g} s{': not always enough' if late else ''})" +
                           (f" (never in {x['accept_not_drained']} of {x['rps']['n']} runs)" if x["accept_not_drained"] else ""))
    if acc:
        notes.append("- Accepting a burst while saturated: loadgen opens all its connections at once, the kernel "
                     "completes the handshakes and queues them on the listening socket, and the proxy has to "
                     "accept them while it is already busy relaying (timed from loadgen's start, `ss -ltn` every "
                     "0.2 s): " + "; ".join(acc) + f". The warmup ({data['warmup_s']:g} s + "
                     f"{data.get('warmup_per_1k_conns_s', 0):g} s per 1,024 connections) is meant to cover this, so "
                     "that the measured window is steady. Where a proxy never caught up, the first request on each "
                     "connection still in its queue waits until it is accepted: that wait is in its latency "
                     "percentiles (it is what a client would see), and a wait over loadgen's 5 s timeout "
                     "counts as a `timeout` error followed by a reconnect.")
    if data.get("failed_points"):
        notes.append("- Points that failed outright (loadgen error, not in the medians): " +
                     "; ".join(f"{f['series']} at {f['conns']:,}, round {f['round']}: {f['error'][-200:]}"
                               for f in data["failed_points"]) + ".")
    rss = [(s, e(s, conns[-1])["proxy_rss_max"]) for s in s2 if e(s, conns[-1]) and e(s, conns[-1])["proxy_rss_max"]]
    if rss:
        notes.append(f"- Memory at {conns[-1]:,} connections ({2 * conns[-1]:,} sockets in the proxy), largest RSS "
                     f"during the window: " + ", ".join(f"{data['series'][s]['label']} {v['median'] / 2**20:.1f} MiB"
                                                        for s, v in rss) +
                     ". (Each proxy runs for a whole round, so the smaller points of a round also show what a "
                     "larger one left allocated; the per-run figures are in the JSON.)")
    errs = {k: v for k, v in S.items() if v["errors"]}
    exited = {k: v["proxy_exited"] for k, v in S.items() if v["proxy_exited"]}
    if errs:
        notes.append("- Errors: " + "; ".join(f"{k}: {v['errors']} ({v['errors_by_kind']})" for k, v in errs.items())
                     + f" over {n} rounds.")
    else:
        notes.append(f"- No errors at any point (every run of every round, up to {max(conns):,} connections).")
    if exited:
        notes.append(f"- A proxy had exited after these points (restarted for the next one): {exited}.")
    other = [x["other_cpus"]["median"] for x in S.values() if x["other_cpus"]]
    other_max = [x["other_cpus"]["max"] for x in S.values() if x["other_cpus"]]
    steal = [x["steal_cpus"]["max"] for x in S.values() if x["steal_cpus"]]
    lb_, la_ = env["load_before"]["loadavg_1_5_15"], env["load_after"]["loadavg_1_5_15"]
    load_line = (f"Load on the machine: load average {' / '.join(lb_)} (1/5/15 min) before the run, "
                 f"{' / '.join(la_)} after (this run's own processes: lb, loadgen, 3 backends). CPU used by anything other than this "
                 f"run's processes during the measured windows: median {statistics.median(other):.2f} CPUs, at most "
                 f"{max(other_max):.2f} (of {env['cpus']}); steal at most {max(steal):.2f} CPUs.") if other else ""
    quick = ("\n**This is a `--quick` development run (1 round, 2 s per point, 3 connection counts): "
             "not for quoting.**\n" if data.get("quick") else "")
    md = f"""# Saturation: lb under more load than the CPUs can serve
{quick}
Keep-alive HTTP/1.1 GET, closed loop (`loadgen --cores 1`: every connection sends its next request as
soon as the previous answer is in), through the proxy to {data['backends']} `backend` processes
(`--cores 1` each, unpinned), round robin. {env['cpus']} CPUs, so every point is CPU-bound: lb, loadgen and
the backends share the same two CPUs. {env['pinning']}. {n} interleaved round{'s' if n > 1 else ''}: each
round runs every point once, in alternating order (A B C ..., ... C B A); a warmup of {data['warmup_s']:g} s
+ {data.get('warmup_per_1k_conns_s', 0):g} s per 1,024 connections, then {data['duration_s']:g} s measured per point. Figures are medians with (min-max) over the rounds. Proxy CPU
is utime + stime from `/proc/PID/stat`, sampled every 100 ms and taken over the measured window minus
0.3 s at each end, divided by req/s. HAProxy runs `mode tcp`, `nbthread 1`, `maxconn 9000` (under the
20,000 open-file limit).

## Sweep 1: lb --cores N at {c1} connections

![req/s per configuration](cores-rps.svg)
![latency per configuration](cores-latency.svg)
![proxy CPU per request](cores-cpu.svg)

| configuration | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | proxy CPU us/req | proxy CPUs busy | errors |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(t1)}

## Sweep 2: 64 to 4096 connections

![req/s vs connections](conns-rps.svg)
![latency vs connections, lb and HAProxy](conns-latency.svg)
![latency vs connections, lb 1 and 2 cores](conns-latency-cores.svg)
![proxy CPU per request vs connections](conns-cpu.svg)

| conns | proxy | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU us/req | burst of connections all accepted after (s) | errors |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(t2)}

Where the CPU goes per request (lb --cores 1 and HAProxy, pinned; microseconds of CPU per request,
medians): the proxy, the three backends together, loadgen; "machine busy" is the whole machine's
busy time over the window, in CPUs (2.00 = both CPUs fully busy).

| conns | proxy | proxy us/req | backends us/req | loadgen us/req | machine busy (CPUs) |
|---|---|---|---|---|---|
{chr(10).join(t3)}

## What the figures show

{chr(10).join(notes)}

{load_line}

Machine: {machine_line(env)}; {env['haproxy']}. The whole run took {data['wall_s'] / 60:.1f} minutes.

Rerun (from the repository root, after `cargo build --release --bins`; `flock` keeps two benchmarks
from running at once):

```sh
flock /tmp/lb-bench.lock {data['rerun']}
```

`python3 bench/experiments.py saturation --from-json` re-renders the charts and this file from
`saturation.json` without measuring.

Raw data: [saturation.json](saturation.json) (every run: latency, errors by kind, per-second timeline,
CPU window, commands, environment), [saturation.csv](saturation.csv) (one row per run),
[saturation-summary.csv](saturation-summary.csv) (medians and min-max per point).
"""
    (d / "summary.md").write_text(md)
