"""Unit tests for bench/exp_kernel.py: the hop arithmetic on made-up runs, and the committed results
rendering to the committed summary."""

import json
import tempfile
import unittest
from pathlib import Path

import exp_kernel as ex

# Whole-machine us per request by target, per round (made up): hops 0.5, 12, 14 over direct.
MACHINE = {"direct": 20.0, "kernel": 20.5, "nft-dnat": 20.3, "relay": 32.0, "haproxy": 34.0}


def fake_data(rounds=5, kernel_hop=0.5):
    runs = []
    for r in range(rounds):
        for t in ex.TARGETS:
            us = MACHINE[t] + r * 0.1 + (kernel_hop - 0.5 if t == "kernel" else 0.0)
            runs.append({"round": r, "point": "rate-10k-64", "target": t, "requests": 40000, "errors": 0,
                         "rps": 10000.0, "machine_us_per_req": us, "proxy_us_per_req": 0.0 if t == "direct" else 1.0,
                         "rest_us_per_req": 3.0 + r * 0.1,
                         "tasks_us_per_req": us - 2.0, "busy_before_cpus": 0.1, "waited_s": 0.0, "latency_ms": {"p50": 0.1, "p99": 0.3}})
    return {"config": {"rounds": rounds, "duration_s": 4, "warmup_s": 1,
                       "points": {"rate-10k-64": ex.POINTS["rate-10k-64"]},
                       "pinning": "proxies on CPU 0; loadgen and the backend on CPU 1"},
            "environment": {"cpu_model": "x", "cpus": 2, "mem_gib": 1, "kernel": "k", "rustc": "r",
                            "git_commit": "c", "date_utc": "d", "haproxy": "HAProxy", "nft": "nftables"},
            "background_busy_cpus": {"before": 0.1, "after": 0.2}, "rerun": "python3 bench/experiments.py kernel",
            "runs": runs}


class Arithmetic(unittest.TestCase):
    def test_hops_are_over_direct_in_the_same_round_and_the_ratio_is_to_haproxys(self):
        s = ex.summarize(fake_data())["rate-10k-64"]
        self.assertAlmostEqual(s["kernel"]["hop_us"]["median"], 0.5)
        self.assertAlmostEqual(s["relay"]["hop_us"]["median"], 12.0)
        self.assertAlmostEqual(s["haproxy"]["hop_us"]["median"], 14.0)
        self.assertAlmostEqual(s["kernel"]["hop_vs_haproxy"]["median"], 0.5 / 14.0)
        self.assertAlmostEqual(s["kernel"]["task_hop_us"]["median"], 0.5)
        self.assertNotIn("hop_us", s["direct"])
        self.assertNotIn("hop_vs_haproxy", s["haproxy"])

    def test_a_kernel_hop_measured_below_zero_leaves_no_ratio(self):
        s = ex.summarize(fake_data(kernel_hop=-0.2))["rate-10k-64"]
        self.assertIsNone(s["kernel"]["hop_vs_haproxy"])

    def test_the_summary_says_whether_the_target_is_met(self):
        with tempfile.TemporaryDirectory() as tmp:
            ex.render(fake_data(), Path(tmp))
            md = (Path(tmp) / "summary.md").read_text()
            self.assertIn("whole machine: kernel mode 0.50 us", md)
            self.assertIn("target <= 0.1x met", md)
            self.assertIn("0.036x", md)
            self.assertIn("the floor: one bare nft DNAT rule costs 0.30 (0.30 to 0.30) us", md)
            self.assertIn("lb's kernel mode adds 0.20 us to it", md)
            ex.render(fake_data(kernel_hop=3.0), Path(tmp))
            self.assertIn("not met", (Path(tmp) / "summary.md").read_text())


class Committed(unittest.TestCase):
    def test_the_committed_json_renders_to_the_committed_summary(self):
        d = Path(__file__).resolve().parent.parent / "bench-results" / ex.DIR
        if not (d / "kernel.json").exists():
            self.skipTest("no committed kernel-mode results")
        with tempfile.TemporaryDirectory() as tmp:
            ex.render(json.loads((d / "kernel.json").read_text()), Path(tmp))
            self.assertEqual((Path(tmp) / "summary.md").read_text(), (d / "summary.md").read_text())
            self.assertEqual((Path(tmp) / "hop-cost.svg").read_text(), (d / "hop-cost.svg").read_text())


if __name__ == "__main__":
    unittest.main()
