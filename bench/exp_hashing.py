"""A-4 hashing: consistent_hash with other hash functions and virtual-node counts, and maglev,
measured end to end with many clients.

Every request is a new connection from its own client: loadgen --keys K --key-dist seq
--source-ip-per-key makes K connections, key i from source address 127.1.0.0 + i, each key
exactly once, and lb (1 core, hash.key = "client_ip", backends named s1..sN so the ring does not
depend on ports) picks a backend per connection. The X-Server-Id of each response says where each
key went (loadgen's `keys.per_key`).

  distribution  A-1 again with many keys: the share of the K keys each of 3 backends gets, for
                consistent_hash with several (key_hash, node_hash) pairs at 160 virtual nodes,
                xxh64 at 10, 40, 160 and 640 virtual nodes, and maglev (65,537 slots).
  scaling       A-2 again: evenness (stdev of keys per backend, % of the mean) for N = 2..6.
  movement      5 backends; the same K keys before and after removing s3 through the admin API
                (DELETE /lb/backends/s3; ideal: the 1/5 of keys s3 held move, no others), after
                adding it back (every key must return), and after adding a sixth backend s6
                (POST /lb/backends; ideal: 1/6 of the keys move, all onto s6).

With --key cookie the key is the cookie `sid` (hash.key = "cookie:sid", -H "Cookie: sid={key}")
instead of the source address; the client IPs then all are 127.0.0.1.
"""

import csv
import json
import math
import statistics
import time
import urllib.request

import lbbench
from expcommon import LB_CPU, LG_CPU, machine_line, out_dir, pinning_line, retry_note, time_wait_sockets, wait_quiet
from lbbench import TARGET, free_port, log
from svgchart import bar_chart, line_chart

HELP = "A-4: hash functions, virtual nodes, maglev: key distribution, evenness for N=2..6, keys moved on leave/join"
DIR = "a4-hashing"
CH = "consistent_hash"
MG = "maglev"
# TIME_WAIT sockets allowed before a run starts: each key leaves two (client-lb, lb-backend), so
# a run of K keys adds 2K on top; the machine caps at 131,072.
TW_START = 60000
# Seconds spent waiting for TIME_WAIT sockets to drain (reported in the summary).
WAITED = [0.0]


def quiet(limit, max_wait=90):
    t = time.time()
    wait_quiet(limit=limit, max_wait=max_wait)
    WAITED[0] += time.time() - t


class Variant:
    def __init__(self, algorithm, key_hash="xxh64", node_hash="xxh64", vnodes=160, table=65537):
        self.algorithm = algorithm
        self.key_hash = key_hash
        self.node_hash = node_hash
        self.vnodes = vnodes
        self.table = table

    @property
    def label(self):
        if self.algorithm == MG:
            return f"maglev {self.key_hash}/{self.node_hash} m={self.table}"
        return f"ch {self.key_hash}/{self.node_hash} v={self.vnodes}"

    def hash_toml(self, key):
        return (f'key = "{key}"\nkey_hash = "{self.key_hash}"\nnode_hash = "{self.node_hash}"\n'
                f"virtual_nodes = {self.vnodes}\nmaglev_table_size = {self.table}\n")

    def as_dict(self):
        return {"label": self.label, "algorithm": self.algorithm, "key_hash": self.key_hash,
                "node_hash": self.node_hash, "virtual_nodes": self.vnodes, "maglev_table_size": self.table}


DISTRIBUTION = [
    Variant(CH, "xxh64", "xxh64", 160),
    Variant(CH, "fnv1a", "fnv1a", 160),
    Variant(CH, "murmur3", "murmur3", 160),
    Variant(CH, "sip13", "sip13", 160),
    Variant(CH, "crc32", "crc32", 160),
    Variant(CH, "fnv1a", "xxh64", 160),
    Variant(CH, "xxh64", "xxh64", 10),
    Variant(CH, "xxh64", "xxh64", 40),
    Variant(CH, "xxh64", "xxh64", 640),
    Variant(MG, "xxh64", "xxh64"),
    Variant(MG, "fnv1a", "fnv1a"),
]
SCALING = [
    Variant(CH, "xxh64", "xxh64", 10),
    Variant(CH, "xxh64", "xxh64", 40),
    Variant(CH, "xxh64", "xxh64", 160),
    Variant(CH, "xxh64", "xxh64", 640),
    Variant(MG, "xxh64", "xxh64"),
]
SIZES = [2, 3, 4, 5, 6]
MOVEMENT = [
    Variant(CH, "xxh64", "xxh64", 160),
    Variant(CH, "xxh64", "xxh64", 10),
    Variant(MG, "xxh64", "xxh64"),
]
MOVE_N = 5
REMOVED = "s3"
JOINED = "s6"


