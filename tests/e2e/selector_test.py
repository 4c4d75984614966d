#!/usr/bin/env python3
"""The path selector in the two-path lab (issue 6): relayed flows follow their QoS
class. A game's connection (class gaming: RTT ≤ 100 ms) and a chat's (class messaging:
anything that is up) start on Wi-Fi; Wi-Fi's RTT goes from 50 to 400 ms: the game's
connection is reset and reconnects on cellular within reset_after, new game connections
start on cellular, the chat stays. Wi-Fi goes down: the chat is on cellular within 1 s.
Wi-Fi comes back: new flows stay on cellular for the hysteresis, then go to Wi-Fi.

Which path a connection took is what the server saw: its peer is the client's Wi-Fi
(198.18.1.2) or cellular (198.18.2.2) address."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import LAB_PATHS_TOML, Fleetyd, LabTestCase, Lines, fleety_cli  # noqa: E402

PREFIX = "fls"
SERVER = "198.18.10.1"  # reachable over both paths
WLAN_ADDR, RMNET_ADDR = "198.18.1.2", "198.18.2.2"
GAME_PORT, CHAT_PORT = 7100, 7101
RESET_AFTER, HYSTERESIS = 2.0, 4.0
METRICS_PORT = 9464
TOOLS = str(Path(__file__).resolve().parent / "lab_tools.py")
HISTORY = Path(tempfile.mkdtemp(prefix="fleety-selector-")) / "history.db"
CONFIG = f"""
[proxy]
listen = "127.0.0.1:3128"

[intercept]
enabled = true
port = 3129

{LAB_PATHS_TOML}
[[app]]
name = "game"
class = "gaming"

[[app]]
name = "chat"
class = "messaging"

[selector]
reset_after = "{RESET_AFTER}s"
hysteresis = "{HYSTERESIS}s"

[metrics]
listen = "127.0.0.1:{METRICS_PORT}"

