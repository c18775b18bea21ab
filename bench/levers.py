#!/usr/bin/env python3
"""Issue 13's levers, each alone and together, from bench/proxies.py runs (render only).

Reads the proxies.json of one or more runs of

    python3 bench/proxies.py --proxies lb-coop,lb,lb-coop-multishot,lb-multishot,haproxy ...

and writes levers.md: per load point, each lb variant's hop cost (median, min-max over rounds),
its ratio to stock lb (`lb-coop`: the COOP_TASKRUN ring and the completion relay, as before the
levers) and to HAProxy, both taken per round, the p99 it adds over direct, how noisy the
rounds were (busy CPUs outside the measured processes), and the proxy process's own CPU per
request with its ratio to stock lb per round (the secondary column: on a machine that others keep
busy it is far less disturbed than the whole-machine figure, and between lb variants it compares
like with like). A lever is kept only if its ratio to
stock stays below 1 beyond the spread.

Usage: bench/levers.py RUN_DIR [RUN_DIR ...] --out DIR
"""

import argparse
import json
from pathlib import Path

import yardstick as ys
from lbbench import median_spread

STOCK = "lb-coop"
VARIANTS = {
    "lb-coop": "stock (COOP ring, completion relay)",
    "lb": "lever 1: DEFER_TASKRUN ring, completion relay",
    "lb-coop-multishot": "lever 2: COOP ring, multishot relay",
    "lb-multishot": "levers 1 + 2: DEFER ring, multishot relay",
    "lb-multishot-eventfd": "levers 1 + 2, eventfd bridge",
    "lb-readiness": "DEFER ring, readiness relay",
    "haproxy": "HAProxy",
    "nginx": "nginx stream",
}
NOISY_CPUS = 0.1


def fmt(s, digits=2, sign=False):
    if s is None:
        return "-"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


def fmt_x(s):
    return "-" if s is None else f"{s['median']:.3f}x ({s['min']:.3f}-{s['max']:.3f})"


def rest_cpus(run):
    return run["rest_us_per_req"] * run["requests"] / 1e6 / run["duration_s"]


def section(data, title):
    cfg, env = data["config"], data["env"]
    runs = data.get("yardstick", {}).get("runs", [])
    L = [f"## {title}\n",
         f"`{cfg['command']}`; {env['date_utc']}, commit {env['git_commit']}, {env['cpus']} x {env['cpu_model']}, "
         f"Linux {env['kernel']}; {cfg['rounds']} interleaved rounds of {cfg['duration_s']:g} s; "
         f"machine busy before the run with nothing of it running: {env.get('background_busy_cpus_before')} CPUs, "
         f"after: {env.get('background_busy_cpus_after')} CPUs.\n"]
    if runs:
        noisy = sum(1 for r in runs if rest_cpus(r) > NOISY_CPUS)
        rest = median_spread([rest_cpus(r) for r in runs])
        L.append(f"Noise: {noisy} of {len(runs)} runs had more than {NOISY_CPUS:g} CPUs busy outside the proxy, "
                 f"loadgen and nginx (median {rest['median']:.2f}, max {rest['max']:.2f} CPUs).\n")
        by = ys.index(runs)
        targets = [t for t in VARIANTS if t in cfg["proxies"]]
        L.append("| load | variant | hop us/req | vs stock lb | vs HAProxy | p99 added ms | req/s | process us/req | "
                 "process vs stock lb |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for point in cfg["points"]:
            for t in targets:
                hop = ys.summarize(ys.hop_costs(by, point, t))
                vs_stock = ys.hop_ratio(by, point, t, STOCK) if t != STOCK and STOCK in targets else None
                vs_ha = ys.hop_ratio(by, point, t, "haproxy") if t != "haproxy" else None
                p99 = ys.summarize(ys.p99_added(by, point, t))
                rps = median_spread([r["rps"] for r in by.get((point, t), {}).values()])
                proc = ys.summarize(ys.per_round(by, point, t, lambda r: r["proxy_us_per_req"]))
                proc_vs = (ys.summarize(ys.paired(by, point, t, STOCK,
                                                  lambda a, b: a["proxy_us_per_req"] / b["proxy_us_per_req"]))
                           if t != STOCK and STOCK in targets else None)
                L.append(f"| {ys.POINTS[point]['label']} | {VARIANTS[t]} | {fmt(hop)} | {fmt_x(vs_stock)} | "
                         f"{fmt_x(vs_ha)} | {fmt(p99, 3, sign=True)} | {rps['median']:,.0f} | {fmt(proc)} | "
                         f"{fmt_x(proc_vs)} |")
        L.append("")
    if "memory" in data:
        L.append("Memory of idle proxied connections (RSS growth, one measurement each):\n")
        L.append("| variant | connections | KiB per connection |")
        L.append("|---|---|---|")
        for p, v in data["memory"].items():
            L.append(f"| {VARIANTS.get(p, p)} | {v['connections']:,} | {v['bytes_per_conn'] / 1024:.2f} |")
        L.append("")
    if "fullstack" in data:
        fs = data["fullstack"]
        o = median_spread([r["rps"] for r in fs["ours"]])
        t = median_spread([r["rps"] for r in fs["theirs"]])
        ratio = median_spread([a["rps"] / b["rps"] for a, b in zip(fs["ours"], fs["theirs"])])
        L.append(f"Full stack, 2 cores unpinned: loadgen -> lb -> 3 backend {fmt(o, 0)} req/s, wrk -> HAProxy -> "
                 f"3 nginx {fmt(t, 0)} req/s: {fmt_x(ratio)} (target >= 1.4x).\n")
    return "\n".join(L)


def render(docs, out):
    L = ["# Issue 13's levers: hop cost of each lb variant, alone and together\n",
         "Rendered by `python3 bench/levers.py` from the proxies.json beside this file; every run's raw figures, "
         "commands and configs are in it. Hop cost: whole-machine busy CPU per request minus direct's in the same "
         "round (bench/yardstick.py); ratios are taken per round, then summarised (median, min-max).\n"]
    for name, data in docs:
        L.append(section(data, name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.md").write_text("\n".join(L))
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="folders holding a proxies.json")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    docs = [(Path(r).name, json.loads((Path(r) / "proxies.json").read_text())) for r in a.runs]
    print(render(docs, a.out))


if __name__ == "__main__":
    main()
