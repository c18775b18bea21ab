"""A-1 latency: backends of different speed, every algorithm; and one backend that turns slow.

Three `backend`s answer after a fixed delay of 1, 5 and 25 ms (MIN_LATENCY = MAX_LATENCY: s1, s2,
s3). lb (1 core, pinned) balances an open-loop load over them: loadgen --rate R --requests N, each
request on a new connection, from 1,000 client addresses (127.1.0.0 + i, uniform). Per algorithm
of `lb --help`: the share of requests each backend got and the client p50/p99 (loadgen, from each
request's due time, so queueing is included), and lb's own connect time per backend (its admin
API, /lb/stats).

Why a new connection per request: an L4 balancer decides once per TCP connection. With keep-alive
the connections are spread before any response time is known and never move again, so every
algorithm would show the split of the first few connects. Why many client addresses: the hash
algorithms key on the client IP; with one address they send everything to one backend (A-1
distribution shows that), which says nothing about latency.

The second part, "turns slow": the same three backends under --rate for --slow-duration seconds;
--slow-at seconds in, s1 (the fastest) is made to answer after --slow-ms through its admin
endpoint (POST /admin/latency). loadgen's --timeline-ms buckets say which server answered when
(timeline[].servers), so the timeline shows how fast each algorithm moves traffic off s1.

lb's least_response_time scores backends by the peak-EWMA of their time to first byte (issue 17,
`[response_time] metric = "first_byte"`, the default); `--lrt-metric connect` shows what it did
before: on loopback a connect is the kernel's handshake, the same for all three, so only the open
connections that pile up on a slow backend steered clients away. `--lrt-decay-ms` sets the
Peak-EWMA's decay (`response_time.decay_ms`).
"""

import csv
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import lbbench
from expcommon import LB_CPU, LG_CPU, machine_line, out_dir, pinning_line, wait_quiet
from lbbench import TARGET, Server, free_port, log, pinned
from svgchart import bar_chart, timeline_chart

HELP = "A-1 latency: backends at 1, 5 and 25 ms, share and p50/p99 per algorithm; one backend turning slow"
DIR = "a1-latency"
JSON_NAME = "a1-latency.json"
BACKENDS = [("s1", 1), ("s2", 5), ("s3", 25)]
KEYS = 1000
# What lb's least_response_time scores unless --lrt-metric says otherwise (recorded in the JSON;
# the summary explains the figures by it).
LRT_METRIC = "first_byte"
FALLBACK_ALGORITHMS = ["round_robin", "weighted_round_robin", "least_connections", "least_response_time",
                       "random", "power_of_two", "consistent_hash", "maglev"]
DEFAULTS = {"requests": 10000, "rate": 500, "conns": 64, "bucket_ms": 250, "slow_duration": 20.0,
            "slow_at": 10.0, "slow_ms": 50,
            "slow_algorithms": "round_robin,least_connections,least_response_time,power_of_two",
            "lrt_metric": LRT_METRIC, "lrt_decay_ms": 2000}


def add_arguments(p):
    p.add_argument("--requests", type=int, default=DEFAULTS["requests"], help="requests per algorithm (default 10000)")
    p.add_argument("--rate", type=int, default=DEFAULTS["rate"], help="requests per second, open loop (default 500)")
    p.add_argument("--conns", type=int, default=DEFAULTS["conns"],
                   help="loadgen connections (default 64: each sends every 64th request, 128 ms apart at 500/s, "
                        "longer than the slowest answer)")
    p.add_argument("--algorithms", default="",
                   help="comma-separated subset (default: every algorithm `lb --help` lists)")
    p.add_argument("--slow-algorithms", default=DEFAULTS["slow_algorithms"],
                   help="algorithms of the turns-slow run (default round_robin,least_connections,"
                        "least_response_time,power_of_two; empty: skip it)")
    p.add_argument("--slow-duration", type=float, default=DEFAULTS["slow_duration"],
                   help="seconds of load in the turns-slow run (default 20)")
    p.add_argument("--slow-at", type=float, default=DEFAULTS["slow_at"],
                   help="second at which s1 turns slow (default 10)")
    p.add_argument("--slow-ms", type=int, default=DEFAULTS["slow_ms"], help="s1's latency after it turns slow (default 50)")
    p.add_argument("--bucket-ms", type=int, default=DEFAULTS["bucket_ms"], help="timeline bucket width (default 250)")
    p.add_argument("--lrt-metric", default=DEFAULTS["lrt_metric"], choices=["first_byte", "connect", "last_byte"],
                   help="least_response_time's response_time.metric (default first_byte)")
    p.add_argument("--lrt-decay-ms", type=int, default=DEFAULTS["lrt_decay_ms"],
                   help="least_response_time's response_time.decay_ms (default 2000, lb's)")
    p.add_argument("--replot", action="store_true",
                   help=f"no measurement: redraw the charts and summary from {JSON_NAME} in the output folder "
                        f"(default bench-results/{DIR})")


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def lb_algorithms():
    """The algorithm names `lb --help` lists for --algorithm (aliases dropped)."""
    try:
        text = subprocess.run([str(TARGET / "lb"), "--help"], capture_output=True, text=True, timeout=10).stdout
        line = next(ln for ln in text.splitlines() if "--algorithm" in ln)
        names = re.sub(r"\(alias[^)]*\)", "", line.split(">", 1)[1])
        found = [n for n in re.split(r",\s*|\s+or\s+", names.strip()) if re.fullmatch(r"[a-z_0-9]+", n)]
        return found or FALLBACK_ALGORITHMS
    except (OSError, StopIteration, IndexError, subprocess.SubprocessError):
        return FALLBACK_ALGORITHMS


