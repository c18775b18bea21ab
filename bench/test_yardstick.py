"""Unit tests for bench/yardstick.py: /proc/stat parsing, windows over samples, the round order and
the hop-cost arithmetic over rounds."""

import unittest

import yardstick as ys
from lbbench import CLK_TCK

PROC_STAT = """cpu  1000 200 300 5000 100 10 20 5 40 0
cpu0 500 100 150 2500 50 5 10 2 20 0
cpu1 500 100 150 2500 50 5 10 3 20 0
intr 624513 0 0
ctxt 123
btime 1700000000
"""


class ProcStat(unittest.TestCase):
    def test_busy_fields_are_user_nice_system_irq_softirq_steal_and_guest_is_not_added_twice(self):
        s = ys.parse_proc_stat(PROC_STAT)
        self.assertAlmostEqual(s["ticks_busy"], (1000 + 200 + 300 + 10 + 20 + 5) / CLK_TCK)

    def test_idle_is_idle_plus_iowait(self):
        self.assertAlmostEqual(ys.parse_proc_stat(PROC_STAT)["idle"], (5000 + 100) / CLK_TCK)

    def test_counts_the_per_cpu_lines_not_the_aggregate(self):
        self.assertEqual(ys.parse_proc_stat(PROC_STAT)["cpus"], 2)

    def test_an_older_kernel_with_fewer_fields_still_parses(self):
        s = ys.parse_proc_stat("cpu  10 0 10 80\ncpu0 10 0 10 80\n")
        self.assertAlmostEqual(s["ticks_busy"], 20 / CLK_TCK)
        self.assertAlmostEqual(s["idle"], 80 / CLK_TCK)

    def test_a_file_without_the_aggregate_line_is_an_error(self):
        with self.assertRaises(ValueError):
            ys.parse_proc_stat("cpu0 1 2 3 4\n")

    def test_reads_this_machine(self):
        s = ys.proc_stat()
        self.assertGreaterEqual(s["cpus"], 1)
        self.assertGreater(s["idle"] + s["ticks_busy"], 0)


def samples(*rows):
    """(t, idle) pairs -> samples of a 2-CPU machine."""
    return [{"t": t, "idle": idle, "ticks_busy": 0.0, "cpus": 2, "proxy": t * 0.5} for t, idle in rows]


class Windows(unittest.TestCase):
    def test_values_between_samples_are_interpolated(self):
        s = samples((0.0, 0.0), (1.0, 1.0), (2.0, 3.0))
        self.assertAlmostEqual(ys.value_at(s, 0.5, "idle"), 0.5)
        self.assertAlmostEqual(ys.value_at(s, 1.5, "idle"), 2.0)
        self.assertAlmostEqual(ys.window(s, 0.5, 1.5, "idle"), 1.5)

    def test_busy_is_cpus_times_wall_time_minus_idle(self):
        # 2 CPUs over 1.5 s = 3 CPU-s, of which 1.5 idle: 1.5 busy.
        s = samples((0.0, 0.0), (1.0, 1.0), (2.0, 3.0))
        self.assertAlmostEqual(ys.busy_window(s, 0.5, 2.0), 2 * 1.5 - (3.0 - 0.5))

    def test_a_window_outside_the_samples_is_refused(self):
        s = samples((1.0, 0.0), (2.0, 1.0))
        with self.assertRaises(ValueError):
            ys.window(s, 0.5, 1.5, "idle")
        with self.assertRaises(ValueError):
            ys.window(s, 1.5, 2.5, "idle")

    def test_a_change_in_online_cpus_is_refused(self):
        s = samples((0.0, 0.0), (1.0, 1.0))
        s[1]["cpus"] = 1
        with self.assertRaises(ValueError):
            ys.busy_window(s, 0.0, 1.0)

    def test_the_sampler_brackets_what_it_watched(self):
        import os
        with ys.Sampler({"me": [os.getpid()]}, interval=0.01) as s:
            sum(range(200000))
        self.assertGreaterEqual(len(s.samples), 2)
        self.assertLessEqual(s.samples[0]["t"], s.samples[-1]["t"])
        self.assertGreaterEqual(s.samples[-1]["me"], s.samples[0]["me"])


