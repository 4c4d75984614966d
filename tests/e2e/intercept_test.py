#!/usr/bin/env python3
"""Transparent interception in the two-path lab (issue 5): unmodified programs started
with `fleety run` (or selected by uid) have their TCP connections taken over by
fleetyd; everything else is untouched.

fleetyd and the programs run with `nsenter --net` (Lab.enter(net_only=True)): `ip
netns exec` would hide /sys/fs/cgroup, which the rules and `fleety run` need. The
programs connect to the Wi-Fi CDN's address with Host: cdn.fleety.test, as they would
after a DNS answer from the Wi-Fi resolver.
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

from fleety_lab import OBJECT_DIR  # noqa: E402
from harness import (LAB_PATHS_TOML, Fleetyd, LabTestCase, fleety_cli,  # noqa: E402
                     measured_download, object_sha256, with_lab_resolv_conf)

PREFIX = "fli"
WIFI_CDN, CELL_CDN = "198.18.10.1", "198.18.20.1"
WLAN_ADDR, RMNET_ADDR = "198.18.1.2", "198.18.2.2"
HOST = "cdn.fleety.test"
APP_UID = 4242
TOOLS = str(Path(__file__).resolve().parent / "lab_tools.py")
# Aggregate mode: even 10 MB goes over both paths (cost mode would keep it on Wi-Fi).
# (LAB_PATHS_TOML: each path names its own resolver.)
CONFIG = f"""
[proxy]
listen = "127.0.0.1:3128"

[scheduler]
mode = "aggregate"

[intercept]
enabled = true
port = 3129

{LAB_PATHS_TOML}
[[app]]
name = "uid-app"
uid = {APP_UID}

# Requests for this host stay on one path: their bodies are relayed with splice(2).
[[feature]]
name = "one path"
hosts = ["single.fleety.test"]
multipath = false

# The lab's HTTP-DNS endpoint, on each CDN node (HTTP_DNS_LOCATIONS).
[[http_dns]]
name = "lab"
hosts = ["{WIFI_CDN}", "{CELL_CDN}"]
path = "/d"
max_reply_size = "16KiB"
"""
# The HTTP-DNS endpoint answers as such services do, by the client's address: a client
# on the cellular ISP gets the cellular CDN. The addresses it gives (.11, .12, .13 of each
# CDN, one per reply format) are the CDN nodes' aliases: no DNS answer ever names them,
# so a path can only reach its own through its own HTTP-DNS answer.
HTTP_DNS_MAP = r"""
    map $remote_addr $httpdns_isp { ~^198\.18\.2\. 198.18.20; default 198.18.10; }
"""
HTTP_DNS_LOCATIONS = r"""
        location = /d/json { default_type application/json;
            return 200 '{"host":"$arg_host","ips":["$httpdns_isp.11"],"ttl":300}'; }
        location = /d/plain { default_type text/plain; return 200 '$httpdns_isp.12,300'; }
        location = /d/url { default_type application/json;
            return 200 '{"code":0,"data":{"url":"http://$httpdns_isp.13/10MB"}}'; }
