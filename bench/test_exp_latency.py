"""Unit tests for bench/exp_latency.py: the share timeline analysis and the rendering of a small
made-up JSON, and the committed results rendering to the committed summary and charts."""

import json
import tempfile
import unittest
from pathlib import Path

import exp_latency as ex

IDS = ["s1", "s2", "s3"]
PARAMS = dict(ex.DEFAULTS, requests=300, slow_duration=6.0, slow_at=2.0, bucket_ms=250)
ENV = {"cpu_model": "Test CPU", "cpus": 2, "mem_gib": 1.0, "kernel": "6.0", "rustc": "rustc 1.0",
       "git_commit": "abc1234", "date_utc": "2026-01-01T00:00:00Z"}


def run_result(algorithm, counts, p50, p99, connect=0.1):
    total = sum(counts)
    return {"algorithm": algorithm, "servers": dict(zip(IDS, counts)),
            "share_pct": {s: round(100.0 * n / total, 2) for s, n in zip(IDS, counts)},
            "requests": total, "errors": 0, "errors_by_kind": {},
            "latency_ms": {"p50": p50, "p90": p99, "p99": p99, "p999": p99, "mean": p50, "max": p99},
            "schedule_lag_p99_ms": 0.5, "rps": 500.0,
            "lb_connect_ms": {s: {"p50": connect, "p90": connect, "p99": connect} for s in IDS},
            "commands": {"lb": "lb ...", "loadgen": "loadgen ..."}}


