#!/usr/bin/env python3
"""Issue 3 benchmark: lb against HAProxy (mode tcp) and nginx stream, side by side in one run.

Proxies (one thread or worker each) are pinned to CPU 0; loadgen and three `backend`s to CPU 1.
1. Proxy CPU per request and req/s at 64 and 512 keep-alive connections, and with a new
   connection per request.
2. p99 latency each proxy adds over going direct, at a fixed request rate (open loop).
3. Memory of 5,000 idle proxied connections (RSS growth per connection).
4. Full stack on both cores, unpinned: loadgen -> lb -> backend vs wrk -> HAProxy -> nginx.
Rounds interleaved (A B C C B A ...); medians with (min-max). Writes bench-results/proxies/:
proxies.json (raw), proxies.md (tables) and SVG charts (headline.svg, cpu-per-request.svg,
latency-added.svg, memory-per-conn.svg, full-stack.svg).
Usage: bench/proxies.py [--rounds 5] [--duration 8]
       bench/proxies.py --charts-only      (re-render charts and proxies.md from proxies.json)
"""

import argparse
import json
import resource
import socket as so

from lbbench import *  # noqa: F401,F403
from svgchart import bar_chart_err, hbar_chart

PROXIES = ["lb", "haproxy", "nginx"]


POOL = 16  # pre-connected connections per backend for the "lb+pool" variant


def start_proxy(name, port, backends, cpu, threads=1):
    if name == "lb":
        return lb_proc(port, backends, cpu, cores=threads)
    if name == "lb+pool":
        return lb_proc(port, backends, cpu, cores=threads, pool=POOL)
    if name == "lb-readiness":
        return lb_proc(port, backends, cpu, cores=threads, relay_mode="readiness")
    if name == "haproxy":
        return haproxy_proc(port, backends, cpu, threads=threads)
    return nginx_stream_proc(port, backends, cpu)


def throughput(rounds, duration, backends):
    res = {}
    names = PROXIES + ["lb-readiness", "lb+pool"]
    ports = {p: free_port() for p in names}
    procs = {p: start_proxy(p, ports[p], backends, 0) for p in names}
    try:
        for mode, args in (("keepalive-64", ["--conns", "64"]), ("keepalive-512", ["--conns", "512"]),
                           ("newconn-64", ["--conns", "64", "--new-connection"])):
            # The pool only matters when connections are new: measure it there.
            who = names if mode.startswith("newconn") else names[:-1]
            res[mode] = {p: [] for p in who}
            for p in interleaved(who, rounds):
                before = procs[p].cpu()
                r = loadgen_json(f"http://127.0.0.1:{ports[p]}/", ["--cores", "1", "--duration", f"{duration}s", *args], cpu=1)
                cpu = procs[p].cpu() - before
                row = {"rps": r["rps"], "requests": r["requests"], "errors": r["errors"], "proxy_cpu_s": cpu,
                       "proxy_cpu_us_per_req": cpu / max(r["requests"], 1) * 1e6,
                       "requests_per_proxy_cpu_s": r["requests"] / max(cpu, 1e-9),
                       "latency_ms": r["latency_ms"], "command": r["command"].replace(str(ports[p]), "PORT")}
                log(f"  {mode:14} {p:8} {row['rps']:>9.0f} req/s  {row['proxy_cpu_us_per_req']:.2f} us/req  errors {row['errors']}")
                res[mode][p].append(row)
    finally:
        for s in procs.values():
            s.stop()
    return res


def latency(rounds, duration, rate, conns):
    b_port = free_port()
    res = {k: [] for k in ["direct", *PROXIES]}
    with backend_proc(b_port, 1, "s1") as _b:
        ports = {p: free_port() for p in PROXIES}
        procs = {p: start_proxy(p, ports[p], [b_port], 0) for p in PROXIES}
        ports["direct"] = b_port
        try:
            for p in interleaved(["direct", *PROXIES], rounds):
                r = loadgen_json(f"http://127.0.0.1:{ports[p]}/",
                                 ["--cores", "1", "--conns", str(conns), "--rate", str(rate), "--duration", f"{duration}s"], cpu=1)
                log(f"  latency {p:8} p50 {r['latency_ms']['p50']:.3f} p99 {r['latency_ms']['p99']:.3f} ms errors {r['errors']}")
                res[p].append({"latency_ms": r["latency_ms"], "rps": r["rps"], "errors": r["errors"],
                               "command": r["command"].replace(str(ports[p]), "PORT")})
        finally:
            for s in procs.values():
                s.stop()
    return res


