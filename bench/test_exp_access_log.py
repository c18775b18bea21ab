"""Unit tests of bench/exp_access_log.py's arithmetic over rounds (no processes started)."""

import unittest

import exp_access_log as al
import yardstick as ys


def run(point, target, r, us, rps=1000.0):
    return {"point": point, "target": target, "round": r, "machine_us_per_req": us, "rps": rps, "errors": 0,
            "latency_ms": {"p50": 1.0, "p99": 2.0}}


class Summaries(unittest.TestCase):
    def data(self):
        runs = []
        for r in range(3):
            runs += [run("new-1k", ys.DIRECT, r, 100 + r), run("new-1k", "lb-log-off", r, 130 + r),
                     run("new-1k", "lb-log-text", r, 133 + r), run("new-1k", "lb-log-json", r, 135 + 2 * r)]
        return {"runs": runs, "config": {"points": {"new-1k": al.POINTS["new-1k"]}, "rounds": 3, "duration_s": 1,
                                         "pinning": "x", "command": "c"}, "env": {}, "lines": {}}

    def test_the_log_cost_is_paired_per_round_against_the_log_off(self):
        s = al.summaries(self.data())["new-1k"]
        self.assertEqual(s["lb-log-off"]["hop_us"]["median"], 30)
        self.assertEqual(s["lb-log-text"]["log_cost_us"]["values"], [3, 3, 3])
        self.assertEqual(s["lb-log-json"]["log_cost_us"]["values"], [5, 6, 7])
        self.assertNotIn("log_cost_us", s["lb-log-off"])

    def test_the_report_names_every_variant(self):
        md = al.report(self.data())
        for name in al.VARIANTS:
            self.assertIn(f"| {name} |", md)
        self.assertIn("3.00 us (3.00 to 3.00)", md)


if __name__ == "__main__":
    unittest.main()
