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
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import ANYCAST_DNS  # noqa: E402
from harness import Fleetyd, LabTestCase, Lines, find_fleetyd  # noqa: E402

PREFIX = "fls"
SERVER = "198.18.10.1"  # reachable over both paths
WLAN_ADDR, RMNET_ADDR = "198.18.1.2", "198.18.2.2"
GAME_PORT, CHAT_PORT = 7100, 7101
RESET_AFTER, HYSTERESIS = 2.0, 4.0
TOOLS = str(Path(__file__).resolve().parent / "lab_tools.py")
HISTORY = Path(tempfile.mkdtemp(prefix="fleety-selector-")) / "history.db"
CONFIG = f"""
[proxy]
listen = "127.0.0.1:3128"

[intercept]
enabled = true
port = 3129

[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
dns = ["{ANYCAST_DNS}"]

[[path]]
name = "cell"
interface = "rmnet0"
kind = "cellular"
dns = ["{ANYCAST_DNS}"]

[[app]]
name = "game"
class = "gaming"

[[app]]
name = "chat"
class = "messaging"

[selector]
reset_after = "{RESET_AFTER}s"
hysteresis = "{HYSTERESIS}s"

[monitor]
probe_interval = "500ms"
cellular_probe_budget = "1KiB"
history = "{HISTORY}"
"""


def fleety_cli() -> str:
    return os.environ.get("FLEETY") or str(Path(find_fleetyd()).with_name("fleety"))


def on_path(line: dict) -> str:
    peer = line["accepted"].rsplit(":", 1)[0]
    return {WLAN_ADDR: "wifi", RMNET_ADDR: "cell"}.get(peer, peer)


class SelectorInLab(LabTestCase):
    prefix = PREFIX
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
        if getattr(cls, "fleetyd", None):
            cls.fleetyd.stop()
            print("--- fleetyd log (tail) ---\n" + "\n".join(cls.fleetyd.log().splitlines()[-30:]))

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
        chat = self.ping("chat", CHAT_PORT, 120)
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