def add_arguments(p):
    p.add_argument("--keys", type=int, default=3000,
                   help="keys (= new-connection requests, each key once) per run (default 3000)")
    p.add_argument("--conns", type=int, default=16, help="concurrent loadgen connections (default 16)")
    p.add_argument("--key", choices=["client_ip", "cookie"], default="client_ip",
                   help="what lb hashes: the client address (loadgen --source-ip-per-key, default) or "
                        "the cookie sid (-H 'Cookie: sid={key}')")
    p.add_argument("--parts", default="distribution,scaling,movement",
                   help="comma-separated subset of: distribution, scaling, movement")
    p.add_argument("--replot", action="store_true",
                   help=f"no measurement: redraw the charts and summary from bench-results/{DIR}/a4.json")


def short(v):
    """Chart label of a variant dict: 'ch xxh64 v160', 'ch fnv1a/xxh64 v160', 'maglev xxh64'."""
    h = v["key_hash"] if v["key_hash"] == v["node_hash"] else f"{v['key_hash']}/{v['node_hash']}"
    if v["algorithm"] == MG:
        return f"maglev {h}" + ("" if v["maglev_table_size"] == 65537 else f" m{v['maglev_table_size']}")
    return f"ch {h} v{v['virtual_nodes']}"


# ---------------------------------------------------------------------------------------------
# Processes (shared with exp_sticky)
# ---------------------------------------------------------------------------------------------

def lb_config(port, backends, algorithm, hash_toml="", admin_port=None, extra=""):
    """lb.toml text: named backends [(name, port)], health checks off (nothing fails here, and
    the checks' own connects would only add TIME_WAIT), slow start off."""
    lines = [f'listen = "127.0.0.1:{port}"', "cores = 1", f'algorithm = "{algorithm}"', ""]
    for name, bport in backends:
        lines += ["[[backends]]", f'address = "127.0.0.1:{bport}"', f'name = "{name}"', ""]
    lines += ["[hash]", hash_toml, "[health]", 'check = "none"', "slow_start_ms = 0", ""]
    lines += ["[admin]", f'listen = "127.0.0.1:{admin_port}"' if admin_port else 'listen = "off"', ""]
    return "\n".join(lines) + extra


def start_lb(conf_text, port):
    d = lbbench.tmpdir("bench-lb-")
    conf = d / "lb.toml"
    conf.write_text(conf_text)
    argv = [str(TARGET / "lb"), "--config", str(conf)]
    srv = lbbench.Server("lb", argv, port, cpu=LB_CPU, env={"RUST_LOG": "warn"})
    srv.config = conf_text
    return srv


def start_backends(ids):
    """Backend processes (unpinned, 1 core each); returns [(id, port, Server)]."""
    out = []
    try:
        for sid in ids:
            p = free_port()
            out.append((sid, p, lbbench.backend_proc(p, None, sid)))
    except Exception:
        for _, _, s in out:
            s.stop()
        raise
    return out


