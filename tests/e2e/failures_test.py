#!/usr/bin/env python3
"""Clear failures (issue 7, item 5): each way fleetyd or fleety cannot start or reach
the other gives one line that names the problem (the interface, the file and line, the
port) and what to do, and a non-zero exit. No lab: nothing here sends a packet; the
only sockets are on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import find_fleetyd, fleety_cli  # noqa: E402

PORT = 3997


class ClearFailures(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="fleety-failures-"))
        os.chmod(self.dir, 0o755)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def config(self, body: str, paths: str = 'interface = "lo"') -> Path:
        path = self.dir / "fleety.toml"
        path.write_text(f"""[proxy]
listen = "127.0.0.1:{PORT}"
[control]
socket = "{self.dir / 'control.sock'}"
[monitor]
history = ""
{body}
[[path]]
name = "wifi"
kind = "wifi"
{paths}
""")
        os.chmod(path, 0o644)
        return path

    def fleetyd(self, config: Path, *, as_nobody: bool = False) -> subprocess.CompletedProcess:
        argv = [find_fleetyd(), "--config", str(config)]
        if as_nobody:
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
        # A fleetyd that starts would run until stopped: every case here must end by itself.
        return subprocess.run(argv, capture_output=True, text=True, timeout=20)

    def assert_one_clear_line(self, cp: subprocess.CompletedProcess, code: int, *parts: str):
        self.assertEqual(cp.returncode, code, cp.stderr)
        last = cp.stderr.strip().splitlines()[-1]
        for part in parts:
            self.assertIn(part, last)

    def test_unknown_interface(self):
        cp = self.fleetyd(self.config("", 'interface = "nosuch0"'))
        self.assert_one_clear_line(cp, 1, "none of the configured interfaces exists (nosuch0)",
                                   "ip link")

    def test_port_in_use(self):
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", PORT))
            taken.listen()
            cp = self.fleetyd(self.config(""))
        self.assert_one_clear_line(cp, 1, f"cannot listen on 127.0.0.1:{PORT}",
                                   "Address already in use", "pick another proxy.listen")

    def test_malformed_config_names_file_and_line(self):
        config = self.config('[scheduler]\nmode = "fastest"')
        cp = self.fleetyd(config)
        self.assert_one_clear_line(cp, 2, f"{config}:8: scheduler.mode 'fastest' is unknown")
        config.write_text("[proxy\n")
        cp = self.fleetyd(config)
        self.assert_one_clear_line(cp, 2, f"{config}:1:")
        cp = subprocess.run([find_fleetyd(), "--config", str(self.dir / "missing.toml")],
                            capture_output=True, text=True, timeout=20)
        self.assert_one_clear_line(cp, 2, "missing.toml: cannot open the config file")

    def test_malformed_rules_name_file_and_line(self):
        config = self.config('[[feature]]\nname = "video"\npath_regex = "(unclosed"')
        cp = self.fleetyd(config)
        self.assert_one_clear_line(cp, 2, f"{config}:9: feature 'video': path_regex",
                                   "not a valid regular expression")
        config = self.config('[[http_dns]]\nname = "d"')
        cp = self.fleetyd(config)
        self.assert_one_clear_line(cp, 2, f"{config}:7: http_dns 'd' needs 'hosts'")

    def test_check_validates_without_starting(self):
        config = self.config("")
        cp = subprocess.run([find_fleetyd(), "--check", "--config", str(config)],
                            capture_output=True, text=True, timeout=20)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(f"{config}: ok, 1 paths", cp.stdout)

    def test_interception_without_permission(self):
        cp = self.fleetyd(self.config("[intercept]\nenabled = true"), as_nobody=True)
        self.assert_one_clear_line(cp, 1, "fleetyd: intercept:", "needs CAP_NET_ADMIN",
                                   "run fleetyd as root")

    def test_daemon_not_running(self):
        sock = self.dir / "control.sock"
        for argv in (["status"], ["apps"], ["stats"], ["apps", "disable", "x"]):
            with self.subTest(command=argv):
                cp = subprocess.run([fleety_cli(), "--socket", str(sock), *argv],
                                    capture_output=True, text=True, timeout=20)
                self.assert_one_clear_line(cp, 1, "fleetyd is not running",
                                           f"nothing answers on {sock}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
