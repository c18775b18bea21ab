#!/usr/bin/env python3
"""The stack most of lb's users come from: the seed projects' Flask round-robin proxy.

As the seed tutorials write it: a Flask app that sends each request to the next backend in turn
with `requests.get` (a new backend connection per request, no session) and returns the body and
status; run with Flask's own server (`app.run`, threaded, which keeps client connections alive
with HTTP/1.1), request logging left on as they leave it. bench/proxies.py runs it in front of
the same backends, with the same client, as lb, HAProxy and nginx.
Usage: bench/flask_proxy.py --port 5000 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002 ...
"""

import argparse
import subprocess
import sys


def ensure_installed():
    """Installs flask and requests from PyPI when this Python lacks them."""
    try:
        import flask  # noqa: F401
        import requests  # noqa: F401
    except ImportError:
        print("installing flask and requests from PyPI", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "flask", "requests"], check=True)


def make_app(backends):
    from flask import Flask
    import requests

    app = Flask(__name__)
    servers = [f"http://{b}" for b in backends]
    state = {"current": 0}

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def load_balance(path):
        server = servers[state["current"]]
        state["current"] = (state["current"] + 1) % len(servers)
        response = requests.get(f"{server}/{path}", timeout=5)
        return response.content, response.status_code

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", action="append", required=True, help="host:port (repeat)")
    a = ap.parse_args()
    make_app(a.backend).run(host="127.0.0.1", port=a.port)


if __name__ == "__main__":
    main()
