#!/usr/bin/env python3
"""Real CDNs and real apps (issue 16): the lab's CDN zoo and streaming server.

Each path reaches its own CDN node, and nodes differ (fleety_lab.zoo_locations): another
mtime (other ETag and Last-Modified for the same bytes), weak ETags, a node that refuses
the cellular path (403; 429 with Retry-After; 503), Repr-Digest headers, another version
behind an equal size. And apps fetch what is not a file (lab/streams.py): event streams,
long polls, bodies with long gaps, WebSocket, an app's own HTTP proxy. Through the
explicit proxy and through `fleety run` (interception):
- every body exact; a node's other validators cost nothing; a refusal is not a version
  conflict and the transfer goes on at Wi-Fi's pace; another version is never spliced;
- a stream's events reach the app within 250 ms of the server sending them (RTT 50 ms),
  a 20 s long poll gets its answer, a gap of 16 s does not cut a body, a WebSocket echoes;
- what is not predicted to be a download opens nothing on the cellular path.
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

from fleety_lab import APP_PROXY_PORT, STREAMS_PORT, ensure_replica  # noqa: E402
from harness import (LAB_PATHS_TOML, Fleetyd, LabTestCase, curl, fleety_cli,  # noqa: E402
                     measured_download, object_sha256)

PREFIX = "flz"
SPEC = "40mbit/25ms"  # RTT 50 ms
HOST = "cdn.fleety.test"
WIFI_CDN, CELL_CDN = "198.18.10.1", "198.18.20.1"
CLIENT = str(Path(__file__).resolve().parent / "stream_client.py")
CONFIG = f"""
[proxy]
listen = "127.0.0.1:3128"

[scheduler]
mode = "aggregate"
{LAB_PATHS_TOML}"""
INTERCEPT_CONFIG = CONFIG.replace("[scheduler]", "[intercept]\nenabled = true\nport = 3129\n\n[scheduler]")
MAX_TICK_LATE_MS = 250


class ZooBase(LabTestCase):
    fleetyd: Fleetyd
    net_only = False
    config = CONFIG

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi=SPEC, cell=SPEC)
        ensure_replica("10MB")
        cls.fleetyd = Fleetyd(cls.lab, config_text=cls.config, net_only=cls.net_only,
                              log_level="debug")
        cls.fleetyd.start()
        os.environ["FLEETY_CONTROL"] = str(cls.fleetyd.control_socket)


    def access_log(self, cdn: str) -> str:
        path = Path(self.lab.info()["state_dir"]) / f"nginx-{cdn}.access.log"
        return path.read_text() if path.exists() else ""

    def status(self) -> dict:
        cp = subprocess.run([fleety_cli(), "--json", "status"], capture_output=True, text=True,
                            timeout=10)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return json.loads(cp.stdout)

    def client(self, *args: str, timeout: float = 90) -> tuple[dict, dict[str, int]]:
        """stream_client.py in the client namespace; its result and each interface's rx."""
        argv = [sys.executable, CLIENT, *args]
        if self.net_only:
            argv = self.with_lab_resolv_conf([fleety_cli(), "run", "--", *argv])
        with tempfile.TemporaryDirectory() as tmp:
            t = measured_download(self.lab, argv, Path(tmp) / "none", timeout, net_only=self.net_only)
        self.assertEqual(t.exit_code, 0, t.stderr)
        return json.loads(t.http_code.splitlines()[-1]), t.iface_rx

    def with_lab_resolv_conf(self, argv: list[str]) -> list[str]:
        resolv = f"/etc/netns/{self.lab.ns('cli')}/resolv.conf"
        return ["unshare", "--mount", "--", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv, *argv]

    def proxy_args(self) -> list[str]:
        return [] if self.net_only else ["--proxy", "127.0.0.1:3128"]

