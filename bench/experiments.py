#!/usr/bin/env python3
"""Classic load-balancer experiments on lb, all on 127.0.0.1.

  A-1 distribution: 10,000 new-connection requests over 3 backends, for every algorithm:
      how many requests does each backend get?
  A-2 scaling:      2..6 backends, 10,000 new-connection requests each, for a subset of the
      algorithms: how even is the load per backend (stdev as % of the mean), and the throughput.

  A-1 latency (backends of different speed), A-3 failover, A-4 hashing, sticky sessions,
  saturation, ECMP (lb instances behind a multipath router, in network namespaces) and kernel
  mode's hop cost (netfilter DNAT against the relay and HAProxy, in network namespaces) live in
  bench/exp_*.py.

Usage:  python3 bench/experiments.py [--build] EXPERIMENT [options] [--out DIR]   (EXPERIMENT --help: options)
Each writes JSON, CSV, SVG and summary.md to a fresh, git-ignored bench-results/runs/<experiment>-<time>/,
or to --out DIR (with `all`, DIR/<experiment>/): `--out bench-results/a1-distribution` (`all --out
bench-results`) replaces the committed results. A re-render from JSON (--replot, --from-json) reads and
writes the committed folder unless --out names another.
Processes: lb pinned to CPU 0, loadgen pinned to CPU 1 (when the machine has 2+ CPUs), the
backends unpinned; every process is stopped by its PID.
"""

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon  # noqa: E402
import lbbench  # noqa: E402
from lbbench import backend_proc, free_port, lb_proc, loadgen_json, log  # noqa: E402
from expcommon import (LB_CPU, LG_CPU, TW_LIMIT, machine_line, out_dir, pinning_line,  # noqa: E402
                       retry_note, time_wait_sockets, wait_quiet)
from svgchart import bar_chart, line_chart  # noqa: E402

ALL_ALGORITHMS = ["round_robin", "weighted_round_robin", "least_connections", "least_response_time",
                  "random", "power_of_two", "consistent_hash", "maglev"]
