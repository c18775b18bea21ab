"""Sticky sessions: stickiness and load imbalance under a skewed client population.

K clients with zipf-distributed activity (loadgen --keys K --key-dist zipf:S: client k0 is the
busiest, client k{r-1} sends in proportion to 1/r^S) send R requests, each on a new connection
(an L4 balancer decides per connection, so every request is a fresh decision). Every run uses the
same client population and the same sequence of keys: each client connects from its own address
(127.1.0.0 + i, --source-ip-per-key) and carries its own cookie (Cookie: sid=k{i}), and only lb's
configuration changes:

  ip hash      consistent_hash / maglev with hash.key = "client_ip"
  cookie hash  consistent_hash / maglev with hash.key = "cookie:sid"
  load-aware   least_connections, power_of_two, least_response_time
  baseline     round_robin

Per algorithm: stickiness (share of requests that went to their client's majority backend; also
counted over clients with at least two requests only, since a client seen once is trivially
sticky), clients seen on more than one backend, and the imbalance of requests per backend
(max / mean and stdev % of the mean). A second part sweeps the skew S for one hash and one
load-aware algorithm.
"""

import csv
import json
import statistics
import time

import lbbench
from exp_hashing import loadgen_keys, lb_config, start_backends, start_lb, WAITED
from expcommon import machine_line, out_dir, pinning_line, retry_note
from lbbench import free_port, log
from svgchart import bar_chart, line_chart

HELP = "Sticky sessions: stickiness and imbalance per algorithm under a zipf client population"
DIR = "sticky-sessions"
N_BACKENDS = 3

# label, algorithm, hash.key (None: not a hash algorithm), group
VARIANTS = [
    ("ip: consistent_hash", "consistent_hash", "client_ip", "ip hash"),
    ("ip: maglev", "maglev", "client_ip", "ip hash"),
    ("cookie: consistent_hash", "consistent_hash", "cookie:sid", "cookie hash"),
    ("cookie: maglev", "maglev", "cookie:sid", "cookie hash"),
    ("least_connections", "least_connections", None, "load-aware"),
    ("power_of_two", "power_of_two", None, "load-aware"),
    ("least_response_time", "least_response_time", None, "load-aware"),
    ("round_robin", "round_robin", None, "baseline"),
]
SWEEP_VARIANTS = ["ip: consistent_hash", "least_connections"]
DEFAULTS = {"keys": 1000, "requests": 8000, "skew": 1.1, "sweep": "0,0.7,1.1,1.5", "conns": 16}


def add_arguments(p):
    p.add_argument("--keys", type=int, default=DEFAULTS["keys"], help="clients (keys) (default 1000)")
    p.add_argument("--requests", type=int, default=DEFAULTS["requests"],
                   help="new-connection requests per run (default 8000)")
    p.add_argument("--skew", type=float, default=DEFAULTS["skew"], help="zipf exponent S of the main runs (default 1.1)")
    p.add_argument("--sweep", default=DEFAULTS["sweep"],
                   help="comma-separated skews for the sweep (0 = uniform; default 0,0.7,1.1,1.5; empty: no sweep)")
    p.add_argument("--conns", type=int, default=DEFAULTS["conns"], help="concurrent loadgen connections (default 16)")
    p.add_argument("--replot", action="store_true",
                   help=f"no measurement: redraw the charts and summary from bench-results/{DIR}/sticky.json")


def dist_arg(skew):
    return "uniform" if skew == 0 else f"zipf:{skew:g}"


