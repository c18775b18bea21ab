"""What the experiments share: pinning, TIME_WAIT pacing, output folders and summary lines."""

import os
import time
from pathlib import Path

import lbbench
from lbbench import log

TW_LIMIT = 45000
NCPU = os.cpu_count() or 1
LB_CPU = 0 if NCPU >= 2 else None
LG_CPU = 1 if NCPU >= 2 else None


def time_wait_sockets():
    try:
        for line in open("/proc/net/sockstat"):
            if line.startswith("TCP:"):
                f = line.split()
                return int(f[f.index("tw") + 1])
    except (OSError, ValueError):
        pass
    return 0


def wait_quiet(limit=TW_LIMIT, max_wait=45.0):
    """Every request here opens two loopback connections (client-lb, lb-backend) that end in TIME_WAIT;
    after a few hundred thousand of them connects start to fail, so let the kernel drain them first."""
    t0 = time.time()
    while time_wait_sockets() > limit and time.time() - t0 < max_wait:
        time.sleep(1)
    waited = time.time() - t0
    if waited > 1:
        log(f"  waited {waited:.0f}s for TIME_WAIT sockets to drain (now {time_wait_sockets()})")


# Set by experiments.py from --out: {"out": folder or None, "all": True when running every experiment}.
OUT = {"out": None, "all": False}
_DIRS = {}


def out_dir(name, replot=False):
    """The folder experiment `name` writes to, the same one for the whole process: --out when given
    (with `all`, --out/NAME); when re-rendering committed JSON (`replot`), the committed
    bench-results/NAME; else a fresh, git-ignored bench-results/runs/NAME-<time>/."""
    if name not in _DIRS:
        if OUT["out"]:
            d = Path(OUT["out"]) / name if OUT["all"] else Path(OUT["out"])
        else:
            d = lbbench.RESULTS / name if replot else None
        _DIRS[name] = lbbench.run_dir(name, d)
    return _DIRS[name]


def machine_line(env):
    return (f"{env['cpu_model']}, {env['cpus']} CPUs, {env['mem_gib']} GiB, Linux {env['kernel']}, "
            f"{env['rustc']}, commit {env['git_commit']}, {env['date_utc']}")


def pinning_line():
    if LB_CPU is None:
        return "nothing pinned (1 CPU)"
    return f"lb pinned to CPU {LB_CPU} with 1 core, loadgen pinned to CPU {LG_CPU}, backends unpinned"


def retry_note(retried):
    if not retried:
        return "No run needed a retry."
    return (f"Runs repeated because an attempt had connection errors (kept in the JSON as `failed_attempts`): "
            f"{', '.join(retried)}. Each request leaves two loopback connections in TIME_WAIT, and once the "
            f"machine holds ~100k of them (this script, or anything else on the host) new connects start to "
            f"fail; the script waits for them to drain before each run and retries a failed one.")
