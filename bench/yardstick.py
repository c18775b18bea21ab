"""The hop-cost yardstick: what a proxy costs the whole machine per request, over going direct.

A proxy on loopback is charged only part of its work: the kernel runs the receiver's TCP path in
the sender's context, and can move work to softirq and kworker threads that no process is charged
for. So the yardstick reads the whole machine's busy CPU (/proc/stat, all CPUs) over loadgen's
measured window, divides it by the requests completed in that window, and subtracts the same for
the same load sent straight to the backends in the same round:

    hop cost = busy CPU per request through the proxy - busy CPU per request direct

Busy is everything but idle and iowait, taken as CPUs x wall time - (idle + iowait). The busy
fields themselves (user + nice + system + irq + softirq + steal) are kept beside it but not used:
with CONFIG_TICK_CPU_ACCOUNTING (this VM: HZ=250) they are sampled one tick at a time, so at a
fixed rate below saturation, where a CPU runs in bursts much shorter than the 4 ms tick, they miss
or over-count bursts by how the bursts fall against the tick. Under NO_HZ the kernel times idle and
iowait from idle entry to exit, exactly. Measured here over the same 4 s, direct at 5,000 req/s:
ticks 0.73 CPU-s, CPUs x wall - idle 0.88, the exact run time of every task on the machine
(/proc/*/task/*/schedstat, which leaves out interrupts taken while idle) 0.86; at saturation all
three agree within 1-2%.

The pure parts (parsing /proc/stat, windows over samples, round order, the arithmetic over
rounds) are unit-tested in test_yardstick.py; `measure_run` and `Sampler` touch the machine.
"""

import threading
import time
from pathlib import Path

from lbbench import CLK_TCK, NGINX_HTTP_PROLOGUE, Server, cpu_seconds, loadgen_json, median_spread, tmpdir, wait_port

# /proc/stat `cpu` line fields (proc(5)); guest and guest_nice are already inside user and nice.
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
STAT_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")

# The load points, in the order each round runs them. rate None = closed loop (saturation).
POINTS = {
    "rate-5k-64": {"label": "5,000 req/s, 64 conns", "conns": 64, "rate": 5000},
    "rate-20k-64": {"label": "20,000 req/s, 64 conns", "conns": 64, "rate": 20000},
    "rate-5k-512": {"label": "5,000 req/s, 512 conns", "conns": 512, "rate": 5000},
    "sat-64": {"label": "saturation, 64 conns", "conns": 64, "rate": None},
    "sat-512": {"label": "saturation, 512 conns", "conns": 512, "rate": None},
}
DIRECT = "direct"


# ---------------------------------------------------------------------------------------------
# Reading the machine
# ---------------------------------------------------------------------------------------------

def parse_proc_stat(text):
    """Whole-machine CPU seconds from /proc/stat: {"ticks_busy": user + nice + system + irq +
    softirq + steal of the aggregate `cpu` line, "idle": its idle + iowait, "cpus": how many
    `cpuN` lines (online CPUs)}."""
    agg, cpus = None, 0
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "cpu":
            vals = dict(zip(STAT_FIELDS, (int(x) for x in f[1:])))
            agg = {"ticks_busy": sum(vals.get(k, 0) for k in STAT_BUSY) / CLK_TCK,
                   "idle": (vals.get("idle", 0) + vals.get("iowait", 0)) / CLK_TCK}
        elif f[0].startswith("cpu") and f[0][3:].isdigit():
            cpus += 1
    if agg is None:
        raise ValueError("/proc/stat has no aggregate `cpu` line")
    agg["cpus"] = cpus
    return agg


def proc_stat():
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


def pid_cpu(pid):
    """CPU seconds of a process (all its threads), 0 once it is gone: the exact run time from
    /proc/PID/task/*/schedstat where the kernel has it (utime and stime are sampled one 4 ms tick
    at a time and miss or over-count short bursts), else utime + stime."""
    try:
        total, seen = 0, False
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
                seen = True
            except (OSError, IndexError, ValueError):
                pass  # a thread that just ended
        if seen:
            return total / 1e9
    except OSError:
        pass
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


