"""Unit tests for bench/proxies.py: render(JSON) from a small fixture and from the committed results,
the targets it judges and its options."""

import contextlib
import io
import json
import shutil
import tempfile
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import lbbench
import proxies

ENV = {"date_utc": "2026-12-01T00:00:00Z", "host": "vm", "kernel": "6.18", "cpu_model": "AMD EPYC", "cpus": 2,
       "mem_gib": 23.5, "rustc": "rustc 1.95.0", "nginx": "nginx/1.22.1", "wrk": "wrk 4.1.0",
       "haproxy": "HAProxy 2.6.12", "git_commit": "abc1234", "background_busy_cpus_before": 0.01,
       "background_busy_cpus_after": 0.02, "loadavg_before": ["0.1", "0.2", "0.3"]}
POINTS = ["rate-5k-64", "rate-20k-64", "sat-64"]
# Hop cost per target (us): lb 12 + round, HAProxy 16, nginx 20; direct drifts with the round.
HOP = {"lb": lambda r: 12.0 + r, "haproxy": lambda r: 16.0, "nginx": lambda r: 20.0, "flask": lambda r: 2000.0}
P99_ADDED = {"lb": 0.1, "haproxy": 0.2, "nginx": 0.3, "flask": 100.0}


def fixture(rounds=3):
    runs = []
    for r in range(rounds):
        for point in POINTS:
            rate = proxies.ys.POINTS[point]["rate"]
            labels = proxies.labels_at(point, proxies.PROXIES, True)
            for t in proxies.ys.round_order(labels, r):
                direct = 20.0 + r
                us = direct if t == "direct" else direct + HOP[t](r)
                rps = rate or {"direct": 60000.0, "lb": 50000.0, "haproxy": 45000.0, "nginx": 40000.0,
                               "flask": 500.0}[t]
                p99 = 0.5 + (0 if t == "direct" else P99_ADDED[t])
                runs.append({"round": r, "point": point, "target": t, "requests": int(rps * 6), "errors": 0,
                             "errors_by_kind": {}, "rps": rps, "duration_s": 6.0,
                             "machine_cpu_s": us * rps * 6 / 1e6, "machine_us_per_req": us,
                             "machine_tick_cpu_s": us * rps * 6 / 1e6,
                             "proxy_cpu_s": 0.0, "proxy_us_per_req": 0.0 if t == "direct" else 10.0,
                             "client_cpu_s": 1.0, "backend_cpu_s": 1.0, "rest_us_per_req": 0.5,
                             "latency_ms": {"p50": p99 / 2, "p99": p99}, "started_unix_ms": 0.0,
                             "command": "taskset -c 1 loadgen http://127.0.0.1:PORT/"})
    return {"schema": proxies.SCHEMA, "env": ENV, "elapsed_s": 100,
            "config": {"rounds": rounds, "duration_s": 6.0, "warmup_s": 1.0, "points": POINTS,
                       "proxies": proxies.PROXIES, "flask": True, "flask_point": "sat-64", "flask_duration_s": 4.0,
                       "idle": 5000, "fullstack_conns": 256, "parts": ["fullstack", "memory", "yardstick"],
                       "command": "python3 bench/proxies.py", "pinning": "proxies on CPU 0",
                       "backends": "one nginx"},
            "yardstick": {"runs": runs},
            "memory": {p: {"connections": 5000, "rss_before": 2**20, "rss_after": 2**20 + 5000 * kib * 1024,
                           "bytes_per_conn": kib * 1024}
                       for p, kib in (("lb", 1.5), ("haproxy", 3.3), ("nginx", 9.7), ("lb-readiness", 2.9))},
            "fullstack": {"ours": [{"round": r, "rps": 60000.0 + r, "errors": 0, "p99_ms": 5.0} for r in range(rounds)],
                          "theirs": [{"round": r, "rps": 40000.0, "errors": 0, "p99_ms": 6.0} for r in range(rounds)]},
            "fullstack_commands": {"ours": "loadgen", "theirs": "wrk"}}