def run_variant(label, args, skew):
    _, algorithm, key, group = next(v for v in VARIANTS if v[0] == label)
    ids = [f"s{i + 1}" for i in range(N_BACKENDS)]
    backends = start_backends(ids)
    lb = None
    try:
        port = free_port()
        hash_toml = f'key = "{key}"\n' if key else ""
        lb = start_lb(lb_config(port, [(s, p) for s, p, _ in backends], algorithm, hash_toml), port)
        la = ["--requests", str(args.requests), "--new-connection", "--conns", str(args.conns),
              "--keys", str(args.keys), "--key-dist", dist_arg(skew), "--key-seed", "1",
              "--source-ip-per-key", "-H", "Cookie: sid={key}"]
        r, failed = loadgen_keys(port, la)
    finally:
        if lb:
            lb.stop()
        for _, _, s in reversed(backends):
            s.stop()
    k = r["keys"]
    per_key = k["per_key"]
    multi = {key_: per for key_, per in per_key.items() if sum(per.values()) >= 2}
    multi_req = sum(sum(per.values()) for per in multi.values())
    multi_major = sum(max(per.values()) for per in multi.values())
    counts = {s: int(r["servers"].get(s, 0)) for s in ids}
    vals = list(counts.values())
    mean = statistics.mean(vals)
    sd = statistics.pstdev(vals)
    top = per_key.get("k0", {})
    return {
        "label": label, "algorithm": algorithm, "hash_key": key, "group": group, "skew": skew,
        "dist": dist_arg(skew), "requests": r["requests"], "errors": r["errors"],
        "errors_by_kind": {kk: v for kk, v in r["errors_by_kind"].items() if v},
        "failed_attempts": failed,
        "servers": counts, "mean_per_server": mean, "stdev_pct": 100.0 * sd / mean if mean else None,
        "max_over_mean": max(vals) / mean if mean else None,
        "stickiness_pct": k["stickiness_pct"],
        "stickiness_multi_pct": 100.0 * multi_major / multi_req if multi_req else None,
        "keys_seen": k["keys_seen"], "keys_multi": len(multi),
        "keys_on_several_servers": k["keys_on_several_servers"],
        "keys_on_several_pct_of_multi": 100.0 * k["keys_on_several_servers"] / len(multi) if multi else None,
        "top_key_requests": sum(top.values()), "top_key_servers": top,
        "top10_requests": sum(sum(per_key.get(f"k{i}", {}).values()) for i in range(10)),
        "keys_per_server": k["keys_per_server"],
        "lb_config": lb.config, "loadgen": r["command"], "rps": r["rps"],
    }


def run(args):
    if args.replot:
        data = json.loads((out_dir(DIR, replot=True) / "sticky.json").read_text())
        args.keys, args.requests, args.skew, args.conns = (data["keys"], data["requests_per_run"], data["skew"],
                                                           data["conns"])
        return write(args, data)
    t0 = time.time()
    main = []
    for label, *_ in VARIANTS:
        log(f"sticky {label} zipf:{args.skew:g}")
        main.append(run_variant(label, args, args.skew))
    sweep_skews = [float(s) for s in args.sweep.split(",") if s.strip()]
    sweep = []
    by_main = {r["label"]: r for r in main}
    for label in SWEEP_VARIANTS if sweep_skews else []:
        for s in sweep_skews:
            if s == args.skew:
                sweep.append(by_main[label])
                continue
            log(f"sticky sweep {label} {dist_arg(s)}")
            sweep.append(run_variant(label, args, s))
    elapsed = time.time() - t0

    env = lbbench.environment({"pinning": pinning_line()})
    d = out_dir(DIR)
    rerun = "python3 bench/experiments.py sticky" + "".join(
        f" --{k} {getattr(args, k)}" for k in ("keys", "requests", "skew", "sweep", "conns")
        if getattr(args, k) != DEFAULTS[k])
    data = {"experiment": "sticky sessions", "backends": N_BACKENDS, "keys": args.keys,
            "requests_per_run": args.requests, "skew": args.skew, "conns": args.conns, "new_connection": True,
            "rerun": rerun, "elapsed_s": round(elapsed), "time_wait_wait_s": round(WAITED[0]),
            "environment": env, "results": main, "sweep": sweep}
    (d / "sticky.json").write_text(json.dumps(data, indent=2) + "\n")
    return write(args, data)