class Sampler:
    """Samples the machine's busy CPU and some processes' CPU every `interval` seconds, each with
    its wall time, so that any window inside the sampled span can be cut out afterwards.
    `roles`: {name: [pid, ...]}; each sample is {"t": unix time, "idle": s, "ticks_busy": s,
    "cpus": n, name: s, ...} (see parse_proc_stat)."""

    def __init__(self, roles, interval=0.1):
        self.roles = roles
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        s = {"t": time.time(), **proc_stat()}
        for name, pids in self.roles.items():
            s[name] = sum(pid_cpu(p) for p in pids)
        self.samples.append(s)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def value_at(samples, t, key):
    """samples[key] at time t, linear between the two samples around t."""
    if not samples or t < samples[0]["t"] or t > samples[-1]["t"]:
        raise ValueError(f"time {t} is outside the sampled span")
    for a, b in zip(samples, samples[1:]):
        if a["t"] <= t <= b["t"]:
            if b["t"] == a["t"]:
                return b[key]
            return a[key] + (b[key] - a[key]) * (t - a["t"]) / (b["t"] - a["t"])
    return samples[-1][key]


def window(samples, t0, t1, key):
    """How much samples[key] grew between t0 and t1."""
    return value_at(samples, t1, key) - value_at(samples, t0, key)


def busy_window(samples, t0, t1):
    """Whole-machine busy CPU seconds between t0 and t1: CPUs x wall time - (idle + iowait)."""
    cpus = {s["cpus"] for s in samples}
    if len(cpus) != 1:
        raise ValueError(f"the number of online CPUs changed during the run: {sorted(cpus)}")
    return cpus.pop() * (t1 - t0) - window(samples, t0, t1, "idle")


# ---------------------------------------------------------------------------------------------
# Order and arithmetic over rounds
# ---------------------------------------------------------------------------------------------