class StreamChecks:
    """The same stream checks through the proxy and through fleety run (a mixin: only the
    concrete classes, with their lab, run them)."""


    def test_sse_ticks_arrive_as_they_are_sent(self):
        got, rx = self.client("sse", f"http://{HOST}:{STREAMS_PORT}/sse?ticks=6&gap_ms=2000",
                              *self.proxy_args())
        print(f"SSE: {got}")
        self.assertEqual(got["status"], 200)
        self.assertEqual(got["ticks"], 6)
        self.assertLessEqual(max(got["late_ms"]), MAX_TICK_LATE_MS, got)
        # Not a download: nothing on the cellular path (no early connection, no range).
        self.assertLess(rx["rmnet0"], 5_000, rx)

    def test_long_poll_gets_its_answer(self):
        got, _ = self.client("get", f"http://{HOST}:{STREAMS_PORT}/poll?after_ms=20000",
                             *self.proxy_args())
        print(f"long poll: {got}")
        self.assertEqual(got["status"], 200, got)
        self.assertEqual(got["bytes"], 5, got)
        self.assertGreaterEqual(got["seconds"], 19.5)

    def test_a_paused_player_gets_the_whole_object(self):
        """An app that stops reading for 20 s (a paused player) after the first MB of a
        download: a direct connection would wait for it, and so does fleety — its write to
        the app is not cut after io_timeout (15 s); nothing more is asked meanwhile."""
        got, _ = self.client("get", f"http://{HOST}/10MB", "--pause", "20", *self.proxy_args())
        print(f"paused player: {({k: v for k, v in got.items() if k != 'gaps'})}")
        self.assertEqual(got["status"], 200, got)
        self.assertEqual(got.get("sha256"), object_sha256("10MB"), got)
        self.assertGreaterEqual(got["seconds"], 20)

    def test_websocket_echoes(self):
        got, _ = self.client("ws", f"http://{HOST}:{STREAMS_PORT}/ws", *self.proxy_args())
        print(f"WebSocket: {got}")
        self.assertEqual(got["status"], 101, got)
        self.assertEqual(got["echoed"], 5, got)