def http_json(url, body=None, timeout=2.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class Setup:
    """Three backends at their latencies and lb (1 core, admin on) in front; stopped by PID."""

    def __init__(self, algorithm, args=None):
        """`algorithm` may carry a metric for least_response_time: `least_response_time@connect`."""
        self.procs = []
        self.dirs = []
        algorithm, _, metric = algorithm.partition("@")
        try:
            self.ports = {}
            for sid, ms in BACKENDS:
                p = free_port()
                self.procs.append(lbbench.backend_proc(p, None, sid, extra=["--min-latency", str(ms)]))
                self.ports[sid] = p
            self.port, self.admin = free_port(), free_port()
            argv = [str(TARGET / "lb"), "--listen", f"127.0.0.1:{self.port}", "--cores", "1",
                    "--admin", f"127.0.0.1:{self.admin}", "--algorithm", algorithm,
                    "--backend", ",".join(f"127.0.0.1:{self.ports[s]}" for s, _ in BACKENDS)]
            if algorithm == "least_response_time" and args is not None:
                d = lbbench.tmpdir("lb-a1-lrt-")
                self.dirs.append(d)
                (d / "lb.toml").write_text(f"[response_time]\nmetric = \"{metric or args.lrt_metric}\"\n"
                                           f"decay_ms = {args.lrt_decay_ms}\n")
                argv += ["--config", str(d / "lb.toml")]
                self.lb_config = (d / "lb.toml").read_text()
            self.lb_cmd = " ".join(pinned(LB_CPU, argv) if LB_CPU is not None else argv)
            self.procs.append(Server("lb", argv, self.port, cpu=LB_CPU, env={"RUST_LOG": "warn"}))
            lbbench.wait_port(self.admin)
        except BaseException:
            self.stop()
            raise

    def loadgen_argv(self, json_path, stop):
        argv = [str(TARGET / "loadgen"), f"http://127.0.0.1:{self.port}/", *stop, "--new-connection",
                "--keys", str(KEYS), "--key-dist", "uniform", "--key-seed", "1", "--source-ip-per-key",
                "--timeout", "5s", "--json", str(json_path)]
        return pinned(LG_CPU, argv) if LG_CPU is not None else argv

    def lb_response_ms(self):
        """lb's response-time estimate per backend id (core 0's; least_response_time only)."""
        by_addr = {f"127.0.0.1:{p}": sid for sid, p in self.ports.items()}
        st = http_json(f"http://127.0.0.1:{self.admin}/lb/stats")
        return {by_addr.get(b["address"], b["name"]): (b.get("response_time_ms") or [None])[0]
                for b in st["backends"]}

    def lb_connect_ms(self):
        """lb's connect-time p50 per backend id (what least_response_time sees today)."""
        by_addr = {f"127.0.0.1:{p}": sid for sid, p in self.ports.items()}
        st = http_json(f"http://127.0.0.1:{self.admin}/lb/stats")
        return {by_addr.get(b["address"], b["name"]): b["connect_ms"] for b in st["backends"]}

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []
        for d in self.dirs:
            for f in d.glob("*"):
                f.unlink()
            d.rmdir()
        self.dirs = []


def run_loadgen(argv, timeout):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {err[-2000:]}")


def summarise(r):
    counts = {sid: int(r["servers"].get(sid, 0)) for sid, _ in BACKENDS}
    total = sum(counts.values()) or 1
    return {"servers": counts, "share_pct": {s: round(100.0 * n / total, 2) for s, n in counts.items()},
            "requests": r["requests"], "errors": r["errors"],
            "errors_by_kind": {k: n for k, n in r["errors_by_kind"].items() if n},
            "latency_ms": {k: r["latency_ms"][k] for k in ("p50", "p90", "p99", "p999", "mean", "max")},
            "schedule_lag_p99_ms": (r.get("schedule_lag_ms") or {}).get("p99"), "rps": r["rps"]}


def measure_distribution(algorithm, args, tmp):
    wait_quiet()
    s = Setup(algorithm, args)
    try:
        path = tmp / f"{algorithm}.json"
        argv = s.loadgen_argv(path, ["--requests", str(args.requests), "--rate", str(args.rate),
                                     "--conns", str(args.conns), "--timeline-ms", "1000"])
        run_loadgen(argv, timeout=args.requests / args.rate + 120)
        connect = s.lb_connect_ms()
        response = s.lb_response_ms()
    finally:
        s.stop()
    r = json.loads(path.read_text())
    path.unlink()
    out = {"algorithm": algorithm, **summarise(r), "lb_connect_ms": connect, "lb_response_ms": response,
           "commands": {"lb": s.lb_cmd, "loadgen": " ".join(argv[:-2])}}
    return out


def measure_slow(algorithm, args, tmp):
    wait_quiet()
    s = Setup(algorithm, args)
    try:
        path = tmp / f"slow-{algorithm}.json"
        argv = s.loadgen_argv(path, ["--duration", f"{args.slow_duration:g}s", "--rate", str(args.rate),
                                     "--conns", str(args.conns), "--timeline-ms", str(args.bucket_ms)])
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            launched = time.time()
            time.sleep(max(0.0, launched + args.slow_at - time.time()))
            t_switch = time.time()
            answer = http_json(f"http://127.0.0.1:{s.ports['s1']}/admin/latency",
                               {"min_ms": args.slow_ms, "max_ms": args.slow_ms})
            _, err = proc.communicate(timeout=args.slow_duration + 120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {err[-2000:]}")
    finally:
        s.stop()
    r = json.loads(path.read_text())
    path.unlink()
    switch_s = round(t_switch - r["started_unix_ms"] / 1000.0, 3)
    timeline = [{"t_s": b["t_ms"] / 1000.0, "requests": b["requests"], "errors": b["errors"],
                 "servers": {sid: b.get("servers", {}).get(sid, 0) for sid, _ in BACKENDS},
                 "p99_ms": b["p99_ms"]} for b in r["timeline"]]
    return {"algorithm": algorithm, "switch_s": switch_s, "admin_answer": answer, **summarise(r),
            "timeline": timeline, "commands": {"lb": s.lb_cmd, "loadgen": " ".join(argv[:-2])}}


def measure(args):
    """Runs everything; returns the JSON-able data."""
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()] or lb_algorithms()
    slow = [a.strip() for a in args.slow_algorithms.split(",") if a.strip()]
    # Side by side in the same run: least_response_time as it was, by connect time.
    if args.lrt_metric != "connect":
        for names in (algorithms, slow):
            if "least_response_time" in names and "least_response_time@connect" not in names:
                names.insert(names.index("least_response_time") + 1, "least_response_time@connect")
    tmp = lbbench.tmpdir("lb-a1-latency-")
    t0 = time.time()
    results, slow_results = [], []
    try:
        for alg in algorithms:
            log(f"A-1 latency {alg}")
            results.append(measure_distribution(alg, args, tmp))
            v = results[-1]
            log(f"  shares {v['share_pct']}, p50 {v['latency_ms']['p50']} ms, p99 {v['latency_ms']['p99']} ms, "
                f"errors {v['errors']}")
        for alg in slow:
            log(f"A-1 latency, s1 turns slow: {alg}")
            slow_results.append(measure_slow(alg, args, tmp))
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    params = {k: getattr(args, k) for k in DEFAULTS}
    rerun = "python3 bench/experiments.py a1-latency" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k):g}" if isinstance(DEFAULTS[k], (int, float))
        else f" --{k.replace('_', '-')} '{getattr(args, k)}'"
        for k in DEFAULTS if getattr(args, k) != DEFAULTS[k])
    if args.algorithms:
        rerun += f" --algorithms '{args.algorithms}'"
    return {"experiment": "A-1 latency", "rerun": rerun, "params": params, "keys": KEYS,
            "least_response_time_metric": args.lrt_metric,
            "least_response_time_decay_ms": args.lrt_decay_ms,
            "backends": [{"id": s, "latency_ms": ms} for s, ms in BACKENDS], "elapsed_s": round(time.time() - t0),
            "environment": lbbench.environment({"pinning": pinning_line()}),
            "results": results, "slow": slow_results}