def admin(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def backend_names(admin_port):
    return sorted(b["name"] for b in admin(admin_port, "GET", "/lb/backends"))


def key_args(key_mode, keys, requests, conns, dist="seq", seed=1):
    args = ["--requests", str(requests), "--new-connection", "--conns", str(conns),
            "--keys", str(keys), "--key-dist", dist, "--key-seed", str(seed)]
    if key_mode == "client_ip":
        args.append("--source-ip-per-key")
    else:
        args += ["-H", "Cookie: sid={key}"]
    return args


def hash_key_setting(key_mode):
    return "client_ip" if key_mode == "client_ip" else "cookie:sid"


def loadgen_keys(lb_port, args, retries=2, tw_start=TW_START):
    """loadgen with a key population; repeated (after TIME_WAIT drains) when a run had errors.
    Returns (report, failed_attempts)."""
    failed = []
    for i in range(retries + 1):
        quiet(tw_start)
        r = lbbench.loadgen_json(f"http://127.0.0.1:{lb_port}/", args, cpu=LG_CPU)
        r["time_wait_before"] = time_wait_sockets()
        if not r["errors"] or i == retries:
            return r, failed
        log(f"  {r['errors']} errors ({ {k: v for k, v in r['errors_by_kind'].items() if v} }); retrying")
        failed.append({"errors": r["errors"], "errors_by_kind": r["errors_by_kind"]})
        quiet(tw_start // 2)


def mapping(report):
    """key -> the server that served most of its requests (the only one, with one request per key)."""
    return {k: max(per, key=lambda s: (per[s], s)) for k, per in report["keys"]["per_key"].items()}


def spread(counts):
    vals = list(counts.values())
    mean = statistics.mean(vals)
    sd = statistics.pstdev(vals)
    return {"mean": mean, "stdev": sd, "stdev_pct": 100.0 * sd / mean if mean else None,
            "max_over_mean": max(vals) / mean if mean else None, "min": min(vals), "max": max(vals)}


def ring_pct(n, vnodes):
    """Typical stdev (% of the mean) of the backends' shares of a ring with `vnodes` random points per
    backend: each share is Beta(v, (N-1)v) distributed, relative stdev sqrt((N-1) / (N v + 1))."""
    return 100.0 * math.sqrt((n - 1) / (n * vnodes + 1))


def noise_pct(n, keys):
    """Stdev (% of the mean) of the keys per backend that K keys placed uniformly at random would
    give: the sampling floor below which differences between hash layouts are not measurable."""
    return 100.0 * math.sqrt((n - 1) / keys)


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------

def run_distribution(v, n, args):
    """n backends s1..sn, lb with variant v, K keys once each; counts of keys per backend."""
    ids = [f"s{i + 1}" for i in range(n)]
    backends = start_backends(ids)
    lb = None
    try:
        port = free_port()
        lb = start_lb(lb_config(port, [(s, p) for s, p, _ in backends], v.algorithm,
                                v.hash_toml(hash_key_setting(args.key))), port)
        r, failed = loadgen_keys(port, key_args(args.key, args.keys, args.keys, args.conns))
    finally:
        if lb:
            lb.stop()
        for _, _, s in reversed(backends):
            s.stop()
    counts = {sid: int(r["keys"]["keys_per_server"].get(sid, 0)) for sid in ids}
    return {"variant": v.as_dict(), "backends": n, "keys": args.keys, "keys_per_server": counts,
            "unknown_servers": {k: c for k, c in r["servers"].items() if k not in counts},
            "keys_seen": r["keys"]["keys_seen"], "errors": r["errors"],
            "errors_by_kind": {k: c for k, c in r["errors_by_kind"].items() if c},
            "failed_attempts": failed, "rps": r["rps"], "lb_config": lb.config,
            "loadgen": r["command"], **spread(counts)}


def run_movement(v, args):
    """5 backends + a spare; A (5), B (s3 removed), C (s3 back), D (s6 added): key mappings."""
    ids = [f"s{i + 1}" for i in range(MOVE_N + 1)]
    backends = start_backends(ids)
    ports = {s: p for s, p, _ in backends}
    lb = None
    runs = {}
    failed = []
    try:
        port, aport = free_port(), free_port()
        conf = lb_config(port, [(s, ports[s]) for s in ids[:MOVE_N]], v.algorithm,
                         v.hash_toml(hash_key_setting(args.key)), admin_port=aport)
        lb = start_lb(conf, port)
        la = key_args(args.key, args.keys, args.keys, args.conns)

        def measure(name, expect):
            names = backend_names(aport)
            if names != sorted(expect):
                raise RuntimeError(f"lb has backends {names}, expected {sorted(expect)}")
            r, f = loadgen_keys(port, la)
            failed.extend(f)
            runs[name] = r
            log(f"  {v.label} {name}: {r['servers']}")

        measure("A", ids[:MOVE_N])
        admin(aport, "DELETE", f"/lb/backends/{REMOVED}")
        time.sleep(0.2)
        measure("B", [s for s in ids[:MOVE_N] if s != REMOVED])
        admin(aport, "POST", "/lb/backends", {"address": f"127.0.0.1:{ports[REMOVED]}", "name": REMOVED})
        time.sleep(0.2)
        measure("C", ids[:MOVE_N])
        admin(aport, "POST", "/lb/backends", {"address": f"127.0.0.1:{ports[JOINED]}", "name": JOINED})
        time.sleep(0.2)
        measure("D", ids)
    finally:
        if lb:
            lb.stop()
        for _, _, s in reversed(backends):
            s.stop()
    m = {k: mapping(r) for k, r in runs.items()}
    common = set(m["A"]) & set(m["B"]) & set(m["C"]) & set(m["D"])
    total = len(common)

    def moved(a, b):
        return [k for k in common if m[a][k] != m[b][k]]

    leave = moved("A", "B")
    leave_extra = [k for k in leave if m["A"][k] != REMOVED]
    held = sum(1 for k in common if m["A"][k] == REMOVED)
    back = moved("A", "C")
    join = moved("C", "D")
    join_extra = [k for k in join if m["D"][k] != JOINED]
    to_removed = runs["B"]["servers"].get(REMOVED, 0)
    return {
        "variant": v.as_dict(), "keys": total, "backends_before": MOVE_N,
        "removed": REMOVED, "joined": JOINED,
        "leave_moved_pct": 100.0 * len(leave) / total,
        "leave_ideal_pct": 100.0 / MOVE_N,
        "removed_held_pct": 100.0 * held / total,
        "leave_moved_not_from_removed_pct": 100.0 * len(leave_extra) / total,
        "restore_differs_pct": 100.0 * len(back) / total,
        "join_moved_pct": 100.0 * len(join) / total,
        "join_ideal_pct": 100.0 / (MOVE_N + 1),
        "join_moved_not_onto_new_pct": 100.0 * len(join_extra) / total,
        "responses_from_removed_after_delete": to_removed,
        "servers": {k: r["servers"] for k, r in runs.items()},
        "errors": sum(r["errors"] for r in runs.values()),
        "failed_attempts": failed,
        "lb_config": conf,
        "loadgen": runs["A"]["command"],
        "admin_calls": [f"DELETE /lb/backends/{REMOVED}",
                        f'POST /lb/backends {{"address":"127.0.0.1:PORT","name":"{REMOVED}"}}',
                        f'POST /lb/backends {{"address":"127.0.0.1:PORT","name":"{JOINED}"}}'],
    }


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def fmt_pct(v):
    return "-" if v is None else f"{v:.1f}%"


def run(args):
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("distribution", "scaling", "movement"):
            raise SystemExit(f"unknown part {p!r}")
    if args.replot:
        data = json.loads((out_dir(DIR, replot=True) / "a4.json").read_text())
        args.keys, args.conns = data["keys_per_run"], data["conns"]
        args.key = "client_ip" if data["hash_key"] == "client_ip" else "cookie"
        return write(args, data)
    t0 = time.time()
    dist, scaling, movement = [], [], []
    done = {}
    if "distribution" in parts:
        for v in DISTRIBUTION:
            log(f"A-4 distribution {v.label} x 3 backends")
            r = run_distribution(v, 3, args)
            dist.append(r)
            done[(v.label, 3)] = r
    if "scaling" in parts:
        for v in SCALING:
            for n in SIZES:
                if (v.label, n) in done:
                    scaling.append(done[(v.label, n)])
                    continue
                log(f"A-4 scaling {v.label} x {n} backends")
                r = run_distribution(v, n, args)
                scaling.append(r)
                done[(v.label, n)] = r
    if "movement" in parts:
        for v in MOVEMENT:
            log(f"A-4 movement {v.label}")
            movement.append(run_movement(v, args))
    elapsed = time.time() - t0
    waited = WAITED[0]

    env = lbbench.environment({"pinning": pinning_line()})
    d = out_dir(DIR)
    rerun = "python3 bench/experiments.py a4" + "".join(
        f" --{k} {getattr(args, k)}" for k in ("keys", "conns", "key") if getattr(args, k) != DEFAULTS[k])
    if args.parts != DEFAULTS["parts"]:
        rerun += f" --parts {args.parts}"
    data = {"experiment": "A-4 hashing", "keys_per_run": args.keys, "conns": args.conns,
            "hash_key": hash_key_setting(args.key), "new_connection": True, "rerun": rerun,
            "elapsed_s": round(elapsed), "time_wait_wait_s": round(waited), "environment": env,
            "distribution": dist, "scaling": scaling, "movement": movement}
    (d / "a4.json").write_text(json.dumps(data, indent=2) + "\n")
    return write(args, data)


def write(args, data):
    """CSV, SVG and summary.md from the measured data (also with --replot)."""
    d = out_dir(DIR)
    dist, scaling, movement = data["distribution"], data["scaling"], data["movement"]
    env, rerun = data["environment"], data["rerun"]
    elapsed, waited = data["elapsed_s"], data["time_wait_wait_s"]
    with open(d / "a4-distribution.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "algorithm", "key_hash", "node_hash", "virtual_nodes", "backends", "keys",
                    "stdev_pct", "max_over_mean", "errors", "keys_per_server"])
        seen = set()
        for r in dist + scaling:
            key = (r["variant"]["label"], r["backends"])
            if key in seen:
                continue
            seen.add(key)
            vv = r["variant"]
            w.writerow([vv["label"], vv["algorithm"], vv["key_hash"], vv["node_hash"],
                        vv["virtual_nodes"] if vv["algorithm"] == CH else "", r["backends"], r["keys"],
                        f"{r['stdev_pct']:.2f}", f"{r['max_over_mean']:.3f}", r["errors"],
                        " ".join(f"{k}={c}" for k, c in r["keys_per_server"].items())])
    if movement:
        with open(d / "a4-movement.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["variant", "keys", "leave_moved_pct", "leave_ideal_pct", "removed_held_pct",
                        "leave_moved_not_from_removed_pct", "restore_differs_pct", "join_moved_pct",
                        "join_ideal_pct", "join_moved_not_onto_new_pct"])
            for r in movement:
                w.writerow([r["variant"]["label"], r["keys"]] + [f"{r[k]:.2f}" for k in (
                    "leave_moved_pct", "leave_ideal_pct", "removed_held_pct", "leave_moved_not_from_removed_pct",
                    "restore_differs_pct", "join_moved_pct", "join_ideal_pct", "join_moved_not_onto_new_pct")])

    key_desc = ("client address (`hash.key = \"client_ip\"`; loadgen `--source-ip-per-key`: key i connects "
                "from 127.1.0.0 + i)" if args.key == "client_ip"
                else "cookie `sid` (`hash.key = \"cookie:sid\"`; loadgen `-H 'Cookie: sid={key}'`)")
    sections = []
    if dist:
        ids = ["s1", "s2", "s3"]
        bar_chart(d / "a4-distribution.svg",
                  f"A-4: {args.keys:,} client keys over 3 backends, per hash variant",
                  [short(r["variant"]) for r in dist], ids,
                  [[r["keys_per_server"][s] for r in dist] for s in ids],
                  "ch = consistent_hash; hash: key_hash (/node_hash if different); vN: virtual nodes",
                  "keys mapped to each backend (count)", ref_line=args.keys / 3, ref_label="ideal 1/3")
        rows = "\n".join(
            f"| `{r['variant']['label']}` | " + " | ".join(f"{r['keys_per_server'][s]:,}" for s in ids)
            + f" | {r['stdev_pct']:.1f}% | {r['max_over_mean']:.2f} | {r['errors']} |" for r in dist)
        by = {r["variant"]["label"]: r for r in dist}

        def sd(label):
            r = by.get(label)
            return f"{r['stdev_pct']:.1f}%" if r else "-"

        def split(label):
            r = by.get(label)
            return "/".join(f"{c:,}" for c in r["keys_per_server"].values()) if r else "-"

        vn = [r for r in dist if r["variant"]["algorithm"] == CH and r["variant"]["key_hash"] == "xxh64"
              and r["variant"]["node_hash"] == "xxh64"]
        vn.sort(key=lambda r: r["variant"]["virtual_nodes"])
        vn_desc = ", ".join(f"{r['variant']['virtual_nodes']} points {r['stdev_pct']:.1f}% "
                            f"(typical {ring_pct(3, r['variant']['virtual_nodes']):.0f}%)" for r in vn)
        pairs = [r for r in dist if r["variant"]["algorithm"] == CH and r["variant"]["virtual_nodes"] == 160
                 and r["variant"]["key_hash"] == r["variant"]["node_hash"]]
        pair_desc = ", ".join(f"{r['variant']['node_hash']} {r['stdev_pct']:.1f}%" for r in pairs)
        typical160 = math.hypot(ring_pct(3, 160), noise_pct(3, args.keys))
        outliers = [r["variant"]["node_hash"] for r in pairs if r["stdev_pct"] > 2.5 * typical160]
        cluster_note = ("none is far enough above that to suggest a hash that clusters its points." if not outliers
                        else f"{', '.join(outliers)} is well above it, which a rerun with other backend names "
                             f"would have to confirm before blaming the hash.")
        mags = [r for r in dist if r["variant"]["algorithm"] == MG]
        mag_desc = ", ".join(f"{r['variant']['key_hash']}/{r['variant']['node_hash']} {r['stdev_pct']:.1f}%"
                             for r in mags)
        sections.append(f"""## Distribution over 3 backends (A-1 with many clients)

![keys per backend](a4-distribution.svg)

| variant | s1 | s2 | s3 | stdev / mean | max / mean | errors |
|---|---|---|---|---|---|---|
{rows}

- Sampling floor: {args.keys:,} keys placed uniformly at random on 3 backends would show a stdev of about
  {noise_pct(3, args.keys):.1f}% of the mean; differences of that order are the key sample, not the hash.
- consistent_hash's evenness is the layout of the ring: where each backend's `virtual_nodes` points fall,
  which depends on `node_hash`, the count and the backend names. A backend's share is the sum of the arcs
  in front of its points, Beta(v, (N-1)v)-distributed for v random points, so a ring's typical spread is
  sqrt((N-1)/(N v + 1)): 25% for 10 points per backend, 6% for 160, 3% for 640 at N = 3. Each variant
  here is one such random ring: {vn_desc}. Single rings scatter around the typical value (the scaling part
  below averages over five sizes).
- The key hash only has to scatter the keys uniformly; lb passes keys and points through the fmix64
  finaliser, so even FNV-1a does. `ch xxh64/xxh64 v=160` and `ch fnv1a/xxh64 v=160` share their node
  hash, hence their ring, and split the keys {split('ch xxh64/xxh64 v=160')} vs
  {split('ch fnv1a/xxh64 v=160')} ({sd('ch xxh64/xxh64 v=160')} vs {sd('ch fnv1a/xxh64 v=160')}).
- Between node hashes at 160 points per backend ({pair_desc}) the differences are those of one random ring
  against another (typical: about {typical160:.0f}% with this key sample); {cluster_note}
- maglev fills its 65,537-slot table in turns, so each backend owns within a slot of a third of it; what
  remains is the key sample: {mag_desc}.
""")
    if scaling:
        labels = []
        for r in scaling:
            if r["variant"]["label"] not in labels:
                labels.append(r["variant"]["label"])
        get = {(r["variant"]["label"], r["backends"]): r for r in scaling}
        short_of = {r["variant"]["label"]: short(r["variant"]) for r in scaling}
        series = {short_of[lab]: [get[(lab, n)]["stdev_pct"] if (lab, n) in get else None for n in SIZES]
                  for lab in labels}
        series["sampling floor"] = [noise_pct(n, args.keys) for n in SIZES]
        line_chart(d / "a4-evenness.svg", f"A-4: evenness vs number of backends ({args.keys:,} client keys)",
                   SIZES, series, "number of backends N (servers)", "stdev of keys per backend (% of mean)",
                   note=f"ch = consistent_hash,\nvN = N virtual nodes;\nsampling floor: stdev of\n{args.keys:,} random keys")
        rows = "\n".join(
            f"| `{lab}` | " + " | ".join(fmt_pct(get[(lab, n)]["stdev_pct"]) if (lab, n) in get else "-"
                                       for n in SIZES) + " |" for lab in labels)
        floor = " | ".join(f"{noise_pct(n, args.keys):.1f}%" for n in SIZES)

        def avg(lab):
            vals = [get[(lab, n)]["stdev_pct"] for n in SIZES if (lab, n) in get]
            return sum(vals) / len(vals)

        avg_desc = ", ".join(f"`{lab}` {avg(lab):.1f}%" for lab in labels)
        avg_floor = sum(noise_pct(n, args.keys) for n in SIZES) / len(SIZES)
        sections.append(f"""## Evenness for N = 2..6 (A-2 with many clients)

![stdev vs N](a4-evenness.svg)

Stdev of the keys per backend, % of the mean ({args.keys:,} keys):

| variant | {' | '.join(f'N={n}' for n in SIZES)} |
|---|{'---|' * len(SIZES)}
{rows}
| sampling floor (random keys) | {floor} |

- Unlike [A-2](../a2-scaling/summary.md), where every connection came from 127.0.0.1 and each hash
  algorithm put 100% on one backend, many clients spread over every backend at every N.
- Averaged over N = {SIZES[0]}..{SIZES[-1]}: {avg_desc} (sampling floor {avg_floor:.1f}%). More virtual nodes
  make a more even ring, roughly as 1/sqrt(v); maglev's spread is that of the key sample.
""")
    if movement:
        cats = [short(r["variant"]) for r in movement]
        bar_chart(d / "a4-movement-leave.svg",
                  f"A-4: keys moved when {REMOVED} of {MOVE_N} leaves (DELETE via admin API)",
                  cats, ["moved", f"not from {REMOVED}"],
                  [[r["leave_moved_pct"] for r in movement],
                   [r["leave_moved_not_from_removed_pct"] for r in movement]],
                  "variant (ch = consistent_hash, vN = N virtual nodes)", "keys that changed backend (% of keys)",
                  ref_line=100.0 / MOVE_N, ref_label=f"ideal 1/{MOVE_N}")
        bar_chart(d / "a4-movement-join.svg",
                  f"A-4: keys moved when {JOINED} joins {MOVE_N} backends (POST via admin API)",
                  cats, ["moved", f"not onto {JOINED}"],
                  [[r["join_moved_pct"] for r in movement],
                   [r["join_moved_not_onto_new_pct"] for r in movement]],
                  "variant (ch = consistent_hash, vN = N virtual nodes)", "keys that changed backend (% of keys)",
                  ref_line=100.0 / (MOVE_N + 1), ref_label=f"ideal 1/{MOVE_N + 1}")
        rows = "\n".join(
            f"| `{r['variant']['label']}` | {r['leave_moved_pct']:.2f}% | {r['removed_held_pct']:.2f}% | "
            f"{r['leave_moved_not_from_removed_pct']:.2f}% | {r['restore_differs_pct']:.2f}% | "
            f"{r['join_moved_pct']:.2f}% | {r['join_moved_not_onto_new_pct']:.2f}% |" for r in movement)
        by = {r["variant"]["label"]: r for r in movement}
        ch = by.get(f"ch xxh64/xxh64 v=160")
        mg = by.get(f"maglev xxh64/xxh64 m=65537")
        lines = []
        if ch:
            lines.append(
                f"- consistent_hash (160 virtual nodes): removing {REMOVED} moved {ch['leave_moved_pct']:.1f}% of the keys, "
                f"exactly the {ch['removed_held_pct']:.1f}% it held ({ch['leave_moved_not_from_removed_pct']:.2f}% moved "
                f"needlessly); adding {JOINED} moved {ch['join_moved_pct']:.1f}% (ideal {100 / (MOVE_N + 1):.1f}%), "
                f"{ch['join_moved_not_onto_new_pct']:.2f}% of them elsewhere than onto {JOINED}. The share moved is the "
                f"share of the ring the backend owns, so it is only as close to 1/N as the ring is even.")
        if mg:
            extra = mg["leave_moved_not_from_removed_pct"] + mg["join_moved_not_onto_new_pct"]
            lines.append(
                f"- maglev: removing {REMOVED} moved {mg['leave_moved_pct']:.1f}% ({mg['removed_held_pct']:.1f}% were on it, "
                f"{mg['leave_moved_not_from_removed_pct']:.2f}% moved between surviving backends); adding {JOINED} moved "
                f"{mg['join_moved_pct']:.1f}% (ideal {100 / (MOVE_N + 1):.1f}%), {mg['join_moved_not_onto_new_pct']:.2f}% of "
                f"the keys between old backends. "
                + ("A rebuilt Maglev table hands a few slots from one surviving backend to another, the price of "
                   "its even table." if extra > 0 else
                   "No key moved between surviving backends in this sample, though a rebuilt Maglev table may "
                   "reassign a few slots among them (lb's own 1,000,000-key figure in the README).")
                + " Its shares are close to 1/N, so the moved shares are too.")
        differ = ", ".join("%.2f%%" % r["restore_differs_pct"] for r in movement)
        lines.append(f"- After {REMOVED} was added back every key returned to its first backend in "
                     f"{sum(1 for r in movement if r['restore_differs_pct'] == 0)} of {len(movement)} variants "
                     f"(keys differing: {differ}): "
                     f"the mapping is a pure function of the backend names. Connections lb sent to {REMOVED} after "
                     f"the DELETE: {sum(r['responses_from_removed_after_delete'] for r in movement)}.")
        sections.append(f"""## Keys moved when a backend leaves or joins

{MOVE_N} backends s1..s{MOVE_N}; the same {movement[0]['keys']:,} keys (one connection each) are sent four times
through the same lb: (A) all {MOVE_N}; (B) after `DELETE /lb/backends/{REMOVED}`; (C) after adding {REMOVED}
back with `POST /lb/backends`; (D) after adding a sixth backend {JOINED}. Leave compares A with B (ideal:
only {REMOVED}'s keys move, 1/{MOVE_N} = {100 / MOVE_N:.0f}%), join compares C with D (ideal: 1/{MOVE_N + 1} =
{100 / (MOVE_N + 1):.1f}% move, all onto {JOINED}).

![keys moved on leave](a4-movement-leave.svg)
![keys moved on join](a4-movement-join.svg)

| variant | leave: moved | held by {REMOVED} | moved needlessly | back after re-add: differ | join: moved | not onto {JOINED} |
|---|---|---|---|---|---|---|
{rows}

{chr(10).join(lines)}
""")

    all_runs = dist + [r for r in scaling if r not in dist]
    total_err = sum(r["errors"] or 0 for r in all_runs) + sum(r["errors"] for r in movement)
    retried = [r["variant"]["label"] + (f" N={r['backends']}" if "backends" in r else "")
               for r in all_runs + movement if r["failed_attempts"]]
    md = f"""# A-4: consistent hashing with other hash functions and virtual-node counts, and maglev

Many clients, end to end: each run sends {args.keys:,} HTTP requests, each on a new TCP connection from its
own key, every key exactly once (`loadgen --keys {args.keys} --key-dist seq --new-connection`,
{args.conns} concurrent connections), through `lb` (1 core, health checks off) to `backend` processes named
s1..sN. lb hashes the {key_desc}. A key's backend is the `X-Server-Id` of its response
(loadgen's `keys.per_key`). Since each key is one connection, counts are keys per backend, i.e. how the
hash splits the key space; they do not depend on request timing.

{chr(10).join(sections)}
Errors over all reported runs: {total_err}. {retry_note(retried)} The whole experiment took
{elapsed / 60:.1f} minutes, {waited / 60:.1f} of them waiting for TIME_WAIT sockets to drain between runs.

Machine: {machine_line(env)}; {pinning_line()}. These figures are about distribution, not speed:
other load on the machine does not change them.

Rerun (from the repository root, after `cargo build --release --bins`):

```sh
{rerun}
```

Raw data: [a4.json](a4.json) (per run: lb config, loadgen command, counts), [a4-distribution.csv](a4-distribution.csv),
[a4-movement.csv](a4-movement.csv).
"""
    (d / "summary.md").write_text(md)
    log(f"wrote {d} in {elapsed:.0f}s")
    return data


DEFAULTS = {"keys": 3000, "conns": 16, "key": "client_ip", "parts": "distribution,scaling,movement"}
