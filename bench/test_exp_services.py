"""Unit tests of bench/exp_services.py: the configurations it writes, the window of clients run at
once, the arithmetic over rounds and the report (no processes started)."""

import json
import tomllib
import unittest
from pathlib import Path

import exp_services as es
import yardstick as ys
from lbbench import RESULTS


def run(part_point, target, r, us, rps=1000.0, rest_us=1.0):
    return {"point": part_point, "target": target, "round": r, "machine_us_per_req": us, "rps": rps,
            "requests_in_window": rps * 5, "duration_s": 5.0, "rest_us_per_req": rest_us, "proxy_us_per_req": us / 3,
            "errors": 0, "latency_ms": {"p50": 1.0, "p99": 2.0}, "commands": [f"loadgen {target}"] * 3,
            "client_cpu_s": 3.0, "backend_cpu_s": 1.5, "proxy_cpu_s": 1.0,
            "noisy_attempts": []}


ENV = {"date_utc": "2026-12-01T00:00:00Z", "host": "vm", "cpus": 2, "cpu_model": "x", "mem_gib": 1, "kernel": "k",
       "haproxy": "h", "nginx": "n", "rustc": "r", "git_commit": "c"}
CFG = {"rounds": 3, "duration_s": 5, "warmup_s": 1, "pinning": "p", "command": "python3 bench/exp_services.py"}