A2_ALGORITHMS = ["round_robin", "least_connections", "consistent_hash", "maglev"]
A2_SIZES = [2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------
# Running one configuration
# ---------------------------------------------------------------------------------------------

def run_one(algorithm, n_backends, requests, conns, retries=2):
    """run_once, repeated (after a pause) when the run had errors; earlier attempts are kept."""
    attempts = []
    for i in range(retries + 1):
        wait_quiet()
        r = run_once(algorithm, n_backends, requests, conns)
        r["time_wait_before"] = time_wait_sockets()
        if not r["errors"] or i == retries:
            r["failed_attempts"] = attempts
            return r
        log(f"  {r['errors']} errors ({r['errors_by_kind']}); retrying after TIME_WAIT drains")
        attempts.append({k: r[k] for k in ("errors", "errors_by_kind", "rps", "servers")})
        wait_quiet(limit=TW_LIMIT // 3)


def run_once(algorithm, n_backends, requests, conns):
    """Starts n backends s1..sN and lb in front of them, runs loadgen, stops everything by PID."""
    ids = [f"s{i + 1}" for i in range(n_backends)]
    started = []
    try:
        ports = []
        for sid in ids:
            p = free_port()
            started.append(backend_proc(p, None, sid))
            ports.append(p)
        lp = free_port()
        lb = lb_proc(lp, ports, LB_CPU, cores=1, algorithm=algorithm)
        started.append(lb)
        lb_cmd = " ".join(lb.proc.args)
        args = ["--requests", str(requests), "--new-connection", "--conns", str(conns)]
        r = loadgen_json(f"http://127.0.0.1:{lp}/", args, cpu=LG_CPU)
    finally:
        for s in reversed(started):
            s.stop()
    counts = {sid: int(r.get("servers", {}).get(sid, 0)) for sid in ids}
    other = {k: v for k, v in r.get("servers", {}).items() if k not in counts}
    vals = list(counts.values())
    mean = statistics.mean(vals)
    sd = statistics.pstdev(vals)
    return {
        "algorithm": algorithm,
        "backends": n_backends,
        "servers": counts,
        "unknown_servers": other,
        "requests": r.get("requests"),
        "errors": r.get("errors"),
        "errors_by_kind": r.get("errors_by_kind"),
        "rps": r.get("rps"),
        "duration_s": r.get("duration_s"),
        "latency_ms": r.get("latency_ms"),
        "mean_per_server": mean,
        "stdev_per_server": sd,
        "stdev_pct_of_mean": 100.0 * sd / mean if mean else None,
        "min_per_server": min(vals),
        "max_per_server": max(vals),
        "commands": {"lb": lb_cmd, "loadgen": r.get("command"),
                     "backends": f"{lbbench.TARGET / 'backend'} --listen 127.0.0.1:PORT --id sI --cores 1"},
    }


# ---------------------------------------------------------------------------------------------
# SVG charts (hand-written, no dependencies)
# ---------------------------------------------------------------------------------------------


def a1(args):
    n = 3
    results = []
    for alg in ALL_ALGORITHMS:
        log(f"A-1 {alg} x {n} backends")
        results.append(run_one(alg, n, args.requests, args.conns))
    env = lbbench.environment({"pinning": pinning_line()})
    d = out_dir("a1-distribution")
    ids = [f"s{i + 1}" for i in range(n)]
    rerun = f"python3 bench/experiments.py a1 --requests {args.requests} --conns {args.conns}"
    data = {"experiment": "A-1 distribution", "backends": n, "requests_per_run": args.requests,
            "conns": args.conns, "new_connection": True, "rerun": rerun, "environment": env,
            "results": {r["algorithm"]: r for r in results}}
    (d / "a1.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(d / "a1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["algorithm", "server", "requests", "share"])
        for r in results:
            tot = sum(r["servers"].values()) or 1
            for sid in ids:
                w.writerow([r["algorithm"], sid, r["servers"][sid], f"{r['servers'][sid] / tot:.4f}"])
    bar_chart(d / "a1.svg",
              f"A-1: {args.requests:,} new-connection requests over 3 backends, per algorithm",
              [r["algorithm"] for r in results], ids,
              [[r["servers"][sid] for r in results] for sid in ids],
              "load-balancing algorithm (lb, 1 core, clients all from 127.0.0.1)",
              "requests served per backend (count)",
              ref_line=args.requests / n, ref_label="ideal 1/3")

    # Summary
    rows = []
    for r in results:
        tot = sum(r["servers"].values()) or 1
        shares = " | ".join(f"{r['servers'][s]:,} ({100 * r['servers'][s] / tot:.1f}%)" for s in ids)
        rows.append(f"| `{r['algorithm']}` | {shares} | {r['stdev_pct_of_mean']:.1f}% | {r['rps']:,.0f} | {r['errors']} |")
    by = {r["algorithm"]: r for r in results}

    def spread(alg):
        return f"{by[alg]['stdev_pct_of_mean']:.1f}%"

    def share_range(algs):
        sh = [100 * v / (sum(by[a]["servers"].values()) or 1) for a in algs for v in by[a]["servers"].values()]
        return f"{min(sh):.1f}% to {max(sh):.1f}%"

    rps_all = [r["rps"] for r in results]
    hashed = [a for a in ("consistent_hash", "maglev")]
    hash_desc = "; ".join(
        f"`{a}` sent {max(by[a]['servers'].values()):,} of {sum(by[a]['servers'].values()):,} to "
        f"{max(by[a]['servers'], key=by[a]['servers'].get)}" for a in hashed)
    total_err = sum(r["errors"] or 0 for r in results)
    retried = [r["algorithm"] for r in results if r["failed_attempts"]]
    md = f"""# A-1: request distribution per algorithm (3 backends)

{args.requests:,} HTTP requests per algorithm, each on a new TCP connection (`--new-connection`,
{args.conns} concurrent connections, closed loop), through `lb` (1 core, `--admin off`) to three
`backend` processes `s1`, `s2`, `s3` with default weights (1 each). Counts come from the
`X-Server-Id` each response carries, as tallied by `loadgen`.

![A-1 chart](a1.svg)

| algorithm | s1 | s2 | s3 | stdev / mean | req/s | errors |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

What it shows:

- The deterministic rotations split the load exactly: `round_robin` (stdev {spread('round_robin')} of the mean) and
  `weighted_round_robin` with equal weights ({spread('weighted_round_robin')}) give each backend a third, to within one request.
- The load-aware algorithms (`least_connections` {spread('least_connections')}, `least_response_time`
  {spread('least_response_time')}, `power_of_two` {spread('power_of_two')}) land near a third but not exactly:
  shares from {share_range(('least_connections', 'least_response_time', 'power_of_two'))}. They follow what the
  backends actually do, and here the three unpinned backends share {env['cpus']} CPUs with lb and loadgen, so
  whichever one is descheduled for a moment holds its connections longer and is sent fewer new ones. This part
  varies from run to run (rerun to see it move); it is the algorithms reacting, not a bias.
- `random` ({spread('random')}) shows the binomial noise of independent draws: for n = {args.requests:,} and p = 1/3 the expected
  stdev per backend is about {100 * ((args.requests * (1/3) * (2/3)) ** 0.5) / (args.requests / 3):.1f}% of the mean.
  lb seeds its random generator with a fixed value per core (`lb/src/upstream/mod.rs`), so with one lb core this
  exact split repeats on every run; `power_of_two` draws from the same generator but also reads live load.
- The hash algorithms are **not** broken, they are doing their job: {hash_desc}. Both hash the client IP,
  and every connection of this test comes from 127.0.0.1, so every request has the same key and maps to the same
  backend (session affinity). With real clients from many addresses, or with `hash.key = "cookie:NAME"` /
  `"header:NAME"`, the keys differ and the split evens out (see A-2 and the disruption figures in the README).
- Errors over all {len(results)} reported runs: {total_err}. {retry_note(retried)} Throughput (req/s) is bounded here by new-connection setup on a
  {env['cpus']}-CPU machine ({pinning_line()}): {min(rps_all):,.0f} to {max(rps_all):,.0f} req/s across algorithms,
  differences within the run-to-run noise of this VM; this is not a throughput benchmark.

Machine: {machine_line(env)}.

Rerun (from the repository root, after `cargo build --release --bins`):

```sh
{rerun}
```

Raw data: [a1.json](a1.json) (commands, environment, latency), [a1.csv](a1.csv).
"""
    (d / "summary.md").write_text(md)
    log(f"wrote {d}")
    return data


def a2(args):
    results = []
    for n in A2_SIZES:
        for alg in A2_ALGORITHMS:
            log(f"A-2 {alg} x {n} backends")
            results.append(run_one(alg, n, args.requests, args.conns))
    env = lbbench.environment({"pinning": pinning_line()})
    d = out_dir("a2-scaling")
    rerun = f"python3 bench/experiments.py a2 --requests {args.requests} --conns {args.conns}"
    data = {"experiment": "A-2 scaling", "sizes": A2_SIZES, "algorithms": A2_ALGORITHMS,
            "requests_per_run": args.requests, "conns": args.conns, "new_connection": True,
            "rerun": rerun, "environment": env, "results": results}
    (d / "a2.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(d / "a2.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["algorithm", "servers", "mean", "stdev", "stdev_pct", "min", "max", "rps", "errors",
                    "per_server"])
        for r in results:
            w.writerow([r["algorithm"], r["backends"], f"{r['mean_per_server']:.1f}",
                        f"{r['stdev_per_server']:.1f}", f"{r['stdev_pct_of_mean']:.2f}",
                        r["min_per_server"], r["max_per_server"], f"{r['rps']:.0f}", r["errors"],
                        " ".join(f"{k}={v}" for k, v in r["servers"].items())])
    get = {(r["algorithm"], r["backends"]): r for r in results}
    line_chart(d / "a2.svg", "A-2: evenness of load vs number of backends",
               A2_SIZES, {a: [get[(a, n)]["stdev_pct_of_mean"] for n in A2_SIZES] for a in A2_ALGORITHMS},
               "number of backends N (servers)", "stdev of requests per backend (% of mean)",
               note="all clients are 127.0.0.1:\nhash algorithms put 100% on\none backend: stdev = sqrt(N-1)")
    line_chart(d / "a2-throughput.svg", "A-2: throughput vs number of backends",
               A2_SIZES, {a: [get[(a, n)]["rps"] for n in A2_SIZES] for a in A2_ALGORITHMS},
               "number of backends N (servers)", "throughput (requests/s, new connection each)")

    rows = []
    for a in A2_ALGORITHMS:
        for n in A2_SIZES:
            r = get[(a, n)]
            rows.append(f"| `{a}` | {n} | {r['mean_per_server']:,.1f} | {r['stdev_per_server']:,.1f} | "
                        f"{r['stdev_pct_of_mean']:.2f}% | {r['min_per_server']:,} | {r['max_per_server']:,} | "
                        f"{r['rps']:,.0f} | {r['errors']} |")
    rps_all = [r["rps"] for r in results]
    total_err = sum(r["errors"] or 0 for r in results)
    retried = [f"{r['algorithm']} N={r['backends']}" for r in results if r["failed_attempts"]]

    def pct_list(a):
        return ", ".join(f"{get[(a, n)]['stdev_pct_of_mean']:.1f}%" for n in A2_SIZES)

    md = f"""# A-2: load evenness and throughput vs number of backends

For N = {', '.join(map(str, A2_SIZES))} backends and each of {', '.join(f'`{a}`' for a in A2_ALGORITHMS)}:
{args.requests:,} HTTP requests, each on a new TCP connection ({args.conns} concurrent, closed loop), through `lb`
(1 core) to N `backend` processes. This is a subset of the eight algorithms, chosen to cover one rotation
(`round_robin`), one load-aware algorithm (`least_connections`) and both hashing algorithms; the other four
behave like their group in [A-1](../a1-distribution/summary.md). Spread is the population stdev of the
requests per backend (backends that got none count as 0), given as % of the mean ({args.requests:,} / N).

![stdev % vs N](a2.svg)
![throughput vs N](a2-throughput.svg)

| algorithm | N | mean / backend | stdev | stdev % of mean | min | max | req/s | errors |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

What it shows:

- `round_robin` stays exact at every N (stdev % for N = {A2_SIZES[0]}..{A2_SIZES[-1]}: {pct_list('round_robin')}):
  min and max differ by at most one request.
- `least_connections` stays near-even but not exact ({pct_list('least_connections')}): it follows the open
  connections of each backend, and the unpinned backends share the {env['cpus']} CPUs with lb and loadgen, so one
  that is briefly descheduled holds its connections longer and receives fewer new ones. These few percent vary
  from run to run.
- `consistent_hash` ({pct_list('consistent_hash')}) and `maglev` ({pct_list('maglev')}) send every request to
  a single backend, because all traffic comes from one client IP (127.0.0.1), the hash key. One backend with all
  {args.requests:,} and N-1 with 0 gives stdev = sqrt(N-1) x mean, i.e. 100%, 141%, 173%, 200%, 224%; the curve
  grows with N because the mean shrinks, not because the hash gets worse. This is the intended session affinity;
  with many client addresses (or cookie/header keys) the hash spreads the keys (see the README disruption table).
- Throughput ranges from {min(rps_all):,.0f} to {max(rps_all):,.0f} req/s across all runs, with no clear trend in N:
  with new connections on a {env['cpus']}-CPU machine the bottleneck is connection setup in lb and loadgen, not
  the backends, so adding backends does not add throughput here. Errors over all reported runs: {total_err}.
  {retry_note(retried)}

Machine: {machine_line(env)}; {pinning_line()}.

Rerun (from the repository root, after `cargo build --release --bins`):

```sh
{rerun}
```

Raw data: [a2.json](a2.json) (per run: counts per server, latency, commands, environment), [a2.csv](a2.csv).
"""
    (d / "summary.md").write_text(md)
    log(f"wrote {d}")
    return data


# Experiments in their own modules: name -> module with add_arguments(parser) and run(args).
MODULES = {
    "a1-latency": "exp_latency",
    "a3": "exp_failover",
    "a4": "exp_hashing",
    "sticky": "exp_sticky",
    "saturation": "exp_saturation",
    "ecmp": "exp_ecmp",
    "kernel": "exp_kernel",
}


def load_module(name):
    import importlib
    return importlib.import_module(MODULES[name])


def available_modules():
    """The experiment modules present in bench/ (a fresh checkout has all of them)."""
    here = Path(__file__).resolve().parent
    return [n for n, m in MODULES.items() if (here / f"{m}.py").exists()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="store_true", help="run cargo build --release --bins first")
    sub = ap.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, help_ in (("a1", "A-1: distribution over 3 backends, every algorithm"),
                        ("a2", "A-2: N from 2 to 6 backends")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--requests", type=int, default=10000, help="requests per run (default 10000)")
        sp.add_argument("--conns", type=int, default=32, help="concurrent loadgen connections (default 32)")
        sp.set_defaults(func=a1 if name == "a1" else a2)
    for name in available_modules():
        mod = load_module(name)
        sp = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
    sp = sub.add_parser("all", help="every experiment above, each with its defaults")
    sp.set_defaults(func=None)
    for sp in sub.choices.values():
        sp.add_argument("--out", metavar="DIR",
                        help="output folder (default: a fresh bench-results/runs/<experiment>-<time>/; "
                             "with `all`, DIR/<experiment>/)")
    args = ap.parse_args()
    expcommon.OUT.update(out=args.out, all=args.experiment == "all")
    if args.build:
        lbbench.build_release()
    for b in ("lb", "backend", "loadgen"):
        if not (lbbench.TARGET / b).exists():
            sys.exit(f"missing {lbbench.TARGET / b}: run `cargo build --release --bins` first (or pass --build)")
    t0 = time.time()
    if args.func is not None:
        args.func(args)
    else:
        for name in ["a1", "a2"] + available_modules():
            log(f"=== {name}")
            sub_args = ap.parse_args([name])
            sub_args.func(sub_args)
    log(f"done in {time.time() - t0:.0f}s; results in " + ", ".join(str(d) for d in expcommon._DIRS.values()))


if __name__ == "__main__":
    main()
