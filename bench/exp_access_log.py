#!/usr/bin/env python3
"""What the access log costs: whole-machine CPU per request through lb with the log off, on in
text, and on in JSON (both to a file), against the same load sent direct (bench/yardstick.py).

Every request is a new connection (loadgen --new-connection), since lb writes one line per
connection: with keep-alive a line is spread over many requests and its cost disappears. Setup as
bench/proxies.py: lb (one worker) pinned to CPU 0, loadgen and the nginx backends (one worker,
`return 200` on three ports) on CPU 1. Each round runs every variant at every point in a mirrored,
rotating order; medians over rounds with (min-max).

    log cost = CPU per request with the log on - the same with it off, in the same round

Writes access_log.json and access_log.md to --out DIR (default a fresh bench-results/runs/
access-log-<time>/; the committed figures: --out bench-results/access-log).
Usage: bench/exp_access_log.py [--rounds 5] [--duration 5]
"""

import argparse
import sys
import time
from pathlib import Path

import yardstick as ys
from lbbench import (TARGET, Server, build_release, ensure_packages, environment, free_port, log, median_spread,
                     run_dir, tmpdir, write_results)

LB_CPU, CLIENT_CPU = 0, 1
# Below what one lb core and one CPU for loadgen and nginx sustain in new connections (about 3,600
# per second through lb, measured): a saturated point would compare queues, not CPU.
POINTS = {
    "new-1k": {"label": "1,000 new connections/s", "conns": 16, "rate": 1000, "args": ["--new-connection"]},
    "new-2k": {"label": "2,000 new connections/s", "conns": 32, "rate": 2000, "args": ["--new-connection"]},
}
VARIANTS = {
    "lb-log-off": None,
    "lb-log-text": "text",
    "lb-log-json": "json",
}


def lb_with_log(port, backend_ports, fmt):
    d = tmpdir("bench-alog-")
    conf = d / "lb.toml"
    text = "[health]\ncheck = \"none\"\n"
    if fmt:
        text += f"[access_log]\npath = \"{d / 'access.log'}\"\nformat = \"{fmt}\"\n"
    conf.write_text(text)
    argv = [str(TARGET / "lb"), "--listen", f"127.0.0.1:{port}", "--cores", "1", "--admin", "off",
            "--backend", ",".join(f"127.0.0.1:{p}" for p in backend_ports), "--config", str(conf)]
    srv = Server("lb", argv, port, cpu=LB_CPU, env={"RUST_LOG": "warn"}, cleanup=[d])
    srv.log_path = d / "access.log"
    return srv


def measure(a):
    data = {"env": environment({"background_busy_cpus_before": round(ys.background_busy(), 3)}),
            "config": {"rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup,
                       "points": {k: POINTS[k] for k in a.points},
                       "command": "python3 bench/exp_access_log.py" + "".join(f" {x}" for x in sys.argv[1:]),
                       "pinning": f"lb on CPU {LB_CPU}; loadgen and the nginx backends on CPU {CLIENT_CPU}"},
            "runs": [], "lines": {}}
    bports = [free_port() for _ in range(3)]
    backend = ys.nginx_backends(bports, CLIENT_CPU)
    servers, ports = {}, {ys.DIRECT: bports[0]}
    try:
        for name, fmt in VARIANTS.items():
            ports[name] = free_port()
            servers[name] = lb_with_log(ports[name], bports, fmt)
        time.sleep(0.5)
        labels = [ys.DIRECT, *VARIANTS]
        for r in range(a.rounds):
            log(f"round {r + 1} of {a.rounds}")
            for point in a.points:
                for t in ys.round_order(labels, r):
                    roles = {"backends": [backend.pid]}
                    if t != ys.DIRECT:
                        roles["proxy"] = [servers[t].pid]
                    run = ys.measure_run(f"http://127.0.0.1:{ports[t]}/", point, t, r, roles, a.duration,
                                         a.warmup, CLIENT_CPU, spec=POINTS[point])
                    run["command"] = run["command"].replace(str(ports[t]), "PORT")
                    log("  " + ys.describe(run))
                    data["runs"].append(run)
        for name, srv in servers.items():
            p = srv.log_path
            if p.exists():
                text = p.read_text()
                data["lines"][name] = {"lines": text.count("\n"), "bytes": len(text),
                                       "sample": text.splitlines()[-1] if text else ""}
    finally:
        for s in servers.values():
            s.stop()
        backend.stop()
    data["env"]["background_busy_cpus_after"] = round(ys.background_busy(), 3)
    return data


