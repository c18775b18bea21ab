#!/usr/bin/env python3
"""Where a proxy's cost per request goes, machine-wide: lb against HAProxy and nginx stream, and direct.

Same setup as the hop-cost yardstick of bench/proxies.py: the proxy pinned to CPU 0; loadgen and
the nginx backends (one process, `return 200` on three ports) on CPU 1; keep-alive connections,
closed loop. Each round runs direct (loadgen -> nginx) and each proxy in turn (a fresh proxy per
run), samples every CPU's stacks with `perf record -a -e cpu-clock -F 1000 -g` (software clock: this VM
has no hardware counters) over the middle of loadgen's measured window, and reads the whole
machine's busy CPU from /proc/stat over that window (bench/yardstick.py). `-a` sees what a
per-process profile cannot: softirq work on an idle CPU, ksoftirqd and kworker threads, and the
peer processes whose costs a proxy changes.

Every busy sample is put in two buckets. By process or thread: the proxy, loadgen, the nginx
backend, ksoftirqd, kworker, softirq taken on an idle CPU, perf itself, anything else ("other": on
a shared machine, someone else's work, left out of the function table). By function:

  tcp send    the stack holds tcp_sendmsg: TCP/IP transmit and, on loopback, the peer's whole
              receive path (softirq, its socket's wakeup), which the sender pays;
  tcp recv    tcp_recvmsg: the copy out of the socket;
  events      any other kernel time: io_uring submission, poll arming and task work for lb,
              epoll_wait for HAProxy and nginx, syscall entry, scheduling, softirq elsewhere;
  user        user-space code (and libc).

A bucket's share of the busy samples times the machine's busy CPU per request is its cost per
request; a proxy's figure minus direct's is that bucket's part of the hop cost. The proxy process's
own function buckets (scaled by its CPU time from /proc) are kept as a last table, with the floor
argument for the former per-process target (1.4x HAProxy's requests per CPU-second).
Rounds interleaved (yardstick.round_order); medians with (min-max). perf adds a few percent to
every run alike. Writes breakdown.json and breakdown.md to --out DIR, by default a fresh,
git-ignored bench-results/runs/cost-breakdown-<time>/ (`--out bench-results/cost-breakdown`
replaces the committed ones).
Usage: bench/cost_breakdown.py [--rounds 5] [--duration 8] [--conns 64,512] [--build] [--out DIR]
       bench/cost_breakdown.py --markdown-only [--out DIR]  (re-render breakdown.md from breakdown.json)
"""

import argparse
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import yardstick as ys
from lbbench import (RESULTS, build_release, ensure_packages, environment, free_port, log, median_spread,
                     run_dir, tmpdir, write_results)
from proxies import CLIENT_CPU, PROXY_CPU, start_proxy

PROXIES = ["lb", "haproxy", "nginx"]
TARGETS = [ys.DIRECT, *PROXIES]
BUCKETS = ["tcp send", "tcp recv", "events", "user"]
ROLES = ["proxy", "loadgen", "nginx backend", "softirq on idle CPU", "ksoftirqd", "kworker", "perf", "other"]
IDLE = "idle"
# Frames that mean a sample of the idle task (pid 0) was softirq work, not idling.
SOFTIRQ_FRAMES = {"__do_softirq", "handle_softirqs", "net_rx_action", "do_softirq", "__napi_poll",
                  "process_backlog", "tcp_v4_rcv", "run_timer_softirq", "rcu_core"}
PERF_HZ = 1000  # per CPU: ~14,000 samples over a default run, a quarter of perf's default interrupts
HEADER = re.compile(r"^\s*(?P<comm>.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)\s+\[(?P<cpu>\d+)\]\s*$")


def bucket(stack):
    """`stack`: (symbol, dso) from leaf to root."""
    if "kernel" not in stack[0][1]:
        return "user"
    syms = {s for s, _ in stack}
    if "tcp_sendmsg" in syms:
        return "tcp send"
    if "tcp_recvmsg" in syms:
        return "tcp recv"
    return "events"


