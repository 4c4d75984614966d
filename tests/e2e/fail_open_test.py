#!/usr/bin/env python3
"""When fleetyd dies, the apps it took over go direct at once (issue 18, item 1).

The interception table (TCP and DNS redirect) is owned by fleetyd's netlink socket
(nftables `flags owner`): `kill -9` removes it with the process. An app enrolled with
`fleety run` fetches a name through fleetyd, fleetyd is killed, and the app's next
request — its DNS lookup included — must work direct within 2 s of the kill. A new
fleetyd puts the table back; one that fails to start after loading it leaves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import LabError  # noqa: E402
from harness import (INTERCEPT_CONFIG, Fleetyd, LabTestCase, fleety_cli,  # noqa: E402
                     measured_download, object_sha256, with_lab_resolv_conf)

PREFIX = "flf"
HOST = "cdn.fleety.test"
APP = "failopen"
WORKS_AGAIN_WITHIN_S = 2.0
CONFIG = INTERCEPT_CONFIG


class FailOpen(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="40mbit/5ms", cell="40mbit/5ms", objects=["1MB"])

    def table_present(self) -> bool:
        cp = self.lab.exec("cli", ["nft", "list", "table", "inet", "fleety"], timeout=10,
                           capture_output=True, text=True, net_only=True)
        return cp.returncode == 0

    def enroll(self, daemon: Fleetyd) -> subprocess.Popen:
        """`fleety run --app APP` holding the app's cgroup (a sleeping program in it)."""
        os.environ["FLEETY_CONTROL"] = str(daemon.control_socket)
        holder = self.lab.popen("cli", [fleety_cli(), "run", "--app", APP, "--", "sleep", "120"],
                                net_only=True)
        self.addCleanup(lambda: (holder.kill(), holder.wait(10)))
        # fleety run asks fleetyd to select the cgroup, then moves itself into it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if f"/fleety/{APP}" in Path(f"/proc/{holder.pid}/cgroup").read_text():
                return holder
            time.sleep(0.05)
        self.fail(f"fleety run did not enter its cgroup: {daemon.log()[-2000:]}")

    def fetch_in_app(self, holder: subprocess.Popen, timeout: float = 30):
        """curl of the name, as a process of the enrolled app (in its cgroup)."""
        procs = Path(f"/proc/{holder.pid}/cgroup").read_text().strip().split("::", 1)[-1]
        mount = subprocess.run(["findmnt", "-n", "-t", "cgroup2", "-o", "TARGET"], text=True,
                               capture_output=True, timeout=10).stdout.split()[0]
        cgroup_procs = f"{mount}{procs}/cgroup.procs"
        with tempfile.TemporaryDirectory(prefix="fleety-failopen-") as tmp:
            out = Path(tmp) / "body"
            argv = with_lab_resolv_conf(self.lab, [
                "sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup_procs, "curl", "-sS",
                "--noproxy", "*", "--max-time", str(int(timeout)), "-o", str(out),
                f"http://{HOST}/1MB"])
            return measured_download(self.lab, argv, out, timeout + 5, net_only=True)

    def test_kill_9_sends_the_apps_direct_at_once_and_a_restart_takes_them_back(self):
        daemon = Fleetyd(self.lab, config_text=CONFIG, net_only=True, log_level="debug")
        daemon.start()
        self.addCleanup(daemon.stop)
        holder = self.enroll(daemon)
        self.assertTrue(self.table_present())
        t = self.fetch_in_app(holder)
        self.assertEqual(t.sha256, object_sha256("1MB"), t.stderr)
        self.assertIn(f"GET http://{HOST}/1MB", daemon.log(), "the app was not taken over")

        daemon.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        daemon.process.wait(10)
        t = self.fetch_in_app(holder, timeout=10)
        since_kill = time.monotonic() - killed
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("1MB"), t.stderr)
        self.assertLess(since_kill, WORKS_AGAIN_WITHIN_S,
                        f"the app's request (DNS lookup included) ended {since_kill:.2f} s "
                        "after the kill")
        self.assertFalse(self.table_present(), "the table outlived fleetyd")
        print(f"after kill -9: the app's lookup and 1 MB direct done {since_kill:.2f} s later")

        restarted = Fleetyd(self.lab, config_text=CONFIG, net_only=True, log_level="debug")
        restarted.start()
        self.addCleanup(restarted.stop)
        self.assertTrue(self.table_present())
        self.assertIn("owned by fleetyd", restarted.log())
        os.environ["FLEETY_CONTROL"] = str(restarted.control_socket)
        # The app's cgroup is there already: the new fleetyd's rules select it again.
        t = self.fetch_in_app(holder)
        self.assertEqual(t.sha256, object_sha256("1MB"), t.stderr)
        self.assertIn(f"GET http://{HOST}/1MB", restarted.log(), "not taken over again")

        # Only its owner can change or remove the table: another process is refused.
        cp = self.lab.exec("cli", ["nft", "delete", "table", "inet", "fleety"], timeout=10,
                           capture_output=True, text=True, net_only=True)
        self.assertNotEqual(cp.returncode, 0)
        self.assertTrue(self.table_present())
        restarted.stop()
        self.assertFalse(self.table_present(), "a clean stop left the table")

    def test_a_start_that_fails_after_loading_the_table_leaves_nothing(self):
        # The metrics port is taken (a listener in the client's namespace): fleetyd fails
        # after the table is loaded.
        holder = self.lab.popen("cli", [sys.executable, "-c", PORT_HOLDER], net_only=True,
                                stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (holder.kill(), holder.wait(10)))
        port = int(holder.stdout.readline())
        config = CONFIG + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        daemon = Fleetyd(self.lab, config_text=config, net_only=True)
        with self.assertRaises(LabError) as failed:
            daemon.start()
        daemon.stop()
        self.assertIn("table inet fleety loaded", str(failed.exception),
                      "the failure should come after the table was loaded")
        self.assertIn("metrics", str(failed.exception))
        self.assertFalse(self.table_present(), "a failed start left the table")


# Holds a port on 127.0.0.1 (printed) until killed.
PORT_HOLDER = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
time.sleep(300)
"""


if __name__ == "__main__":
    unittest.main(verbosity=2)
