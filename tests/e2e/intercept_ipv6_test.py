#!/usr/bin/env python3
"""IPv6 interception in the two-path lab: the lab's opt-in IPv6 (`Lab.up(ipv6=True)`:
::1 on the client's loopback, link-local addresses only on the client<->router links,
fe80::1 on each router, fe80::2 on wlan0 and rmnet0), servers in the routers, apps
started with `fleety run` connecting to fe80::1%wlan0 (or %rmnet0).

A socket connected to a link-local address is tied to its interface by the scope id;
the kernel finds no route to ::1 through that interface, so fleetyd's rules DNAT such
connections to the app's own address on the link and its IPv6 listener is on [::]
(src/intercept/ruleset.cpp). These tests show that works end to end, that the original
destination keeps its scope (the same fe80::1 on the other link is another host), and
that what is not enabled, or comes from the network, never reaches fleetyd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import IPV6_CLIENT, IPV6_GATEWAY  # noqa: E402
from harness import (LAB_PATHS_TOML, Fleetyd, LabTestCase, Lines, file_sha256,  # noqa: E402
                     fleety_cli,
                     measured_download)

PREFIX = "fl6"
# fleetyd's log when it refuses an intercepted connection (src/intercept/ruleset.cpp).
NOT_REDIRECTED = "refused: no redirected destination"
LOOPS = "refused: its destination is fleetyd's own listener on this host"
TOOLS = str(Path(__file__).resolve().parent / "lab_tools.py")
HTTP_PORT, ECHO_PORT = 8080, 7007
FILE_BYTES = 1_000_000  # below the min_split_size set here: one path, the app's own destination
WIFI_CDN = "198.18.10.1"
CONFIG = f"""
[proxy]
listen = "127.0.0.1:3128"

[intercept]
enabled = true
port = 3129
dns_port = 3053

[scheduler]
min_split_size = "2MB"

