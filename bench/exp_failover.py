"""A-3 failover: a backend killed in the middle of a run, with and without retries, and a
self-healing replica that lb restarts.

Every variant runs lb (1 core, pinned) in front of 3 backends s1..s3 under an open-loop load of
new connections (loadgen --rate, 100 ms timeline buckets), kills s2 with SIGKILL a few seconds in,
and records: errors per 100 ms, connections per backend per 100 ms (lb's admin API, polled every
50 ms), and the moments lb logged s2 DOWN, restarted it and logged it UP again.

  health-checks-only  retry.tries = 1 and passive ejection off (eject_ms = 1): every client lb
                      sends to s2 fails until the active checks take it out.
  passive-ejection    retry.tries = 1, ejection on (default 2 s, doubling): the core that saw the
                      refused connect skips s2 at once.
  retries             retry.tries = 3 (the default): a refused connect is retried on another backend.
  self-healing        the retries variant, but s1..s3 are lb's own supervised replicas: lb restarts
                      the killed one and it rejoins once its checks pass.
"""

import csv
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import lbbench
from expcommon import LB_CPU, LG_CPU, machine_line, out_dir, wait_quiet
from lbbench import TARGET, Server, free_port, log, pinned, wait_port
from svgchart import bar_chart_err, timeline_chart

HELP = "A-3: a backend killed mid-test (timeline), with and without retries, and self-healing replicas"
DIR = "a3-failover"
BUCKET_MS = 100
POLL_S = 0.05

# name, retry.tries, retry.eject_ms (None = default), replicas, description
VARIANTS = [
    ("health-checks-only", 1, 1, False, "no retry, no passive ejection"),
    ("passive-ejection", 1, None, False, "no retry, passive ejection on"),
    ("retries", 3, None, False, "3 tries, passive ejection on"),
    ("self-healing", 3, None, True, "3 tries, lb restarts its own replica"),
]
HEALTH = {"check": "http", "interval_ms": 500, "timeout_ms": 250, "fall": 2, "rise": 2}


def add_arguments(p):
    p.add_argument("--rate", type=int, default=500, help="new-connection requests per second (default 500)")
    p.add_argument("--duration", type=float, default=14.0, help="seconds of load per variant (default 14)")
    p.add_argument("--kill-at", type=float, default=4.0, help="seconds into the load when s2 is killed (default 4)")
    p.add_argument("--conns", type=int, default=32, help="loadgen connections (default 32)")
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS),
                   help="comma-separated subset of: " + ", ".join(v[0] for v in VARIANTS))


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def consecutive_free_ports(n):
    """n consecutive free loopback ports (replicas listen on base_port, base_port+1, ...)."""
    import socket
    for _ in range(200):
        base = free_port()
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of consecutive free ports")


def lb_config(port, admin, tries, eject_ms, backend_ports, replica_base):
    lines = [f'listen = "127.0.0.1:{port}"', "cores = 1", 'algorithm = "round_robin"']
    for i, p in enumerate(backend_ports or []):
        lines += ["[[backends]]", f'address = "127.0.0.1:{p}"', f'name = "s{i + 1}"']
    lines += ["[health]"] + [f"{k} = {json.dumps(v)}" for k, v in HEALTH.items()] + ["slow_start_ms = 1"]
    lines += ["[retry]", f"tries = {tries}"]
    if eject_ms is not None:
        lines += [f"eject_ms = {eject_ms}", f"eject_max_ms = {eject_ms}"]
    lines += ["[timeouts]", "connect_ms = 500", "[admin]", f'listen = "127.0.0.1:{admin}"']
    if replica_base:
        lines += ["[replicas]", "count = 3", f"base_port = {replica_base}"]
    return "\n".join(lines) + "\n"