class RoundOrder(unittest.TestCase):
    L = ["direct", "lb", "haproxy", "nginx"]

    def test_consecutive_rounds_mirror_each_other(self):
        for r in range(0, 8, 2):
            self.assertEqual(ys.round_order(self.L, r + 1), ys.round_order(self.L, r)[::-1])

    def test_first_rounds(self):
        self.assertEqual(ys.round_order(self.L, 0), ["direct", "lb", "haproxy", "nginx"])
        self.assertEqual(ys.round_order(self.L, 1), ["nginx", "haproxy", "lb", "direct"])
        self.assertEqual(ys.round_order(self.L, 2), ["lb", "haproxy", "nginx", "direct"])
        self.assertEqual(ys.round_order(self.L, 3), ["direct", "nginx", "haproxy", "lb"])

    def test_every_label_runs_once_per_round(self):
        for r in range(12):
            self.assertEqual(sorted(ys.round_order(self.L, r)), sorted(self.L))

    def test_every_label_takes_every_position_over_enough_rounds(self):
        positions = {x: set() for x in self.L}
        for r in range(2 * len(self.L)):
            for i, x in enumerate(ys.round_order(self.L, r)):
                positions[x].add(i)
        self.assertTrue(all(p == set(range(len(self.L))) for p in positions.values()), positions)

    def test_a_single_label_is_fine(self):
        self.assertEqual(ys.round_order(["direct"], 3), ["direct"])


def run(round_no, target, us, p99=0.5, point="rate-5k-64", rps=5000.0):
    return {"round": round_no, "point": point, "target": target, "machine_us_per_req": us,
            "latency_ms": {"p50": p99 / 2, "p99": p99}, "rps": rps}


class Arithmetic(unittest.TestCase):
    def by(self):
        # Direct drifts up by 2 us per round; the proxies drift with it: the hop stays put.
        runs = []
        for r in range(3):
            d = 20.0 + 2 * r
            runs += [run(r, "direct", d, 0.50), run(r, "lb", d + 12 + r, 0.60),
                     run(r, "haproxy", d + 16, 0.70 + 0.1 * r)]
        return ys.index(runs)

    def test_hop_cost_is_the_target_minus_direct_in_the_same_round(self):
        self.assertEqual(ys.hop_costs(self.by(), "rate-5k-64", "lb"), [12.0, 13.0, 14.0])
        self.assertEqual(ys.hop_costs(self.by(), "rate-5k-64", "haproxy"), [16.0, 16.0, 16.0])

    def test_a_round_without_its_direct_run_is_left_out(self):
        runs = [run(0, "direct", 20.0), run(0, "lb", 30.0), run(1, "lb", 99.0)]
        self.assertEqual(ys.hop_costs(ys.index(runs), "rate-5k-64", "lb"), [10.0])

    def test_ratio_is_taken_per_round_then_summarised(self):
        s = ys.hop_ratio(self.by(), "rate-5k-64", "lb")
        self.assertAlmostEqual(s["median"], 13 / 16)
        self.assertAlmostEqual(s["min"], 12 / 16)
        self.assertAlmostEqual(s["max"], 14 / 16)
        self.assertEqual(s["n"], 3)

    def test_p99_added_and_its_ratio(self):
        by = self.by()
        added = ys.p99_added(by, "rate-5k-64", "haproxy")
        for got, want in zip(added, [0.2, 0.3, 0.4]):
            self.assertAlmostEqual(got, want)
        s = ys.p99_ratio(by, "rate-5k-64", "lb")
        self.assertAlmostEqual(s["median"], 0.1 / 0.3)
        self.assertAlmostEqual(s["min"], 0.1 / 0.4)
        self.assertAlmostEqual(s["max"], 0.1 / 0.2)

    def test_a_ratio_to_nothing_is_undefined_and_so_is_its_summary(self):
        self.assertEqual(ys.ratios([1.0, 2.0], [2.0, 0.0]), [0.5, None])
        self.assertIsNone(ys.summarize([0.5, None]))
        self.assertIsNone(ys.summarize([]))

    def test_a_hop_measured_at_or_below_zero_leaves_no_ratio(self):
        runs = [run(0, "direct", 20.0), run(0, "lb", 19.0), run(0, "haproxy", 30.0)]
        self.assertEqual(ys.hop_costs(ys.index(runs), "rate-5k-64", "lb"), [-1.0])
        self.assertIsNone(ys.hop_ratio(ys.index(runs), "rate-5k-64", "lb"))

    def test_a_p99_under_directs_counts_as_nothing_added(self):
        runs = [run(0, "direct", 20.0, 0.5), run(0, "lb", 30.0, 0.4), run(0, "haproxy", 30.0, 0.7)]
        self.assertEqual(ys.p99_ratio(ys.index(runs), "rate-5k-64", "lb")["median"], 0.0)

    def test_median_with_min_max(self):
        s = ys.summarize([5.0, 1.0, 3.0, 9.0])
        self.assertEqual((s["median"], s["min"], s["max"], s["n"]), (4.0, 1.0, 9.0, 4))


if __name__ == "__main__":
    unittest.main()
