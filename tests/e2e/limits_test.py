#!/usr/bin/env python3
"""fleetyd under connection floods (issue 18, item 3): bounded, and back to work at once.

- 3,000 idle connections to the proxy: those beyond `max_connections` are reset at once
  (not left hanging in the backlog), the daemon spends < 0.3 CPU cores meanwhile, and
  once they are closed the next download through it is exact and prompt.
- Out of descriptors (fleetyd under a 128-descriptor limit, 400 connections): the
  accept loop backs off instead of spinning, logs a line per interval, and serves the
  next download once the connections are gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import Fleetyd, LabTestCase, curl, object_sha256  # noqa: E402

PREFIX = "flm"
MAX_CORES = 0.3
# Opens N connections to 127.0.0.1:PORT, prints how many it holds, waits for a line on
# stdin (or 60 s), then reports how many the server had reset or closed, and closes all.
FLOOD = r"""
import json, resource, select, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
print(json.dumps({"held": len(held)}), flush=True)
select.select([sys.stdin], [], [], 60)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
    s.close()
print(json.dumps({"closed_by_server": closed}), flush=True)
"""


class Limits(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="40mbit/5ms", cell="40mbit/5ms", objects=["1MB"])

    def cpu_seconds(self, pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])  # in clock ticks
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def flood(self, daemon: Fleetyd, count: int, hold_s: float = 3.0) -> dict:
        """`count` connections held for hold_s; fleetyd's CPU use meanwhile."""
        client = self.lab.popen("cli", [sys.executable, "-c", FLOOD, str(count),
                                        str(daemon.port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (client.kill(), client.wait(10)))
        held = json.loads(client.stdout.readline())["held"]
        pid = daemon.process.pid
        cpu0, t0 = self.cpu_seconds(pid), time.monotonic()
        time.sleep(hold_s)
        cores = (self.cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        client.stdin.write("close\n")
        client.stdin.flush()
        closed = json.loads(client.stdout.readline())["closed_by_server"]
        client.wait(30)
        return {"held": held, "closed_by_server": closed, "cores": cores}

    def assert_download_works(self, daemon: Fleetyd, within_s: float = 10.0):
        started = time.monotonic()
        t = curl(self.lab, "http://cdn.fleety.test/1MB", proxy=daemon.proxy_url,
                 timeout=within_s)
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("1MB"))
        self.assertLess(time.monotonic() - started, within_s)

    def test_idle_connections_beyond_the_cap_are_reset_and_cost_little(self):
        with Fleetyd(self.lab) as daemon:  # max_connections: the default, 256
            got = self.flood(daemon, 3000)
            print(f"3000 idle connections: {got}")
            self.assertLess(got["cores"], MAX_CORES, got)
            # Beyond the 256 it serves, every connection was reset at once.
            self.assertGreaterEqual(got["closed_by_server"], 3000 - 256 - 10, got)
            self.assertIn("connections at once (proxy.max_connections): resetting new ones",
                          daemon.log())
            self.assert_download_works(daemon)

    def test_out_of_descriptors_the_accept_loop_backs_off_and_recovers(self):
        daemon = Fleetyd(self.lab)
        daemon.args = ["prlimit", "--nofile=128:128", *daemon.args]
        daemon.start()
        self.addCleanup(daemon.stop)
        got = self.flood(daemon, 400)
        print(f"400 connections under a 128-descriptor limit: {got}")
        self.assertLess(got["cores"], MAX_CORES, got)
        log = daemon.log()
        errors = log.count("accept failed: Too many open files")
        self.assertGreaterEqual(errors, 1, log[-2000:])
        self.assertLessEqual(errors, 2, "one line per 10 s, not one per failed accept")
        self.assert_download_works(daemon)


if __name__ == "__main__":
    unittest.main(verbosity=2)
