"""Unit tests for bench/cost_breakdown.py: sample bucketing, perf script parsing, the floor summary."""

import unittest

import cost_breakdown as cb

K = "([kernel.kallsyms])"
PERF_TEXT = f"""
	ffffffff81000001 _raw_spin_unlock_irqrestore {K}
	ffffffff81000002 sock_def_readable {K}
	ffffffff81000003 tcp_sendmsg {K}
	ffffffff81000004 io_send {K}

	5555555501 lb::proxy::join::poll_half (/work/target/release/lb)
	5555555502 monoio::task::raw::poll (/work/target/release/lb)

	ffffffff81000005 _copy_to_iter {K}
	ffffffff81000006 tcp_recvmsg {K}
	ffffffff81000007 io_recv {K}

	ffffffff81000008 io_arm_poll_handler {K}
	ffffffff81000009 io_submit_sqes {K}
"""


class Buckets(unittest.TestCase):
    def test_perf_script_text_becomes_one_stack_per_sample_leaf_first(self):
        stacks = list(cb.parse_stacks(PERF_TEXT))
        self.assertEqual(len(stacks), 4)
        self.assertEqual(stacks[0][0], ("_raw_spin_unlock_irqrestore", K))
        self.assertEqual(stacks[1][1], ("monoio::task::raw::poll", "(/work/target/release/lb)"))

    def test_each_sample_lands_in_its_bucket(self):
        got = [cb.bucket(s) for s in cb.parse_stacks(PERF_TEXT)]
        self.assertEqual(got, ["tcp send", "user", "tcp recv", "events"])

    def test_a_send_that_the_stack_reached_from_a_receive_counts_as_send(self):
        stack = [("tcp_sendmsg", K), ("tcp_recvmsg", K)]
        self.assertEqual(cb.bucket(stack), "tcp send")


def summary(lb_tcp, lb_total, ha_total):
    row = lambda tcp, total: {"rps": 1.0, "cpu_us_per_req": total,  # noqa: E731
                              "us_per_req": {"tcp send": tcp, "tcp recv": 0.0, "events": total - tcp, "user": 0.0}}
    data = {"env": dict.fromkeys(["date_utc", "host", "cpus", "cpu_model", "kernel", "haproxy", "nginx",
                                  "git_commit"], "x"),
            "rounds": 1, "duration": 8, "command": "c",
            "results": {"64": {"lb": [row(lb_tcp, lb_total)], "haproxy": [row(12.0, ha_total)],
                               "nginx": [row(12.0, ha_total)]}}}
    return cb.markdown(data)


class Floor(unittest.TestCase):
    def test_says_how_much_of_lbs_own_cost_the_target_needs_gone(self):
        # Line: 14 / 1.4 = 10 us; lb's TCP 8 leaves 2 us of room for its own 4 us: 50% less.
        md = summary(lb_tcp=8.0, lb_total=12.0, ha_total=14.0)
        self.assertIn("1.17x HAProxy's", md)
        self.assertIn("needs it at 2.00 us/req or less (50% less)", md)

    def test_says_when_the_tcp_work_alone_is_over_the_line(self):
        md = summary(lb_tcp=11.0, lb_total=13.0, ha_total=14.0)
        self.assertIn("out of reach even for a proxy with no cost of its own", md)


if __name__ == "__main__":
    unittest.main()
