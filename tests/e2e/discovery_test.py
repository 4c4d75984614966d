#!/usr/bin/env python3
"""Zero configuration (issue 19, item 1): with no [[path]], fleetyd and `fleety get` take
every interface with a default route as a path, named and typed from sysfs or its name.

The lab's client has wlan0 and rmnet0 (veth: no wireless device, no modem driver in
sysfs), each with a default route in the main table and in a table of its own, and an
`unreachable default` in each table that is no uplink. Discovery must find exactly the two,
wlan0 as Wi-Fi and rmnet0 as cellular (by name), say why in the log, in `fleety status` and
its JSON, and a download through them must be exact; a [[path]] in the config overrides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import (Fleetyd, LabTestCase, curl, fleety_cli,  # noqa: E402
                     object_sha256)

PREFIX = "flu"
URL = "http://cdn.fleety.test/4MB"
NO_PATHS = '[proxy]\nlisten = "127.0.0.1:3128"\n[scheduler]\nmode = "aggregate"\n'


class Discovery(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="40mbit/10ms", cell="40mbit/10ms", objects=["4MB"])

    def test_fleetyd_finds_both_uplinks_and_says_why(self):
        with Fleetyd(self.lab, config_text=NO_PATHS) as daemon:
            log = daemon.log()
            self.assertIn("path wifi: wlan0 found as wifi (the name wlan0)", log)
            self.assertIn("path cellular: rmnet0 found as cellular (the name rmnet0)", log)
            t = curl(self.lab, URL, proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256("4MB"), t.stderr)
            env = {**os.environ, "FLEETY_CONTROL": str(daemon.control_socket)}
            # --json after the command, as before it.
            cp = self.lab.exec("cli", [fleety_cli(), "status", "--json"], env=env,
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            paths = {p["interface"]: p for p in json.loads(cp.stdout)["paths"]}
            self.assertEqual(set(paths), {"wlan0", "rmnet0"})
            self.assertEqual(paths["wlan0"]["kind"], "wifi")
            self.assertEqual(paths["rmnet0"]["kind"], "cellular")
            self.assertEqual(paths["rmnet0"]["found"], "the name rmnet0")
            self.assertNotIn("E0", cp.stdout, "JSON numbers are written plainly")
            cp = self.lab.exec("cli", [fleety_cli(), "status"], env=env, capture_output=True,
                               text=True, timeout=10)
            self.assertIn("cellular found on rmnet0: the name rmnet0", cp.stdout)

    def test_doctor_checks_this_machine_and_names_each_fix(self):
        def doctor(env):
            cp = self.lab.exec("cli", [fleety_cli(), "doctor", "--json"], env=env,
                               capture_output=True, text=True, timeout=30)
            return cp.returncode, {c["check"]: c for c in json.loads(cp.stdout)["checks"]}

        with Fleetyd(self.lab, config_text=NO_PATHS) as daemon:
            env = {**os.environ, "FLEETY_CONTROL": str(daemon.control_socket)}
            rc, checks = doctor(env)
            self.assertEqual(rc, 0, checks)
            self.assertEqual(checks["uplinks"]["result"], "ok")
            self.assertEqual(checks["uplinks"]["detail"],
                             "wifi wlan0 (the name wlan0); cellular rmnet0 (the name rmnet0)")
            self.assertEqual(checks["bind to uplinks"]["result"], "ok")
            self.assertEqual(checks["nftables"]["result"], "ok")  # as root, Linux >= 5.12
            self.assertEqual(checks["fleetyd"]["result"], "ok")
            # The lab's resolv.conf names one server for every path: a warning with its fix.
            self.assertEqual(checks["resolvers"]["result"], "warn")
            self.assertIn("dns = ", checks["resolvers"]["fix"])
        # fleetyd stopped: a warning that says how to start it; the human form prints it.
        cp = self.lab.exec("cli", [fleety_cli(), "doctor"], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(cp.returncode, 0, cp.stdout)
        self.assertRegex(cp.stdout, r"warn +fleetyd +fleetyd is not running")
        self.assertIn("fix: systemctl enable --now fleetyd", cp.stdout)

    def test_a_configured_path_overrides_discovery(self):
        config = NO_PATHS + '[[path]]\nname = "only"\ninterface = "rmnet0"\nkind = "wired"\n'
        with Fleetyd(self.lab, config_text=config) as daemon:
            self.assertNotIn("found as", daemon.log())
            t = curl(self.lab, URL, proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256("4MB"), t.stderr)

    def test_fleety_get_needs_no_path(self):
        with tempfile.TemporaryDirectory(prefix="fleety-discovery-") as tmp:
            out = Path(tmp) / "4MB"
            cp = self.lab.exec("cli", [fleety_cli(), "get", URL, "-o", str(out), "--json"],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertIn("path wifi on wlan0 (the name wlan0)", cp.stderr)
            self.assertIn("path cellular on rmnet0 (the name rmnet0)", cp.stderr)
            summary = json.loads(cp.stdout)
            self.assertEqual(summary["sha256"], object_sha256("4MB"))
            self.assertNotIn("E0", cp.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
