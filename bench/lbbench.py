"""Shared benchmark plumbing: start pinned processes, read their CPU time from /proc, run
interleaved rounds, summarise with medians and spread, record the environment."""

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target" / "release"
RESULTS = ROOT / "bench-results"
RUNS = RESULTS / "runs"  # git-ignored: where a run writes unless it is told otherwise
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_packages(pkgs):
    """Installs missing Debian packages (the benchmarks need nginx, wrk, haproxy)."""
    missing = [p for p, binary in pkgs.items() if not shutil.which(binary) and not Path(binary).exists()]
    if not missing:
        return
    log(f"installing {' '.join(missing)} from Debian packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def build_release():
    log("cargo build --release")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def cpu_seconds(pid):
    """utime + stime of a process and its reaped children, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def pinned(cpu, argv):
    return ["taskset", "-c", str(cpu), *argv]


class Server:
    """A long-running process (server or proxy), stopped by PID when done."""

    def __init__(self, name, argv, port, cpu=None, env=None, cwd=None, measure_pid=None, log=None, cleanup=()):
        """`log`: a file for the process's stderr (discarded by default); `cleanup`: folders (its
        config) removed when it stops. A process that never listens is stopped before the error."""
        self.name = name
        self.cleanup = list(cleanup)
        full = pinned(cpu, argv) if cpu is not None else argv
        stderr = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=stderr,
                                     env=dict(os.environ, **(env or {})), cwd=cwd,
                                     start_new_session=True)
        if log:
            stderr.close()
        self.port = port
        try:
            wait_port(port)
            self.pid = measure_pid(self.proc.pid) if measure_pid else self.proc.pid
        except BaseException:
            self.stop()
            raise

    def cpu(self):
        return cpu_seconds(self.pid)

    def rss(self):
        return rss_bytes(self.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for d in self.cleanup:
            shutil.rmtree(d, ignore_errors=True)
        self.cleanup = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_client(argv, cpu=None, timeout=120):
    """Runs a load client to completion; returns (stdout, stderr, cpu_seconds of the client)."""
    full = pinned(cpu, argv) if cpu is not None else argv
    p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RuntimeError(f"client timed out: {' '.join(argv)}")
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN, so measure by delta.
    return out, err, p.returncode


def child_cpu():
    r = os.times()
    return r.children_user + r.children_system


def timed_client(argv, cpu=None, timeout=120):
    before = child_cpu()
    out, err, code = run_client(argv, cpu, timeout)
    return out, err, code, child_cpu() - before


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out):
    """Requests/sec, total requests, errors and latency percentiles (ms) from `wrk --latency`."""
    res = {"latency_ms": {}}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    res["requests"] = int(m.group(1))
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    res["latency_ms"]["mean"] = float(lat.group(1)) * UNITS[lat.group(2)]
    res["latency_ms"]["max"] = float(lat.group(5)) * UNITS[lat.group(6)]
    for pct, key in (("50", "p50"), ("75", "p75"), ("90", "p90"), ("99", "p99")):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m:
            res["latency_ms"][key] = float(m.group(1)) * UNITS[m.group(2)]
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    res["errors"] = errs
    return res


def median_spread(values):
    vals = sorted(values)
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals),
            "values": vals}


def fmt_ms(v):
    return f"{v * 1000:.0f} us" if v < 1 else f"{v:.2f} ms"


def interleaved(labels, rounds):
    """A B B A A B ... order so that slow drift of the machine hits both sides alike."""
    order = []
    for r in range(rounds):
        order.extend(labels if r % 2 == 0 else list(reversed(labels)))
    return order


def environment(extra=None):
    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "unknown"
    cpu_model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1),
        "rustc": cmd(["rustc", "--version"]),
        "nginx": cmd(["sh", "-c", "nginx -v 2>&1"]),
        "wrk": cmd(["sh", "-c", "wrk -v 2>&1 | head -1"]),
        "haproxy": cmd(["sh", "-c", "haproxy -v 2>&1 | head -1"]),
        "git_commit": cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }
    env.update(extra or {})
    return env


def run_dir(name, out=None):
    """The folder a benchmark writes to, made if missing: `out` when given (pass
    bench-results/NAME to replace the committed results), else a fresh, git-ignored
    bench-results/runs/NAME-<UTC time>/. Says which on stderr."""
    if out:
        d = Path(out)
    else:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        d, n = RUNS / f"{name}-{stamp}", 1
        while d.exists():
            d, n = RUNS / f"{name}-{stamp}-{n}", n + 1
    d.mkdir(parents=True, exist_ok=True)
    log(f"output folder: {d}")
    return d


def write_results(out, name, data, markdown):
    """NAME.json and NAME.md into the folder `out` (see run_dir)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    log(f"wrote {out / (name + '.md')} and {name}.json")
    return out