def round_order(labels, r):
    """The order of round r: rotated by one every two rounds, reversed in odd rounds (A B C, C B A,
    B C A, A C B, ...), so consecutive rounds mirror each other (slow drift of the machine hits
    every label alike) and every label takes every position in turn."""
    labels = list(labels)
    k = (r // 2) % len(labels)
    rot = labels[k:] + labels[:k]
    return rot if r % 2 == 0 else rot[::-1]


def index(runs):
    """{(point, target): {round: run}}."""
    by = {}
    for run in runs:
        by.setdefault((run["point"], run["target"]), {})[run["round"]] = run
    return by


def paired(by, point, a, b, f):
    """f(run of a, run of b) for every round where both ran at `point`, in round order."""
    ra, rb = by.get((point, a), {}), by.get((point, b), {})
    return [f(ra[r], rb[r]) for r in sorted(ra) if r in rb]


def per_round(by, point, target, f):
    runs = by.get((point, target), {})
    return [f(runs[r]) for r in sorted(runs)]


def hop_costs(by, point, target):
    """Per round: the target's whole-machine us per request minus direct's in the same round."""
    return paired(by, point, target, DIRECT, lambda t, d: t["machine_us_per_req"] - d["machine_us_per_req"])


def p99_added(by, point, target):
    """Per round: the target's p99 minus direct's in the same round (ms)."""
    return paired(by, point, target, DIRECT, lambda t, d: t["latency_ms"]["p99"] - d["latency_ms"]["p99"])


def ratios(xs, ys, x_floor=None):
    """x / y per round; None where y is not positive (a ratio to nothing says nothing). An x that
    is not positive is None too (noise larger than what is measured) unless `x_floor` is given,
    then x is raised to it."""
    out = []
    for x, y in zip(xs, ys):
        if x_floor is not None:
            x = max(x, x_floor)
        out.append(x / y if y > 0 and (x > 0 or x_floor is not None) else None)
    return out


def summarize(values):
    """Median with min-max over the rounds ({"median", "min", "max", "n", "values"}), None when
    there is nothing (or a round had no defined value: then there is no honest median)."""
    if not values or any(v is None for v in values):
        return None
    return median_spread(values)


def hop_ratio(by, point, target, reference="haproxy"):
    """The target's hop cost over the reference's, per round, summarised. A hop is never really
    zero or less: a round where one measured so was swamped by noise and leaves no ratio."""
    return summarize(ratios(hop_costs(by, point, target), hop_costs(by, point, reference)))


def p99_ratio(by, point, target, reference="haproxy"):
    """The p99 the target adds over the reference's, per round; a target that added nothing
    measurable (its p99 at or under direct's) counts as 0."""
    return summarize(ratios(p99_added(by, point, target), p99_added(by, point, reference), x_floor=0.0))


# ---------------------------------------------------------------------------------------------
# Running one load through one target
# ---------------------------------------------------------------------------------------------

NGINX_BACKENDS_CONF = "\n" + NGINX_HTTP_PROLOGUE + """{servers}
}}
"""

NGINX_SERVER_BLOCK = """    server {{
        listen 127.0.0.1:{port};
        location / {{
            add_header X-Server-Id {id};
            default_type application/json;
            return 200 '{{"server":"{id}","requests":0}}\\n';
        }}
    }}"""


def nginx_backends(ports, cpu):
    """One nginx process (one worker, no master) serving `return 200` on every port, one server
    block each: direct and every proxy then load the very same backend process, however they
    spread the connections over the ports."""
    d = tmpdir("bench-nginx-backends-")
    blocks = "\n".join(NGINX_SERVER_BLOCK.format(port=p, id=f"n{i}") for i, p in enumerate(ports))
    conf = d / "nginx.conf"
    conf.write_text(NGINX_BACKENDS_CONF.format(dir=d, servers=blocks))
    srv = Server("nginx-backends", ["nginx", "-p", str(d), "-c", str(conf)], ports[0], cpu=cpu, cleanup=[d])
    for p in ports[1:]:
        wait_port(p)
    return srv


def measure_run(url, point, target, round_no, roles, duration, warmup, client_cpu, sample_interval=0.1, spec=None):
    """One loadgen run at `point` (or `spec`: {"conns", "rate"}) against `url`; CPU read over
    loadgen's measured window only; `spec` may add loadgen arguments ("args"). `roles`: {"proxy":
    [pid], "backends": [pid]} (no "proxy" when direct)."""
    spec = spec or POINTS[point]
    args = ["--cores", "1", "--conns", str(spec["conns"]), "--duration", f"{duration:g}s",
            "--warmup", f"{warmup:g}s"]
    if spec["rate"]:
        args += ["--rate", str(spec["rate"])]
    args += spec.get("args", [])
    with Sampler(roles, sample_interval) as s:
        r = loadgen_json(url, args, cpu=client_cpu, timeout=duration + warmup + 60)
    t0 = r["started_unix_ms"] / 1000
    t1 = t0 + r["duration_s"]
    n = max(r["requests"], 1)
    machine = busy_window(s.samples, t0, t1)
    ticks = window(s.samples, t0, t1, "ticks_busy")
    proxy = window(s.samples, t0, t1, "proxy") if "proxy" in roles else 0.0
    backends = window(s.samples, t0, t1, "backends") if "backends" in roles else 0.0
    client = r.get("cpu_seconds") or 0.0
    run = {"round": round_no, "point": point, "target": target, "requests": r["requests"],
           "errors": r["errors"], "errors_by_kind": r.get("errors_by_kind", {}), "rps": r["rps"],
           "duration_s": r["duration_s"], "machine_cpu_s": machine, "machine_us_per_req": machine / n * 1e6,
           "machine_tick_cpu_s": ticks,
           "proxy_cpu_s": proxy, "proxy_us_per_req": proxy / n * 1e6,
           "client_cpu_s": client, "backend_cpu_s": backends,
           # Busy time no measured process was charged with: softirq and kworker threads, the
           # sampler, and whatever else runs on the machine (noise on a shared machine).
           "rest_us_per_req": (machine - proxy - client - backends) / n * 1e6,
           "latency_ms": r["latency_ms"], "started_unix_ms": r["started_unix_ms"],
           "command": r["command"]}
    return run


def describe(run):
    lat = run["latency_ms"]
    return (f"{run['point']:12} {run['target']:12} {run['rps']:>9.0f} req/s  machine {run['machine_us_per_req']:6.2f} "
            f"us/req  process {run['proxy_us_per_req']:6.2f}  rest {run['rest_us_per_req']:6.2f}  "
            f"p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} ms  errors {run['errors']}")


def background_busy(seconds=2.0):
    """The machine's busy CPU (in CPUs) while this benchmark runs nothing: what else is going on."""
    with Sampler({}, interval=seconds) as s:
        time.sleep(seconds)
    t0, t1 = s.samples[0]["t"], s.samples[-1]["t"]
    return busy_window(s.samples, t0, t1) / (t1 - t0)