class Render(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="test-proxies-"))

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def render(self, data):
        with contextlib.redirect_stderr(io.StringIO()):
            return proxies.render(data, self.dir)

    def test_the_headline_table_shows_hop_costs_and_per_round_ratios(self):
        md = self.render(fixture())
        row = next(line for line in md.splitlines() if line.startswith("| 20,000 req/s, 64 conns | 21.00"))
        # lb's hop 12, 13, 14 over the rounds; HAProxy's 16: ratios 0.75, 0.81, 0.88.
        self.assertIn("| 13.00 (12.00-14.00) | 16.00 (16.00-16.00) | 20.00 (20.00-20.00) |", row)
        self.assertIn("0.81x (0.75-0.88)", row)
        self.assertIn("1.25x (1.25-1.25)", row)

    def test_targets_are_judged_against_haproxy_in_the_same_run(self):
        md = self.render(fixture())
        self.assertRegex(md, r"hop cost, 20,000 req/s, 64 conns: lb / HAProxy <= 0.7x \| 0.81x .* \| \*\*not met\*\*")
        self.assertRegex(md, r"p99 added over direct, 5,000 req/s, 64 conns: lb / HAProxy <= 1.0x \| 0.50x .* \| met")
        self.assertRegex(md, r"memory per idle proxied connection <= 2 KiB \| 1.50 KiB \| met")
        self.assertRegex(md, r"full stack, .* >= 1.4x \| 1.50x .* \| met")

    def test_the_flask_line_states_the_seed_goal_literally(self):
        md = self.render(fixture())
        self.assertIn("**lb: 100.0 x the Flask proxy's throughput**", md)
        self.assertIn("\"40% more throughput\", is 1.4x: met", md)

    def test_p99_added_table(self):
        md = self.render(fixture())
        self.assertIn("| 5,000 req/s, 64 conns | 0.500 (0.500-0.500) | +0.100 (+0.100-+0.100) | "
                      "+0.200 (+0.200-+0.200) | +0.300 (+0.300-+0.300) | 0.50x (0.50-0.50) | 1.50x (1.50-1.50) |", md)

    def test_a_noisy_run_is_flagged_and_its_targets_disowned(self):
        data = fixture()
        for r in data["yardstick"]["runs"]:
            r["rest_us_per_req"] = 100.0  # 0.5 CPUs at 5,000 req/s
        md = self.render(data)
        self.assertIn("**This run was noisy**", md)
        self.assertIn("Runs with more than 0.1 CPUs busy outside", md)
        self.assertNotIn("**This run was noisy**", self.render(fixture()))

    def test_a_hop_swamped_by_noise_leaves_the_target_undefined(self):
        data = fixture()
        for r in data["yardstick"]["runs"]:
            if r["point"] == "rate-20k-64" and r["target"] == "lb" and r["round"] == 1:
                r["machine_us_per_req"] = 1.0
        self.assertRegex(self.render(data), r"20,000 req/s, 64 conns: lb / HAProxy <= 0.7x \| undefined")

    def test_every_chart_is_written_and_is_well_formed_svg(self):
        self.render(fixture())
        names = {"headline.svg", "hop-ratio.svg", "latency-added.svg", "flask.svg", "memory-per-conn.svg",
                 "full-stack.svg"}
        self.assertEqual({p.name for p in self.dir.glob("*.svg")}, names)
        for n in names:
            ET.parse(self.dir / n)

    def test_the_order_of_the_runs_is_reported(self):
        md = self.render(fixture())
        self.assertIn("round 1: direct, lb, HAProxy, nginx stream; round 2: nginx stream, HAProxy, lb, direct", md)

    def test_a_json_with_only_some_parts_renders(self):
        data = fixture()
        del data["yardstick"], data["fullstack"]
        md = self.render(data)
        self.assertIn("## 5. Memory", md)
        self.assertNotIn("## 1.", md)

    def test_a_json_from_before_the_yardstick_is_refused_not_half_rendered(self):
        with self.assertRaises(SystemExit) as e:
            self.render({"env": ENV, "throughput": {}})
        self.assertIn("predates the hop-cost yardstick", str(e.exception))

    def test_renders_the_committed_json(self):
        committed = lbbench.RESULTS / "proxies" / "proxies.json"
        data = json.loads(committed.read_text())
        if data.get("schema") != proxies.SCHEMA:
            self.skipTest(f"{committed} predates the hop-cost yardstick (schema {data.get('schema', 1)}); "
                          "the next committed run replaces it")
        md = self.render(data)
        self.assertIn("## 1. Hop cost", md)

    def test_an_ab_run_says_how_lb_compares_with_its_baseline_build(self):
        data = json.loads((lbbench.RESULTS / "connection-future" / "proxies.json").read_text())
        md = self.render(data)
        line = next(x for x in md.splitlines() if x.startswith("**lb against the baseline build**"))
        self.assertIn("20,000 req/s, 64 conns 1.07x (0.89-1.29)", line)
        self.assertIn("| lb (baseline build) |", md)
        # Without a baseline in the run, no such line.
        self.assertNotIn("baseline build", self.render(fixture()))


class Options(unittest.TestCase):
    def test_defaults_run_at_least_five_rounds_at_every_point(self):
        a = proxies.parse_args([])
        self.assertGreaterEqual(a.rounds, 5)
        self.assertEqual(a.points, list(proxies.ys.POINTS))
        self.assertEqual(a.proxies, ["lb", "haproxy", "nginx"])
        self.assertTrue(a.flask)
        self.assertIsNone(a.out)

    def test_the_flask_proxy_needs_its_point(self):
        self.assertFalse(proxies.parse_args(["--points", "rate-5k-64"]).flask)

    def test_a_baseline_needs_its_directory_and_an_lb_in_it(self):
        for argv in (["--proxies", "lb,lb-baseline"], ["--baseline", "/tmp"],
                     ["--proxies", "lb,lb-baseline", "--baseline", "/nonexistent"]):
            with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                proxies.parse_args(argv)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "lb").write_text("")
            a = proxies.parse_args(["--proxies", "lb,lb-baseline", "--baseline", d])
            self.assertEqual(a.proxies, ["lb", "lb-baseline"])

    def test_unknown_points_are_rejected(self):
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            proxies.parse_args(["--points", "rate-1k-64"])


if __name__ == "__main__":
    unittest.main()
