#!/usr/bin/env python3
"""A TLS load client for new connections: every connection is a full handshake with a server
name (SNI), one `GET /` with `Connection: close`, the response read to the server's close.

Why this and not `openssl s_time`: s_time (OpenSSL 3.0) cannot send a server name, so it cannot
be routed by SNI, and it has no rate; wrk sends the URL's host name as SNI, which would need
names in /etc/hosts, and cannot hold a rate either. This is Python's `ssl` (the same OpenSSL) in
`--procs` processes: open loop at `--rate` (connection n of a process due at start + n / its
share of the rate; a process behind its schedule starts the next one at once, and the lateness
is reported), or closed loop (saturation) without `--rate`. Names are used in turn. No session
is ever resumed (each connection a new SSLSocket without `session=`), certificates are not
verified (the handshake's cost is the same).

Every process starts at the same wall-clock time; the first `--warmup` seconds are not counted;
a connection counts when it started in the measured window (open loop: its due time). Prints
one JSON object (or writes it to --json FILE) with the keys bench/yardstick.py reads from
loadgen: started_unix_ms, duration_s, requests (connections), errors, errors_by_kind, rps,
latency_ms, cpu_seconds.

Usage: bench/tls_load.py --connect 127.0.0.1:8443 --names a.example,b.example [--rate 400]
                          [--procs 2] [--duration 5] [--warmup 1] [--json FILE]
"""

import argparse
import json
import os
import socket
import ssl
import sys
import time


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[i]


def one_connection(ctx, addr, name, request, timeout):
    """Connect, handshake with `name`, send the request, read to the close. Returns None or the
    kind of error."""
    try:
        with socket.create_connection(addr, timeout=timeout) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(request)
                data = b""
                while True:
                    chunk = s.recv(16384)
                    if not chunk:
                        break
                    data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            return "bad_response"
        return None
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "connect_refused"
    except ConnectionResetError:
        return "reset"
    except ssl.SSLError:
        return "tls"
    except OSError:
        return "io"


def worker(index, a, start, out_fd):
    """One process: its share of the rate (or closed loop), its own schedule; writes its results
    as one JSON line to out_fd."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = a.connect.rsplit(":", 1)
    addr = (host, int(port))
    names = a.names
    requests = [f"GET / HTTP/1.1\r\nHost: {n}\r\nConnection: close\r\n\r\n".encode() for n in names]
    interval = a.procs / a.rate if a.rate else 0.0
    measured_from, end = start + a.warmup, start + a.warmup + a.duration
    lat, errors, late, n = [], {}, [], 0
    # Names in turn across the whole pool: process i starts at name i.
    k = index
    now = time.time()
    if now < start:
        time.sleep(start - now)
    while True:
        due = start + (index / a.rate + n * interval if a.rate else 0.0)
        now = time.time()
        if a.rate:
            if due >= end:
                break
            if due > now:
                time.sleep(due - now)
                now = time.time()
            origin = due
        else:
            if now >= end:
                break
            origin = now
        counted = origin >= measured_from
        err = one_connection(ctx, addr, names[k % len(names)], requests[k % len(names)], a.timeout)
        done = time.time()
        k += a.procs
        n += 1
        if not counted:
            continue
        if err:
            errors[err] = errors.get(err, 0) + 1
        else:
            lat.append((done - origin) * 1000)
        if a.rate:
            late.append(max(0.0, now - due) * 1000)
    os.write(out_fd, (json.dumps({"lat": lat, "errors": errors, "late": late}) + "\n").encode())


def run(a):
    start = time.time() + 0.2
    pipes, pids = [], []
    before = os.times()
    for i in range(a.procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                worker(i, a, start, w)
            finally:
                os._exit(0)
        os.close(w)
        pipes.append(r)
        pids.append(pid)
    parts = []
    for r in pipes:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        parts.append(json.loads(data) if data.strip() else {"lat": [], "errors": {"worker_died": 1}, "late": []})
    for pid in pids:
        os.waitpid(pid, 0)
    after = os.times()
    lat = sorted(x for p in parts for x in p["lat"])
    late = sorted(x for p in parts for x in p["late"])
    errors = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    n_err = sum(errors.values())
    return {
        "started_unix_ms": (start + a.warmup) * 1000,
        "duration_s": a.duration,
        "requests": len(lat),
        "errors": n_err,
        "errors_by_kind": errors,
        "rps": len(lat) / a.duration,
        "rate": a.rate,
        "procs": a.procs,
        "names": a.names,
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                       "mean": sum(lat) / len(lat) if lat else 0.0},
        # Open loop: how late connections started against their schedule (a process that falls
        # behind is a client that saturated).
        "late_ms": {"p50": percentile(late, 50), "p99": percentile(late, 99), "max": late[-1] if late else 0.0},
        "cpu_seconds": (after.children_user + after.children_system) - (before.children_user + before.children_system),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connect", required=True, help="host:port")
    ap.add_argument("--names", required=True, help="comma-separated server names, used in turn")
    ap.add_argument("--rate", type=float, help="new connections per second in total (default: closed loop)")
    ap.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds not counted first (default 1)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per connection, seconds (default 5)")
    ap.add_argument("--json", help="write the result here instead of stdout")
    a = ap.parse_args(argv)
    a.names = [n for n in a.names.split(",") if n]
    if not a.names or a.procs < 1 or a.duration <= 0 or (a.rate is not None and a.rate <= 0):
        ap.error("need at least one name, --procs >= 1, a positive --duration and --rate")
    return a


def main():
    a = parse_args()
    res = run(a)
    text = json.dumps(res, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0 if res["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
