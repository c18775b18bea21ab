"""Unit tests for bench/cost_breakdown.py: sample bucketing by function and by process, perf script
parsing (with and without `-a` sample headers), the whole-machine tables and the floor summary."""

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


PERF_A_TEXT = f"""lb 4242/4243 [000]
	ffffffff81000003 tcp_sendmsg {K}
	ffffffff81000004 io_send {K}

loadgen 5000/5001 [001]
	5555555501 loadgen::run (/work/target/release/loadgen)

nginx 6000/6000 [001]
	ffffffff81000006 tcp_recvmsg {K}

swapper 0/0 [000]
	ffffffff81000010 tcp_v4_rcv {K}
	ffffffff81000011 net_rx_action {K}
	ffffffff81000012 handle_softirqs {K}
	ffffffff81000013 default_idle {K}

swapper 0/0 [001]
	ffffffff81000013 pv_native_safe_halt {K}
	ffffffff81000014 default_idle {K}

kworker/u8:2-ev 77/77 [000]
	ffffffff81000020 process_one_work {K}

ksoftirqd/1 18/18 [001]
	ffffffff81000011 net_rx_action {K}

Web Content 900/901 [000]
	5555555601 js::run (/usr/lib/firefox/libxul.so)
"""
PIDS = {"proxy": 4242, "nginx backend": 6000}


class WholeMachine(unittest.TestCase):
    def samples(self):
        return list(cb.parse_samples(PERF_A_TEXT))

    def test_sample_headers_give_comm_pid_tid_and_cpu(self):
        s = self.samples()
        self.assertEqual(len(s), 8)
        self.assertEqual((s[0]["comm"], s[0]["pid"], s[0]["tid"], s[0]["cpu"]), ("lb", 4242, 4243, 0))
        self.assertEqual(s[0]["stack"][0], ("tcp_sendmsg", K))
        self.assertEqual(s[7]["comm"], "Web Content")

    def test_header_lines_are_not_frames(self):
        self.assertEqual([len(x) for x in cb.parse_stacks(PERF_A_TEXT)], [2, 1, 1, 4, 2, 1, 1, 1])

    def test_each_sample_lands_in_its_process_group(self):
        got = [cb.role(s, PIDS) for s in self.samples()]
        self.assertEqual(got, ["proxy", "loadgen", "nginx backend", "softirq on idle CPU", cb.IDLE, "kworker",
                               "ksoftirqd", "other"])

    def test_nginx_as_proxy_and_as_backend_are_told_apart_by_pid(self):
        s = {"comm": "nginx", "pid": 4242, "tid": 4242, "cpu": 0, "stack": [("x", K)]}
        self.assertEqual(cb.role(s, PIDS), "proxy")

    def test_tally_leaves_idle_out_and_counts_by_group_function_and_thread(self):
        t = cb.tally(self.samples(), PIDS)
        self.assertEqual((t["busy"], t["idle"]), (7, 1))
        self.assertEqual(t["roles"]["proxy"]["tcp send"], 1)
        self.assertEqual(t["roles"]["nginx backend"]["tcp recv"], 1)
        self.assertEqual(t["roles"]["softirq on idle CPU"]["events"], 1)
        self.assertEqual(t["threads"]["kworker/*"], 1)
        self.assertEqual(t["threads"]["proxy: lb"], 1)
        self.assertEqual(t["threads"]["Web Content"], 1)


def summary(lb_tcp, lb_total, ha_total):
    row = lambda tcp, total: {"rps": 1.0, "cpu_us_per_req": total,  # noqa: E731
                              "us_per_req": {"tcp send": tcp, "tcp recv": 0.0, "events": total - tcp, "user": 0.0}}
    data = {"env": dict.fromkeys(["date_utc", "host", "cpus", "cpu_model", "kernel", "haproxy", "nginx",
                                  "git_commit"], "x"),
            "rounds": 1, "duration": 8, "command": "c",
            "results": {"64": {"lb": [row(lb_tcp, lb_total)], "haproxy": [row(12.0, ha_total)],
                               "nginx": [row(12.0, ha_total)]}}}
    return cb.markdown(data)