# ---------------------------------------------------------------------------------------------
# Rendering (also with --replot; bench/test_exp_latency.py renders a fixture)
# ---------------------------------------------------------------------------------------------

def full_buckets(v, p):
    """The timeline's buckets that lie wholly inside the load (the last one holds only stragglers)."""
    w = p["bucket_ms"] / 1000.0
    return [b for b in v["timeline"] if b["t_s"] + w <= p["slow_duration"] + 1e-9]


def share_series(v, sid, p):
    """Share of `sid` per full bucket in %, None for buckets without responses."""
    out = []
    for b in full_buckets(v, p):
        tot = sum(b["servers"].values())
        out.append(100.0 * b["servers"][sid] / tot if tot else None)
    return out


def smooth(points, width):
    """Trailing mean over `width` buckets, skipping empty ones."""
    out = []
    for i in range(len(points)):
        w = [p for p in points[max(0, i - width + 1):i + 1] if p is not None]
        out.append(sum(w) / len(w) if w else None)
    return out


def movement(v, params):
    """s1's share before and after the switch, and how long after it the share first reached the
    half-way point between the two (None when it did not move by 5 points or more)."""
    buckets = full_buckets(v, params)
    sh = share_series(v, "s1", params)
    w = params["bucket_ms"] / 1000.0
    sw = v["switch_s"]
    before = [x for b, x in zip(buckets, sh) if x is not None and sw - 5 <= b["t_s"] and b["t_s"] + w <= sw]
    after = [x for b, x in zip(buckets, sh) if x is not None and b["t_s"] >= sw + 2]
    if not before or not after:
        return {"before_pct": None, "after_pct": None, "halfway_s": None, "before_range": None}
    b_pct, a_pct = sum(before) / len(before), sum(after) / len(after)
    halfway = None
    if b_pct - a_pct >= 5:
        mid = (b_pct + a_pct) / 2
        for b, x in zip(buckets, smooth(sh, 2)):
            if b["t_s"] >= sw and x is not None and x <= mid:
                halfway = round(b["t_s"] + w - sw, 2)
                break
    return {"before_pct": round(b_pct, 1), "after_pct": round(a_pct, 1), "halfway_s": halfway,
            "before_range": (round(min(before)), round(max(before)))}


