#!/usr/bin/env python3
"""Issue 2 benchmark: are the instruments cheaper than the tools people use?

1. backend --cores 1 vs nginx (`return 200`, one worker), both on CPU 0, under the same wrk load
   from CPU 1: server CPU per request and requests per second.
2. loadgen --cores 1 vs wrk -t1, both on CPU 1, against backend on CPU 0: requests per
   client CPU-second.
3. Latency agreement of loadgen and wrk at a low connection count.

Rounds are interleaved (A B B A ...); medians with min-max spread. Results go to --out DIR, by
default a fresh, git-ignored bench-results/runs/instruments-<time>/ (`--out bench-results/instruments`
replaces the committed results). Usage: bench/instruments.py [--rounds 5] [--duration 8] [--out DIR]
"""

import argparse
import json
import tempfile

from lbbench import *  # noqa: F401,F403


def wrk(port, conns, duration, cpu):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"]
    out, err, code, cpu_s = timed_client(argv, cpu, timeout=duration + 60)
    if code != 0:
        raise RuntimeError(f"wrk failed: {err}")
    r = parse_wrk(out)
    r["client_cpu_s"] = cpu_s
    r["command"] = " ".join(pinned(cpu, argv))
    return r


def loadgen(port, conns, duration, cpu):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        argv = [str(TARGET / "loadgen"), f"http://127.0.0.1:{port}/", "--cores", "1",
                "--conns", str(conns), "--duration", f"{duration}s", "--json", f.name]
        out, err, code, cpu_s = timed_client(argv, cpu, timeout=duration + 60)
        if code != 0:
            raise RuntimeError(f"loadgen failed ({code}): {err}")
        r = json.load(open(f.name))
    return {"requests": r["requests"], "rps": r["rps"], "errors": r["errors"],
            "latency_ms": r["latency_ms"], "client_cpu_s": cpu_s,
            "command": " ".join(pinned(cpu, argv[:-2]))}


def servers_part(rounds, duration, conns):
    b_port, n_port = free_port(), free_port()
    res = {"backend": [], "nginx": []}
    cmds = {}
    backend_argv = [str(TARGET / "backend"), "--listen", f"127.0.0.1:{b_port}", "--id", "backend", "--cores", "1"]
    cmds["backend"] = " ".join(pinned(0, backend_argv))
    cmds["nginx"] = "taskset -c 0 nginx -p DIR -c DIR/nginx.conf (worker_processes 1, master_process off, return 200)"
    with Server("backend", backend_argv, b_port, cpu=0) as b, nginx_http(n_port, 0) as n:
        srv = {"backend": (b, b_port), "nginx": (n, n_port)}
        for label in interleaved(["backend", "nginx"], rounds):
            s, port = srv[label]
            before = s.cpu()
            r = wrk(port, conns, duration, 1)
            r["server_cpu_s"] = s.cpu() - before
            r["server_cpu_us_per_req"] = r["server_cpu_s"] / r["requests"] * 1e6
            log(f"  {label:8} {r['rps']:>10.0f} req/s  server {r['server_cpu_us_per_req']:.2f} us CPU/req  errors {r['errors']}")
            res[label].append(r)
            cmds["wrk"] = r["command"].replace(str(port), "PORT")
    return res, cmds


CLIENTS = {"loadgen": loadgen, "wrk": wrk}


def clients_part(rounds, duration, conns, delay_ms=0, clients=None):
    """Each client of `clients` (label -> function like `loadgen`; default loadgen and wrk) against
    one backend on CPU 0, interleaved; requests per client CPU-second."""
    clients = clients or CLIENTS
    port = free_port()
    res = {label: [] for label in clients}
    cmds = {}
    backend_argv = [str(TARGET / "backend"), "--listen", f"127.0.0.1:{port}", "--id", "backend", "--cores", "1"]
    if delay_ms:
        backend_argv += ["--min-latency", str(delay_ms), "--max-latency", str(delay_ms)]
    cmds["backend"] = " ".join(pinned(0, backend_argv)).replace(str(port), "PORT")
    with Server("backend", backend_argv, port, cpu=0):
        for label in interleaved(list(clients), rounds):
            r = clients[label](port, conns, duration, 1)
            r["requests_per_cpu_s"] = r["requests"] / r["client_cpu_s"]
            log(f"  {label:8} {r['rps']:>10.0f} req/s  client {r['requests_per_cpu_s']:.0f} req/CPU-s  "
                f"p50 {r['latency_ms'].get('p50', 0):.3f} ms p99 {r['latency_ms'].get('p99', 0):.3f} ms")
            res[label].append(r)
            cmds[label] = r["command"].replace(str(port), "PORT")
    return res, cmds