def slow_result(algorithm, before, after, switch_s=2.0, lag_buckets=1):
    """s1 holds `before` of 100 requests per 250 ms bucket until the switch, then `after` from
    `lag_buckets` buckets later; plus a straggler bucket at the end."""
    timeline = []
    for i in range(25):
        t = i * 0.25
        if i == 24:
            s1, rest = 3, 3
        else:
            s1 = before if t < switch_s + 0.25 * lag_buckets else after
            rest = 100 - s1
        timeline.append({"t_s": t, "requests": s1 + rest, "errors": 0,
                         "servers": {"s1": s1, "s2": rest - rest // 3, "s3": rest // 3}, "p99_ms": 26.0})
    r = run_result(algorithm, [before * 8 + after * 8, 600, 300], 2.0, 52.0)
    r.update(switch_s=switch_s, admin_answer={"server": "s1", "min_ms": 50, "max_ms": 50}, timeline=timeline)
    del r["lb_connect_ms"]
    return r


def fixture():
    return {"experiment": "A-1 latency", "rerun": "python3 bench/experiments.py a1-latency --requests 300",
            "params": PARAMS, "keys": 1000, "elapsed_s": 12,
            "backends": [{"id": "s1", "latency_ms": 1}, {"id": "s2", "latency_ms": 5},
                         {"id": "s3", "latency_ms": 25}],
            "environment": ENV,
            "results": [run_result("round_robin", [100, 100, 100], 6.5, 27.4),
                        run_result("least_connections", [180, 80, 40], 2.6, 27.1),
                        run_result("least_response_time", [150, 100, 50], 3.0, 26.9),
                        run_result("maglev", [90, 110, 100], 6.6, 27.5)],
            "slow": [slow_result("least_connections", 50, 10), slow_result("round_robin", 33, 33)]}


class Movement(unittest.TestCase):
    def test_the_share_before_after_and_the_half_way_time(self):
        m = ex.movement(slow_result("x", 60, 10, lag_buckets=2), PARAMS)
        self.assertEqual((m["before_pct"], m["after_pct"]), (60.0, 10.0))
        # Half-way (35%) is crossed by the 2-bucket mean in the bucket starting 2.5 s: it ends
        # 0.75 s after the switch.
        self.assertEqual(m["halfway_s"], 0.75)

    def test_a_share_that_does_not_move_has_no_half_way_time(self):
        m = ex.movement(slow_result("x", 33, 31), PARAMS)
        self.assertEqual(m["halfway_s"], None)
        self.assertEqual((m["before_pct"], m["after_pct"]), (33.0, 31.0))

    def test_the_straggler_bucket_after_the_load_is_left_out(self):
        v = slow_result("x", 50, 10)
        self.assertEqual(len(ex.full_buckets(v, PARAMS)), 24)
        self.assertEqual(ex.share_series(v, "s1", PARAMS)[-1], 10.0)


class Render(unittest.TestCase):
    def test_a_small_fixture_renders_the_tables_findings_and_charts(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            ex.write(fixture(), d)
            md = (d / "summary.md").read_text()
            self.assertIn("| `least_connections` | 180 (60.0%) | 80 (26.7%) | 40 (13.3%) | 2.60 | 27.10 |", md)
            self.assertIn("0.100 / 0.100 / 0.100", md)
            self.assertIn("Client p99 ranges from 26.90 ms (`least_response_time`) to 27.50 ms (`maglev`)", md)
            self.assertIn("at least 13.3% of the requests (`least_connections`)", md)
            self.assertIn("largest share on the fastest backend s1: `least_connections` (60.0%)", md)
            self.assertIn("`least_response_time`: s1 50.0%, s2 33.3%, s3 16.7%; client p50 ranks 2 and p99 1 of 4", md)
            self.assertIn("whose median was 0.100 ms for every backend", md)
            self.assertIn("as with `least_connections` (s1 60.0%, s2 26.7%, s3 13.3%)", md)
            self.assertIn("under `least_connections` from 50.0% to 10.0%, half-way after 0.50 s (details", md)
            self.assertIn("`maglev` s1 30.0%, s2 36.7%, s3 33.3%", md)
            self.assertIn("| `least_connections` | 50.0% (50-50) | 10.0% | 0.50 s | 52.00 | 0 |", md)
            self.assertIn("| `round_robin` | 33.0% (33-33) | 33.0% | did not move (less than 5 points) |", md)
            self.assertIn("figures **before** issue 17's change", md)
            self.assertIn("Machine: Test CPU, 2 CPUs", md)
            self.assertIn("python3 bench/experiments.py a1-latency --requests 300", md)
            # Every table row has as many cells as its header.
            for table in md.split("\n\n"):
                lines = [ln for ln in table.splitlines() if ln.startswith("|")]
                if lines:
                    self.assertEqual({ln.count("|") for ln in lines}, {lines[0].count("|")}, table)
            for name in ["a1-latency-share.svg", "a1-latency-p50-p99.svg", "a1-latency-slow-s1.svg",
                         "a1-latency-slow-least_connections.svg", "a1-latency-slow-round_robin.svg"]:
                svg = (d / name).read_text()
                self.assertTrue(svg.startswith("<svg") and svg.rstrip().endswith("</svg>"), name)
            self.assertIn("least_response_time,150,100,50", (d / "a1-latency.csv").read_text())
            self.assertEqual(json.loads((d / ex.JSON_NAME).read_text())["keys"], 1000)

    def test_a_first_byte_run_is_not_explained_by_connect_times(self):
        data = fixture()
        data["least_response_time_metric"] = "first_byte"
        with tempfile.TemporaryDirectory() as tmp:
            ex.render(data, Path(tmp))
            md = (Path(tmp) / "summary.md").read_text()
            self.assertIn("`least_response_time`: s1 50.0%", md)
            self.assertNotIn("**connect** time", md)

    def test_without_a_turns_slow_part_there_is_no_timeline_section(self):
        data = fixture()
        data["slow"] = []
        with tempfile.TemporaryDirectory() as tmp:
            ex.render(data, Path(tmp))
            md = (Path(tmp) / "summary.md").read_text()
            self.assertNotIn("turns slow in the middle", md)
            self.assertFalse((Path(tmp) / "a1-latency-slow-s1.svg").exists())


class Committed(unittest.TestCase):
    def test_the_committed_json_renders_to_the_committed_summary_and_charts(self):
        d = Path(__file__).resolve().parent.parent / "bench-results" / ex.DIR
        if not (d / ex.JSON_NAME).exists():
            self.skipTest("no committed A-1 latency results")
        with tempfile.TemporaryDirectory() as tmp:
            ex.render(json.loads((d / ex.JSON_NAME).read_text()), Path(tmp))
            self.assertEqual((Path(tmp) / "summary.md").read_text(), (d / "summary.md").read_text())
            for svg in d.glob("*.svg"):
                self.assertEqual((Path(tmp) / svg.name).read_text(), svg.read_text(), svg.name)


if __name__ == "__main__":
    unittest.main()
