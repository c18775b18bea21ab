"""Unit tests for bench/lbbench.py: where benchmarks write."""

import contextlib
import io
import shutil
import tempfile
import unittest
from pathlib import Path

import expcommon
import lbbench


class OutputFolder(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="test-runs-"))
        self.saved = lbbench.RUNS
        lbbench.RUNS = self.dir / "runs"
        self.quiet = contextlib.redirect_stderr(io.StringIO())
        self.quiet.__enter__()

    def tearDown(self):
        self.quiet.__exit__(None, None, None)
        lbbench.RUNS = self.saved
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_by_default_each_run_gets_a_fresh_folder_under_runs(self):
        a, b = lbbench.run_dir("proxies"), lbbench.run_dir("proxies")
        self.assertNotEqual(a, b)
        for d in (a, b):
            self.assertEqual(d.parent, lbbench.RUNS)
            self.assertTrue(d.name.startswith("proxies-"))
            self.assertTrue(d.is_dir())

    def test_out_is_used_as_given(self):
        self.assertEqual(lbbench.run_dir("proxies", self.dir / "mine"), self.dir / "mine")

    def test_runs_are_git_ignored(self):
        ignore = (lbbench.ROOT / ".gitignore").read_text().splitlines()
        self.assertIn("/bench-results/runs/", ignore)


    def test_an_experiment_keeps_one_folder_for_the_whole_process(self):
        saved = dict(expcommon.OUT), dict(expcommon._DIRS)
        try:
            expcommon.OUT.update(out=None, all=False)
            expcommon._DIRS.clear()
            a = expcommon.out_dir("a1-distribution")
            self.assertEqual(expcommon.out_dir("a1-distribution"), a)
            self.assertEqual(a.parent, lbbench.RUNS)
            expcommon.OUT.update(out=str(self.dir / "all"), all=True)
            self.assertEqual(expcommon.out_dir("sticky-sessions"), self.dir / "all" / "sticky-sessions")
        finally:
            expcommon.OUT.clear()
            expcommon.OUT.update(saved[0])
            expcommon._DIRS.clear()
            expcommon._DIRS.update(saved[1])

    def test_a_replot_reads_and_writes_the_committed_folder_unless_told_otherwise(self):
        saved = dict(expcommon.OUT), dict(expcommon._DIRS)
        try:
            expcommon.OUT.update(out=None, all=False)
            expcommon._DIRS.clear()
            self.assertEqual(expcommon.out_dir("saturation", replot=True), lbbench.RESULTS / "saturation")
        finally:
            expcommon.OUT.clear()
            expcommon.OUT.update(saved[0])
            expcommon._DIRS.clear()
            expcommon._DIRS.update(saved[1])


if __name__ == "__main__":
    unittest.main()