def summary(values, key, sub=None):
    return median_spread([(v[key][sub] if sub else v[key]) for v in values])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per run")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--low-conns", type=int, default=4, help="connections for the latency comparison")
    ap.add_argument("--delay-ms", type=int, default=2, help="server delay for the latency comparison")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: a fresh bench-results/runs/instruments-<time>/)")
    a = ap.parse_args()
    ensure_packages({"nginx-light": "nginx", "wrk": "wrk"})
    if not a.no_build:
        build_release()

    log("part 1: backend vs nginx under wrk")
    servers, cmds1 = servers_part(a.rounds, a.duration, a.conns)
    log("part 2: loadgen vs wrk against backend")
    clients, cmds2 = clients_part(a.rounds, a.duration, a.conns)
    log(f"part 3: latency at {a.low_conns} connections")
    # A closed-loop client's latency includes its own overhead, so at zero server delay a faster
    # client simply measures lower latency. A fixed server delay makes both measure the same
    # thing: whether they agree is then a test of the measurement, not of the client's speed.
    low, cmds3 = clients_part(a.rounds, a.duration, a.low_conns, delay_ms=a.delay_ms)

    s = {k: {"rps": summary(v, "rps"), "cpu_us_per_req": summary(v, "server_cpu_us_per_req")} for k, v in servers.items()}
    c = {k: {"rps": summary(v, "rps"), "req_per_cpu_s": summary(v, "requests_per_cpu_s")} for k, v in clients.items()}
    lat = {k: {p: summary(v, "latency_ms", p) for p in ("p50", "p90", "p99", "mean")} for k, v in low.items()}
    cpu_ratio = s["backend"]["cpu_us_per_req"]["median"] / s["nginx"]["cpu_us_per_req"]["median"]
    rps_ratio = s["backend"]["rps"]["median"] / s["nginx"]["rps"]["median"]
    gen_ratio = c["loadgen"]["req_per_cpu_s"]["median"] / c["wrk"]["req_per_cpu_s"]["median"]
    lat_diff = {p: lat["loadgen"][p]["median"] / lat["wrk"][p]["median"] - 1 for p in ("p50", "p90", "p99", "mean")}

    env = environment({"rounds": a.rounds, "duration_s": a.duration, "conns": a.conns, "low_conns": a.low_conns,
                       "pinning": "servers on CPU 0, clients on CPU 1"})
    data = {"env": env, "servers": servers, "clients": clients, "latency_low_conns": low,
            "summary": {"servers": s, "clients": c, "latency": lat, "backend_cpu_ratio_vs_nginx": cpu_ratio,
                        "backend_rps_ratio_vs_nginx": rps_ratio, "loadgen_efficiency_ratio_vs_wrk": gen_ratio,
                        "latency_relative_difference": lat_diff},
            "commands": {**cmds1, **{"client_" + k: v for k, v in cmds2.items()},
                         **{"latency_" + k: v for k, v in cmds3.items()}}}

    def ms(x):
        return f"{x['median']:.0f} ({x['min']:.0f}-{x['max']:.0f})"

    def f2(x):
        return f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"

    def f3(x):
        return f"{x['median']:.3f} ({x['min']:.3f}-{x['max']:.3f})"

    ok = lambda b: "met" if b else "NOT met"
    md = f"""# Instruments: backend vs nginx, loadgen vs wrk

Taken {env['date_utc']} on {env['host']}: {env['cpus']} x {env['cpu_model']}, {env['mem_gib']} GiB,
Linux {env['kernel']}; {env['nginx']}; {env['wrk']}; {env['rustc']}; lb commit {env['git_commit']}.
Servers pinned to CPU 0, clients to CPU 1; {a.rounds} interleaved rounds of {a.duration} s each;
medians with (min-max). CPU from /proc (utime+stime). Rerun: `python3 bench/instruments.py`.

## 1. Test server: `backend --cores 1` vs nginx `return 200` (1 worker), wrk -t1 -c{a.conns}

| server | req/s | server CPU per request (us) |
|---|---|---|
| backend | {ms(s['backend']['rps'])} | {f2(s['backend']['cpu_us_per_req'])} |
| nginx | {ms(s['nginx']['rps'])} | {f2(s['nginx']['cpu_us_per_req'])} |

backend/nginx CPU per request: **{cpu_ratio:.2f}x** (target <= 0.70x: {ok(cpu_ratio <= 0.7)});
req/s: **{rps_ratio:.2f}x** (target >= 1.0x: {ok(rps_ratio >= 1.0)}).

## 2. Load generator: `loadgen --cores 1` vs `wrk -t1`, {a.conns} connections, against backend

| client | req/s | requests per client CPU-second |
|---|---|---|
| loadgen | {ms(c['loadgen']['rps'])} | {ms(c['loadgen']['req_per_cpu_s'])} |
| wrk | {ms(c['wrk']['rps'])} | {ms(c['wrk']['req_per_cpu_s'])} |

loadgen/wrk requests per CPU-second: **{gen_ratio:.2f}x** (target >= 1.4x: {ok(gen_ratio >= 1.4)}).

## 3. Latency agreement at {a.low_conns} connections, backend delaying each answer {a.delay_ms} ms (ms)

| client | p50 | p90 | p99 | mean |
|---|---|---|---|---|
| loadgen | {f3(lat['loadgen']['p50'])} | {f3(lat['loadgen']['p90'])} | {f3(lat['loadgen']['p99'])} | {f3(lat['loadgen']['mean'])} |
| wrk | {f3(lat['wrk']['p50'])} | {f3(lat['wrk']['p90'])} | {f3(lat['wrk']['p99'])} | {f3(lat['wrk']['mean'])} |

loadgen relative to wrk: p50 {lat_diff['p50']:+.1%}, p90 {lat_diff['p90']:+.1%}, p99 {lat_diff['p99']:+.1%},
mean {lat_diff['mean']:+.1%} (target within 10% at p50 and mean:
{ok(abs(lat_diff['p50']) <= 0.1 and abs(lat_diff['mean']) <= 0.1)}).

## Commands

```
{chr(10).join(f'{k}: {v}' for k, v in data['commands'].items())}
```
Raw per-round figures: `instruments.json` beside this file.
"""
    out = run_dir("instruments", a.out)
    write_results(out, "instruments", data, md)
    print(md)
    log(f"results in {out}")


if __name__ == "__main__":
    main()