def parse_samples(out):
    """`perf script -F comm,pid,tid,cpu,ip,sym,dso` text: a header line per sample (comm pid/tid
    [cpu]) then one frame per line, a blank line after each. Yields {"comm", "pid", "tid", "cpu",
    "stack"}; text without header lines (-F ip,sym,dso) gives comm None."""
    cur = None

    def new():
        return {"comm": None, "pid": None, "tid": None, "cpu": None, "stack": []}

    for line in out.splitlines():
        parts = line.split()
        if not parts:
            if cur and cur["stack"]:
                yield cur
            cur = None
            continue
        m = HEADER.match(line)
        if m:
            if cur and cur["stack"]:
                yield cur
            cur = new()
            cur.update(comm=m["comm"], pid=int(m["pid"]), tid=int(m["tid"]), cpu=int(m["cpu"]))
            continue
        if cur is None:
            cur = new()
        cur["stack"].append((parts[1] if len(parts) > 2 else "?", parts[-1]))
    if cur and cur["stack"]:
        yield cur


def parse_stacks(out):
    """The stacks alone (leaf first), for text with or without sample headers."""
    for s in parse_samples(out):
        yield s["stack"]


def role(sample, pids):
    """Which process group a sample belongs to; IDLE for the idle task idling. `pids`: {"proxy": pid,
    "nginx backend": pid}."""
    pid, comm = sample["pid"], sample["comm"] or ""
    if pid == 0:
        return "softirq on idle CPU" if any(s in SOFTIRQ_FRAMES for s, _ in sample["stack"]) else IDLE
    for name, p in pids.items():
        if p is not None and pid == p:
            return name
    if comm.startswith("loadgen"):
        return "loadgen"
    if comm.startswith("ksoftirqd"):
        return "ksoftirqd"
    if comm.startswith("kworker"):
        return "kworker"
    if comm in ("perf", "perf-exec"):
        return "perf"
    return "other"


def thread_name(sample, r):
    """The thread's name, with kernel threads' per-CPU and per-work suffixes folded."""
    comm = sample["comm"] or "?"
    for prefix in ("kworker", "ksoftirqd", "migration", "rcu"):
        if comm.startswith(prefix):
            return prefix + "/*"
    return f"{r}: {comm}" if r not in ("other", "perf") else comm


def tally(samples, pids):
    """Counts of busy samples: {"roles": {role: {bucket: n}}, "threads": {name: n}, "busy": n, "idle": n}."""
    roles, threads = {}, {}
    busy = idle = 0
    for s in samples:
        r = role(s, pids)
        if r == IDLE:
            idle += 1
            continue
        busy += 1
        b = bucket(s["stack"])
        roles.setdefault(r, dict.fromkeys(BUCKETS, 0))[b] += 1
        t = thread_name(s, r)
        threads[t] = threads.get(t, 0) + 1
    return {"roles": roles, "threads": threads, "busy": busy, "idle": idle}


def perf_samples(perf_data):
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "comm,pid,tid,cpu,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    return parse_samples(out)