def idle_memory(n, backend_port):
    """Opens n connections through each proxy, one request each, holds them, and reports RSS growth."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    res = {}
    for p in PROXIES + ["lb-readiness"]:
        port = free_port()
        with start_proxy(p, port, [backend_port], 0) as proc:
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
            log(f"  memory {p:8} {res[p]['bytes_per_conn'] / 1024:.2f} KiB per idle connection")
    return res


def full_stack(rounds, duration, conns):
    """Both cores, unpinned. Ours: loadgen --cores 2 -> lb --cores 2 -> 3 backends.
    Theirs: wrk -t2 -> haproxy nbthread 2 -> 3 nginx (one worker each)."""
    res = {"ours": [], "theirs": []}
    ours_b = [free_port() for _ in range(3)]
    theirs_b = [free_port() for _ in range(3)]
    lb_port, ha_port = free_port(), free_port()
    servers = [backend_proc(p, None, f"s{i}") for i, p in enumerate(ours_b)]
    servers += [nginx_http(p, None, f"n{i}") for i, p in enumerate(theirs_b)]
    servers.append(lb_proc(lb_port, ours_b, None, cores=2))
    servers.append(haproxy_proc(ha_port, theirs_b, None, threads=2))
    cmds = {}
    try:
        for side in interleaved(["ours", "theirs"], rounds):
            if side == "ours":
                r = loadgen_json(f"http://127.0.0.1:{lb_port}/", ["--cores", "2", "--conns", str(conns), "--duration", f"{duration}s"])
                row = {"rps": r["rps"], "errors": r["errors"], "p99_ms": r["latency_ms"]["p99"]}
                cmds["ours"] = r["command"].replace(str(lb_port), "PORT")
            else:
                argv = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{ha_port}/"]
                out, err, code, _ = timed_client(argv, None, timeout=duration + 60)
                w = parse_wrk(out)
                row = {"rps": w["rps"], "errors": w["errors"], "p99_ms": w["latency_ms"].get("p99")}
                cmds["theirs"] = " ".join(argv).replace(str(ha_port), "PORT")
            log(f"  full-stack {side:6} {row['rps']:>9.0f} req/s errors {row['errors']}")
            res[side].append(row)
    finally:
        for s in servers:
            s.stop()
    return res, cmds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rate", type=int, default=5000, help="req/s for the latency comparison")
    ap.add_argument("--idle", type=int, default=5000, help="idle connections for the memory figure")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--only", choices=["throughput", "latency", "memory", "fullstack"], action="append")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: a fresh bench-results/runs/proxies-<time>/)")
    ap.add_argument("--charts-only", action="store_true",
                    help="measure nothing: re-render the charts and proxies.md from bench-results/proxies/proxies.json")
    a = ap.parse_args()
    if a.charts_only:
        out = Path(a.out) if a.out else RESULTS / "proxies"
        data = json.loads((out / "proxies.json").read_text())
        env = data["env"]
        run_args = argparse.Namespace(rounds=env.get("rounds", a.rounds), duration=env.get("duration_s", a.duration),
                                      rate=env.get("rate", a.rate), idle=env.get("idle", a.idle))
        charts(data, out)
        (out / "proxies.md").write_text(report(data, run_args))
        log(f"re-rendered {out / 'proxies.md'} and the charts from proxies.json")
        return
    ensure_packages({"haproxy": "haproxy", "nginx-light": "nginx", "libnginx-mod-stream": "/usr/lib/nginx/modules/ngx_stream_module.so", "wrk": "wrk"})
    if not a.no_build:
        build_release()
    only = set(a.only or ["throughput", "latency", "memory", "fullstack"])
    data = {"env": environment({"rounds": a.rounds, "duration_s": a.duration, "rate": a.rate, "idle": a.idle,
                                "pinning": "proxies on CPU 0; loadgen and backends on CPU 1 (full stack: unpinned)"})}
    bports = [free_port() for _ in range(3)]
    backends = [backend_proc(p, 1, f"s{i}") for i, p in enumerate(bports)]
    try:
        if "throughput" in only:
            log("part 1: throughput and CPU per request")
            data["throughput"] = throughput(a.rounds, a.duration, bports)
        if "memory" in only:
            log("part 3: idle connection memory")
            data["memory"] = idle_memory(a.idle, bports[0])
    finally:
        for b in backends:
            b.stop()
    if "latency" in only:
        log("part 2: latency added at a fixed rate")
        data["latency"] = latency(a.rounds, a.duration, a.rate, 64)
    if "fullstack" in only:
        log("part 4: full stack, both cores, unpinned")
        data["fullstack"], data["fullstack_commands"] = full_stack(a.rounds, a.duration, 256)
    md = report(data, a)
    out = write_results(run_dir("proxies", a.out), "proxies", data, md)
    charts(data, out)
    print(md)


def med(rows, key, sub=None):
    return median_spread([r[key][sub] if sub else r[key] for r in rows])


def report(data, a):
    env = data["env"]
    lines = [f"# lb vs HAProxy vs nginx stream\n",
             f"Taken {env['date_utc']} on {env['host']}: {env['cpus']} x {env['cpu_model']}, {env['mem_gib']} GiB, "
             f"Linux {env['kernel']}; {env['haproxy']}; {env['nginx']}; {env['rustc']}; lb commit {env['git_commit']}.",
             f"{env['pinning']}. {a.rounds} interleaved rounds of {a.duration} s; medians with (min-max). "
             f"CPU from /proc. Rerun: `python3 bench/proxies.py`; `python3 bench/proxies.py --charts-only` "
             f"re-renders the charts and this file from proxies.json.\n"]
    if headline_rows(data):
        lines.append("![lb relative to HAProxy and nginx](headline.svg)\n")
    if "throughput" in data:
        lines.append("## 1. Proxy CPU per request (one thread each)\n")
        lines.append("![proxy CPU per request](cpu-per-request.svg)\n")
        lines.append("| load | proxy | req/s | proxy CPU us/req | req per proxy CPU-s | lb (no pool) relative to it |")
        lines.append("|---|---|---|---|---|---|")
        for mode, by in data["throughput"].items():
            lbv = med(by["lb"], "requests_per_proxy_cpu_s")["median"]
            for p in by:
                rps, cpu, eff = med(by[p], "rps"), med(by[p], "proxy_cpu_us_per_req"), med(by[p], "requests_per_proxy_cpu_s")
                adv = "" if p == "lb" else f"{lbv / eff['median']:.2f}x"
                lines.append(f"| {mode} | {p} | {rps['median']:.0f} ({rps['min']:.0f}-{rps['max']:.0f}) | "
                             f"{cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f}) | {eff['median']:.0f} | {adv} |")
        lines.append(f"\nTarget: lb >= 1.4x HAProxy's requests per CPU-second at 64 and 512 connections. "
                     f"`lb` runs the default completion relay (io_uring recv/send); `lb-readiness` is "
                     f"`relay.mode = \"readiness\"` (poll, then recv/send through a per-core buffer); `lb+pool` is lb with {POOL} "
                     f"pre-connected idle connections per backend (pool.idle_per_backend).\n")
    if "latency" in data:
        lat = data["latency"]
        d50, d99 = med(lat["direct"], "latency_ms", "p50")["median"], med(lat["direct"], "latency_ms", "p99")["median"]
        lines.append(f"## 2. Latency added at {a.rate} req/s, 64 connections, one backend (ms)\n")
        lines.append("![latency added over direct](latency-added.svg)\n")
        lines.append("| path | p50 | p99 | p99 added over direct |")
        lines.append("|---|---|---|---|")
        for p in ["direct", *PROXIES]:
            p50, p99 = med(lat[p], "latency_ms", "p50"), med(lat[p], "latency_ms", "p99")
            added = "" if p == "direct" else f"{p99['median'] - d99:+.3f}"
            lines.append(f"| {p} | {p50['median']:.3f} ({p50['min']:.3f}-{p50['max']:.3f}) | "
                         f"{p99['median']:.3f} ({p99['min']:.3f}-{p99['max']:.3f}) | {added} |")
        lb_add = med(lat["lb"], "latency_ms", "p99")["median"] - d99
        ha_add = med(lat["haproxy"], "latency_ms", "p99")["median"] - d99
        lines.append(f"\nlb adds {lb_add:.3f} ms at p99, HAProxy {ha_add:.3f} ms: ratio "
                     f"{(lb_add / ha_add if ha_add > 0 else float('nan')):.2f} (target <= 0.5).\n")
    if "memory" in data:
        lines.append(f"## 3. Memory of {a.idle} idle proxied connections (RSS growth)\n")
        lines.append("![memory per idle connection](memory-per-conn.svg)\n")
        lines.append("| proxy | RSS before (MiB) | RSS after (MiB) | per connection (KiB) |")
        lines.append("|---|---|---|---|")
        for p, m in data["memory"].items():
            lines.append(f"| {p} | {m['rss_before'] / 2**20:.1f} | {m['rss_after'] / 2**20:.1f} | {m['bytes_per_conn'] / 1024:.2f} |")
        lines.append("\nTarget: lb <= 4 KiB per idle connection.\n")
    if "fullstack" in data:
        fs = data["fullstack"]
        o, t = med(fs["ours"], "rps"), med(fs["theirs"], "rps")
        lines.append("## 4. Full stack on both cores, unpinned, 256 connections\n")
        lines.append("![full stack](full-stack.svg)\n")
        lines.append("| stack | req/s |")
        lines.append("|---|---|")
        lines.append(f"| loadgen -> lb (2 cores) -> 3 backend | {o['median']:.0f} ({o['min']:.0f}-{o['max']:.0f}) |")
        lines.append(f"| wrk -t2 -> HAProxy (2 threads) -> 3 nginx | {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}) |")
        lines.append(f"\nRatio {o['median'] / t['median']:.2f}x (target >= 1.4x).\n")
        lines.append("Commands: " + "; ".join(f"{k}: `{v}`" for k, v in data.get("fullstack_commands", {}).items()) + "\n")
    lines.append("Raw per-round figures and commands: `proxies.json` beside this file.\n")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Charts (svgchart.py): medians, whiskers min-max over the rounds
# ---------------------------------------------------------------------------------------------

LABELS = {"lb": "lb", "haproxy": "HAProxy", "nginx": "nginx stream", "lb-readiness": "lb (readiness relay)",
          "lb+pool": "lb + pool"}
COLORS = {"lb": "#1f77b4", "haproxy": "#7f7f7f", "nginx": "#2ca02c", "lb-readiness": "#aec7e8", "lb+pool": "#17becf"}
MODES = {"keepalive-64": "64 keep-alive conns", "keepalive-512": "512 keep-alive conns",
         "newconn-64": "new connection per request"}


def spread(values):
    return (min(values), max(values)) if len(values) > 1 else None


def paired(a, b, f):
    """f(a[j], b[j]) per round j: the rounds are interleaved, so the j-th run of each is from round j."""
    return [f(x, y) for x, y in zip(a, b)]


def headline_rows(data):
    """(label, {vs: (median ratio, (min, max) of per-round ratios or None)}): > 1 means lb is better."""
    rows = []
    th = data.get("throughput", {})
    for mode, name in (("keepalive-64", "requests per CPU-second,\n64 keep-alive connections"),
                       ("keepalive-512", "requests per CPU-second,\n512 keep-alive connections"),
                       ("newconn-64", "requests per CPU-second,\nnew connection per request")):
        if mode not in th:
            continue
        by = th[mode]
        lb = [r["requests_per_proxy_cpu_s"] for r in by["lb"]]
        vals = {}
        for other in ("haproxy", "nginx"):
            o = [r["requests_per_proxy_cpu_s"] for r in by[other]]
            vals[other] = (med(by["lb"], "requests_per_proxy_cpu_s")["median"] /
                           med(by[other], "requests_per_proxy_cpu_s")["median"], spread(paired(lb, o, lambda x, y: x / y)))
        rows.append((name, vals))
    if "latency" in data:
        lat = data["latency"]
        d = [r["latency_ms"]["p99"] for r in lat["direct"]]
        lb = [r["latency_ms"]["p99"] for r in lat["lb"]]
        d99 = med(lat["direct"], "latency_ms", "p99")["median"]
        lb_add = med(lat["lb"], "latency_ms", "p99")["median"] - d99
        vals = {}
        for other in ("haproxy", "nginx"):
            o = [r["latency_ms"]["p99"] for r in lat[other]]
            o_add = med(lat[other], "latency_ms", "p99")["median"] - d99
            per = [(oo - dd) / (ll - dd) for oo, ll, dd in zip(o, lb, d) if ll - dd > 0]
            vals[other] = (o_add / lb_add, spread(per) if len(per) == len(o) else None)
        rows.append(("p99 latency added over direct\n(theirs / lb's)", vals))
    if "memory" in data:
        m = data["memory"]
        rows.append(("memory per idle connection\n(theirs / lb's, default relay)",
                     {o: (m[o]["bytes_per_conn"] / m["lb"]["bytes_per_conn"], None) for o in ("haproxy", "nginx")}))
        if "lb-readiness" in m:
            rows.append(("memory per idle connection\n(theirs / lb's, readiness relay)",
                         {o: (m[o]["bytes_per_conn"] / m["lb-readiness"]["bytes_per_conn"], None)
                          for o in ("haproxy", "nginx")}))
    if "fullstack" in data:
        fs = data["fullstack"]
        o, t = [r["rps"] for r in fs["ours"]], [r["rps"] for r in fs["theirs"]]
        rows.append(("full stack req/s, both CPUs:\nloadgen->lb->backend vs wrk->HAProxy->nginx",
                     {"haproxy": (med(fs["ours"], "rps")["median"] / med(fs["theirs"], "rps")["median"],
                                  spread(paired(o, t, lambda x, y: x / y)))}))
    return rows


def charts(data, out):
    env = data["env"]
    sub = f"{env.get('rounds', '?')} interleaved rounds, median, whiskers min-max"
    written = []
    rows = headline_rows(data)
    if rows:
        hbar_chart(out / "headline.svg", "lb relative to HAProxy and nginx stream (> 1 = lb better)",
                   [r[0] for r in rows], ["vs HAProxy 2.6 (mode tcp)", "vs nginx 1.22 stream"],
                   [[r[1].get(o, (None, None))[0] for r in rows] for o in ("haproxy", "nginx")],
                   "ratio (lb's advantage; 1 = parity)",
                   spreads=[[r[1].get(o, (None, None))[1] for r in rows] for o in ("haproxy", "nginx")],
                   colors=[COLORS["haproxy"], COLORS["nginx"]], refs=[(1.0, "parity")],
                   note=f"One thread or worker per proxy; proxies on CPU 0, load and backends on CPU 1 (full stack: "
                        f"both CPUs, unpinned). {env['cpus']} x {env['cpu_model']}, Linux {env['kernel']}, "
                        f"{env['date_utc'][:10]}.\n"
                        f"Bars: ratio of the medians over {env.get('rounds', '?')} interleaved rounds; whiskers: "
                        f"min-max of the per-round ratios (memory: one measurement, no whisker).\n"
                        f"This project's targets: 1.4x CPU, 2x on added p99 latency, lb <= 4 KiB per idle connection, "
                        f"1.4x full stack. Source: bench-results/proxies/proxies.json.")
        written.append("headline.svg")
    if "throughput" in data:
        th = data["throughput"]
        modes = [m for m in MODES if m in th]
        proxies = [p for p in ("lb", "lb-readiness", "lb+pool", "haproxy", "nginx") if any(p in th[m] for m in modes)]
        vals, sps = [], []
        for p in proxies:
            vals.append([med(th[m][p], "proxy_cpu_us_per_req")["median"] if p in th[m] else None for m in modes])
            sps.append([spread([r["proxy_cpu_us_per_req"] for r in th[m][p]]) if p in th[m] else None for m in modes])
        bar_chart_err(out / "cpu-per-request.svg", "Proxy CPU per request (one thread each, lower is better)",
                      [MODES[m] for m in modes], [LABELS[p] for p in proxies], vals,
                      f"load ({sub})", "proxy CPU time per request (microseconds)", spreads=sps,
                      colors=[COLORS[p] for p in proxies], fmt=lambda v: f"{v:.1f}", width=980,
                      note="utime + stime of the\nproxy (/proc/PID/stat)\n/ requests; loadgen\n1 worker on CPU 1")
        written.append("cpu-per-request.svg")
    if "latency" in data:
        lat = data["latency"]
        proxies = [p for p in ("lb", "haproxy", "nginx") if p in lat]
        vals, sps = [], []
        for p in proxies:
            row, sp = [], []
            for k in ("p50", "p99"):
                dmed = med(lat["direct"], "latency_ms", k)["median"]
                row.append((med(lat[p], "latency_ms", k)["median"] - dmed) * 1000)
                per = [(r["latency_ms"][k] - d["latency_ms"][k]) * 1000 for r, d in zip(lat[p], lat["direct"])]
                sp.append((max(0.0, min(per)), max(per)) if len(per) > 1 else None)
            vals.append(row)
            sps.append(sp)
        rate = env.get("rate", "?")
        bar_chart_err(out / "latency-added.svg",
                      f"Latency each proxy adds over going direct ({rate:,} req/s, 64 connections)",
                      ["p50 added", "p99 added"], [LABELS[p] for p in proxies], vals,
                      f"percentile (open loop, one backend; {sub} of per-round differences)",
                      "added latency (microseconds, lower is better)", spreads=sps,
                      colors=[COLORS[p] for p in proxies], fmt=lambda v: f"+{v:.0f} us", width=900,
                      note="added = the proxy's\npercentile minus direct's\n(medians); whiskers:\nper-round "
                           "differences,\nfloored at 0")
        written.append("latency-added.svg")
    if "memory" in data:
        m = data["memory"]
        proxies = [p for p in ("lb", "lb-readiness", "haproxy", "nginx") if p in m]
        n = next(iter(m.values()))["connections"]
        bar_chart_err(out / "memory-per-conn.svg", f"Memory per idle proxied connection ({n:,} held open)",
                      [LABELS[p] for p in proxies], ["RSS growth per connection"],
                      [[m[p]["bytes_per_conn"] / 1024 for p in proxies]], "proxy (one thread or worker)",
                      "KiB per idle connection (lower is better)", bar_colors=[COLORS[p] for p in proxies],
                      legend=False, fmt=lambda v: f"{v:.2f} KiB", ref_line=4.0, ref_label="target 4 KiB", width=820,
                      note="(RSS after - RSS before)\n/ connections held open,\none request on each;\n"
                           "one measurement")
        written.append("memory-per-conn.svg")
    if "fullstack" in data:
        fs = data["fullstack"]
        sides = [("ours", "loadgen -> lb -> 3 backend"), ("theirs", "wrk -> HAProxy -> 3 nginx")]
        bar_chart_err(out / "full-stack.svg", "Full stack on both CPUs, unpinned, 256 keep-alive connections",
                      [name for _, name in sides], ["req/s"], [[med(fs[k], "rps")["median"] for k, _ in sides]],
                      f"stack ({sub})", "requests per second (higher is better)",
                      spreads=[[spread([r["rps"] for r in fs[k]]) for k, _ in sides]],
                      bar_colors=[COLORS["lb"], COLORS["haproxy"]], legend=False, fmt=lambda v: f"{v:,.0f}",
                      width=820,
                      note="lb --cores 2, loadgen\n--cores 2; HAProxy\nnbthread 2, wrk -t2;\n"
                           "3 backends (backend or\nnginx, 1 worker each)")
        written.append("full-stack.svg")
    log(f"charts: {', '.join(written)}")


if __name__ == "__main__":
    main()
