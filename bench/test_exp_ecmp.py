"""Unit tests for bench/exp_ecmp.py: the phase analysis on made-up records, the MSS mapping, and
the committed results rendering to the committed summary."""

import json
import tempfile
import unittest
from pathlib import Path

import exp_ecmp as ex

EVENTS = {"kill": 4.0, "withdraw": 4.25, "remove": 8.0}


def records(backend_of, instance_of, fail=lambda c, t: False):
    """New connections from every client every 0.25 s for 12 s, as the client reports them."""
    new = []
    for c in range(ex.CLIENTS):
        rs = []
        for k in range(48):
            t = k * 0.25 + c * 0.005
            if fail(c, t):
                rs.append([t, 0, "err", "connect_refused"])
            else:
                rs.append([t, instance_of(c, k, t), "ok", backend_of(c, t)])
        new.append(rs)
    return new


def consistent_backend(c, t):
    """A client-IP hash: b2's clients (c % 3 == 1) go to b1 or b3 once b2 is removed."""
    home = f"b{c % 3 + 1}"
    if home == "b2" and t >= EVENTS["remove"]:
        return "b1" if c % 2 else "b3"
    return home


def spread_instance(c, k, t):
    live = [1, 2, 3] if t < EVENTS["kill"] else [2, 3]
    return live[(c + k) % len(live)]


class Analysis(unittest.TestCase):
    def test_a_consistent_hash_moves_no_client_at_the_kill_and_only_b2s_at_the_removal(self):
        held = [{"client": c, "instance": 1 + c % 3, "backend": f"b{c % 3 + 1}"} for c in range(ex.CLIENTS)]
        for h in held:
            if h["instance"] == ex.KILLED:
                h.update(failed_at=4.1, kind="closed_early")
        r = ex.analyse({"new": records(consistent_backend, spread_instance), "held": held}, EVENTS, 12.0)
        self.assertEqual(r["clients_on_several_instances_before"], ex.CLIENTS)
        self.assertEqual(r["clients_consistent_before"], ex.CLIENTS)
        self.assertEqual(r["clients_moved_by_kill"], 0)
        b2 = sum(1 for c in range(ex.CLIENTS) if c % 3 == 1)
        self.assertEqual(r["clients_of_removed"], b2)
        self.assertEqual(r["clients_moved_by_removal"], b2)
        self.assertEqual(r["clients_moved_by_removal_not_on_removed"], 0)
        self.assertEqual(r["held_failed_on_killed"], r["held_on_killed"])
        self.assertEqual(r["held_failed_on_survivors"], 0)
        self.assertEqual(r["held_failed_kinds_on_killed"], {"closed_early": r["held_on_killed"]})
        self.assertEqual(r["off_home_share_after_kill"], 0)

    def test_errors_count_by_when_the_connection_started(self):
        def fail(c, t):
            return EVENTS["kill"] <= t < EVENTS["withdraw"] and c % 3 == 0
        r = ex.analyse({"new": records(consistent_backend, spread_instance, fail), "held": []}, EVENTS, 12.0)
        self.assertEqual(set(r["errors_by_phase"]), {"kill_to_withdrawal"})
        self.assertEqual(sum(b["errors"] for b in r["timeline"]), r["errors_by_phase"]["kill_to_withdrawal"])

    def test_round_robin_clients_have_no_backend_to_keep(self):
        def rr(c, t):
            return f"b{int(t * 4 + c) % 3 + 1}"
        r = ex.analyse({"new": records(rr, spread_instance), "held": []}, EVENTS, 12.0)
        self.assertEqual(r["clients_consistent_before"], 0)
        # after the kill, two thirds of the connections miss their client's most-used backend
        self.assertAlmostEqual(r["off_home_share_after_kill"], 2 / 3, delta=0.05)


class Mss(unittest.TestCase):
    def test_each_instance_is_found_from_its_mss_with_or_without_timestamps(self):
        for i in range(1, ex.INSTANCES + 1):
            self.assertEqual(ex.instance_of_mss(ex.advmss(i)), i)
            self.assertEqual(ex.instance_of_mss(ex.advmss(i) - 12), i)
        self.assertEqual(ex.instance_of_mss(1460), 0)


class Committed(unittest.TestCase):
    def test_the_committed_json_renders_to_the_committed_summary(self):
        d = Path(__file__).resolve().parent.parent / "bench-results" / ex.DIR
        if not (d / "ecmp.json").exists():
            self.skipTest("no committed ECMP results")
        with tempfile.TemporaryDirectory() as tmp:
            ex.render(json.loads((d / "ecmp.json").read_text()), Path(tmp))
            self.assertEqual((Path(tmp) / "summary.md").read_text(), (d / "summary.md").read_text())
            for svg in d.glob("*.svg"):
                self.assertEqual((Path(tmp) / svg.name).read_text(), svg.read_text(), svg.name)


if __name__ == "__main__":
    unittest.main()