class CdnZooThroughTheProxy(StreamChecks, ZooBase):
    prefix = PREFIX
    log_tail_lines = 12

    def download(self, path: str, daemon: Fleetyd | None = None) -> tuple:
        daemon = daemon or self.fleetyd
        before = {n: len(self.access_log(n)) for n in ("wifi", "cell")}
        t = curl(self.lab, f"http://{HOST}{path}", proxy=daemon.proxy_url, timeout=60)
        new = {n: self.access_log(n)[before[n]:] for n in ("wifi", "cell")}
        return t, new, daemon.log()

    def own_daemon(self) -> Fleetyd:
        """A fleetyd of its own (port 3130): a refusal keeps the path off the whole host,
        which the other tests use."""
        return Fleetyd(self.lab, config_text=self.config.replace("3128", "3130"), port=3130,
                       log_level="debug")

    def status_of(self, daemon: Fleetyd) -> dict:
        cp = subprocess.run([fleety_cli(), "--json", "status"], capture_output=True, text=True,
                            timeout=10, env={**os.environ, "FLEETY_CONTROL": str(daemon.control_socket)})
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return json.loads(cp.stdout)

    def etag_of(self, iface: str, path: str) -> str:
        cp = self.lab.exec("cli", ["curl", "-sS", "-I", "--noproxy", "*", "--interface", iface,
                                   f"http://{WIFI_CDN if iface == 'wlan0' else CELL_CDN}{path}"],
                           capture_output=True, text=True, timeout=20)
        m = re.search(r"^ETag: (\S+)", cp.stdout, re.M | re.I)
        self.assertIsNotNone(m, cp.stdout)
        return m[1]

    def test_replicas_with_other_validators_both_carry_their_share(self):
        wifi_etag, cell_etag = self.etag_of("wlan0", "/replica/10MB"), self.etag_of("rmnet0", "/replica/10MB")
        self.assertNotEqual(wifi_etag, cell_etag, "the premise: the nodes' validators differ")
        t, new, log = self.download("/replica/10MB")
        self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
        self.assertGreater(t.iface_rx["rmnet0"], 3_000_000, t.iface_rx)
        self.assertGreater(t.iface_rx["wlan0"], 3_000_000, t.iface_rx)
        self.assertNotIn("two versions", log[-20_000:])
        # The cellular node never sees the Wi-Fi node's validator: only its own, or none.
        # (nginx writes a quote in a logged value as \x22.)
        cell_log = new["cell"].replace("\\x22", '"')
        # ("-": none, as a range asked for before the first answer goes, issue 17.)
        cell_if_ranges = set(re.findall(r'/replica/10MB .*if_range="(|-|"[^"]*")"', cell_log))
        self.assertTrue(cell_if_ranges, cell_log)
        self.assertLessEqual(cell_if_ranges, {"", "-", cell_etag}, cell_log)
        self.assertNotIn(wifi_etag, cell_log)

    def test_weak_etags_never_go_in_if_range(self):
        t, new, log = self.download("/weak/10MB")
        self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
        self.assertNotIn('if_range="W/', new["wifi"] + new["cell"])
        self.assertGreater(t.iface_rx["rmnet0"], 3_000_000, t.iface_rx)

    def test_node_refusing_the_cellular_path_is_not_a_version_conflict(self):
        with self.own_daemon() as daemon:
            started = time.monotonic()
            t, new, log = self.download("/refuse/10MB", daemon)
            self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
            self.assertIn("403 (forbidden", log[-20_000:])
            self.assertNotIn("two versions", log[-20_000:])
            status = self.status_of(daemon)
            refused = [r for r in status["refused_paths"] if r["path"] == "cell" and r["host"] == HOST]
            self.assertTrue(refused, status["refused_paths"])
            self.assertEqual(refused[0]["reason"], "forbidden")
            self.assertGreaterEqual(status["refusals"].get("forbidden", 0), 1)
            # While it lasts, no range request goes to that path for the host.
            t2, new2, _ = self.download("/refuse/10MB", daemon)
            self.assertEqual(t2.sha256, object_sha256("10MB"))
            self.assertNotIn("/refuse/", new2["cell"])
            print(f"refused cellular: 10 MB in {time.monotonic() - started:.1f} s")

    def test_rate_limited_cellular_path_honours_retry_after(self):
        with self.own_daemon() as daemon:
            t, new, log = self.download("/ratelimit/10MB", daemon)
            self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
            self.assertIn("Retry-After 120 s", log[-20_000:])
            refused = [r for r in self.status_of(daemon)["refused_paths"]
                       if r["path"] == "cell" and r["reason"] == "rate limited"]
            self.assertTrue(refused)
            self.assertGreater(refused[0]["seconds_left"], 90)
            self.assertLessEqual(refused[0]["seconds_left"], 120)

    def test_equal_digests_split_other_digests_are_another_version(self):
        t, new, log = self.download("/digest/10MB")
        self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
        self.assertGreater(t.iface_rx["rmnet0"], 3_000_000, t.iface_rx)
        # (Two versions keep the host on one path for a while: a daemon of its own.)
        with self.own_daemon() as daemon:
            t, new, log = self.download("/digest-other/10MB", daemon)
            self.assertEqual(t.sha256, object_sha256("10MB"),
                             "the app got a splice or the other version")
            self.assertIn("sha-256 digest differs", log[-20_000:])

    def test_body_with_long_gaps_is_not_cut(self):
        # Two pieces 16 s apart: more than the I/O timeout (15 s) a download has.
        got, _ = self.client("get", f"http://{HOST}:{STREAMS_PORT}/chunked?chunks=2&gap_ms=16000&size=1000",
                             *self.proxy_args())
        self.assertEqual(got["status"], 200, got)
        self.assertEqual(got["bytes"], 2000, got)
        got, _ = self.client("get", f"http://{HOST}:{STREAMS_PORT}/until-close?chunks=5&gap_ms=300&size=1000",
                             *self.proxy_args())
        self.assertEqual(got["bytes"], 5000, got)


class CdnZooUnderFleetyRun(StreamChecks, ZooBase):
    prefix = "flu"
    net_only = True
    config = INTERCEPT_CONFIG

    def test_an_apps_own_proxy_gets_its_connect_and_absolute_form_requests(self):
        proxy = f"http://{WIFI_CDN}:{APP_PROXY_PORT}"
        with tempfile.TemporaryDirectory() as tmp:
            for scheme, extra in (("http", []), ("https", ["--cacert", self.lab.tls_info()["ca"]])):
                out = Path(tmp) / f"{scheme}.body"
                argv = self.with_lab_resolv_conf(
                    [fleety_cli(), "run", "--", "curl", "-sS", "-x", proxy, *extra, "-o", str(out),
                     f"{scheme}://{HOST}/1MB" if scheme == "https" else f"http://{WIFI_CDN}/1MB"])
                t = measured_download(self.lab, argv, out, 60, net_only=True)
                self.assertEqual(t.exit_code, 0, t.stderr + self.fleetyd.log()[-3000:])
                self.assertEqual(t.sha256, object_sha256("1MB"), scheme)
        self.assertIn("for the app's own proxy", self.fleetyd.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