def write(data, d):
    d.mkdir(parents=True, exist_ok=True)
    (d / JSON_NAME).write_text(json.dumps(data, indent=1) + "\n")
    render(data, d)


def render(data, d):
    """CSV, SVG and summary.md from the measured data."""
    results, slow, p = data["results"], data["slow"], data["params"]
    ids = [b["id"] for b in data["backends"]]
    lat = {b["id"]: b["latency_ms"] for b in data["backends"]}
    with open(d / "a1-latency.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["algorithm", *[f"{s}_requests" for s in ids], *[f"{s}_share_pct" for s in ids],
                    "p50_ms", "p99_ms", "mean_ms", "errors"])
        for r in results:
            w.writerow([r["algorithm"], *[r["servers"][s] for s in ids], *[r["share_pct"][s] for s in ids],
                        r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["latency_ms"]["mean"], r["errors"]])
    if slow:
        with open(d / "a1-latency-slow.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["algorithm", "t_s", *ids, "errors", "p99_ms"])
            for v in slow:
                for b in v["timeline"]:
                    w.writerow([v["algorithm"], f"{b['t_s']:.3f}", *[b["servers"][s] for s in ids], b["errors"],
                                b["p99_ms"]])
    names = [r["algorithm"] for r in results]
    labels = [f"{s} ({lat[s]} ms)" for s in ids]
    if results:
        bar_chart(d / "a1-latency-share.svg",
                  f"A-1 latency: share of {p['requests']:,} requests per backend ({p['rate']} req/s, new connections)",
                  names, labels, [[r["share_pct"][s] for r in results] for s in ids],
                  "load-balancing algorithm (lb, 1 core)", "share of requests (%)",
                  ref_line=100.0 / len(ids), ref_label="1/3")
        bar_chart(d / "a1-latency-p50-p99.svg", "A-1 latency: client latency per algorithm",
                  names, ["p50", "p99"],
                  [[r["latency_ms"]["p50"] for r in results], [r["latency_ms"]["p99"] for r in results]],
                  "load-balancing algorithm (lb, 1 core)", "client latency, from the due time (ms)")
    for v in slow:
        xs = [b["t_s"] + p["bucket_ms"] / 2000.0 for b in full_buckets(v, p)]
        turned = f" -> {p['slow_ms']} ms"
        series = {f"{s} ({lat[s]} ms{turned if s == 's1' else ''})": share_series(v, s, p) for s in ids}
        timeline_chart(d / f"a1-latency-slow-{v['algorithm']}.svg",
                       f"{v['algorithm']}: share per {p['bucket_ms']} ms while s1 turns slow",
                       xs, series, "time since the load started (s)", "share of the bucket's requests (%)",
                       events=[(v["switch_s"], f"s1: {lat['s1']} -> {p['slow_ms']} ms")],
                       note=f"{p['rate']} req/s,\nnew connection each")
    if slow:
        xs = [b["t_s"] + p["bucket_ms"] / 2000.0 for b in full_buckets(slow[0], p)]
        n = len(xs)
        timeline_chart(d / "a1-latency-slow-s1.svg",
                       f"s1's share, per algorithm, when it turns slow ({lat['s1']} -> {p['slow_ms']} ms)",
                       xs, {v["algorithm"]: (smooth(share_series(v, "s1", p), 2) + [None] * n)[:n] for v in slow},
                       "time since the load started (s)", "s1's share of requests (%, 2 buckets smoothed)",
                       events=[(slow[0]["switch_s"], "s1 turns slow")])
    (d / "summary.md").write_text(markdown(data))


def markdown(data):
    results, slow, p, env = data["results"], data["slow"], data["params"], data["environment"]
    ids = [b["id"] for b in data["backends"]]
    lat = {b["id"]: b["latency_ms"] for b in data["backends"]}
    by = {r["algorithm"]: r for r in results}

    def ms(x, digits=2):
        return "n/a" if x is None else f"{x:.{digits}f}"

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"

    rows = []
    for r in results:
        shares = " | ".join(f"{r['servers'][s]:,} ({r['share_pct'][s]:.1f}%)" for s in ids)
        conn = " / ".join(ms((r.get("lb_connect_ms", {}).get(s) or {}).get("p50"), 3) for s in ids)
        rows.append(f"| `{r['algorithm']}` | {shares} | {ms(r['latency_ms']['p50'])} | {ms(r['latency_ms']['p99'])} "
                    f"| {ms(r['latency_ms']['mean'])} | {conn} | {r['errors']} |")
    head_ids = " | ".join(f"{s} ({lat[s]} ms)" for s in ids)
    findings = []
    fastest = min(ids, key=lambda s: lat[s])
    slowest = max(ids, key=lambda s: lat[s])

    def shares(r):
        return ", ".join(f"{s} {r['share_pct'][s]:.1f}%" for s in ids)

    if results:
        lo99 = min(results, key=lambda r: r["latency_ms"]["p99"])
        hi99 = max(results, key=lambda r: r["latency_ms"]["p99"])
        lo50 = min(results, key=lambda r: r["latency_ms"]["p50"])
        top = max(results, key=lambda r: r["share_pct"][fastest])
        least_slow = min(results, key=lambda r: r["share_pct"][slowest])
        line = (f"- Client p99 ranges from {ms(lo99['latency_ms']['p99'])} ms (`{lo99['algorithm']}`) to "
                f"{ms(hi99['latency_ms']['p99'])} ms (`{hi99['algorithm']}`). ")
        if least_slow["share_pct"][slowest] > 1.0:
            line += (f"Every algorithm sent the {lat[slowest]} ms backend at least "
                     f"{least_slow['share_pct'][slowest]:.1f}% of the requests (`{least_slow['algorithm']}`), more "
                     f"than 1%, so that backend's answers set the p99 of all of them and the p99 ranking is within "
                     f"this machine's noise. ")
        line += (f"The median tells them apart: lowest p50 {ms(lo50['latency_ms']['p50'])} ms "
                 f"(`{lo50['algorithm']}`); largest share on the fastest backend {fastest}: `{top['algorithm']}` "
                 f"({top['share_pct'][fastest]:.1f}%).")
        findings.append(line)
        lrt = by.get("least_response_time")
        if lrt:
            rank99 = sorted(results, key=lambda r: r["latency_ms"]["p99"]).index(lrt) + 1
            rank50 = sorted(results, key=lambda r: r["latency_ms"]["p50"]).index(lrt) + 1
            line = (f"- `least_response_time`: {shares(lrt)}; client p50 ranks {rank50} and p99 {rank99} of "
                    f"{len(results)}.")
            if data.get("least_response_time_metric", "connect") != "connect":
                est = lrt.get("lb_response_ms") or {}
                line += (f" lb scored the peak-EWMA of each backend's **time to first byte** "
                         f"(decay {data.get('least_response_time_decay_ms', 2000):,} ms); its estimates at the end: "
                         + ", ".join(f"{s} {ms(est.get(s))} ms" for s in ids) + ".")
                old = by.get("least_response_time@connect")
                if old:
                    line += (f" By connect time, in the same run (`least_response_time@connect`): {shares(old)}, p50 "
                             f"{ms(old['latency_ms']['p50'])} ms, p99 {ms(old['latency_ms']['p99'])} ms.")
            else:
                known = [c["p50"] for c in lrt.get("lb_connect_ms", {}).values() if c and c.get("p50") is not None]
                same = (f"{known[0]:.3f} ms for every backend" if known and min(known) == max(known)
                        else f"{min(known):.3f} to {max(known):.3f} ms" if known else "not recorded")
                line += (f" The lb measured scores the peak-EWMA of its **connect** time, whose median was {same} "
                         f"although the backends answer after " + ", ".join(str(lat[s]) for s in ids) + " ms: on "
                         f"loopback a connect is the kernel's handshake. What steers clients off a slow backend is "
                         f"only the `(active + 1)` factor, the connections that pile up on it, as with "
                         f"`least_connections`")
                lc = by.get("least_connections")
                if lc:
                    line += (f" ({shares(lc)}); `least_response_time` still sent the {lat[slowest]} ms backend "
                             f"{lrt['share_pct'][slowest]:.1f}% against {lc['share_pct'][slowest]:.1f}%")
                line += "."
            findings.append(line)
        rr = by.get("round_robin")
        if rr:
            findings.append(f"- `round_robin`, the latency-blind reference: {shares(rr)}, p50 "
                            f"{ms(rr['latency_ms']['p50'])} ms, p99 {ms(rr['latency_ms']['p99'])} ms.")
        hashed = [a for a in ("consistent_hash", "maglev") if a in by]
        if hashed:
            findings.append(f"- The hash algorithms split the {data['keys']:,} client addresses by hash, blind to "
                            f"latency: " + "; ".join(f"`{a}` {shares(by[a])}" for a in hashed) + ".")
        errs = sum(r["errors"] or 0 for r in results)
        findings.append(f"- Errors over all runs: {errs}.")
    moved = [(v["algorithm"], movement(v, p)) for v in slow]
    moved = [(a, m) for a, m in moved if m["halfway_s"] is not None]
    if moved:
        findings.append("- When s1 turns slow, its share falls " + "; ".join(
            f"under `{a}` from {m['before_pct']:.1f}% to {m['after_pct']:.1f}%, half-way after {m['halfway_s']:.2f} s"
            for a, m in moved) + " (details below).")
    before_note = ("`least_response_time@connect` is the same algorithm scored by connect time, as before issue 17, "
                   "in the same run.\n\n")
    if data.get("least_response_time_metric", "connect") == "connect":
        before_note = ("These are the figures **before** issue 17's change: the lb measured still scores\n"
                       "`least_response_time` by connect time, not yet by time to first byte.\n\n")
    slow_rows, slow_charts = [], []
    for v in slow:
        m = movement(v, p)
        if m["before_pct"] is None:
            half = "n/a (run too short)"
        elif m["halfway_s"] is None:
            half = "did not move (less than 5 points)"
        else:
            half = f"{m['halfway_s']:.2f} s"
        spread = "" if m["before_range"] is None else f" ({m['before_range'][0]}-{m['before_range'][1]})"
        slow_rows.append(f"| `{v['algorithm']}` | {pct(m['before_pct'])}{spread} | {pct(m['after_pct'])} | {half} | "
                         f"{ms(v['latency_ms']['p99'])} | {v['errors']} |")
        slow_charts.append(f"![{v['algorithm']}](a1-latency-slow-{v['algorithm']}.svg)")
    slow_md = ""
    if slow:
        slow_md = f"""
## s1 turns slow in the middle

The same three backends and client population, {p['rate']} requests/s for {p['slow_duration']:g} s; about
{p['slow_at']:g} s in (at {slow[0]['switch_s']:.2f} s on loadgen's clock, in the first run), s1 is made to
answer after {p['slow_ms']} ms instead of {lat['s1']} ms with `POST /admin/latency
{{"min_ms": {p['slow_ms']}, "max_ms": {p['slow_ms']}}}`. Shares per {p['bucket_ms']} ms bucket, from the
server ids in loadgen's timeline. "Before" is s1's share in the 5 s before the switch, "after" from 2 s after
it to the end; "half-way" is how long after the switch s1's share (2 buckets smoothed) first fell half-way
from the one to the other; in brackets, the lowest and highest share of a single bucket before the switch.

![s1's share per algorithm](a1-latency-slow-s1.svg)

| algorithm | s1's share before (bucket min-max) | after | half-way after | client p99 (ms) | errors |
|---|---|---|---|---|---|
{chr(10).join(slow_rows)}

{chr(10).join(slow_charts)}
"""
    return f"""# A-1 latency: backends of different speed, every algorithm

Three `backend`s answer after a fixed {', '.join(f'{lat[s]} ms ({s})' for s in ids)} (MIN_LATENCY = MAX_LATENCY).
lb (1 core, `--algorithm NAME`, everything else default) balances {p['requests']:,} requests per algorithm at
a fixed {p['rate']} requests/s (loadgen open loop, {p['conns']} connections), **each on a new connection**,
from {data['keys']:,} client addresses (127.1.0.0 + i, drawn uniformly; `--source-ip-per-key`). A new
connection per request because an L4 balancer decides once per connection: with keep-alive, the
connections would be spread before any answer was seen and never move. Many addresses because the hash
algorithms key on the client IP. Latency is loadgen's, from each request's due time (queueing included);
"lb connect p50" is lb's own connect time per backend from its admin API (`/lb/stats`).

{before_note}![share per backend](a1-latency-share.svg)

![client p50 and p99](a1-latency-p50-p99.svg)

| algorithm | {head_ids} | p50 (ms) | p99 (ms) | mean (ms) | lb connect p50, {' / '.join(ids)} (ms) | errors |
|---|{'---|' * len(ids)}---|---|---|---|---|
{chr(10).join(rows)}

What it shows:

{chr(10).join(findings)}
{slow_md}
Timing figures are noisy: the machine has {env['cpus']} CPUs, shared with other developers compiling, testing
and benchmarking while this ran; the shares of the load-aware algorithms move by a few points from run to
run, and single p99s by more.

Machine: {machine_line(env)}; {pinning_line()}. Run time: {data['elapsed_s']} s.

Rerun (from the repository root, after `cargo build --release --bins`):

```sh
{data['rerun']}
```

Raw data: [{JSON_NAME}]({JSON_NAME}) (per run: counts, latency, lb's connect times, commands; the turns-slow
timelines), [a1-latency.csv](a1-latency.csv){', [a1-latency-slow.csv](a1-latency-slow.csv)' if slow else ''}.
"""


def run(args):
    if args.replot:
        d = out_dir(DIR, replot=True)
        data = json.loads((d / JSON_NAME).read_text())
        render(data, d)
        log(f"rendered {d}")
        return data
    if not 0 < args.slow_at < args.slow_duration:
        raise SystemExit("--slow-at must be inside the run (0 < slow-at < slow-duration)")
    data = measure(args)
    d = out_dir(DIR)
    write(data, d)
    log(f"wrote {d}")
    return data