def summaries(data):
    by = ys.index(data["runs"])
    out = {}
    for point in data["config"]["points"]:
        row = {}
        for name in VARIANTS:
            row[name] = {"hop_us": median_spread(ys.hop_costs(by, point, name)),
                         "machine_us": median_spread([r["machine_us_per_req"] for r in by[(point, name)].values()]),
                         "errors": sum(r["errors"] for r in by[(point, name)].values()),
                         "rps": median_spread([r["rps"] for r in by[(point, name)].values()])}
            if name != "lb-log-off":
                row[name]["log_cost_us"] = median_spread(ys.paired(
                    by, point, name, "lb-log-off", lambda x, y: x["machine_us_per_req"] - y["machine_us_per_req"]))
        out[point] = row
    return out


def fmt(s, unit=" us", digits=2):
    if not s:
        return "-"
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f} to {s['max']:.{digits}f})"


def report(data):
    summ = summaries(data)
    env = data["env"]
    lines = ["# The access log's cost", "",
             f"Machine: {env.get('cpu_model', '?')}, {env.get('cpus', '?')} CPUs, kernel {env.get('kernel', '?')}. "
             f"{data['config']['pinning']}. {data['config']['rounds']} rounds of {data['config']['duration_s']:g} s, "
             "variants interleaved (mirrored, rotating order).", "",
             f"Command: `{data['config']['command']}`", "",
             "Every request is a new connection; the log writes one line per connection to a file "
             "(the lb's temporary folder). Whole-machine busy CPU per request; hop = through lb minus direct "
             "in the same round; log cost = log on minus log off in the same round. Medians (min to max).", ""]
    for point, row in summ.items():
        lines += [f"## {POINTS[point]['label']}", "",
                  "| lb | req/s | machine CPU per request | hop cost | log cost per connection | errors |",
                  "|---|---|---|---|---|---|"]
        for name, v in row.items():
            lines.append(f"| {name} | {fmt(v['rps'], '', 0)} | {fmt(v['machine_us'])} | {fmt(v['hop_us'])} | "
                         f"{fmt(v.get('log_cost_us'))} | {v['errors']} |")
        lines.append("")
    if data["lines"]:
        lines += ["Lines written over the whole run (every round, warm-ups included):", ""]
        for name, v in data["lines"].items():
            lines.append(f"- {name}: {v['lines']:,} lines, {v['bytes'] / max(v['lines'], 1):.0f} bytes each; "
                         f"last: `{v['sample']}`")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--duration", type=float, default=5, help="measured seconds per run (default 5)")
    ap.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each run (default 1)")
    ap.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, of {', '.join(POINTS)}")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release --bins")
    ap.add_argument("--out", help="output folder (default: a fresh bench-results/runs/access-log-<time>/)")
    a = ap.parse_args(argv)
    a.points = [p for p in a.points.split(",") if p]
    for p in a.points:
        if p not in POINTS:
            ap.error(f"unknown point {p!r}")
    return a


def main():
    a = parse_args()
    ensure_packages({"nginx-light": "nginx"})
    if not a.no_build:
        build_release()
    out = run_dir("access-log", a.out)
    data = measure(a)
    md = report(data)
    write_results(out, "access_log", data, md)
    print(md)


if __name__ == "__main__":
    main()