def profile_run(target, conns, round_no, duration, warmup, backend_ports, backend, workdir):
    """One run: the proxy (fresh) or direct, loadgen, perf -a over the middle of the measured window."""
    proxy = None
    port = backend_ports[0]
    try:
        if target != ys.DIRECT:
            port = free_port()
            proxy = start_proxy(target, port, backend_ports, PROXY_CPU)
            time.sleep(0.3)
        data = str(workdir / f"{target}-{conns}.data")
        # Skip loadgen's start and warm-up (and a little more), stop before its last half second.
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", str(PERF_HZ), "-g", "-o", data,
                                 "-D", str(int((warmup + 0.5) * 1000)), "--", "sleep", f"{warmup + duration - 0.3:.1f}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            roles = {"backends": [backend.pid]}
            if proxy:
                roles["proxy"] = [proxy.pid]
            run = ys.measure_run(f"http://127.0.0.1:{port}/", f"sat-{conns}", target, round_no, roles, duration,
                                 warmup, CLIENT_CPU, spec={"conns": conns, "rate": None})
        finally:
            perf.wait(timeout=warmup + duration + 60)
    finally:
        if proxy:
            proxy.stop()
    counts = tally(perf_samples(data), {"proxy": proxy.pid if proxy else None, "nginx backend": backend.pid})
    Path(data).unlink(missing_ok=True)
    busy = max(counts["busy"], 1)
    mach = run["machine_us_per_req"]
    proxy_samples = counts["roles"].get("proxy", dict.fromkeys(BUCKETS, 0))
    ps = max(sum(proxy_samples.values()), 1)
    row = {"round": round_no, "rps": run["rps"], "errors": run["errors"], "requests": run["requests"],
           "machine_us_per_req": mach, "cpu_us_per_req": run["proxy_us_per_req"], "samples": counts["busy"],
           "idle_samples": counts["idle"],
           "roles_us_per_req": {r: {b: mach * n / busy for b, n in bs.items()} for r, bs in counts["roles"].items()},
           "threads_us_per_req": {t: mach * n / busy for t, n in counts["threads"].items()},
           # The proxy process alone, scaled by its own CPU time (the former per-process view).
           "us_per_req": {b: run["proxy_us_per_req"] * proxy_samples[b] / ps for b in BUCKETS}}
    log(f"  {conns:4} conns {target:8} machine {mach:6.2f} us/req, proxy process {run['proxy_us_per_req']:6.2f}: " +
        ", ".join(f"{r} {sum(v.values()):.2f}" for r, v in sorted(row["roles_us_per_req"].items(),
                                                                     key=lambda kv: -sum(kv[1].values()))[:5]))
    return row


def run(rounds, duration, warmup, conns_list):
    ensure_packages({"linux-perf": "perf", "haproxy": "haproxy", "nginx-light": "nginx",
                     "libnginx-mod-stream": "/usr/lib/nginx/modules/ngx_stream_module.so"})
    res = {}
    workdir = tmpdir("bench-breakdown-")
    ports = [free_port() for _ in range(3)]
    backend = None
    try:
        backend = ys.nginx_backends(ports, CLIENT_CPU)
        for conns in conns_list:
            res[str(conns)] = {t: [] for t in TARGETS}
        for r in range(rounds):
            log(f"round {r + 1} of {rounds}")
            for conns in conns_list:
                for t in ys.round_order(TARGETS, r):
                    res[str(conns)][t].append(profile_run(t, conns, r, duration, warmup, ports, backend, workdir))
    finally:
        if backend:
            backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------
# breakdown.json -> breakdown.md
# ---------------------------------------------------------------------------------------------

def med(rows, key):
    return median_spread([key(r) for r in rows])


def role_cost(row, r):
    return sum(row.get("roles_us_per_req", {}).get(r, {}).values())


NOT_OURS = ("other", "perf")  # processes that are neither the benchmark's nor the kernel's


def func_cost(row, b):
    """A function bucket over the benchmark's processes and the kernel's threads (not "other":
    on a shared machine that is someone else's work, and not perf)."""
    return sum(v.get(b, 0.0) for r, v in row.get("roles_us_per_req", {}).items() if r not in NOT_OURS)


def ours_cost(row):
    return sum(sum(v.values()) for r, v in row.get("roles_us_per_req", {}).items() if r not in NOT_OURS)