"""
HTTP_DNS_LOCATIONS += f"        location = /d/big {{ alias {OBJECT_DIR}/1MB; }}\n"
HTTP_DNS_ALIASES = {"wifi": [f"198.18.10.{n}" for n in (11, 12, 13)],
                    "cell": [f"198.18.20.{n}" for n in (11, 12, 13)]}



class InterceptInLab(LabTestCase):
    prefix = PREFIX
    fleetyd: Fleetyd

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="80mbit/5ms", cell="50mbit/10ms", extra_http=HTTP_DNS_MAP,
                   extra_server=HTTP_DNS_LOCATIONS, cdn_aliases=HTTP_DNS_ALIASES)
        # debug: the DNS duplicator's per-path answers are checked in the log.
        cls.fleetyd = Fleetyd(cls.lab, config_text=CONFIG, net_only=True, log_level="debug")
        cls.fleetyd.start()
        # fleety (run, apps, status) finds this fleetyd's control socket here.
        os.environ["FLEETY_CONTROL"] = str(cls.fleetyd.control_socket)


    def access_log(self, cdn: str) -> Path:
        return Path(self.lab.info()["state_dir"]) / f"nginx-{cdn}.access.log"

    def log_sizes(self) -> dict[str, int]:
        return {n: self.access_log(n).stat().st_size if self.access_log(n).exists() else 0
                for n in ("wifi", "cell")}

    def new_access_lines(self, sizes: dict[str, int]) -> dict[str, str]:
        return {n: self.access_log(n).read_text()[sizes[n]:] for n in ("wifi", "cell")}

    def run_app(self, argv: list[str], out: Path, app: str | None = None, timeout: float = 180):
        prefix = [fleety_cli(), "run", *(["--app", app] if app else []), "--"]
        return measured_download(self.lab, [*prefix, *argv], out, timeout, net_only=True)


    def assert_split_over_both_cdns(self, t, size: int, sizes: dict[str, int],
                                    wifi_server: str = WIFI_CDN, cell_server: str = CELL_CDN):
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.body_bytes, size)
        # Both paths carried a real part, and nothing was fetched twice over.
        self.assertGreater(t.iface_rx["wlan0"], size * 0.1, t.iface_rx)
        self.assertGreater(t.iface_rx["rmnet0"], size * 0.1, t.iface_rx)
        self.assertLess(t.iface_rx["wlan0"] + t.iface_rx["rmnet0"], size * 1.10, t.iface_rx)
        # Each CDN served its part over its own path to its own address.
        new = self.new_access_lines(sizes)
        self.assertIn(f"{WLAN_ADDR} {wifi_server}:80", new["wifi"])
        self.assertIn(f"{RMNET_ADDR} {cell_server}:80", new["cell"])
        self.assertNotIn(RMNET_ADDR, new["wifi"])
        self.assertNotIn(WLAN_ADDR, new["cell"])
        self.assertIn('range="bytes=', new["cell"])

    def test_curl_wget_aria2c_download_100MB_over_both_paths(self):
        url = f"http://{WIFI_CDN}/100MB"
        with tempfile.TemporaryDirectory(prefix="fleety-run-") as tmp:
            clients = {
                "curl": lambda out: ["curl", "-sS", "--noproxy", "*", "-o", str(out), "-H",
                                     f"Host: {HOST}", url],
                "wget": lambda out: ["wget", "-q", "--no-proxy", "-O", str(out), "--header",
                                     f"Host: {HOST}", url],
                "aria2c": lambda out: ["aria2c", "-q", "-x1", "-s1", "--allow-overwrite=true",
                                       "--file-allocation=none", "--header", f"Host: {HOST}",
                                       "-d", tmp, "-o", out.name, url],
            }
            for name, argv in clients.items():
                with self.subTest(client=name):
                    out = Path(tmp) / f"{name}.body"
                    sizes = self.log_sizes()
                    t = self.run_app(argv(out), out)
                    self.assertEqual(t.sha256, object_sha256("100MB"), f"{name}: other bytes")
                    self.assert_split_over_both_cdns(t, 100_000_000, sizes)
                    print(f"fleety run -- {name}: 100 MB in {t.seconds:.1f} s, "
                          f"wlan0 {t.iface_rx['wlan0']} B, rmnet0 {t.iface_rx['rmnet0']} B")
        self.assertRegex(self.fleetyd.log(), r"GET http://cdn\.fleety\.test/100MB → 200 multipath")

    def test_dns_is_duplicated_on_both_paths_and_each_path_uses_its_answer(self):
        """The app looks the name up itself: fleetyd answers with Wi-Fi's reply, records
        cellular's, and each path fetches from its own ISP's CDN."""
        with tempfile.TemporaryDirectory(prefix="fleety-dns-") as tmp:
            out = Path(tmp) / "body"
            sizes = self.log_sizes()
            argv = with_lab_resolv_conf(self.lab, [fleety_cli(), "run", "--", "curl", "-sS",
                                                   "--noproxy", "*", "-o", str(out),
                                                   f"http://{HOST}/10MB"])
            t = measured_download(self.lab, argv, out, 60, net_only=True)
            self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
            self.assert_split_over_both_cdns(t, 10_000_000, sizes)
        log = self.fleetyd.log()
        self.assertIn(f"dns: {HOST} on wifi: {WIFI_CDN}", log)
        self.assertIn(f"dns: {HOST} on cell: {CELL_CDN}", log)

    def wait_for_log(self, pattern: str, seconds: float = 5) -> None:
        deadline = time.monotonic() + seconds
        while not re.search(pattern, self.fleetyd.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertRegex(self.fleetyd.log(), pattern)

    def test_http_dns_answers_send_each_path_to_its_own_server(self):
        """The app resolves the name over HTTP (JSON, a plain list, an address inside a
        URL) and connects to the address it got: fleetyd asked the endpoint on both paths,
        the app got Wi-Fi's answer, and cellular fetches its part from the server its own
        answer named, which no DNS answer gives."""
        # (The URL reply gives no TTL: the endpoint's default_ttl, 60 s.)
        cases = [("json", 11, 300, '{{"host":"{name}","ips":["{server}"],"ttl":300}}'),
                 ("plain", 12, 300, "{server},300"),
                 ("url", 13, 60, '{{"code":0,"data":{{"url":"http://{server}/10MB"}}}}')]
        with tempfile.TemporaryDirectory(prefix="fleety-httpdns-") as tmp:
            for fmt, n, ttl, expected in cases:
                with self.subTest(format=fmt):
                    name = f"v-{fmt}.fleety.test"
                    wifi_server, cell_server = f"198.18.10.{n}", f"198.18.20.{n}"
                    cp = self.lab.exec("cli", [fleety_cli(), "run", "--", "curl", "-sS",
                                               "--noproxy", "*", "--max-time", "10",
                                               f"http://{WIFI_CDN}/d/{fmt}?host={name}"],
                                       timeout=30, capture_output=True, text=True, net_only=True)
                    self.assertEqual(cp.returncode, 0, cp.stderr)
                    # The app has the Wi-Fi endpoint's reply, byte for byte.
                    self.assertEqual(cp.stdout, expected.format(name=name, server=wifi_server))
                    self.wait_for_log(rf"http-dns: {re.escape(name)} on cell: "
                                      rf"{re.escape(cell_server)} \(ttl {ttl} s\)")
                    self.assertIn(f"http-dns: {name} on wifi: {wifi_server} (ttl {ttl} s)",
                                  self.fleetyd.log())
                    out = Path(tmp) / f"{fmt}.body"
                    sizes = self.log_sizes()
                    t = self.run_app(["curl", "-sS", "--noproxy", "*", "-o", str(out), "-H",
                                      f"Host: {name}", f"http://{wifi_server}/10MB"], out)
                    self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
                    self.assert_split_over_both_cdns(t, 10_000_000, sizes, wifi_server,
                                                     cell_server)
                    self.assertNotIn(f"{RMNET_ADDR} {wifi_server}:80",
                                     self.new_access_lines(sizes)["wifi"])
        self.assertRegex(self.fleetyd.log(),
                         r"http-dns lab GET http://198\.18\.10\.1/d/json\?host=v-json\.fleety\.test"
                         r" → 200 from wifi")

    def test_http_dns_reply_too_long_to_read_is_relayed_as_it_is(self):
        """A reply over max_reply_size is no HTTP-DNS answer fleetyd reads: the app still
        gets it, whole."""
        with tempfile.TemporaryDirectory(prefix="fleety-httpdns-") as tmp:
            out = Path(tmp) / "big"
            t = self.run_app(["curl", "-sS", "--noproxy", "*", "-o", str(out),
                              f"http://{WIFI_CDN}/d/big?host=big.fleety.test"], out)
            self.assertEqual(t.exit_code, 0, t.stderr)
            self.assertEqual(t.sha256, object_sha256("1MB"))
        self.assertIn("reply over 16384 bytes: relayed as it is, not read", self.fleetyd.log())
        self.assertNotIn("http-dns: big.fleety.test", self.fleetyd.log())

    def test_tls_is_relayed_intact_and_named_by_its_sni(self):
        with tempfile.TemporaryDirectory(prefix="fleety-tls-") as tmp:
            os.chmod(tmp, 0o755)
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                            "1", "-subj", "/CN=tls.fleety.test", "-keyout", f"{tmp}/key.pem",
                            "-out", f"{tmp}/cert.pem"], check=True, capture_output=True, timeout=60)
            payload = os.urandom(300_000)
            Path(tmp, "blob").write_bytes(payload)
            server = self.lab.popen("inet", ["openssl", "s_server", "-quiet", "-accept",
                                             f"{WIFI_CDN}:8443", "-cert", f"{tmp}/cert.pem",
                                             "-key", f"{tmp}/key.pem", "-WWW"],
                                    cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                out = Path(tmp) / "received"
                # Wait until it listens: through fleetyd a refused connection reaches the
                # app as a reset (its connection was accepted before the upstream one).
                deadline = time.monotonic() + 10
                while "LISTEN" not in self.lab.exec("inet", ["ss", "-ltn", "sport", "= :8443"],
                                                    timeout=10, capture_output=True,
                                                    text=True).stdout:
                    self.assertLess(time.monotonic(), deadline, "openssl s_server did not start")
                    time.sleep(0.1)
                t = measured_download(self.lab, [
                    fleety_cli(), "run", "--app", "tls", "--", "curl", "-sS", "-k",
                    "--noproxy", "*", "--resolve", f"tls.fleety.test:8443:{WIFI_CDN}",
                    "-o", str(out), "https://tls.fleety.test:8443/blob"], out, 30, net_only=True)
                self.assertEqual(t.exit_code, 0, t.stderr)
                self.assertEqual(out.read_bytes(), payload)
            finally:
                server.kill()
                server.wait(10)
        # (The line comes when the relay has ended, a moment after curl's.)
        self.wait_for_log(rf"TLS to tls\.fleety\.test \({re.escape(WIFI_CDN)}:8443\) relayed on wifi")

    def test_requests_on_one_app_connection_share_one_upstream_connection(self):
        """Keep-alive upstream: the app's three requests on one connection reach the CDN on
        one connection of fleetyd's, not one handshake each."""
        sizes = self.log_sizes()
        urls = [f"http://{WIFI_CDN}/1MB"] * 3
        cp = self.lab.exec("cli", [fleety_cli(), "run", "--", "curl", "-sS", "--noproxy", "*",
                                   "-H", f"Host: {HOST}", "-o", "/dev/null", "-o", "/dev/null",
                                   "-o", "/dev/null", "-w", "%{http_code} ", *urls],
                           timeout=60, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual(cp.stdout.split(), ["200"] * 3)
        lines = [line for line in self.new_access_lines(sizes)["wifi"].splitlines() if "/1MB" in line]
        # One first request per app request (a host that serves downloads gets a small head
        # range first, the rest behind it: more lines, the same connection).
        self.assertEqual(len([line for line in lines if 'range="bytes=0-' in line]), 3, lines)
        self.assertEqual(len({re.search(r"conn=(\d+)", line)[1] for line in lines}), 1, lines)

    def test_a_kept_connection_the_server_closed_is_replaced(self):
        """The server claims keep-alive but closes: the next request goes again, on a new
        connection, and the app sees nothing of it."""
        server = self.lab.popen("inet", [sys.executable, TOOLS, "http-once", "--bind", WIFI_CDN,
                                         "--port", "8080", "--max-seconds", "60"],
                                stdout=subprocess.PIPE, text=True)
        try:
            self.assertIn("listening", server.stdout.readline())
            script = ("import socket,sys\n"
                      "s=socket.create_connection((sys.argv[1],8080),timeout=10)\n"
                      "out=b''\n"
                      "for path in (b'/a', b'/b'):\n"
                      "    s.sendall(b'GET '+path+b' HTTP/1.1\\r\\nHost: once.test\\r\\n\\r\\n')\n"
                      "    reply=b''\n"
                      "    while not reply.endswith(b'once:'+path):\n"
                      "        d=s.recv(4096)\n"
                      "        if not d: break\n"
                      "        reply+=d\n"
                      "    out+=reply.split(b'\\r\\n\\r\\n',1)[-1]+b' '\n"
                      "    import time; time.sleep(0.5)\n"
                      "print(out.decode())\n")
            cp = self.lab.exec("cli", [fleety_cli(), "run", "--", sys.executable, "-c", script,
                                       WIFI_CDN], timeout=60, capture_output=True, text=True,
                               net_only=True)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertEqual(cp.stdout.split(), ["once:/a", "once:/b"])
        finally:
            server.kill()
            server.wait(10)
        # Seen closed when taken from the pool (the FIN came while it was idle), or when the
        # request on it got no answer (the FIN came late): a new connection either way.
        self.assertRegex(self.fleetyd.log(), r"warm connection to once.test (on wifi )?was closed")

    def test_an_app_that_quits_mid_download_costs_nothing_else(self):
        """The app closes while fleetyd splices a body to it: that relay ends, fleetyd
        goes on (a write to a closed socket must not kill it) and serves the next app."""
        # wrk drops its 16 keep-alive connections at the end, mid-response: the way a
        # SIGPIPE from splice(2) once killed fleetyd.
        cp = self.lab.exec("cli", [fleety_cli(), "run", "--", "wrk", "-t1", "-c16", "-d2s",
                                   "-H", "Host: single.fleety.test", f"http://{WIFI_CDN}/1MB"],
                           timeout=30, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("requests in", cp.stdout)
        cp = self.lab.exec("cli", [fleety_cli(), "run", "--", "curl", "-sS", "--noproxy", "*",
                                   "--max-time", "0.5", "--limit-rate", "2M", "-H",
                                   "Host: single.fleety.test", "-o", "/dev/null",
                                   f"http://{WIFI_CDN}/100MB"],
                           timeout=30, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 28, cp.stderr)  # curl's own time limit
        time.sleep(0.5)
        self.assertIsNone(self.fleetyd.process.poll(), "fleetyd died:\n" + self.fleetyd.log()[-2000:])
        with tempfile.TemporaryDirectory(prefix="fleety-after-") as tmp:
            out = Path(tmp) / "body"
            t = self.run_app(["curl", "-sS", "--noproxy", "*", "-o", str(out), "-H",
                              "Host: single.fleety.test", f"http://{WIFI_CDN}/10MB"], out)
            self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
            self.assertLess(t.iface_rx["rmnet0"], 20_000, t.iface_rx)  # the rule: one path
        self.assertIn("one path (no feature rule for it)", self.fleetyd.log())

    def fleety(self, *args: str) -> subprocess.CompletedProcess:
        return self.lab.exec("cli", [fleety_cli(), *args], timeout=30, capture_output=True,
                             text=True, net_only=True)

    def test_status_for_people_and_scripts(self):
        cp = self.fleety("--json", "status")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        status = json.loads(cp.stdout)
        self.assertTrue(status["intercepting"])
        names = [p["name"] for p in status["paths"]]
        self.assertEqual(names, ["wifi", "cell"])
        for path in status["paths"]:
            self.assertEqual(set(path) >= {"name", "interface", "kind", "up", "rtt_ms",
                                           "throughput_mbps", "loss"}, True, path)
            self.assertTrue(path["up"])
        cp = self.fleety("status")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertRegex(cp.stdout, r"wifi\s+wlan0\s+wifi\s+up")
        self.assertIn("interception: on", cp.stdout)
        # (After the downloads above.) The telemetry of their single→multipath transitions
        # and the uid-selected app's bytes on cellular, from the path history.
        cp = self.fleety("--json", "stats")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        stats = json.loads(cp.stdout)
        self.assertGreaterEqual(stats["telemetry"]["transitions"], 1, stats)
        self.assertGreater(stats["telemetry"]["median_speedup"], 1.0, stats)
        by_app = {(a["app"], a["path"]): a["bytes"] for a in stats["apps"]}
        self.assertGreater(by_app.get(("uid-app", "cell"), 0), 1_000_000, stats)
        self.assertGreater(stats["cellular_bytes"], 1_000_000, stats)
        cp = self.fleety("--socket", "/nonexistent/control.sock", "status")
        self.assertEqual(cp.returncode, 1)
        self.assertIn("fleetyd is not running (nothing answers on /nonexistent/control.sock)",
                      cp.stderr)

    def test_apps_are_disabled_and_enabled_at_runtime(self):
        def curl_as_uid() -> dict[str, int]:
            with tempfile.TemporaryDirectory(prefix="fleety-uid-") as tmp:
                os.chmod(tmp, 0o777)
                out = Path(tmp) / "body"
                t = measured_download(self.lab, [
                    "setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups",
                    "curl", "-sS", "--noproxy", "*", "-o", str(out), "-H", f"Host: {HOST}",
                    f"http://{WIFI_CDN}/10MB"], out, 60, net_only=True)
                self.assertEqual(t.sha256, object_sha256("10MB"), t.stderr)
                return t.iface_rx

        cp = self.fleety("--json", "apps")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        apps = {a["name"]: a for a in json.loads(cp.stdout)["apps"]}
        self.assertTrue(apps["uid-app"]["enabled"])
        self.assertEqual(apps["uid-app"]["uid"], APP_UID)
        try:
            self.assertEqual(self.fleety("apps", "disable", "uid-app").returncode, 0)
            # Untouched now: nothing of it on cellular.
            self.assertLess(curl_as_uid()["rmnet0"], 20_000)
        finally:
            self.assertEqual(self.fleety("apps", "enable", "uid-app").returncode, 0)
        self.assertGreater(curl_as_uid()["rmnet0"], 1_000_000)
        cp = self.fleety("apps", "disable", "nobody")
        self.assertEqual(cp.returncode, 1)
        self.assertIn("no app named 'nobody'", cp.stderr)

    def test_a_disabled_run_app_is_not_started(self):
        self.assertEqual(self.fleety("run", "--app", "toggled", "--", "true").returncode, 0)
        self.assertEqual(self.fleety("apps", "disable", "toggled").returncode, 0)
        cp = self.fleety("run", "--app", "toggled", "--", "true")
        self.assertEqual(cp.returncode, 1)
        self.assertIn("app 'toggled' is disabled: fleety apps enable toggled", cp.stderr)
        # The rules let its cgroup pass meanwhile (a process already in it is untouched).
        listing = self.lab.exec("cli", ["nft", "list", "table", "inet", "fleety"], timeout=30,
                                capture_output=True, text=True).stdout
        # (nft shows the cgroup by its inode number where /sys/fs/cgroup is hidden.)
        self.assertRegex(listing, r'socket cgroupv2 level 2 \S+ return comment "disabled: fleety/toggled"')
        self.assertEqual(self.fleety("apps", "enable", "toggled").returncode, 0)
        self.assertEqual(self.fleety("run", "--app", "toggled", "--", "true").returncode, 0)

    def test_app_selected_by_uid_is_taken_over(self):
        with tempfile.TemporaryDirectory(prefix="fleety-uid-") as tmp:
            os.chmod(tmp, 0o777)
            out = Path(tmp) / "body"
            sizes = self.log_sizes()
            t = measured_download(self.lab, [
                "setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups",
                "curl", "-sS", "--noproxy", "*", "-o", str(out), "-H", f"Host: {HOST}",
                f"http://{WIFI_CDN}/10MB"], out, 60, net_only=True)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            self.assert_split_over_both_cdns(t, 10_000_000, sizes)

    def test_app_not_enabled_is_untouched(self):
        before = self.fleetyd.log()
        with tempfile.TemporaryDirectory(prefix="fleety-plain-") as tmp:
            out = Path(tmp) / "body"
            t = measured_download(self.lab, [
                "curl", "-sS", "--noproxy", "*", "-o", str(out), "-H", f"Host: {HOST}",
                f"http://{WIFI_CDN}/10MB"], out, 60, net_only=True)
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("10MB"))
        # Not one byte of it on cellular (a few hundred bytes of ARP/ND at most), and
        # fleetyd never saw it.
        self.assertLess(t.iface_rx["rmnet0"], 20_000, t.iface_rx)
        self.assertEqual(self.fleetyd.log()[len(before):].count("10MB"), 0)

    def test_plain_tcp_is_relayed_intact_both_ways(self):
        server = self.lab.popen("inet", [sys.executable, TOOLS, "echo-server", "--bind", WIFI_CDN,
                                         "--port", "7007", "--max-seconds", "60"],
                                stdout=subprocess.PIPE, text=True)
        try:
            self.assertIn("listening", server.stdout.readline())
            cp = self.lab.exec("cli", [fleety_cli(), "run", "--app", "echo", "--",
                                       sys.executable, TOOLS, "echo-client", "--dst", WIFI_CDN,
                                       "--port", "7007", "--bytes", "300000"],
                               timeout=60, capture_output=True, text=True, net_only=True)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            result = json.loads(cp.stdout)
            self.assertEqual(result["received"], 300_000, result)
            self.assertEqual(result["received_sha256"], result["sent_sha256"])
        finally:
            server.kill()
            server.wait(10)
        deadline = time.monotonic() + 5
        pattern = rf"TCP to {re.escape(WIFI_CDN)}:7007 relayed on wifi: 300000 up, 300000 down"
        while not re.search(pattern, self.fleetyd.log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertRegex(self.fleetyd.log(), pattern)

    def test_a_connection_to_the_listener_itself_is_refused(self):
        cp = self.lab.exec("cli", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:3129/"],
                           timeout=30, capture_output=True, text=True, net_only=True)
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("refused: no redirected destination", self.fleetyd.log())

    def test_fleety_run_fails_clearly_without_interception(self):
        # Another namespace of the lab has no fleety table.
        cp = self.lab.exec("wlan", [fleety_cli(), "run", "--", "true"], timeout=30,
                           capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("fleetyd is not intercepting here", cp.stderr)

    def test_y_dns_answered_by_cellular_when_wifi_resolver_is_dead(self):
        """The preferred path's resolver doesn't answer: the app still gets an answer,
        cellular's. (Runs late: it stops the lab's Wi-Fi resolver.)"""
        role = "dnsmasq-wifi"
        helpers = [h for h in self.lab.helpers() if h["role"] == role]
        self.assertEqual(len(helpers), 1, self.lab.helpers())
        os.kill(helpers[0]["pid"], 9)
        cp = self.lab.exec("cli", with_lab_resolv_conf(
            self.lab, [fleety_cli(), "run", "--", "getent", "ahostsv4", HOST]),
            timeout=30, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(CELL_CDN, cp.stdout)
        self.assertIn("answered by cell: wifi failed", self.fleetyd.log())

    def test_z_table_removed_on_exit_and_a_stale_one_at_start(self):
        def has_table() -> bool:
            return self.lab.exec("cli", ["nft", "list", "table", "inet", "fleety"], timeout=30,
                                 capture_output=True).returncode == 0

        self.assertTrue(has_table())
        self.fleetyd.stop()
        self.assertFalse(has_table(), "fleetyd left its table behind")
        # A crash (SIGKILL) takes it along: it is owned by fleetyd's netlink socket.
        crashed = Fleetyd(self.lab, config_text=CONFIG, net_only=True)
        crashed.start()
        self.assertTrue(has_table())
        crashed.process.kill()
        crashed.process.wait(10)
        self.assertFalse(has_table(), "the table outlived fleetyd's SIGKILL")
        # One an older fleetyd left (no owner) is removed by the next fleetyd without
        # interception, and replaced by one with interception.
        self.lab.exec("cli", ["nft", "add table inet fleety"], timeout=30, check=True,
                      net_only=True)
        with Fleetyd(self.lab, net_only=True) as plain:
            self.assertIn("removed a stale table inet fleety", plain.log())
            self.assertFalse(has_table())
        self.lab.exec("cli", ["nft", "add table inet fleety"], timeout=30, check=True,
                      net_only=True)
        with Fleetyd(self.lab, config_text=CONFIG, net_only=True) as replacing:
            self.assertIn("owned by fleetyd", replacing.log())
            self.assertTrue(has_table())
        self.assertFalse(has_table())


if __name__ == "__main__":
    unittest.main(verbosity=2)
