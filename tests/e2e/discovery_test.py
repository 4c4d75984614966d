#!/usr/bin/env python3
"""Zero configuration (issue 19): with no [[path]], fleetyd and `fleety get` take every
interface with a default route as a path, named and typed from sysfs or its name; uplinks
that come or go later are taken up or dropped within 2 s; each uplink's own resolvers are
found (systemd-resolved's and networkd's state files here, under a fake root); an idle
path's probes go to the node it fetched from and show an RTT step within 2 s.

The lab's client has wlan0 and rmnet0 (veth: no wireless device, no modem driver in
sysfs), each with a default route in the main table and in a table of its own, and an
`unreachable default` in each table that is no uplink. Discovery must find exactly the two,
wlan0 as Wi-Fi and rmnet0 as cellular (by name), say why in the log, in `fleety status` and
its JSON, and a download through them must be exact; a [[path]] in the config overrides.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import (Fleetyd, LabTestCase, curl, fleety_cli,  # noqa: E402
                     object_sha256)

PREFIX = "flu"
URL = "http://cdn.fleety.test/4MB"
BIG_URL = "http://cdn.fleety.test/10MB"
NO_PATHS = '[proxy]\nlisten = "127.0.0.1:3128"\n[scheduler]\nmode = "aggregate"\n'
# The lab's uplinks: each interface's default routes (main table, and its own).
DEFAULTS = {"wlan0": [("198.18.1.1", "100", "main"), ("198.18.1.1", None, "101")],
            "rmnet0": [("198.18.2.1", "200", "main"), ("198.18.2.1", None, "102")]}


class Discovery(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="40mbit/10ms", cell="40mbit/10ms", objects=["4MB", "10MB"])

    # --- helpers -----------------------------------------------------------------------

    def unplug(self, interface: str) -> None:
        """The uplink's default routes go, as when a phone is unplugged or Wi-Fi leaves."""
        for via, metric, table in DEFAULTS[interface]:
            self.lab._ip("cli", "route", "del", "default", "via", via, "dev", interface,
                         "table", table, check=False)

    def plug(self, interface: str) -> None:
        for via, metric, table in DEFAULTS[interface]:
            self.lab._ip("cli", "route", "replace", "default", "via", via, "dev", interface,
                         "table", table, *(("metric", metric) if metric else ()))

    def status(self, daemon: Fleetyd) -> dict:
        env = {**os.environ, "FLEETY_CONTROL": str(daemon.control_socket)}
        cp = self.lab.exec("cli", [fleety_cli(), "--json", "status"], env=env,
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return json.loads(cp.stdout)

    def paths(self, daemon: Fleetyd) -> dict[str, dict]:
        return {p["interface"]: p for p in self.status(daemon)["paths"]}

    def seconds_until(self, done, limit: float) -> float:
        """Seconds until done() held (polled every 0.1 s), or fails after `limit`."""
        start = time.monotonic()
        while time.monotonic() - start < limit:
            if done():
                return time.monotonic() - start
            time.sleep(0.1)
        self.fail(f"not within {limit:g} s")

    def ifindex(self, interface: str) -> int:
        cp = self.lab._ip("cli", "-o", "link", "show", interface)
        return int(cp.stdout.split(":", 1)[0])

    # --- tests -------------------------------------------------------------------------

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
            self.assertEqual(checks["routing"]["result"], "ok")
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

    def test_doctor_names_an_uplink_whose_default_route_no_rule_leads_to(self):
        # rmnet0's default route only in its own table, and no rule for its traffic: its
        # sockets would have no route (the kernel's policy routing, as a real machine may).
        self.lab._ip("cli", "route", "del", "default", "via", "198.18.2.1", "dev", "rmnet0")
        self.lab._ip("cli", "rule", "del", "oif", "rmnet0", "lookup", "102")
        try:
            cp = self.lab.exec("cli", [fleety_cli(), "doctor", "--json"], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(cp.returncode, 1, cp.stdout)
            checks = {c["check"]: c for c in json.loads(cp.stdout)["checks"]}
            self.assertEqual(checks["routing"]["result"], "FAIL", checks)
            self.assertIn("no route to the Internet through rmnet0", checks["routing"]["detail"])
            self.assertNotIn("wlan0", checks["routing"]["detail"])
            self.assertIn("ip rule add oif IFACE lookup TABLE", checks["routing"]["fix"])
        finally:
            self.lab._ip("cli", "rule", "add", "oif", "rmnet0", "lookup", "102")
            self.plug("rmnet0")

    def test_a_configured_path_overrides_discovery(self):
        config = NO_PATHS + '[[path]]\nname = "only"\ninterface = "rmnet0"\nkind = "wired"\n'
        with Fleetyd(self.lab, config_text=config) as daemon:
            self.assertNotIn("found as", daemon.log())
            t = curl(self.lab, URL, proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256("4MB"), t.stderr)

    def test_an_uplink_plugged_in_later_is_a_path_within_2_s_and_one_gone_is_dropped(self):
        self.unplug("rmnet0")
        try:
            with Fleetyd(self.lab, config_text=NO_PATHS) as daemon:
                self.assertEqual(set(self.paths(daemon)), {"wlan0"})
                # The phone is plugged in: a path within 2 s, and it carries its share.
                self.plug("rmnet0")
                took = self.seconds_until(
                    lambda: self.paths(daemon).get("rmnet0", {}).get("up"), 5)
                print(f"rmnet0 a path {took:.2f} s after its default route came")
                self.assertLess(took, 2.0)
                self.assertIn("path cellular: rmnet0 found as cellular (the name rmnet0), "
                              "taken up", daemon.log())
                t = curl(self.lab, BIG_URL, proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
                self.assertGreater(t.iface_rx.get("rmnet0", 0), 1_000_000, t.iface_rx)
                self.assertGreater(t.iface_rx.get("wlan0", 0), 1_000_000, t.iface_rx)
                # Wi-Fi leaves: dropped within 2 s; downloads go on over cellular alone.
                self.unplug("wlan0")
                took = self.seconds_until(lambda: "wlan0" not in self.paths(daemon), 5)
                print(f"wlan0 dropped {took:.2f} s after its default route went")
                self.assertLess(took, 2.0)
                self.assertIn("path wifi: wlan0 has no default route any more: dropped",
                              daemon.log())
                t = curl(self.lab, URL, proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.sha256, object_sha256("4MB"), t.stderr)
                self.assertLess(t.iface_rx.get("wlan0", 0), 100_000, t.iface_rx)
                # ... and back: the same name and slot.
                self.plug("wlan0")
                self.seconds_until(lambda: self.paths(daemon).get("wlan0", {}).get("up"), 5)
                self.assertEqual(self.paths(daemon)["wlan0"]["name"], "wifi")
        finally:
            self.plug("rmnet0")
            self.plug("wlan0")

    def test_fleetyd_starts_with_no_uplink_and_takes_the_first_that_comes(self):
        self.unplug("wlan0")
        self.unplug("rmnet0")
        try:
            with Fleetyd(self.lab, config_text=NO_PATHS) as daemon:
                self.assertIn("no uplink yet", daemon.log())
                self.assertEqual(self.paths(daemon), {})
                self.plug("wlan0")
                took = self.seconds_until(
                    lambda: self.paths(daemon).get("wlan0", {}).get("up"), 5)
                self.assertLess(took, 2.0)
                t = curl(self.lab, URL, proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.sha256, object_sha256("4MB"), t.stderr)
        finally:
            self.plug("wlan0")
            self.plug("rmnet0")

    def test_each_uplinks_own_resolvers_are_found_and_used(self):
        with tempfile.TemporaryDirectory(prefix="fleety-root-") as root:
            # systemd-resolved's state of wlan0 names the cellular ISP's resolver (so that
            # its use shows: Wi-Fi then fetches from the cellular ISP's CDN node); networkd's
            # DHCP lease of rmnet0 names its own ISP's.
            resolved = Path(root, "run/systemd/resolve/netif")
            resolved.mkdir(parents=True)
            (resolved / str(self.ifindex("wlan0"))).write_text(
                "# This is private data. Do not parse.\nLLMNR=yes\nMDNS=no\n"
                "SERVERS=198.18.20.53 fe80::1%2\nDOMAINS=lan\n")
            leases = Path(root, "run/systemd/netif/leases")
            leases.mkdir(parents=True)
            (leases / str(self.ifindex("rmnet0"))).write_text(
                "# This is private data. Do not parse.\nADDRESS=198.18.2.2\n"
                "DNS=198.18.20.53\nLIFETIME=3600\n")
            config = NO_PATHS + f'[discovery]\nroot = "{root}"\n'
            cell_log = Path(self.lab.info()["state_dir"]) / "nginx-cell.access.log"
            before = len(cell_log.read_text()) if cell_log.exists() else 0
            with Fleetyd(self.lab, config_text=config) as daemon:
                paths = self.paths(daemon)
                self.assertEqual(paths["wlan0"]["dns"]["servers"], ["198.18.20.53"])
                self.assertRegex(paths["wlan0"]["dns"]["found"],
                                 r"^systemd-resolved \(.*/run/systemd/resolve/netif/\d+\)$")
                self.assertFalse(paths["wlan0"]["dns"]["fallback"])
                self.assertRegex(paths["rmnet0"]["dns"]["found"], r"^systemd-networkd lease")
                t = curl(self.lab, BIG_URL, proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
                self.assertGreater(t.iface_rx.get("wlan0", 0), 1_000_000, t.iface_rx)
                # Wi-Fi's requests reached the node its resolver named.
                new = cell_log.read_text()[before:]
                self.assertIn("198.18.1.2", new)
                env = {**os.environ, "FLEETY_CONTROL": str(daemon.control_socket)}
                cp = self.lab.exec("cli", [fleety_cli(), "status"], env=env,
                                   capture_output=True, text=True, timeout=10)
                self.assertRegex(cp.stdout, r"wifi DNS: systemd-resolved \(")
        # Without the state files: the system's resolvers, and a warning in the status.
        with Fleetyd(self.lab, config_text=NO_PATHS + '[discovery]\nroot = "/nonexistent"\n') \
                as daemon:
            wifi = self.paths(daemon)["wlan0"]
            self.assertTrue(wifi["dns"]["fallback"])
            self.assertEqual(wifi["dns"]["servers"], [])
            self.assertIn("the system's resolvers, through wlan0", wifi["dns"]["found"])

    def test_an_idle_paths_rtt_step_shows_within_2_s_with_no_probe_configured(self):
        try:
            with Fleetyd(self.lab, config_text=NO_PATHS) as daemon:
                # No probe and no per-link DNS server: nothing to probe until a download
                # shows where the path's traffic goes.
                t = curl(self.lab, URL, proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.sha256, object_sha256("4MB"), t.stderr)
                wifi = self.paths(daemon)["wlan0"]
                self.assertRegex(wifi["probe"] or "",
                                 r"^to 198\.18\.10\.1:80 every 500 ms while idle "
                                 r"\(a node it fetched from\)$")
                # Idle, and probed: its RTT is the lab's (2 x 10 ms).
                self.seconds_until(
                    lambda: (self.paths(daemon)["wlan0"]["rtt_ms"] or 0) < 60
                    and self.paths(daemon)["wlan0"]["probes"] > 0, 10)
                rtt = lambda: self.paths(daemon)["wlan0"]["rtt_ms"] or 0  # noqa: E731
                steps = []
                for spec, done in (("40mbit/200ms", lambda: rtt() > 300),
                                   ("40mbit/10ms", lambda: rtt() < 60)):
                    self.lab.set_path("wifi", spec)
                    took = self.seconds_until(done, 10)
                    steps.append(took)
                    print(f"Wi-Fi {spec}: status RTT {rtt():.0f} ms after {took:.2f} s")
                self.assertLess(max(steps), 2.0, steps)
        finally:
            self.lab.set_path("wifi", "40mbit/10ms")

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