{LAB_PATHS_TOML}"""



class InterceptIPv6InLab(LabTestCase):
    prefix = PREFIX
    fleetyd: Fleetyd
    servers: list[subprocess.Popen] = []

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="80mbit/5ms", cell="50mbit/10ms", ipv6=True)
        # debug: the intercept listener logs each HTTP request it takes over.
        cls.fleetyd = Fleetyd(cls.lab, config_text=CONFIG, net_only=True, log_level="debug")
        cls.fleetyd.start()
        os.environ["FLEETY_CONTROL"] = str(cls.fleetyd.control_socket)
        cls.www = Path(tempfile.mkdtemp(prefix="fleety-www6-"))
        os.chmod(cls.www, 0o755)
        (cls.www / "file").write_bytes(os.urandom(FILE_BYTES))
        cls.file_sha256 = file_sha256(cls.www / "file")[0]
        cls.http = cls.start_server("wlan", ["http-files", "--bind", f"{IPV6_GATEWAY}%to-cli",
                                             "--port", str(HTTP_PORT), "--dir", str(cls.www),
                                             "--max-seconds", "400"])

    @classmethod
    def start_server(cls, ns: str, args: list[str]) -> Lines:
        """A lab_tools server in namespace ns, once it listens (killed at tear-down, and
        by the lab's teardown whatever happens)."""
        process = cls.lab.popen(ns, [sys.executable, TOOLS, *args], stdout=subprocess.PIPE,
                                text=True)
        cls.servers.append(process)
        lines = Lines(process)
        lines.wait_for("listening", 10)
        return lines

    @classmethod
    def tear_down_lab(cls):
        for process in cls.servers:
            process.kill()
            process.wait(10)
        if getattr(cls, "www", None):
            shutil.rmtree(cls.www, ignore_errors=True)

    def cli(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return self.lab.exec("cli", argv, timeout=timeout, capture_output=True, text=True,
                             net_only=True)

    def wait_for_log(self, pattern: str, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.fleetyd.log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertRegex(self.fleetyd.log(), pattern)
        return self.fleetyd.log()

    def test_fleetyd_listens_for_ipv6_and_only_for_this_host(self):
        log = self.fleetyd.log()
        self.assertNotIn("not taken over", log)
        self.assertIn("their DNS on port 3053 (127.0.0.1, [::])", log)
        listening = self.cli(["ss", "-Hltnu"]).stdout
        for port in (3129, 3053):
            self.assertRegex(listening, rf"tcp\s+LISTEN\s+\S+\s+\S+\s+\[::\]:{port}\s", listening)
        self.assertRegex(listening, r"udp\s+UNCONN\s+\S+\s+\S+\s+\[::\]:3053\s", listening)
        rules = self.cli(["nft", "list", "table", "inet", "fleety"]).stdout
        self.assertIn("ip6 daddr fe80::/10 meta l4proto tcp dnat ip6 to ip6 saddr:3129", rules)
        # ::1 is served: a connection made to it directly (not redirected) is refused.
        refused = self.fleetyd.log().count(NOT_REDIRECTED)
        cp = self.cli(["curl", "-sS", "--max-time", "5", "http://[::1]:3129/"], timeout=30)
        self.assertNotEqual(cp.returncode, 0)
        self.wait_for_log(NOT_REDIRECTED)
        self.assertEqual(self.fleetyd.log().count(NOT_REDIRECTED), refused + 1)
        # From the network (the Wi-Fi router, over the link) the port is dropped: no
        # connection, and fleetyd never hears of it.
        probe = ("import socket,sys\n"
                 "s=socket.socket(socket.AF_INET6)\n"
                 "s.settimeout(2)\n"
                 "try:\n"
                 "    s.connect(socket.getaddrinfo(sys.argv[1],3129)[0][4]); print('connected')\n"
                 "except socket.timeout: print('timeout')\n"
                 "except OSError as e: print('error', e)\n")
        cp = self.lab.exec("wlan", [sys.executable, "-c", probe, f"{IPV6_CLIENT}%to-cli"],
                           timeout=30, capture_output=True, text=True)
        self.assertEqual(cp.stdout.strip(), "timeout", cp.stderr)
        self.assertEqual(self.fleetyd.log().count(NOT_REDIRECTED), refused + 1)

    def test_connections_to_fleetyds_own_listeners_on_this_hosts_addresses_are_refused(self):
        """A local connection to the [::] listener on one of the host's own addresses, and
        an enrolled app's connection to one of fleetyd's ports there, would come back to
        fleetyd: each is refused once and never relayed (it used to loop to the cap)."""
        log = self.fleetyd.log()
        refused, looped, relayed = (log.count(NOT_REDIRECTED), log.count(LOOPS),
                                    log.count(" relayed on "))
        probe = ("import socket,sys\n"
                 "s=socket.socket(socket.AF_INET6)\n"
                 "s.settimeout(5)\n"
                 "s.connect(socket.getaddrinfo(sys.argv[1],int(sys.argv[2]))[0][4])\n"
                 "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                 "print(repr(s.recv(100)))\n")
        own = f"{IPV6_CLIENT}%wlan0"
        cp = self.cli([sys.executable, "-c", probe, own, "3129"], timeout=30)
        self.assertNotIn("HTTP", cp.stdout, "the direct connection was answered")
        cp = self.cli([fleety_cli(), "run", "--app", "loop6", "--", sys.executable, "-c", probe,
                       own, "3128"], timeout=30)
        self.assertNotIn("HTTP", cp.stdout, "the app's connection to fleetyd's port was answered")
        self.wait_for_log(LOOPS)
        time.sleep(1)  # a loop would go on meanwhile
        log = self.fleetyd.log()
        self.assertEqual(log.count(NOT_REDIRECTED), refused + 1, log[-3000:])
        self.assertEqual(log.count(LOOPS), looped + 1, log[-3000:])
        self.assertEqual(log.count(" relayed on "), relayed, "something was relayed")

    def echo(self, dst: str) -> dict:
        cp = self.cli([fleety_cli(), "run", "--app", "echo6", "--", sys.executable, TOOLS,
                       "echo-client", "--dst", dst, "--port", str(ECHO_PORT), "--bytes",
                       "300000"])
        self.assertEqual(cp.returncode, 0, cp.stderr)
        result = json.loads(cp.stdout)
        self.assertEqual(result["sent"], 300_000, result)
        self.assertEqual(result["received"], 300_000, result)
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        return result

    def test_plain_tcp_to_a_link_local_address_is_relayed_intact_on_its_link(self):
        server = self.start_server("wlan", ["echo-server", "--bind", f"{IPV6_GATEWAY}%to-cli",
                                            "--port", str(ECHO_PORT), "--max-seconds", "60"])
        before = self.lab.iface_bytes()
        result = self.echo(f"{IPV6_GATEWAY}%wlan0")
        after = self.lab.iface_bytes()
        # The app saw its own destination; the router saw fleetyd's connection from the
        # client's link-local address.
        self.assertEqual(result["peer"], f"[{IPV6_GATEWAY}%wlan0]:{ECHO_PORT}")
        self.assertEqual(server.wait_for("accepted", 5)["accepted"].rsplit(":", 1)[0],
                         f"[{IPV6_CLIENT}%to-cli]")
        self.wait_for_log(rf"TCP to {IPV6_GATEWAY}%wlan0:{ECHO_PORT} relayed on wifi: "
                          r"300000 up, 300000 down")
        rx = {n: after[n]["rx"] - before[n]["rx"] for n in after}
        self.assertGreater(rx["wlan0"], 300_000, rx)
        self.assertLess(rx["rmnet0"], 20_000, rx)

    def test_the_same_link_local_address_on_the_other_link_is_another_host(self):
        """fe80::1%rmnet0 is the cellular router, not the Wi-Fi one (both have fe80::1):
        the preferred path (Wi-Fi) cannot reach it, the flow goes over cellular."""
        wifi = self.start_server("wlan", ["echo-server", "--bind", f"{IPV6_GATEWAY}%to-cli",
                                          "--port", str(ECHO_PORT + 1), "--max-seconds", "60"])
        cell = self.start_server("rmnet", ["echo-server", "--bind", f"{IPV6_GATEWAY}%to-cli",
                                           "--port", str(ECHO_PORT + 1), "--max-seconds", "60"])
        before = self.lab.iface_bytes()
        cp = self.cli([fleety_cli(), "run", "--app", "echo6", "--", sys.executable, TOOLS,
                       "echo-client", "--dst", f"{IPV6_GATEWAY}%rmnet0", "--port",
                       str(ECHO_PORT + 1), "--bytes", "300000"])
        after = self.lab.iface_bytes()
        self.assertEqual(cp.returncode, 0, cp.stderr)
        result = json.loads(cp.stdout)
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        self.assertEqual(result["received"], 300_000)
        cell.wait_for("accepted", 5)
        self.assertEqual([line for line in wifi.drain() if "accepted" in line], [])
        self.wait_for_log(rf"TCP to {IPV6_GATEWAY}%rmnet0:{ECHO_PORT + 1} relayed on cell: "
                          r"300000 up, 300000 down")
        rx = {n: after[n]["rx"] - before[n]["rx"] for n in after}
        self.assertGreater(rx["rmnet0"], 300_000, rx)
        self.assertLess(rx["wlan0"], 20_000, rx)

    def test_http_to_a_link_local_address_is_taken_over(self):
        self.http.drain()
        with tempfile.TemporaryDirectory(prefix="fleety-http6-") as tmp:
            out = Path(tmp) / "body"
            t = measured_download(self.lab, [
                fleety_cli(), "run", "--", "curl", "-sS", "-g", "--noproxy", "*",
                "--max-time", "30", "-o", str(out),
                f"http://[{IPV6_GATEWAY}%25wlan0]:{HTTP_PORT}/file"], out, 60, net_only=True)
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.body_bytes, FILE_BYTES)
        self.assertEqual(t.sha256, self.file_sha256)
        self.assertLess(t.iface_rx["rmnet0"], 20_000, t.iface_rx)
        request = self.http.wait_for("request", 5)
        self.assertEqual(request["peer"].rsplit(":", 1)[0], f"[{IPV6_CLIENT}%to-cli]")
        self.assertIn("GET /file", request["request"])
        self.wait_for_log(rf"intercepted HTTP to {IPV6_GATEWAY}%wlan0:{HTTP_PORT}: GET /file")
        self.wait_for_log(r"GET http://\[fe80::1\]:8080/file → 200")

    def test_an_app_not_enabled_reaches_the_ipv6_server_directly(self):
        self.http.drain()
        before = self.fleetyd.log()
        with tempfile.TemporaryDirectory(prefix="fleety-plain6-") as tmp:
            out = Path(tmp) / "body"
            t = measured_download(self.lab, [
                "curl", "-sS", "-g", "--noproxy", "*", "--max-time", "30", "-o", str(out),
                f"http://[{IPV6_GATEWAY}%25wlan0]:{HTTP_PORT}/file"], out, 60, net_only=True)
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, self.file_sha256)
        request = self.http.wait_for("request", 5)
        self.assertIn("GET /file", request["request"])
        self.assertIsNone(request["range"])  # curl's own request, not fleetyd's
        time.sleep(0.5)
        new = self.fleetyd.log()[len(before):]
        self.assertNotIn("/file", new)
        self.assertNotIn(f":{HTTP_PORT}", new)

    def test_dns_to_a_link_local_resolver_is_answered_by_fleetyd(self):
        """Nothing answers DNS on the router's fe80::1: fleetyd does, with the Wi-Fi
        resolver's answer."""
        cp = self.cli([fleety_cli(), "run", "--", sys.executable, TOOLS, "dns", "--server",
                       f"{IPV6_GATEWAY}%wlan0", "--timeout", "5", "cdn.fleety.test"])
        self.assertEqual(cp.returncode, 0, cp.stderr)
        reply = json.loads(cp.stdout)
        self.assertEqual(reply["rcode"], 0, reply)
        self.assertEqual(reply["answers"], [WIFI_CDN], reply)
        self.wait_for_log(r"dns: cdn\.fleety\.test on wifi: 198\.18\.10\.1")


if __name__ == "__main__":
    unittest.main(verbosity=2)