class Configs(unittest.TestCase):
    def test_one_listener_feeds_one_service_and_three_feed_three_with_the_same_backends(self):
        one = tomllib.loads(es.listeners_toml([8000], [9001, 9002, 9003]))
        three = tomllib.loads(es.listeners_toml([8000, 8001, 8002], [9001, 9002, 9003]))
        self.assertEqual(one["health"]["check"], "none")
        self.assertEqual([(l["address"], l["service"]) for l in one["listeners"]], [("127.0.0.1:8000", "s0")])
        self.assertEqual([l["service"] for l in three["listeners"]], ["s0", "s1", "s2"])
        for s in three["services"]:
            self.assertEqual([b["address"] for b in s["backends"]],
                             ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"])

    def test_the_sni_listener_routes_each_name_to_its_pool_in_lb_and_haproxy(self):
        pools = [("pool_a", "a.example", [1, 2]), ("pool_b", "b.example", [3, 4])]
        c = tomllib.loads(es.sni_toml(8443, pools))
        (l,) = c["listeners"]
        self.assertEqual(l["default_service"], "pool_a")
        self.assertEqual([(r["sni"], r["service"]) for r in l["routes"]],
                         [("a.example", "pool_a"), ("b.example", "pool_b")])
        self.assertNotIn("service", l)
        ha = es.haproxy_sni_cfg(8444, pools)
        for line in ("tcp-request inspect-delay 5s", "tcp-request content accept if { req.ssl_hello_type 1 }",
                     "use_backend pool_a if { req.ssl_sni -i a.example }",
                     "use_backend pool_b if { req.ssl_sni -i b.example }", "server pool_b1 127.0.0.1:4",
                     "nbthread 1", "mode tcp", "bind 127.0.0.1:8444"):
            self.assertIn(line, ha)

    def test_proxy_variants_accept_and_send_only_when_asked(self):
        for accept in (False, True):
            for send in (False, True):
                c = tomllib.loads(es.proxy_toml(8000, [9001], accept, send))
                (l,), (s,) = c["listeners"], c["services"]
                self.assertEqual(l.get("accept_proxy"), "v2" if accept else None)
                self.assertEqual(l.get("trusted_proxies"), ["127.0.0.0/8"] if accept else None)
                self.assertEqual(s.get("send_proxy"), "v2" if send else None)

    def test_nginx_gets_tls_settings_only_with_a_certificate(self):
        plain = es.nginx_conf("/d", [(1, ""), (2, "proxy_protocol")])
        self.assertIn("listen 127.0.0.1:2 proxy_protocol;", plain)
        self.assertNotIn("ssl_certificate", plain)
        tls = es.nginx_conf("/d", [(1, "ssl")], "/c.pem", "/k.pem")
        self.assertIn("listen 127.0.0.1:1 ssl;", tls)
        self.assertIn("ssl_certificate /c.pem;", tls)
        self.assertIn("ssl_session_tickets off;", tls)

    def test_ports_are_named_longest_first(self):
        self.assertEqual(es.named("a 4000 b 40001", {"P": 4000, "Q": 40001}), "a {P} b {Q}")

    def test_identical_commands_are_counted(self):
        self.assertEqual(es.command_groups(["x", "x", "y", "x"]), ["3 x `x`", "`y`"])


class Window(unittest.TestCase):
    def report(self, start_ms, rps, duration=5.0, errors=0):
        return {"started_unix_ms": start_ms, "duration_s": duration, "rps": rps, "requests": int(rps * duration),
                "errors": errors, "errors_by_kind": {"reset": errors} if errors else {},
                "latency_ms": {"p50": 1.0, "p99": 3.0}}

    def test_clients_run_at_once_share_the_intersection_of_their_windows(self):
        w = es.common_window([self.report(1000_000, 5000), self.report(1000_020, 5000, errors=2),
                              self.report(1000_010, 5000)])
        self.assertAlmostEqual(w["t0"], 1000.02)
        self.assertAlmostEqual(w["t1"], 1005.0)
        self.assertAlmostEqual(w["skew_s"], 0.02)
        self.assertEqual(w["rps"], 15000)
        self.assertAlmostEqual(w["requests_in_window"], 15000 * 4.98)
        self.assertEqual((w["errors"], w["errors_by_kind"]), (2, {"reset": 2}))

    def test_windows_that_do_not_overlap_are_an_error(self):
        with self.assertRaises(ValueError):
            es.common_window([self.report(0, 1, 1.0), self.report(2000, 1, 1.0)])


class Summaries(unittest.TestCase):
    def listeners(self, b_minus_a):
        runs = []
        for r, d in enumerate(b_minus_a):
            runs += [run("ka-15k", ys.DIRECT, r, 30.0), run("ka-15k", es.ONE, r, 45.0 + r),
                     run("ka-15k", es.THREE, r, 45.0 + r + d)]
        return {"runs": runs, "points": {"ka-15k": es.LISTENER_POINTS["ka-15k"]}, "servers": {}}

    def test_b_minus_a_is_paired_per_round_and_inside_the_noise_when_it_changes_sign(self):
        s = es.summarize_listeners(self.listeners([0.5, -0.25, 0.25]))["ka-15k"]
        self.assertEqual(s["b_minus_a_us"]["values"], [-0.25, 0.25, 0.5])
        self.assertTrue(s["within_noise"])
        self.assertEqual(s["a_spread_us"], 2.0)
        self.assertEqual(s["targets"][es.ONE]["hop_us"]["median"], 16.0)
        self.assertFalse(es.summarize_listeners(self.listeners([1.0, 2.0, 1.5]))["ka-15k"]["within_noise"])

    def test_sni_ratios_are_lb_over_haproxy_per_round(self):
        runs = []
        for r in range(3):
            runs += [run("tls-sat", ys.DIRECT, r, 1500, rps=700), run("tls-sat", "lb", r, 1900, rps=630),
                     run("tls-sat", "haproxy", r, 2000, rps=600)]
        s = es.summarize_sni({"runs": runs, "points": {"tls-sat": es.SNI_POINTS["tls-sat"]}})["tls-sat"]
        self.assertAlmostEqual(s["rps_lb_over_haproxy"]["median"], 1.05)
        self.assertAlmostEqual(s["hop_lb_over_haproxy"]["median"], 0.8)
        self.assertEqual(s["hop_lb_minus_haproxy_us"]["median"], -100)

    def test_every_proxy_variant_is_compared_with_plain_in_the_same_round(self):
        runs = []
        for r in range(3):
            runs += [run("new-1500", ys.DIRECT, r, 200), run("new-1500", "plain", r, 400 + r),
                     run("new-1500", "out", r, 405 + r), run("new-1500", "in", r, 403 + r),
                     run("new-1500", "both", r, 409 + 2 * r)]
        t = es.summarize_proxy({"runs": runs, "points": {"new-1500": es.PROXY_POINTS["new-1500"]}})["new-1500"][
            "targets"]
        self.assertNotIn("vs_plain_us", t["plain"])
        self.assertEqual(t["out"]["vs_plain_us"]["values"], [5, 5, 5])
        self.assertEqual(t["in"]["vs_plain_us"]["median"], 3)
        self.assertEqual(t["both"]["vs_plain_us"]["values"], [9, 10, 11])

    def test_verdicts_say_when_a_miss_is_inside_the_noise(self):
        self.assertEqual(es.verdict_ge({"median": 1.02, "min": 0.9, "max": 1.1}, 1.0), "**met**")
        self.assertIn("within the noise", es.verdict_ge({"median": 0.97, "min": 0.9, "max": 1.1}, 1.0))
        self.assertEqual(es.verdict_ge({"median": 0.9, "min": 0.8, "max": 0.95}, 1.0), "**not met**")
        self.assertIn("within the noise", es.verdict_le({"median": 1.1, "min": 0.9, "max": 1.2}, 1.0))
        self.assertIn("undefined", es.verdict_le(None, 1.0))


class Report(unittest.TestCase):
    def test_a_synthetic_run_renders_every_part(self):
        listeners = Summaries().listeners([0.5, -0.25, 0.25])
        runs = []
        for r in range(3):
            runs += [run("tls-rate", t, r, us, rps=300) for t, us in ((ys.DIRECT, 1500), ("lb", 1900),
                                                                      ("haproxy", 2000))]
        runs += [run("tls-sat", t, r, 1500, rps=600) for r in range(3) for t in (ys.DIRECT, "lb", "haproxy")]
        sni = {"runs": runs, "points": {p: es.SNI_POINTS[p] for p in es.SNI_POINTS},
               "servers": {"lb": {"command": "lb", "config": "x"}, "certificate": "openssl req"}}
        proxy = {"runs": [run("new-1500", t, r, 400) for r in range(3) for t in (ys.DIRECT, *es.PROXY_VARIANTS)],
                 "points": {"new-1500": es.PROXY_POINTS["new-1500"]}, "servers": {}}
        md = es.report({"env": ENV, "config": CFG, "listeners": listeners, "sni": sni, "proxy": proxy})
        self.assertIn("## 1. One listener against three", md)
        self.assertIn("**no measurable cost**", md)
        self.assertIn("+0.25 us (-0.25 to +0.50)", md)
        self.assertIn("3 x `loadgen one-listener`", md)
        self.assertIn("lb's hop over HAProxy's, per round: **0.80x (0.80 to 0.80)**", md)
        self.assertIn("lb: client + nginx 0.90 CPUs, proxy 0.20", md)
        self.assertIn("## 3. What PROXY v2 in and out adds per new connection", md)
        self.assertIn("certificate: `openssl req`", md)

    def test_the_committed_results_render(self):
        path = RESULTS / "services" / "services.json"
        if not path.exists():
            self.skipTest("no committed results yet")
        data = json.loads(path.read_text())
        md = es.report(data)
        self.assertEqual(md, (path.parent / "services.md").read_text())


if __name__ == "__main__":
    unittest.main()