def machine_row(proxy_us, loadgen_us, softirq_us):
    roles = {"loadgen": {"tcp send": loadgen_us, "tcp recv": 0.0, "events": 0.0, "user": 0.0},
             "softirq on idle CPU": {"tcp send": 0.0, "tcp recv": 0.0, "events": softirq_us, "user": 0.0}}
    if proxy_us:
        roles["proxy"] = {"tcp send": proxy_us, "tcp recv": 0.0, "events": 0.0, "user": 0.0}
    return {"rps": 1.0, "cpu_us_per_req": proxy_us, "machine_us_per_req": proxy_us + loadgen_us + softirq_us,
            "roles_us_per_req": roles, "threads_us_per_req": {"loadgen: loadgen": loadgen_us},
            "us_per_req": {"tcp send": proxy_us, "tcp recv": 0.0, "events": 0.0, "user": 0.0}}


class MachineTables(unittest.TestCase):
    def md(self):
        per = {"direct": [machine_row(0.0, 10.0, 1.0)], "lb": [machine_row(8.0, 12.0, 2.0)],
               "haproxy": [machine_row(12.0, 12.0, 2.0)], "nginx": [machine_row(12.0, 13.0, 2.0)]}
        data = {"env": dict.fromkeys(["date_utc", "host", "cpus", "cpu_model", "kernel", "haproxy", "nginx",
                                      "git_commit"], "x"),
                "rounds": 1, "duration": 8, "command": "c", "whole_machine": True, "results": {"64": per}}
        return cb.markdown(data)

    def test_each_group_shows_its_part_of_the_hop(self):
        md = self.md()
        self.assertIn("| proxy | 0.00 | 8.00 | 12.00 | 12.00 | +8.00 | +12.00 | +12.00 |", md)
        self.assertIn("| softirq on idle CPU | 1.00 | 2.00 | 2.00 | 2.00 | +1.00 | +1.00 | +1.00 |", md)
        self.assertIn("| **all (machine busy)** | **11.00** | **22.00** | **26.00** | **27.00** | **+11.00** |", md)

    def test_the_hop_is_judged_against_haproxys(self):
        # lb's hop 11 against HAProxy's 15; extra TCP send: lb 10 (8 + 2 more in loadgen), HAProxy 14.
        md = self.md()
        self.assertIn("- lb: hop 11.00 us/req against HAProxy's 15.00 (0.73x; target <= 0.7x, i.e. 10.50); "
                      "without other processes 11.00 against 15.00; "
                      "of it, the extra TCP send + receive work is 10.00 (HAProxy's 14.00).", md)
        self.assertIn("- nginx: hop 16.00 us/req against HAProxy's 15.00 (1.07x); without", md)

    def test_other_processes_are_left_out_of_the_function_buckets(self):
        row = machine_row(8.0, 12.0, 2.0)
        row["roles_us_per_req"]["other"] = {"tcp send": 0.0, "tcp recv": 0.0, "events": 0.0, "user": 50.0}
        self.assertEqual(cb.func_cost(row, "user"), 0.0)
        self.assertEqual(cb.ours_cost(row), 22.0)

    def test_perf_record_a_is_named_in_the_method(self):
        self.assertIn("`perf record -a -e cpu-clock -g`", self.md())


class Floor(unittest.TestCase):
    def test_says_how_much_of_lbs_own_cost_the_target_needs_gone(self):
        # Line: 14 / 1.4 = 10 us; lb's TCP 8 leaves 2 us of room for its own 4 us: 50% less.
        md = summary(lb_tcp=8.0, lb_total=12.0, ha_total=14.0)
        self.assertIn("1.17x HAProxy's", md)
        self.assertIn("needs it at 2.00 us/req or less (50% less)", md)

    def test_says_when_the_tcp_work_alone_is_over_the_line(self):
        md = summary(lb_tcp=11.0, lb_total=13.0, ha_total=14.0)
        self.assertIn("out of reach even for a proxy with no cost of its own", md)


class Committed(unittest.TestCase):
    def test_renders_the_committed_json(self):
        import json
        from lbbench import RESULTS
        data = json.loads((RESULTS / "cost-breakdown" / "breakdown.json").read_text())
        md = cb.markdown(data)
        for conns in data["results"]:
            self.assertIn(f"## {conns} connections", md)
        self.assertIn("The proxy process alone", md)


if __name__ == "__main__":
    unittest.main()