def machine_tables(per):
    """By process and by function over the whole machine, with each proxy's part of the hop."""
    targets = [t for t in TARGETS if t in per and per[t]]
    if ys.DIRECT not in targets or not all("roles_us_per_req" in r for t in targets for r in per[t]):
        return []
    proxies = [t for t in targets if t != ys.DIRECT]
    L = ["Whole machine, us per request (median over rounds), and each proxy's hop (its figure minus direct's):\n",
         "| process or thread group | " + " | ".join(targets) + " | " + " | ".join(f"{p} hop" for p in proxies) + " |",
         "|---|" + "---|" * (len(targets) + len(proxies))]
    seen = [r for r in ROLES if any(role_cost(row, r) > 0 for t in targets for row in per[t])]
    for r in seen:
        m = {t: med(per[t], lambda row, r=r: role_cost(row, r))["median"] for t in targets}
        L.append(f"| {r} | " + " | ".join(f"{m[t]:.2f}" for t in targets) + " | " +
                 " | ".join(f"{m[p] - m[ys.DIRECT]:+.2f}" for p in proxies) + " |")
    tot = {t: med(per[t], lambda row: row["machine_us_per_req"])["median"] for t in targets}
    L.append("| **all (machine busy)** | " + " | ".join(f"**{tot[t]:.2f}**" for t in targets) + " | " +
             " | ".join(f"**{tot[p] - tot[ys.DIRECT]:+.2f}**" for p in proxies) + " |")
    ours = {t: med(per[t], ours_cost)["median"] for t in targets}
    L.append("| all but other and perf | " + " | ".join(f"{ours[t]:.2f}" for t in targets) + " | " +
             " | ".join(f"{ours[p] - ours[ys.DIRECT]:+.2f}" for p in proxies) + " |")
    L.append("")
    L.append("| function bucket (all but other and perf) | " + " | ".join(targets) + " | " +
             " | ".join(f"{p} hop" for p in proxies) + " |")
    L.append("|---|" + "---|" * (len(targets) + len(proxies)))
    for b in BUCKETS:
        m = {t: med(per[t], lambda row, b=b: func_cost(row, b))["median"] for t in targets}
        L.append(f"| {b} | " + " | ".join(f"{m[t]:.2f}" for t in targets) + " | " +
                 " | ".join(f"{m[p] - m[ys.DIRECT]:+.2f}" for p in proxies) + " |")
    L.append("")
    threads = {}
    for t in targets:
        for row in per[t]:
            for name, v in row.get("threads_us_per_req", {}).items():
                threads[name] = max(threads.get(name, 0.0), v)
    top = sorted(threads, key=lambda n: -threads[n])[:12]
    L.append("Threads (by name; kernel threads folded), us per request, median over rounds:\n")
    L.append("| thread | " + " | ".join(targets) + " |")
    L.append("|---|" + "---|" * len(targets))
    for name in top:
        L.append(f"| {name} | " + " | ".join(
            f"{med(per[t], lambda row, n=name: row.get('threads_us_per_req', {}).get(n, 0.0))['median']:.2f}"
            for t in targets) + " |")
    L.append("")
    if "haproxy" in proxies:
        ha = tot["haproxy"] - tot[ys.DIRECT]
        tcp = {p: sum(med(per[p], lambda row, b=b: func_cost(row, b))["median"] -
                      med(per[ys.DIRECT], lambda row, b=b: func_cost(row, b))["median"] for b in ("tcp send", "tcp recv"))
               for p in proxies}
        for p in (x for x in proxies if x != "haproxy"):
            hop = tot[p] - tot[ys.DIRECT]
            target = f"; target <= 0.7x, i.e. {0.7 * ha:.2f}" if p == "lb" else ""
            L.append(f"- {p}: hop {hop:.2f} us/req against HAProxy's {ha:.2f} ({hop / ha:.2f}x{target}); without "
                     f"other processes {ours[p] - ours[ys.DIRECT]:.2f} against {ours['haproxy'] - ours[ys.DIRECT]:.2f}; "
                     f"of it, the extra TCP send + receive work is {tcp[p]:.2f} (HAProxy's {tcp['haproxy']:.2f}).")
        L.append("")
    return L