def write(args, data):
    """CSV, SVG and summary.md from the measured data (also with --replot)."""
    d = out_dir(DIR)
    main, sweep, env, rerun = data["results"], data["sweep"], data["environment"], data["rerun"]
    elapsed, waited = data["elapsed_s"], data["time_wait_wait_s"]
    ids = [f"s{i + 1}" for i in range(N_BACKENDS)]
    with open(d / "sticky.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "algorithm", "hash_key", "dist", "requests", "stickiness_pct", "stickiness_multi_pct",
                    "keys_seen", "keys_multi", "keys_on_several_servers", "max_over_mean", "stdev_pct",
                    "top_key_requests", "errors", *ids])
        for r in main + [r for r in sweep if r not in main]:
            w.writerow([r["label"], r["algorithm"], r["hash_key"] or "", r["dist"], r["requests"],
                        f"{r['stickiness_pct']:.2f}", f"{r['stickiness_multi_pct']:.2f}", r["keys_seen"],
                        r["keys_multi"], r["keys_on_several_servers"], f"{r['max_over_mean']:.3f}",
                        f"{r['stdev_pct']:.2f}", r["top_key_requests"], r["errors"],
                        *[r["servers"][s] for s in ids]])

    labels = [r["label"] for r in main]
    dist = dist_arg(args.skew)
    bar_chart(d / "sticky-stickiness.svg",
              f"Stickiness per algorithm: {args.keys:,} zipf clients ({dist}), {args.requests:,} new connections",
              labels, ["all", "repeat clients"],
              [[r["stickiness_pct"] for r in main], [r["stickiness_multi_pct"] for r in main]],
              "algorithm (ip: hash.key = client_ip; cookie: hash.key = cookie:sid); repeat clients: >= 2 requests",
              "requests on their client's majority backend (%)", ref_line=100.0 / N_BACKENDS,
              ref_label="1/3 (no affinity)")
    bar_chart(d / "sticky-load.svg",
              f"Requests per backend under a zipf client population ({dist}, {args.keys:,} clients)",
              labels, ids, [[r["servers"][s] for r in main] for s in ids],
              "algorithm", "requests served per backend (count)",
              ref_line=args.requests / N_BACKENDS, ref_label="even 1/3")
    bar_chart(d / "sticky-imbalance.svg", f"Imbalance per algorithm ({dist}, {args.keys:,} clients)",
              labels, ["max / mean"], [[r["max_over_mean"] for r in main]],
              "algorithm", "busiest backend / mean (1 = even)", ref_line=1.0, ref_label="even")
    if sweep:
        skews = sorted({r["skew"] for r in sweep})
        get = {(r["label"], r["skew"]): r for r in sweep}
        line_chart(d / "sticky-skew.svg", "Imbalance vs client skew (zipf exponent S; 0 = uniform)",
                   skews, {lab: [get[(lab, s)]["max_over_mean"] if (lab, s) in get else None for s in skews]
                           for lab in SWEEP_VARIANTS},
                   "zipf exponent S of the client population", "busiest backend / mean requests",
                   note=f"{args.keys:,} clients,\n{args.requests:,} requests per point")

    rows = "\n".join(
        f"| `{r['label']}` | {r['stickiness_pct']:.1f}% | {r['stickiness_multi_pct']:.1f}% | "
        f"{r['keys_on_several_servers']:,} of {r['keys_multi']:,} | "
        + " | ".join(f"{r['servers'][s]:,}" for s in ids)
        + f" | {r['max_over_mean']:.2f} | {r['stdev_pct']:.1f}% | {r['errors']} |" for r in main)
    by = {r["label"]: r for r in main}
    hashed = [r for r in main if r["hash_key"]]
    aware = [r for r in main if r["group"] == "load-aware"]
    rr = by["round_robin"]
    k0 = by["ip: consistent_hash"]
    top_share = 100.0 * k0["top_key_requests"] / (k0["requests"] or 1)
    top10_share = 100.0 * k0["top10_requests"] / (k0["requests"] or 1)

    def rng(rs, key, fmt):
        vals = [r[key] for r in rs]
        lo, hi = fmt(min(vals)), fmt(max(vals))
        return lo if lo == hi else f"{lo} to {hi}"

    def home(r):
        t = r["top_key_servers"]
        return max(t, key=t.get) if t else "-"

    k0_places = ", ".join(f"{home(r)} with `{r['label']}`" for r in hashed)
    pct = lambda v: f"{v:.1f}%"  # noqa: E731
    ratio = lambda v: f"{v:.2f}"  # noqa: E731
    sweep_md = ""
    uniform_note = ""
    if sweep and ("ip: consistent_hash", 0.0) in get:
        u = get[("ip: consistent_hash", 0.0)]
        uniform_note = (f" Even with uniform clients `ip: consistent_hash` is at {u['max_over_mean']:.2f}: its busiest "
                        f"backend got {100 * u['max_over_mean'] / N_BACKENDS:.0f}% of the requests, the unevenness of "
                        f"the ring itself (160 points per backend; see [A-4](../a4-hashing/summary.md)), which skew "
                        f"then adds to.")
    if sweep:
        srows = "\n".join(
            f"| `{lab}` | " + " | ".join(
                f"{get[(lab, s)]['max_over_mean']:.2f} ({get[(lab, s)]['stickiness_multi_pct']:.0f}%)"
                if (lab, s) in get else "-" for s in skews) + " |" for lab in SWEEP_VARIANTS)
        sweep_md = f"""## Imbalance vs skew

![imbalance vs skew](sticky-skew.svg)

max / mean requests per backend (stickiness over clients with >= 2 requests in brackets), {args.keys:,}
clients, {args.requests:,} requests per point:

| algorithm | {' | '.join(('uniform' if s == 0 else f'S={s:g}') for s in skews)} |
|---|{'---|' * len(skews)}
{srows}

The more a few clients dominate, the more a hash algorithm's load follows wherever those clients hash to:
an affinity-keeping balancer cannot split one client's requests. The load-aware algorithm stays even at
every skew, and its stickiness only reflects chance.{uniform_note}
"""
    md = f"""# Sticky sessions: stickiness vs imbalance under a skewed client population

{args.keys:,} clients with zipf-distributed activity ({dist}: client k{{r-1}} sends in proportion to
1/r^{args.skew:g}; here k0 sent {top_share:.1f}% of all requests and the ten busiest {top10_share:.1f}%),
{args.requests:,} HTTP requests, each on a new TCP connection ({args.conns} concurrent, closed loop), through `lb` (1 core,
health checks off) to {N_BACKENDS} `backend` processes. Every run uses the same population and the same key
sequence (`loadgen --keys {args.keys} --key-dist {dist} --key-seed 1 --source-ip-per-key -H 'Cookie: sid={{key}}'`):
each client connects from its own address 127.1.0.0 + i and carries the cookie `sid=k{{i}}`; only lb's
algorithm and `hash.key` change. An L4 balancer decides per connection, so each request is a fresh decision.

- **stickiness**: share of requests that went to their client's majority backend (100% = every client
  always on one backend). Clients seen once are trivially sticky, so the second column counts only
  clients with at least two requests ({by['round_robin']['keys_multi']:,} of {by['round_robin']['keys_seen']:,}
  clients seen).
- **imbalance**: busiest backend's requests / mean, and the stdev of requests per backend as % of the mean.

![stickiness](sticky-stickiness.svg)
![requests per backend](sticky-load.svg)
![imbalance](sticky-imbalance.svg)

| algorithm | stickiness | stickiness (clients >= 2 req.) | clients on > 1 backend | {' | '.join(ids)} | max / mean | stdev % | errors |
|---|---|---|---|{'---|' * len(ids)}---|---|---|
{rows}

What it shows:

- The four hash variants keep every client on one backend (stickiness {rng(hashed, 'stickiness_multi_pct', pct)}
  over clients with two or more requests, {rng(hashed, 'keys_on_several_servers', str)} clients seen on more than one), whether the key is the source address or the cookie. The price
  is imbalance: max / mean {rng(hashed, 'max_over_mean', ratio)}. Under zipf a handful of clients carry a
  large share of the traffic (k0 alone {top_share:.1f}%), and each of them is pinned to one backend, so the
  backend that happens to own the heavy clients is busier, however even the key space is split.
- The load-aware algorithms spread the load evenly (max / mean {rng(aware, 'max_over_mean', ratio)}) but
  keep no affinity: stickiness over repeat clients {rng(aware, 'stickiness_multi_pct', pct)}, about what
  picking one of {N_BACKENDS} backends per connection gives for a client's few requests.
- `round_robin` is the baseline: max / mean {rr['max_over_mean']:.2f}, stickiness
  {rr['stickiness_multi_pct']:.1f}% over repeat clients.
- Cookie and IP hashing differ only in the bytes they hash, so where the heavy clients land is a matter of
  chance: the busiest client k0 went to {k0_places}. Which variant ends up more even on a given
  population says nothing general about the key type; what they share is that the busiest backend is the
  one that drew the heaviest clients.

{sweep_md}
Errors over all reported runs: {sum(r['errors'] or 0 for r in main + sweep)}. {retry_note([r['label'] for r in main + sweep if r['failed_attempts']])}
The experiment took {elapsed / 60:.1f} minutes, {waited / 60:.1f} of them waiting for TIME_WAIT sockets to drain.

Machine: {machine_line(env)}; {pinning_line()}. These figures are about distribution, not speed.

Rerun (from the repository root, after `cargo build --release --bins`):

```sh
{rerun}
```

Raw data: [sticky.json](sticky.json) (per run: lb config, loadgen command, per-backend counts, the busiest client's
backends), [sticky.csv](sticky.csv).
"""
    (d / "summary.md").write_text(md)
    log(f"wrote {d} in {elapsed:.0f}s")
    return data
