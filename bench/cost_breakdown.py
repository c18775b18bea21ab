#!/usr/bin/env python3
"""Where a proxy's CPU per request goes: lb against HAProxy and nginx stream, profiled side by side.

Same load as bench/proxies.py section 1 (proxy pinned to CPU 0; loadgen and three `backend`s on
CPU 1; keep-alive connections). Each round starts one proxy, loads it for --duration seconds,
samples its stacks with `perf record -e cpu-clock -g` (software clock: this VM has no hardware
counters) and reads its CPU time from /proc. Every sample goes into one bucket:

  tcp send    the stack holds tcp_sendmsg: TCP/IP transmit and, on loopback, the peer's whole
              receive path (softirq, its socket's wakeup), which the sender pays;
  tcp recv    tcp_recvmsg: the copy out of the socket;
  events      any other kernel time: io_uring submission, poll arming and task work for lb,
              epoll_wait for HAProxy and nginx, syscall entry, scheduling;
  user        the proxy's own code (and libc).

The first two are the same bytes and packets for every proxy. Their sum bounds what a proxy can
reach: the issue's target (1.4x HAProxy's requests per CPU-second) needs lb's whole cost under
HAProxy's / 1.4, so it is reachable only if lb's TCP buckets alone fit under that line.
Rounds interleaved (A B C C B A ...); medians with (min-max). perf adds a few percent to every
proxy's cost alike. Writes breakdown.json and breakdown.md to --out DIR, by default a fresh, git-ignored
bench-results/runs/cost-breakdown-<time>/ (`--out bench-results/cost-breakdown` replaces the committed ones).
Usage: bench/cost_breakdown.py [--rounds 5] [--duration 8] [--conns 64,512] [--build]
       bench/cost_breakdown.py --markdown-only   (re-render breakdown.md from breakdown.json)
"""

import argparse
import shutil
import subprocess

from lbbench import *  # noqa: F401,F403
from proxies import start_proxy

PROXIES = ["lb", "haproxy", "nginx"]
BUCKETS = ["tcp send", "tcp recv", "events", "user"]


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


def stacks(perf_data):
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym,dso"], capture_output=True,
                         text=True, check=True).stdout
    return parse_stacks(out)


def parse_stacks(out):
    """`perf script -F ip,sym,dso` text: one frame per line, a blank line after each sample."""
    cur = []
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            if cur:
                yield cur
            cur = []
            continue
        cur.append((parts[1] if len(parts) > 2 else "?", parts[-1]))
    if cur:
        yield cur


def profile_round(proxy, conns, duration, backends, workdir):
    port = free_port()
    with start_proxy(proxy, port, backends, 0) as proc:
        time.sleep(0.3)
        data = str(workdir / f"{proxy}-{conns}.data")
        # Sample the middle of the run: skip loadgen's connection setup and its last second.
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(proc.pid), "-o", data,
                                 "--", "sleep", str(duration - 2)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        before = proc.cpu()
        r = loadgen_json(f"http://127.0.0.1:{port}/", ["--cores", "1", "--conns", str(conns), "--duration",
                                                       f"{duration}s"], cpu=1)
        cpu = proc.cpu() - before
        perf.wait()
    us = cpu / max(r["requests"], 1) * 1e6
    counts = dict.fromkeys(BUCKETS, 0)
    for s in stacks(data):
        counts[bucket(s)] += 1
    total = max(sum(counts.values()), 1)
    row = {"rps": r["rps"], "errors": r["errors"], "cpu_us_per_req": us, "samples": total,
           "us_per_req": {b: us * counts[b] / total for b in BUCKETS}}
    log(f"  {conns:4} conns {proxy:8} {us:6.2f} us/req: " +
        ", ".join(f"{b} {v:.2f}" for b, v in row["us_per_req"].items()))
    os.unlink(data)
    return row


def run(rounds, duration, conns_list):
    ensure_packages({"linux-perf": "perf", "haproxy": "haproxy", "nginx": "nginx"})
    res = {}
    workdir = tmpdir("bench-breakdown-")
    backends = [free_port() for _ in range(3)]
    servers = [backend_proc(p, 1, f"s{i}") for i, p in enumerate(backends)]
    try:
        for conns in conns_list:
            res[str(conns)] = {p: [] for p in PROXIES}
            for p in interleaved(PROXIES, rounds):
                res[str(conns)][p].append(profile_round(p, conns, duration, backends, workdir))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return res


def med(rows, key):
    return median_spread([key(r) for r in rows])


def markdown(data):
    env = data["env"]
    lines = ["# Where the CPU per request goes: lb, HAProxy, nginx stream\n",
             f"Taken {env['date_utc']} on {env['host']}: {env['cpus']} x {env['cpu_model']}, Linux {env['kernel']}; "
             f"{env['haproxy']}; {env['nginx']}; lb commit {env['git_commit']}.",
             f"Proxy on CPU 0, loadgen and 3 backends on CPU 1, keep-alive; {data['rounds']} interleaved rounds of "
             f"{data['duration']} s per proxy, medians with (min-max). Stacks sampled with "
             "`perf record -e cpu-clock -g`; CPU time from /proc (perf itself adds a few percent to each). "
             f"Rerun: `{data['command']}`.\n",
             "Buckets: **tcp send** = stacks through `tcp_sendmsg` (TCP/IP transmit plus, on loopback, the "
             "peer's whole receive path and wakeup, paid by the sender); **tcp recv** = `tcp_recvmsg`; "
             "**events** = all other kernel time (io_uring submission, poll arming and task work for lb; "
             "`epoll_wait` for the others; syscall entry); **user** = the proxy's own code.\n"]
    for conns, per in data["results"].items():
        lines.append(f"## {conns} connections\n")
        lines.append("| proxy | req/s | CPU us/req | " + " | ".join(BUCKETS) + " | tcp send + recv |")
        lines.append("|---|---|---|" + "---|" * (len(BUCKETS) + 1))
        tcp, cost = {}, {}
        for p, rows in per.items():
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
        lines.append(f"- lb: {ha / lb:.2f}x HAProxy's requests per CPU-second in this run (target 1.4x: lb at most "
                     f"{line:.2f} us/req).")
        room = line - tcp["lb"]
        reach = (f"the target needs it at {room:.2f} us/req or less ({(1 - room / own) * 100:.0f}% less)"
                 if room > 0 else "so the target is out of reach even for a proxy with no cost of its own")
        lines.append(f"- lb's TCP buckets alone cost {tcp['lb']:.2f} us/req, {tcp['lb'] / line * 100:.0f}% of that "
                     f"line; lb's own share (events + user) is {own:.2f} us/req, and {reach}.")
        lines.append(f"- HAProxy's TCP buckets cost {tcp['haproxy']:.2f} us/req against lb's {tcp['lb']:.2f}: "
                     f"the same packets cost lb {(1 - tcp['lb'] / tcp['haproxy']) * 100:.0f}% less kernel time.\n")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per round (at least 4)")
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
    if a.duration < 4:
        ap.error("--duration must be at least 4 seconds (perf samples all but the first and last second)")
    if a.build:
        build_release()
    conns = [int(c) for c in a.conns.split(",")]
    results = run(a.rounds, a.duration, conns)
    data = {"env": environment(), "rounds": a.rounds, "duration": a.duration, "results": results,
            "command": "python3 bench/cost_breakdown.py " + f"--rounds {a.rounds} --duration {a.duration} --conns {a.conns}"}
    out = run_dir("cost-breakdown", a.out)
    write_results(out, "breakdown", data, markdown(data))


if __name__ == "__main__":
    main()