def markdown(data):
    env = data["env"]
    lines = ["# Where the CPU per request goes: lb, HAProxy, nginx stream\n",
             f"Taken {env['date_utc']} on {env['host']}: {env['cpus']} x {env['cpu_model']}, Linux {env['kernel']}; "
             f"{env['haproxy']}; {env['nginx']}; lb commit {env['git_commit']}.",
             f"Proxy on CPU 0, loadgen and the backends on CPU 1, keep-alive; {data['rounds']} interleaved rounds of "
             f"{data['duration']} s per proxy, medians with (min-max). Stacks sampled with "
             f"`perf record {'-a ' if data.get('whole_machine') else ''}-e cpu-clock {'-F ' + str(data['perf_hz']) + ' ' if data.get('perf_hz') else ''}-g`; CPU time from /proc "
             f"(perf itself adds a few percent to each). Rerun: `{data['command']}`.\n",
             "Function buckets: **tcp send** = stacks through `tcp_sendmsg` (TCP/IP transmit plus, on loopback, the "
             "peer's whole receive path and wakeup, paid by the sender); **tcp recv** = `tcp_recvmsg`; "
             "**events** = all other kernel time (io_uring submission, poll arming and task work for lb; "
             "`epoll_wait` for the others; syscall entry; softirq outside a send); **user** = user-space code.\n"]
    for conns, per in data["results"].items():
        lines.append(f"## {conns} connections\n")
        lines += machine_tables(per)
        lines.append("The proxy process alone (its own CPU time from /proc, split by its samples):\n")
        lines.append("| proxy | req/s | CPU us/req | " + " | ".join(BUCKETS) + " | tcp send + recv |")
        lines.append("|---|---|---|" + "---|" * (len(BUCKETS) + 1))
        tcp, cost = {}, {}
        for p, rows in per.items():
            if p == ys.DIRECT:
                continue
            total = med(rows, lambda r: r["cpu_us_per_req"])
            cost[p] = total["median"]
            cells = [f"{med(rows, lambda r, b=b: r['us_per_req'][b])['median']:.2f}" for b in BUCKETS]
            tcp[p] = med(rows, lambda r: r["us_per_req"]["tcp send"] + r["us_per_req"]["tcp recv"])["median"]
            lines.append(f"| {p} | {med(rows, lambda r: r['rps'])['median']:.0f} | "
                         f"{total['median']:.2f} ({total['min']:.2f}-{total['max']:.2f}) | " + " | ".join(cells) +
                         f" | {tcp[p]:.2f} |")
        lb, ha = cost["lb"], cost["haproxy"]
        line = ha / 1.4
        own = lb - tcp["lb"]
        lines.append("")
        lines.append(f"- lb: {ha / lb:.2f}x HAProxy's requests per CPU-second in this run (the former per-process "
                     f"target, 1.4x: lb at most {line:.2f} us/req).")
        room = line - tcp["lb"]
        if room <= 0:
            reach = "so the target is out of reach even for a proxy with no cost of its own"
        elif own <= room:
            reach = f"the target needs it at {room:.2f} us/req or less, which it is"
        else:
            reach = f"the target needs it at {room:.2f} us/req or less ({(1 - room / own) * 100:.0f}% less)"
        lines.append(f"- lb's TCP buckets alone cost {tcp['lb']:.2f} us/req, {tcp['lb'] / line * 100:.0f}% of that "
                     f"line; lb's own share (events + user) is {own:.2f} us/req, and {reach}.")
        lines.append(f"- HAProxy's TCP buckets cost {tcp['haproxy']:.2f} us/req against lb's {tcp['lb']:.2f}: "
                     f"the same packets cost lb {(1 - tcp['lb'] / tcp['haproxy']) * 100:.0f}% less kernel time.\n")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=8, help="measured seconds per run (at least 3)")
    ap.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each run (default 1)")
    ap.add_argument("--conns", default="64,512", help="comma-separated connection counts")
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--markdown-only", action="store_true",
                    help="re-render breakdown.md from OUT/breakdown.json (OUT: --out, default bench-results/cost-breakdown)")
    ap.add_argument("--out", metavar="DIR",
                    help="output folder (default: a fresh bench-results/runs/cost-breakdown-<time>/)")
    a = ap.parse_args()
    if a.markdown_only:
        out = Path(a.out) if a.out else RESULTS / "cost-breakdown"
        data = json.loads((out / "breakdown.json").read_text())
        write_results(out, "breakdown", data, markdown(data))
        return
    if a.duration < 3:
        ap.error("--duration must be at least 3 seconds (perf samples the middle of the measured window)")
    conns = [int(c) for c in a.conns.split(",")]
    if a.build:
        build_release()
    out = run_dir("cost-breakdown", a.out)
    t0 = time.time()
    results = run(a.rounds, a.duration, a.warmup, conns)
    data = {"env": environment(), "rounds": a.rounds, "duration": a.duration, "warmup": a.warmup,
            "whole_machine": True, "perf_hz": PERF_HZ, "results": results, "elapsed_s": round(time.time() - t0),
            "command": "python3 bench/cost_breakdown.py " +
                       f"--rounds {a.rounds} --duration {a.duration:g} --conns {a.conns}"}
    write_results(out, "breakdown", data, markdown(data))


if __name__ == "__main__":
    main()