[monitor]
probe_interval = "500ms"
cellular_probe_budget = "1KiB"
history = "{HISTORY}"
"""



def on_path(line: dict) -> str:
    peer = line["accepted"].rsplit(":", 1)[0]
    return {WLAN_ADDR: "wifi", RMNET_ADDR: "cell"}.get(peer, peer)


class SelectorInLab(LabTestCase):
    prefix = PREFIX
    log_tail_lines = 30
    fleetyd: Fleetyd
    processes: list[subprocess.Popen] = []

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="20mbit/25ms", cell="20mbit/25ms")
        cls.fleetyd = Fleetyd(cls.lab, config_text=CONFIG, net_only=True)
        cls.fleetyd.start()
        os.environ["FLEETY_CONTROL"] = str(cls.fleetyd.control_socket)
        cls.game_server = cls.start("inet", ["echo-server", "--bind", SERVER, "--port",
                                             str(GAME_PORT), "--max-seconds", "300"])
        cls.chat_server = cls.start("inet", ["echo-server", "--bind", SERVER, "--port",
                                             str(CHAT_PORT), "--max-seconds", "300"])
        cls.game_server.wait_for("listening", 10)
        cls.chat_server.wait_for("listening", 10)

    @classmethod
    def start(cls, ns: str, args: list[str], app: str | None = None) -> Lines:
        argv = [sys.executable, TOOLS, *args]
        if app:
            argv = [fleety_cli(), "run", "--app", app, "--", *argv]
        process = cls.lab.popen(ns, argv, stdout=subprocess.PIPE, text=True,
                                **({"net_only": True} if app else {}))
        cls.processes.append(process)
        return Lines(process)

    @classmethod
    def tear_down_lab(cls):
        for process in cls.processes:
            process.kill()
            process.wait(10)
        shutil.rmtree(HISTORY.parent, ignore_errors=True)

    def restart(self, config: str) -> None:
        self.fleetyd.stop()
        type(self).fleetyd = Fleetyd(self.lab, config_text=config, net_only=True)
        self.fleetyd.start()
        os.environ["FLEETY_CONTROL"] = str(self.fleetyd.control_socket)

    def status(self) -> dict:
        cp = self.lab.exec("cli", [fleety_cli(), "--json", "status"], timeout=30,
                           capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return json.loads(cp.stdout)

    def ping(self, app: str, port: int, seconds: float) -> Lines:
        return self.start("cli", ["ping-client", "--dst", SERVER, "--port", str(port),
                                  "--interval", "0.05", "--max-seconds", str(seconds)], app=app)

    def new_flow_path(self, app: str, port: int, server: Lines) -> str:
        """Where a new connection of `app` goes now."""
        server.drain()
        client = self.ping(app, port, 1.0)
        client.wait_for("event", 5, where=lambda e: e["event"] == "connected")
        return on_path(server.wait_for("accepted", 5))

    def test_flows_follow_their_class_when_wifi_slows_down_goes_and_comes_back(self):
        game = self.ping("game", GAME_PORT, 120)
        self.ping("chat", CHAT_PORT, 120)
        self.assertEqual(on_path(self.game_server.wait_for("accepted", 10)), "wifi")
        self.assertEqual(on_path(self.chat_server.wait_for("accepted", 10)), "wifi")
        game.wait_for("event", 5, where=lambda e: e["event"] == "connected")
        # Measured live from the flows' own sockets (RTT 50 ms).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            wifi = self.status()["paths"][0]
            if wifi["rtt_ms"] is not None and 40 <= wifi["rtt_ms"] <= 100:
                break
            time.sleep(0.2)
        self.assertTrue(40 <= wifi["rtt_ms"] <= 100, wifi)
        flows = {f["app"]: f for f in self.status()["flows"]}
        self.assertEqual(flows["game"]["class"], "gaming")
        self.assertEqual(flows["game"]["path"], "wifi")
        self.assertEqual(flows["chat"]["class"], "messaging")

        # 1. Wi-Fi's RTT 50 → 400 ms: the game moves to cellular within reset_after (plus
        #    the time the RTT takes to show), the chat stays where it is.
        slowed = time.time()
        self.lab.set_path("wifi", "20mbit/200ms")
        moved = self.game_server.wait_for("accepted", RESET_AFTER + 6)
        self.assertEqual(on_path(moved), "cell")
        took = moved["t"] - slowed
        print(f"game flow on cellular {took:.2f} s after Wi-Fi's RTT rose (reset_after "
              f"{RESET_AFTER:g} s)")
        self.assertLess(took, RESET_AFTER + 3)
        self.assertGreater(took, RESET_AFTER - 0.5)  # not before its class was missed that long
        lost = game.wait_for("event", 5, where=lambda e: e["event"] == "lost")
        self.assertLess(moved["t"] - lost["t"], 1.0)  # it reconnected at once
        self.assertRegex(self.fleetyd.log(),
                         r"of app game \(class gaming\): misses its class on wifi → cell")
        self.assertEqual(self.new_flow_path("game", GAME_PORT, self.game_server), "cell")
        self.assertEqual([e for e in self.chat_server.drain() if "accepted" in e], [])
        self.assertEqual(self.new_flow_path("chat", CHAT_PORT, self.chat_server), "wifi")

        # 2. Wi-Fi down: every flow on it is on cellular within 1 s.
        self.lab.set_path("wifi", "20mbit/25ms")
        went_down = time.time()
        self.lab.set_path("wifi", link="down")
        back = self.chat_server.wait_for("accepted", 3)
        self.assertEqual(on_path(back), "cell")
        print(f"chat flow on cellular {back['t'] - went_down:.2f} s after Wi-Fi went down")
        self.assertLess(back["t"] - went_down, 1.0)
        self.assertEqual(self.status()["paths"][0]["up"], False)

        # 3. Wi-Fi back: new flows go to it only after the hysteresis.
        self.lab.set_path("wifi", link="up")
        came_back = time.monotonic()
        self.assertEqual(self.new_flow_path("chat", CHAT_PORT, self.chat_server), "cell")
        time.sleep(max(0.0, came_back + HYSTERESIS + 1.0 - time.monotonic()))
        self.assertEqual(self.new_flow_path("chat", CHAT_PORT, self.chat_server), "wifi")

        # The game's own connection stayed on cellular throughout, and answered.
        self.assertEqual([e for e in self.game_server.drain() if "accepted" in e], [])
        rtts = [e["rtt_ms"] for e in game.drain() if e.get("event") == "rtt"]
        self.assertTrue(rtts and rtts[-1] < 100, rtts)
        # The switch is in the history (telemetry: RTT before and after).
        with sqlite3.connect(f"file:{HISTORY}?mode=ro", uri=True) as db:
            switches = db.execute("SELECT COUNT(*) FROM path_switch").fetchone()[0]
            samples = db.execute("SELECT COUNT(*) FROM sample").fetchone()[0]
        self.assertGreaterEqual(switches, 2)  # the game's, and the chat's on link down
        self.assertGreater(samples, 10)

    def test_status_for_people_shows_paths_and_flows(self):
        cp = self.lab.exec("cli", [fleety_cli(), "status"], timeout=30, capture_output=True,
                           text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertRegex(cp.stdout, r"wifi\s+wlan0\s+wifi\s+up")
        # Idle paths are measured by probes: a live RTT on both.
        paths = self.status()["paths"]
        for p in paths:
            self.assertIsNotNone(p["rtt_ms"], p)
            self.assertGreater(p["probes"], 0, p)
        self.assertTrue(re.search(r"probes to 198\.18\.0\.53:53", self.fleetyd.log()))
        # The refreshing view, twice (a pipe: one status after the other).
        cp = self.lab.exec("cli", [fleety_cli(), "watch", "--count", "2", "--interval", "0.2"],
                           timeout=30, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual(len(re.findall(r"^wifi\s+wlan0\s+wifi\s+up", cp.stdout, re.M)), 2,
                         cp.stdout)
        # Apps with their class.
        cp = self.lab.exec("cli", [fleety_cli(), "--json", "apps"], timeout=30,
                           capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        classes = {a["name"]: a["class"] for a in json.loads(cp.stdout)["apps"]}
        self.assertEqual(classes["game"], "gaming")
        self.assertEqual(classes["chat"], "messaging")

    def test_metrics_for_prometheus(self):
        """(Runs after the flows test.) The live status as Prometheus text on loopback."""
        cp = self.lab.exec("cli", ["curl", "-sS", "--max-time", "5", "-D", "-",
                                   f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                           timeout=30, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        head, body = cp.stdout.split("\n\n", 1)  # (text mode has made CRLF a LF)
        self.assertIn("Content-Type: text/plain; version=0.0.4", head)
        self.assertIn('fleety_path_up{path="wifi",interface="wlan0",kind="wifi"} 1', body)
        self.assertIn('fleety_path_up{path="cell",interface="rmnet0",kind="cellular"} 1', body)
        rtt = re.search(r'^fleety_path_rtt_seconds\{path="cell",[^}]*\} ([0-9.e-]+)$', body, re.M)
        self.assertTrue(rtt and 0.03 < float(rtt[1]) < 0.2, body)
        resets = re.search(r"^fleety_flow_resets_total ([0-9]+)$", body, re.M)
        self.assertTrue(resets and int(resets[1]) >= 2, body)
        self.assertRegex(body, r'fleety_app_received_bytes_total\{app="game",path="cell"\} [1-9]')
        self.assertIn("# TYPE fleety_path_received_bytes_total counter", body)
        cp = self.lab.exec("cli", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://127.0.0.1:{METRICS_PORT}/"],
                           timeout=30, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.stdout, "404")

    def test_stats_report_switches_and_cellular_bytes_per_app(self):
        """(Runs after the flows test.) The path switches and the flows' bytes, from the
        history, for people and scripts."""
        cp = self.lab.exec("cli", [fleety_cli(), "--json", "stats"], timeout=30,
                           capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        stats = json.loads(cp.stdout)
        self.assertGreaterEqual(stats["telemetry"]["switches"], 2, stats)
        apps = {(a["app"], a["path"]): a["bytes"] for a in stats["apps"]}
        self.assertGreater(apps.get(("game", "cell"), 0), 0, stats)
        self.assertGreater(apps.get(("chat", "cell"), 0), 0, stats)
        self.assertGreater(stats["cellular_bytes"], 0, stats)
        cp = self.lab.exec("cli", [fleety_cli(), "stats"], timeout=30, capture_output=True,
                           text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertRegex(cp.stdout, r"game\s+cell\s+")
        self.assertRegex(cp.stdout, r"path switches: RTT change median -?[0-9.]+ ms")


    def test_z_over_the_cellular_budget_cellular_only_when_nothing_else_is_up(self):
        """(Runs last: it replaces the class's fleetyd.) With a monthly cellular budget
        of 300 bytes, once a flow has spent it, new game flows stay on a Wi-Fi that misses
        their class, until Wi-Fi goes down."""
        # (A history of its own: the one above has spent more than this budget already.)
        capped_config = CONFIG.replace(str(HISTORY), str(HISTORY.with_name("capped.db")))
        capped_config = capped_config.replace(
            "[selector]", '[budget]\ncellular_monthly = "300B"\n\n[selector]')
        self.restart(capped_config)
        try:
            self.lab.set_path("wifi", "20mbit/200ms")
            # The new fleetyd measures Wi-Fi's RTT by its probes first.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                rtt = self.status()["paths"][0]["rtt_ms"]
                if rtt is not None and rtt > 150:
                    break
                time.sleep(0.2)
            # Gaming goes to cellular while the budget lasts: 3 s of pings (about 500
            # bytes back) spend it.
            self.game_server.drain()
            client = self.ping("game", GAME_PORT, 3.0)
            client.wait_for("event", 5, where=lambda e: e["event"] == "connected")
            self.assertEqual(on_path(self.game_server.wait_for("accepted", 5)), "cell")
            deadline = time.monotonic() + 10
            while not self.status()["cellular_capped"] and time.monotonic() < deadline:
                time.sleep(0.2)
            self.assertTrue(self.status()["cellular_capped"], self.status())
            self.assertIn("cellular budget:", self.fleetyd.log())
            self.assertEqual(self.new_flow_path("game", GAME_PORT, self.game_server), "wifi")
            self.lab.set_path("wifi", link="down")
            self.assertEqual(self.new_flow_path("game", GAME_PORT, self.game_server), "cell")
            # The month's cellular bytes are in the history: a restart doesn't forget them.
            self.restart(capped_config)
            self.assertTrue(self.status()["cellular_capped"], self.status())
        finally:
            self.lab.set_path("wifi", "20mbit/25ms", link="up")


if __name__ == "__main__":
    unittest.main(verbosity=2)
