#!/usr/bin/env python3
"""fleetyd stops cleanly in the middle of its work (issue 15, item 3).

SIGTERM arrives while a multipath download runs, and right after one of its paths died.
fleetyd must cancel and join every task before it destroys what they use: exit 0 within
5 s, and — run against the ASan+UBSan build, as scripts/test.sh does — no sanitizer
report (a coroutine frame that outlived the proxy's state used to write to freed memory).
The app sees its download end (a reset, never a body that looks complete).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import Fleetyd, LabTestCase  # noqa: E402

PREFIX = "flq"
SPEC = "20mbit/25ms"
OBJECT = "100MB"
SIZE = 100_000_000
STOP_WITHIN_S = 5.0
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


class Shutdown(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi=SPEC, cell=SPEC)

    def setUp(self):
        for path in ("wifi", "cell"):
            self.lab.set_path(path, link="up")

    def stop_mid_download(self, before_stop=None, seconds: float = 4.0):
        with Fleetyd(self.lab, log_level="debug") as daemon:
            out = Path(daemon.workdir) / "body"
            app = self.lab.popen("cli", ["curl", "-sS", "-o", str(out), "-x", daemon.proxy_url,
                                         "-w", "%{http_code} %{size_download}",
                                         f"http://cdn.fleety.test/{OBJECT}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                time.sleep(seconds)
                self.assertIn("path cell: requests", daemon.log()[-200_000:],
                              "the download should be split by now")
                if before_stop:
                    before_stop(daemon.log)
                started = time.monotonic()
                daemon.process.send_signal(signal.SIGTERM)
                try:
                    code = daemon.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.process.kill()
                    self.fail(f"fleetyd still running 30 s after SIGTERM:\n{daemon.log()[-3000:]}")
                took = time.monotonic() - started
                app_out, app_err = app.communicate(timeout=30)
            finally:
                if app.poll() is None:
                    app.kill()
            log = daemon.log()
            print(f"fleetyd exited {code} {took:.2f} s after SIGTERM; curl: {app_out.decode()} "
                  f"(exit {app.returncode})")
            for mark in SANITIZER_MARKS:
                self.assertNotIn(mark, log, log[-6000:])
            self.assertEqual(code, 0, log[-4000:])
            self.assertLess(took, STOP_WITHIN_S, log[-3000:])
            # The app never gets a body that looks complete.
            self.assertNotEqual(app.returncode, 0, app_out.decode())
            size = out.stat().st_size if out.exists() else 0
            self.assertLess(size, SIZE)
            return log

    def test_sigterm_mid_multipath_download(self):
        self.stop_mid_download()

    def test_sigterm_right_after_a_path_died(self):
        def kill_cell_and_wait(daemon_log):
            self.lab.set_path("cell", link="down")
            deadline = time.monotonic() + 10
            while "go to the other paths" not in daemon_log() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertIn("go to the other paths", daemon_log()[-100_000:],
                          "the cellular path should have been given up")
        self.stop_mid_download(before_stop=kill_cell_and_wait)


if __name__ == "__main__":
    unittest.main(verbosity=2)