def replica_pid(lb_pid, sid):
    """PID of lb's child process that serves `sid` (a replica started as `backend ... --id sid`)."""
    for task in os.listdir(f"/proc/{lb_pid}/task"):
        try:
            kids = open(f"/proc/{lb_pid}/task/{task}/children").read().split()
        except OSError:
            continue
        for k in kids:
            try:
                argv = open(f"/proc/{k}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"--id" in argv and argv[argv.index(b"--id") + 1].decode() == sid:
                return int(k)
    return None


def lb_stats(admin_port):
    """lb's GET /lb/stats, parsed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/lb/stats", timeout=1) as r:
        return json.load(r)


class AdminPoller(threading.Thread):
    """Polls GET /lb/stats every POLL_S; keeps (wall time, {backend: (state, connections_total)})."""

    def __init__(self, admin_port):
        super().__init__(daemon=True)
        self.admin_port = admin_port
        self.samples = []
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            t = time.time()
            try:
                st = lb_stats(self.admin_port)
                self.samples.append((t, {b["name"]: (b["state"], b["connections_total"]) for b in st["backends"]}))
            except OSError:
                pass
            self.stop_flag.wait(POLL_S)


def first_accept(admin_port, deadline):
    """Wall time at which lb has accepted its first connection (polled every 2 ms)."""
    while time.time() < deadline:
        if sum(c["accepted"] for c in lb_stats(admin_port)["cores"]):
            return time.time()
        time.sleep(0.002)
    raise RuntimeError("loadgen's first connection never reached lb")


def lb_events(log_path, sid):
    """(kind, wall time) of what lb logged about `sid`: DOWN, UP, replica restarted."""
    events = []
    for line in open(log_path, errors="replace"):
        # lb logs backend names escaped (Debug: quoted); replica ids plain.
        if (f"backend={sid} " not in line and f'backend="{sid}" ' not in line
                and f"id={sid} " not in line):
            continue
        kind = ("down" if "backend DOWN" in line else "up" if "backend UP" in line
                else "back" if "accepts connections; back in rotation" in line
                else "restarted" if "restarted local backend replica" in line
                else "exited" if "local backend replica exited" in line
                else "unejected" if "backend accepts connections again" in line else None)
        if kind:
            ts = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            events.append((kind, ts))
    return events


# ---------------------------------------------------------------------------------------------
# One variant
# ---------------------------------------------------------------------------------------------

def run_variant(name, tries, eject_ms, replicas, args, tmp):
    wait_quiet()
    port, admin = free_port(), free_port()
    backend_ports = [free_port() for _ in range(3)] if not replicas else None
    replica_base = consecutive_free_ports(3) if replicas else None
    conf = tmp / f"{name}.toml"
    conf.write_text(lb_config(port, admin, tries, eject_ms, backend_ports, replica_base))
    log_path = tmp / f"{name}.log"
    backends, lb, lg = [], None, None
    poller = AdminPoller(admin)
    try:
        for i, p in enumerate(backend_ports or []):
            backends.append(lbbench.backend_proc(p, None, f"s{i + 1}"))
        lb = Server("lb", [str(TARGET / "lb"), "--config", str(conf)], port, cpu=LB_CPU,
                    env={"RUST_LOG": "info"}, log=log_path)
        wait_port(admin)
        if replicas:
            for i in range(3):
                wait_port(replica_base + i)
        poller.start()
        time.sleep(0.3)
        json_path = tmp / f"{name}.json"
        lg_argv = [str(TARGET / "loadgen"), f"http://127.0.0.1:{port}/", "--new-connection",
                   "--rate", str(args.rate), "--conns", str(args.conns), "--duration", f"{args.duration}s",
                   "--timeout", "2s", "--timeline-ms", str(BUCKET_MS), "--json", str(json_path)]
        lg_cmd = pinned(LG_CPU, lg_argv) if LG_CPU is not None else lg_argv
        lg = subprocess.Popen(lg_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Until loadgen reports its start (started_unix_ms in its JSON), estimate it as the moment
        # its first connection reaches lb, to schedule the kill.
        t_load = first_accept(admin, time.time() + 10)
        time.sleep(max(0.0, t_load + args.kill_at - time.time()))
        if replicas:
            victim = replica_pid(lb.proc.pid, "s2")
            if victim is None:
                raise RuntimeError("cannot find replica s2 among lb's children")
            t_kill = time.time()
            os.kill(victim, signal.SIGKILL)
        else:
            t_kill = time.time()
            backends[1].proc.kill()
        _, err = lg.communicate(timeout=args.duration + 60)
        if lg.returncode != 0:
            raise RuntimeError(f"loadgen failed ({lg.returncode}): {err[-2000:]}")
        time.sleep(0.2)
    finally:
        poller.stop_flag.set()
        if lg is not None and lg.poll() is None:
            lg.kill()
        for proc in [lb] + backends:
            if proc is not None:
                proc.stop()
    r = json.load(open(json_path))
    # loadgen's own record of t = 0 lines its timeline up with lb's log to the millisecond.
    t_load = r["started_unix_ms"] / 1000.0
    return analyse(name, tries, eject_ms, replicas, r, poller.samples, lb_events(log_path, "s2"),
                   t_load, t_kill, conf.read_text(), " ".join(lg_cmd[:-2]))


def analyse(name, tries, eject_ms, replicas, r, samples, events, t_load, t_kill, conf_text, lg_cmd):
    kill_s = t_kill - t_load

    def rel(t):
        return None if t is None else round(t - t_kill, 3)

    down = next((t for k, t in events if k == "down" and t >= t_kill), None)
    restarted = next((t for k, t in events if k == "restarted" and t >= t_kill), None)
    up = next((t for k, t in events if k == "up" and t >= t_kill), None)
    # First moment after the replacement started (or, without one, after lb saw s2 UP again) at
    # which s2's connection count grew: it serves. Growth before that is the dying process's
    # listener still completing handshakes, not a recovery.
    served = None
    since = restarted if restarted is not None else up
    if since is not None:
        base = None
        for t, b in samples:
            if t < since or "s2" not in b:
                continue
            if base is None:
                base = b["s2"][1]
            elif b["s2"][1] > base:
                served = t
                break
    buckets = [{"t_s": e["t_ms"] / 1000.0, "requests": e["requests"], "errors": e["errors"],
                "errors_by_kind": e.get("errors_by_kind", {})} for e in r["timeline"]]
    errs_after_kill = sum(b["errors"] for b in buckets if b["t_s"] + BUCKET_MS / 1000 > kill_s)
    det_s = None if down is None else down - t_load
    # A request in the bucket of detection may have started before it: count from the next bucket.
    errs_after_det = None if det_s is None else sum(b["errors"] for b in buckets if b["t_s"] >= det_s + 0.1)
    err_times = [b["t_s"] for b in buckets if b["errors"]]
    per_backend = backend_rates(samples, t_load)
    return {
        "variant": name, "retry_tries": tries, "eject_ms": eject_ms if eject_ms is not None else "default (2000)",
        "replicas": replicas, "kill_at_s": round(kill_s, 3),
        "detection_ms": None if down is None else round(1000 * (down - t_kill)),
        "restarted_ms": None if restarted is None else round(1000 * (restarted - t_kill)),
        "up_again_ms": None if up is None else round(1000 * (up - t_kill)),
        "serving_again_ms": None if served is None else round(1000 * (served - t_kill)),
        "requests": r["requests"], "errors": r["errors"], "errors_by_kind": {k: n for k, n in r["errors_by_kind"].items() if n},
        "errors_after_kill": errs_after_kill, "errors_after_detection": errs_after_det,
        "first_error_s": rel(t_load + err_times[0]) if err_times else None,
        "last_error_s": rel(t_load + err_times[-1] + BUCKET_MS / 1000) if err_times else None,
        "rps": r["rps"], "latency_ms": r["latency_ms"], "servers": r["servers"],
        "lb_events_s2": [(k, rel(t)) for k, t in events], "timeline": buckets, "per_backend": per_backend,
        "lb_config": conf_text, "loadgen": lg_cmd,
    }


def backend_rates(samples, t_load):
    """Connections per second per backend, from consecutive admin samples, on the load's clock."""
    out = []
    for (t0, b0), (t1, b1) in zip(samples, samples[1:]):
        dt = t1 - t0
        if dt <= 0:
            continue
        out.append({"t_s": round((t0 + t1) / 2 - t_load, 3),
                    "state": {n: s for n, (s, _) in b1.items()},
                    "conn_per_s": {n: (b1[n][1] - b0[n][1]) / dt for n in b1 if n in b0}})
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def smooth(points, width):
    """Mean over a window of `width` samples (the admin samples are noisy at 50 ms)."""
    out = []
    for i in range(len(points)):
        w = points[max(0, i - width + 1):i + 1]
        out.append(sum(w) / len(w))
    return out


def chart_variant(d, v, args):
    pb = [p for p in v["per_backend"] if 0 <= p["t_s"] <= args.duration]
    xs = [p["t_s"] for p in pb]
    series = {f"{n} connections/s (lb)": smooth([p["conn_per_s"].get(n, 0) for p in pb], 4)
              for n in ("s1", "s2", "s3")}
    # Errors per second from the loadgen buckets, resampled onto the admin sample times.
    tl = v["timeline"]

    def err_rate(t):
        for b in tl:
            if b["t_s"] <= t < b["t_s"] + BUCKET_MS / 1000:
                return b["errors"] * 1000 / BUCKET_MS
        return 0
    series["client errors/s (loadgen)"] = [err_rate(x) for x in xs]
    k = v["kill_at_s"]
    events = [(k, "s2 killed")]
    for key, label in (("detection_ms", "lb: s2 DOWN"), ("restarted_ms", "replica restarted"),
                       ("up_again_ms", "lb: s2 UP"), ("serving_again_ms", "s2 serves")):
        if v[key] is not None:
            events.append((k + v[key] / 1000, f"{label} (+{v[key]} ms)"))
    timeline_chart(d / f"a3-{v['variant']}.svg",
                   f"A-3 {v['variant']}: s2 killed at {k:.1f} s ({args.rate} new connections/s)",
                   xs, series, "time since the load started (s)", "per second (connections, errors)",
                   events=events, note=f"retry.tries = {v['retry_tries']}\n"
                                       f"eject_ms = {v['eject_ms']}\n"
                                       f"health: http every {HEALTH['interval_ms']} ms,\n"
                                       f"fall {HEALTH['fall']}, rise {HEALTH['rise']}")


def write(results, args, env):
    d = out_dir(DIR)
    rerun = (f"python3 bench/experiments.py a3 --rate {args.rate} --duration {args.duration:g} "
             f"--kill-at {args.kill_at:g} --conns {args.conns}")
    data = {"experiment": "A-3 failover", "rerun": rerun, "environment": env, "health": HEALTH,
            "bucket_ms": BUCKET_MS, "results": results}
    (d / "a3.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(d / "a3.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "t_s", "requests", "errors", "errors_by_kind"])
        for v in results:
            for b in v["timeline"]:
                w.writerow([v["variant"], f"{b['t_s']:.1f}", b["requests"], b["errors"],
                            " ".join(f"{k}={n}" for k, n in b["errors_by_kind"].items())])
    for v in results:
        chart_variant(d, v, args)
    names = [v["variant"] for v in results]
    bar_chart_err(d / "a3-errors.svg", "A-3: failed requests after s2 is killed, per variant", names,
              ["before lb marked s2 DOWN", "after lb marked s2 DOWN"],
              [[v["errors_after_kill"] - (v["errors_after_detection"] or 0) for v in results],
               [v["errors_after_detection"] or 0 for v in results]],
              "variant (lb 1 core, 3 backends, s2 killed with SIGKILL)", "failed requests (count)", right=240)

    def ms(x):
        return "n/a" if x is None else f"{x:,} ms"
    rows = [f"| `{v['variant']}` | {v['retry_tries']} | {v['eject_ms']} | {v['requests']:,} | {v['errors']} | "
            f"{'n/a' if v['errors_after_detection'] is None else v['errors_after_detection']} | {ms(v['detection_ms'])} | {ms(v['restarted_ms'])} | "
            f"{ms(v['up_again_ms'])} | {ms(v['serving_again_ms'])} | "
            f"{', '.join(f'{k} {n}' for k, n in v['errors_by_kind'].items()) or '-'} |" for v in results]
    charts = "\n".join(f"![{v['variant']}](a3-{v['variant']}.svg)" for v in results)
    by = {v["variant"]: v for v in results}
    bound = HEALTH["fall"] * (HEALTH["interval_ms"] + HEALTH["timeout_ms"]) + HEALTH["interval_ms"]
    findings = summary_findings(by, bound)
    md = f"""# A-3: a backend killed in the middle of the run

lb (1 core, `round_robin`) in front of three backends s1, s2, s3; loadgen sends {args.rate} requests per
second, each on a new connection (open loop, {args.conns} connections, 2 s timeout), for {args.duration:g} s;
s2 is killed with SIGKILL {args.kill_at:g} s in. Active checks: HTTP `GET /health` every
{HEALTH['interval_ms']} ms, timeout {HEALTH['timeout_ms']} ms, `fall = {HEALTH['fall']}`, `rise = {HEALTH['rise']}`,
so the documented bound for taking a dead backend out is fall x (interval + timeout) + one interval
= {bound:,} ms. Times below are from the kill; DOWN, restart and UP come from lb's log, "serves again"
from lb's admin API (polled every {int(POLL_S * 1000)} ms: the first poll where s2's connection count grew again).

![errors per variant](a3-errors.svg)

| variant | retry.tries | eject_ms | requests | errors | errors after DOWN | s2 DOWN after | replica restarted after | s2 UP after | s2 serves again after | errors by kind |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{charts}

What it shows:

{findings}

Machine: {machine_line(env)}; lb pinned to CPU {LB_CPU}, loadgen to CPU {LG_CPU}, backends unpinned.

Rerun (from the repository root, after `cargo build --release --bins`):

```sh
{rerun}
```

Raw data: [a3.json](a3.json) (per variant: lb config, loadgen command, 100 ms timeline, admin samples,
lb's log events), [a3.csv](a3.csv) (the timelines).
"""
    (d / "summary.md").write_text(md)
    log(f"wrote {d}")


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_findings(by, bound):
    out = []
    h = by.get("health-checks-only")
    if h:
        out.append(f"- Without retries and without passive ejection, every client lb sent to s2 between the kill and "
                   f"the health checks' verdict failed: {h['errors_after_kill']} errors, the last of them in the "
                   f"100 ms bucket that ends {h['last_error_s']} s after the kill; s2 was DOWN after "
                   f"{h['detection_ms']} ms (bound {bound:,} ms), and {h['errors_after_detection']} requests failed "
                   f"from the next bucket on.")
    p = by.get("passive-ejection")
    if p:
        out.append(f"- Passive ejection alone (still no retry) cut that to {p['errors_after_kill']}: the first refused "
                   f"connect makes the core skip s2 for eject_ms, so only the clients already on their way to s2 fail.")
    r = by.get("retries")
    if r:
        kinds = ", ".join(f"{k} {n}" for k, n in r["errors_by_kind"].items()) or "none"
        out.append(f"- With retries (the default, 3 tries) a refused connect goes to another backend: "
                   f"{plural(r['errors_after_kill'], 'error')} after the kill ({kinds}). What remains are requests "
                   f"whose bytes had already gone to s2 when it died (`closed_early`: lb never replays those), or "
                   f"connections the dying process's kernel socket accepted and then reset (`reset`).")
    s = by.get("self-healing")
    if s:
        if s["detection_ms"] is None:
            checks = (f"The replacement was listening before the active checks could fail {HEALTH['fall']} times "
                      f"in a row, so s2 was never marked DOWN")
        else:
            checks = (f"The checks marked s2 DOWN after {s['detection_ms']} ms and UP again after "
                      f"{s['up_again_ms']} ms (rise = {HEALTH['rise']})")
        back = [t for k, t in s["lb_events_s2"] if k == "back"]
        unej = [t for k, t in s["lb_events_s2"] if k == "unejected"]
        if back:
            hold = (f": the supervisor saw the replacement listen {back[0]} s after the kill and told every core, "
                    f"which cleared the passive ejection that s2's refused connects had caused (before that fix, "
                    f"this waited out eject_ms, 2 s)")
        elif unej:
            hold = (f"; what delays its first connection is passive ejection: the refused connect at the kill made "
                    f"the core skip s2 for eject_ms, and lb logged it accepting connections again {unej[0]} s "
                    f"after the kill")
        else:
            hold = ""
        out.append(f"- Self-healing: lb saw its replica exit and restarted it after {s['restarted_ms']} ms. {checks}. "
                   f"It served again after {s['serving_again_ms']} ms{hold}. Client errors over the whole episode: "
                   f"{s['errors_after_kill']}.")
    return "\n".join(out)


def run(args):
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in {v[0] for v in VARIANTS}]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(v[0] for v in VARIANTS)}")
    if not 0 < args.kill_at < args.duration:
        raise SystemExit("--kill-at must be inside the load (0 < kill-at < duration)")
    tmp = Path(tempfile.mkdtemp(prefix="lb-a3-"))
    results = []
    for name, tries, eject, replicas, desc in VARIANTS:
        if name not in names:
            continue
        log(f"A-3 {name}: {desc}")
        v = run_variant(name, tries, eject, replicas, args, tmp)
        log(f"  errors {v['errors']} (after DOWN {v['errors_after_detection']}), DOWN after {v['detection_ms']} ms, "
            f"serving again after {v['serving_again_ms']} ms")
        results.append(v)
    env = lbbench.environment({"pinning": f"lb on CPU {LB_CPU}, loadgen on CPU {LG_CPU}, backends unpinned"})
    write(results, args, env)
    return results
