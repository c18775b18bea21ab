#!/usr/bin/env python3
"""loadgen on DEFER_TASKRUN rings (the default) against LB_URING_TASKRUN=coop, and wrk, against one
`backend --cores 1` on CPU 0, clients on CPU 1; interleaved rounds, requests per client CPU-second.

Usage: python3 bench/loadgen_taskrun.py [--rounds 5] [--duration 5] [--out DIR]
(default DIR: a fresh bench-results/runs/loadgen-taskrun-<time>/)
"""
import argparse
import json
import os

import instruments as ins
from lbbench import environment, log, median_spread, run_dir


def taskrun(fn, value):
    """`fn` run with LB_URING_TASKRUN set to `value` (None: unset, the default DEFER ring)."""
    def run(*args):
        saved = os.environ.pop("LB_URING_TASKRUN", None)
        if value is not None:
            os.environ["LB_URING_TASKRUN"] = value
        try:
            return fn(*args)
        finally:
            os.environ.pop("LB_URING_TASKRUN", None)
            if saved is not None:
                os.environ["LB_URING_TASKRUN"] = saved
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()
    out = run_dir("loadgen-taskrun", a.out)
    clients = {"loadgen-defer": taskrun(ins.loadgen, None), "loadgen-coop": taskrun(ins.loadgen, "coop"),
               "wrk": ins.wrk}
    res, _ = ins.clients_part(a.rounds, a.duration, a.conns, clients=clients)
    summary = {k: {"requests_per_cpu_s": median_spread([x["requests_per_cpu_s"] for x in v]),
                   "rps": median_spread([x["rps"] for x in v])} for k, v in res.items()}
    (out / "loadgen-taskrun.json").write_text(json.dumps(
        {"environment": environment(), "config": vars(a), "summary": summary, "runs": res}, indent=1))
    rows = "\n".join(f"| {k} | {s['requests_per_cpu_s']['median']:.0f} ({s['requests_per_cpu_s']['min']:.0f}-"
                     f"{s['requests_per_cpu_s']['max']:.0f}) | {s['rps']['median']:.0f} |" for k, s in summary.items())
    (out / "loadgen-taskrun.md").write_text(
        f"# loadgen: DEFER_TASKRUN against COOP_TASKRUN rings, and wrk\n\n"
        f"`python3 bench/loadgen_taskrun.py --rounds {a.rounds} --duration {a.duration}`; backend on CPU 0, "
        f"clients on CPU 1, {a.conns} connections, {a.rounds} interleaved rounds; medians (min-max). "
        f"Raw runs and the machine: loadgen-taskrun.json.\n\n"
        f"| client | requests per client CPU-second | req/s |\n|---|---|---|\n{rows}\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