def tmpdir(prefix):
    return Path(tempfile.mkdtemp(prefix=prefix))


# The top of every nginx http config the benchmarks run: one worker, no master, no logs, keep-alive
# without limit, temporary files in the run's own folder. A format string ({dir}); the http block
# is left open for the servers.
NGINX_HTTP_PROLOGUE = """worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 65s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""

NGINX_HTTP_CONF = "\n" + NGINX_HTTP_PROLOGUE + """    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            add_header X-Server-Id {id};
            default_type application/json;
            return 200 '{{"server":"{id}","requests":0}}\\n';
        }}
    }}
}}
"""


def nginx_http(port, cpu, server_id="nginx"):
    d = tmpdir("bench-nginx-")
    conf = d / "nginx.conf"
    conf.write_text(NGINX_HTTP_CONF.format(dir=d, port=port, id=server_id))
    return Server("nginx", ["nginx", "-p", str(d), "-c", str(conf)], port, cpu=cpu, cleanup=[d])


def backend_proc(port, cpu, server_id, cores=1, extra=()):
    argv = [str(TARGET / "backend"), "--listen", f"127.0.0.1:{port}", "--id", server_id,
            "--cores", str(cores), *extra]
    return Server(f"backend-{server_id}", argv, port, cpu=cpu)


def lb_proc(port, backend_ports, cpu, cores=1, algorithm="round_robin", extra=(), pool=0, relay_mode=None, env=None,
            binary=None):
    """lb on `port`; `binary`: another build's lb (an A/B against a baseline), else this tree's."""
    argv = [str(binary or TARGET / "lb"), "--listen", f"127.0.0.1:{port}", "--cores", str(cores), "--admin", "off",
            "--algorithm", algorithm, "--backend", ",".join(f"127.0.0.1:{p}" for p in backend_ports), *extra]
    dirs = []
    if pool or relay_mode:
        dirs.append(tmpdir("bench-lb-"))
        conf = dirs[0] / "lb.toml"
        conf.write_text(f"[pool]\nidle_per_backend = {pool}\n[relay]\nmode = \"{relay_mode or 'completion'}\"\n")
        argv += ["--config", str(conf)]
    return Server("lb", argv, port, cpu=cpu, env={"RUST_LOG": "warn", **(env or {})}, cleanup=dirs)


# The top of every HAProxy config the benchmarks run, `mode tcp`, through `defaults`; a format
# string ({threads}) for the frontends and backends that follow.
HAPROXY_PROLOGUE = """global
    nbthread {threads}
    maxconn 9000
    log stderr format raw local0 emerg
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    maxconn 9000
"""

HAPROXY_CONF = "\n" + HAPROXY_PROLOGUE + """frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    balance roundrobin
{servers}
"""


def haproxy_proc(port, backend_ports, cpu, threads=1):
    d = tmpdir("bench-haproxy-")
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(backend_ports))
    conf = d / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(threads=threads, port=port, servers=servers))
    return Server("haproxy", ["haproxy", "-db", "-f", str(conf)], port, cpu=cpu, cleanup=[d])


NGINX_STREAM_CONF = """
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {workers};
master_process {master};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log crit;
events {{ worker_connections 19000; }}
stream {{
    upstream b {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        proxy_pass b;
        proxy_connect_timeout 5s;
    }}
}}
"""


def nginx_stream_proc(port, backend_ports, cpu):
    d = tmpdir("bench-nginx-stream-")
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backend_ports)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_STREAM_CONF.format(workers=1, master="off", dir=d, port=port, servers=servers))
    return Server("nginx-stream", ["nginx", "-p", str(d), "-c", str(conf)], port, cpu=cpu, cleanup=[d])


def loadgen_json(url, args, cpu=None, timeout=180):
    """Runs loadgen with --json and returns the parsed report plus the client CPU seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        argv = [str(TARGET / "loadgen"), url, *args, "--json", f.name]
        out, err, code, cpu_s = timed_client(argv, cpu, timeout=timeout)
        if code != 0:
            raise RuntimeError(f"loadgen failed ({code}): {err[-2000:]}")
        r = json.load(open(f.name))
    r["client_cpu_s"] = cpu_s
    r["command"] = " ".join(pinned(cpu, argv[:-2]) if cpu is not None else argv[:-2])
    return r
