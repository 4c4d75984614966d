#!/usr/bin/env python3
"""fleetyd as an explicit HTTP proxy in the two-path lab (issue 3).

curl in the client namespace downloads through fleetyd; every test checks what the
app received (sha256, status) and where the bytes went (interface counters in the
client namespace, the CDNs' access logs). Paths are shaped faster than in the
benchmark to keep the suite quick; realistic rates belong to bench/aggregation.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import ensure_object  # noqa: E402
from harness import Fleetyd, LabTestCase, curl, fleety_cli, minimal_config, object_sha256  # noqa: E402

PREFIX = "flp"
CDN_URL = "http://cdn.fleety.test"
SUMMARY = re.compile(r"→ 200 multipath: .*?; (?P<paths>.*)$", re.M)
PATH_PART = re.compile(r"(?P<name>\w+): (?P<bytes>\d+) bytes \(planned (?P<planned>\d+), (?P<ranges>\d+) ranges, (?P<stolen>\d+) taken over\)")


def multipath_summaries(log: str) -> list[dict[str, dict[str, int]]]:
    """Per multipath download in fleetyd's log: {path: {bytes, planned, ranges}}."""
    out = []
    for m in SUMMARY.finditer(log):
        out.append({p["name"]: {k: int(p[k]) for k in ("bytes", "planned", "ranges", "stolen")}
                    for p in PATH_PART.finditer(m["paths"])})
    return out


def vm_kib(pid: int, key: str) -> int:
    """VmRSS, VmHWM... of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB$", status, re.M)[1])


class ProxyInLab(LabTestCase):
    prefix = PREFIX
    fleetyd: Fleetyd

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="80mbit/5ms", cell="50mbit/10ms")
        cls.fleetyd = Fleetyd(cls.lab)
        cls.fleetyd.start()
        time.sleep(1)  # settled: its threads (log, history) and nft context up
        cls.idle_rss_kib = vm_kib(cls.fleetyd.process.pid, "VmRSS")

    def fetch_split(self, name: str, url: str | None = None):
        before = len(multipath_summaries(self.fleetyd.log()))
        t = curl(self.lab, url or f"{CDN_URL}/{name}", proxy=self.fleetyd.proxy_url, timeout=120)
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.http_code, "200")
        self.assertEqual(t.sha256, object_sha256(name), "the app received other bytes than the origin's")
        summaries = multipath_summaries(self.fleetyd.log())
        self.assertEqual(len(summaries), before + 1, "fleetyd did not report one multipath download")
        return t, summaries[-1]

    def assert_split_matches_interfaces(self, t, summary, size: int):
        wifi, cell = summary["wifi"], summary["cell"]
        # Both paths carried a real part of the object, and every byte came once. (Cost
        # mode: Wi-Fi is filled up to the tolerance first, so 10 MB at 80 Mbit/s — just
        # over a second on Wi-Fi alone — leaves cellular a small part.)
        self.assertGreater(wifi["bytes"], size * 0.1, summary)
        self.assertGreater(cell["bytes"], size * 0.04, summary)
        self.assertEqual(wifi["bytes"] + cell["bytes"], size, summary)
        self.assertEqual(wifi["planned"] + cell["planned"], size, summary)
        # The bytes counted on each interface match the scheduler's split within 10% of
        # the object size (the counters include TCP/IP headers, ~4.5%, and what a path
        # received past the point where it was stopped).
        rx_wlan, rx_rmnet = t.iface_rx["wlan0"], t.iface_rx["rmnet0"]
        self.assertLessEqual(abs(rx_wlan - wifi["planned"]), 0.10 * size,
                             f"wlan0 received {rx_wlan}, planned {wifi['planned']}")
        self.assertLessEqual(abs(rx_rmnet - cell["planned"]), 0.10 * size,
                             f"rmnet0 received {rx_rmnet}, planned {cell['planned']}")
        # Waste stays bounded: headers plus the in-flight bytes of stopped responses.
        self.assertLess(rx_wlan + rx_rmnet, size * 1.10, t.iface_rx)
        print(f"{size} B: wlan0 rx {rx_wlan} (planned {wifi['planned']}), rmnet0 rx {rx_rmnet} "
              f"(planned {cell['planned']}), overhead {(rx_wlan + rx_rmnet) / size - 1:.3f}")

    def test_10MB_split_over_both_paths(self):
        t, summary = self.fetch_split("10MB")
        self.assert_split_matches_interfaces(t, summary, 10_000_000)

    def test_100MB_split_over_both_paths(self):
        t, summary = self.fetch_split("100MB")
        self.assert_split_matches_interfaces(t, summary, 100_000_000)
        print(f"100MB through fleety: {t.mbit_s:.1f} Mbit/s, {summary}")
        # The reorder buffer (up to memory_per_session, 32 MiB) is given back to the system
        # once no download is under way, not kept by the allocator at its peak.
        pid = self.fleetyd.process.pid
        rss_kib, peak_kib = vm_kib(pid, "VmRSS"), vm_kib(pid, "VmHWM")
        print(f"fleetyd VmRSS {rss_kib} KiB after the downloads (idle before: "
              f"{self.idle_rss_kib} KiB), peak {peak_kib} KiB")
        # (Kept by glibc without malloc_trim: ~16 MiB more than idle here.)
        self.assertLess(rss_kib, self.idle_rss_kib + 6 * 1024,
                        f"fleetyd keeps {rss_kib} KiB, {self.idle_rss_kib} KiB idle "
                        f"(peak {peak_kib} KiB)")

    def test_status_shows_the_download_under_way(self):
        """`fleety status` lists a multipath download while it runs: its progress and
        each path's part (issue 7)."""
        result = {}
        download = threading.Thread(target=lambda: result.update(t=curl(
            self.lab, f"{CDN_URL}/100MB", proxy=self.fleetyd.proxy_url, timeout=120)))
        download.start()
        seen = None
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and download.is_alive():
                cp = self.lab.exec("cli", [fleety_cli(), "--socket", str(self.fleetyd.control_socket),
                                           "--json", "status"], timeout=10,
                                   capture_output=True, text=True)
                self.assertEqual(cp.returncode, 0, cp.stderr)
                downloads = json.loads(cp.stdout)["downloads"]
                if downloads and all(p["bytes"] > 0 for p in downloads[0]["paths"]):
                    seen = downloads[0]
                    human = self.lab.exec("cli", [fleety_cli(), "--socket",
                                                  str(self.fleetyd.control_socket), "status"],
                                          timeout=10, capture_output=True, text=True).stdout
                    break
                time.sleep(0.3)
        finally:
            download.join()
        self.assertEqual(result["t"].sha256, object_sha256("100MB"))
        self.assertIsNotNone(seen, "no download in fleety status while it ran")
        print(f"status during the download: {seen}")
        self.assertTrue(seen["url"].endswith("/100MB"), seen)
        self.assertEqual(seen["size"], 100_000_000)
        self.assertGreater(seen["delivered"], 0)
        self.assertLess(seen["delivered"], 100_000_000)
        self.assertEqual({p["path"] for p in seen["paths"]}, {"wifi", "cell"})
        self.assertLessEqual(sum(p["bytes"] for p in seen["paths"]), 100_000_000)
        self.assertIn("/100MB", human)
        self.assertRegex(human, r"wifi [0-9.]+ [KM]iB")
        # Gone once it ended.
        cp = self.lab.exec("cli", [fleety_cli(), "--socket", str(self.fleetyd.control_socket),
                                   "--json", "status"], timeout=10, capture_output=True, text=True)
        self.assertEqual(json.loads(cp.stdout)["downloads"], [])

    def test_each_path_asks_its_own_cdn(self):
        """Each path's requests go to the address its own resolver gave, Host unchanged."""
        state = Path(self.lab.info()["state_dir"])
        logs = {n: state / f"nginx-{n}.access.log" for n in ("wifi", "cell")}
        sizes = {n: p.stat().st_size if p.exists() else 0 for n, p in logs.items()}
        self.fetch_split("10MB")
        new = {n: p.read_text()[sizes[n]:] for n, p in logs.items()}
        # The wifi CDN (198.18.10.1) saw range requests only from the wlan0 address and
        # the cell CDN (198.18.20.1) only from the rmnet0 address.
        self.assertIn("198.18.1.2 198.18.10.1:80", new["wifi"])
        self.assertIn("198.18.2.2 198.18.20.1:80", new["cell"])
        self.assertNotIn("198.18.2.2", new["wifi"])
        self.assertNotIn("198.18.1.2", new["cell"])
        self.assertIn('range="bytes=', new["cell"])

    def test_literal_address_url_is_split_too(self):
        t, summary = self.fetch_split("10MB", url="http://198.18.10.1/10MB")
        self.assertGreater(summary["cell"]["bytes"], 0)
        self.assertGreater(t.iface_rx["rmnet0"], 1_000_000)

    def test_1MB_stays_on_wifi_in_cost_mode(self):
        """Cost mode: Wi-Fi alone fetches 1 MB well within the tolerance, so cellular
        carries none of it — whether it comes whole (a host with no downloads yet) or, for
        a host predicted to serve downloads, as a small head range and the rest behind it
        on the same Wi-Fi connection."""
        t = curl(self.lab, f"{CDN_URL}/1MB", proxy=self.fleetyd.proxy_url, timeout=60)
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("1MB"))
        self.assertGreater(t.iface_rx["wlan0"], 1_000_000)
        # Not a byte of the object on cellular (a few hundred bytes of ARP/ND at most).
        self.assertLess(t.iface_rx["rmnet0"], 20_000, t.iface_rx)
        self.assertRegex(self.fleetyd.log(),
                         r"/1MB → 200 (one path \(small object\)|multipath: .* cell: 0 bytes)")

    def test_errors_reach_the_app_unchanged(self):
        t = curl(self.lab, f"{CDN_URL}/no-such-object", proxy=self.fleetyd.proxy_url, timeout=30)
        self.assertEqual(t.http_code, "404")
        t = curl(self.lab, "http://nonexistent.fleety.test/x", proxy=self.fleetyd.proxy_url, timeout=30)
        self.assertEqual(t.http_code, "502")

    def test_head_and_post_pass_through_on_one_path(self):
        t = curl(self.lab, f"{CDN_URL}/100MB", proxy=self.fleetyd.proxy_url, timeout=30,
                 extra=["-I", "-D", "/dev/stdout", "-w", ""])
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertIn("HTTP/1.1 200", t.http_code)
        self.assertIn("Content-Length: 100000000", t.http_code)
        self.assertLess(t.iface_rx["wlan0"] + t.iface_rx["rmnet0"], 20_000, "HEAD fetched a body")
        # nginx refuses POST on a static file: the 405 reaches the app as it is.
        t = curl(self.lab, f"{CDN_URL}/1MB", proxy=self.fleetyd.proxy_url, timeout=30,
                 extra=["--data-binary", "hello"])
        self.assertEqual(t.http_code, "405")

    def test_smuggling_vectors_get_400_and_a_log_line(self):
        """RFC 9112 §6.1, §6.3: requests whose body length is ambiguous are refused."""
        cases = {
            "Content-Length with Transfer-Encoding":
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "conflicting Content-Length": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "Transfer-Encoding not ending in chunked": b"Transfer-Encoding: gzip\r\n\r\n",
            "negative Content-Length": b"Content-Length: -1\r\n\r\n",
            "space before colon": b"Host : x\r\n\r\n",
        }
        raw = str(REPO / "tests" / "e2e" / "raw_http.py")
        for name, tail in cases.items():
            request = b"POST http://cdn.fleety.test/1MB HTTP/1.1\r\nHost: cdn.fleety.test\r\n" + tail
            cp = self.lab.exec("cli", [sys.executable, raw, "127.0.0.1", "3128"], input=request,
                               timeout=30, capture_output=True)
            self.assertEqual(cp.stdout.decode().strip(), "HTTP/1.1 400 Bad Request", f"{name}: {cp}")
        big = b"GET http://cdn.fleety.test/1MB HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
        cp = self.lab.exec("cli", [sys.executable, raw, "127.0.0.1", "3128"], input=big, timeout=30,
                           capture_output=True)
        self.assertEqual(cp.stdout.decode().strip(), "HTTP/1.1 431 Request Header Fields Too Large")
        log = self.fleetyd.log()
        for line in ("bad Transfer-Encoding", "multiple Content-Length", "without final chunked",
                     "bad Content-Length", "bad field", "header limit exceeded"):
            self.assertIn(line, log)

    def test_keep_alive_serves_several_requests_on_one_connection(self):
        # curl reuses its proxy connection for URLs given together.
        t = curl(self.lab, f"{CDN_URL}/1MB", proxy=self.fleetyd.proxy_url, timeout=60,
                 extra=[f"{CDN_URL}/1MB", "-o", "/dev/null", "-w", "%{http_code} %{num_connects} "])
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("1MB"))
        self.assertEqual(t.http_code.split(), ["200", "1", "200", "0"])

    def fleetyd_connections_on(self, address: str, daemon: Fleetyd) -> list[str]:
        """The daemon's established connections from `address` (not the class's fleetyd's:
        it keeps warm connections of its own)."""
        cp = self.lab.exec("cli", ["ss", "-Htnp", "state", "established", "src", address],
                           capture_output=True, text=True, timeout=10)
        return [line for line in cp.stdout.splitlines()
                if line.strip() and f"pid={daemon.process.pid}," in line]

    def test_aggregate_mode_connects_early_and_closes_what_it_does_not_use(self):
        """mode = "aggregate": for a GET predicted to be a download (issue 16/17: this
        host served a download lately), cellular connects while Wi-Fi waits for the
        response header. A split download takes that connection; one that stays on Wi-Fi
        closes it having carried nothing but a handshake (no warm connections kept here:
        idle_connections = 0). A GET not predicted opens nothing there."""
        config = (minimal_config(3129).replace("[proxy]\n", "[proxy]\nidle_connections = 0\n")
                  + '\n[scheduler]\nmode = "aggregate"\n')
        self.assertIn("idle_connections = 0", config)
        # Below what makes a host "serving downloads" (512 KiB), and within a predicted
        # download's head range (256 KiB): the first response is all of it.
        small = "200KB"
        ensure_object(small)
        rmnet_address = "198.18.2.2"
        with Fleetyd(self.lab, config_text=config, port=3129, log_level="debug") as daemon:
            # A host with no downloads yet: nothing on cellular, not even a handshake.
            t = curl(self.lab, f"{CDN_URL}/{small}", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256(small))
            self.assertLess(t.iface_rx["rmnet0"], 1_000, t.iface_rx)
            # Its first large GET still splits once the answer says it is large.
            t = curl(self.lab, f"{CDN_URL}/10MB", proxy=daemon.proxy_url, timeout=120)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            self.assertGreater(multipath_summaries(daemon.log())[-1]["cell"]["bytes"], 1_000_000)
            self.assertNotRegex(daemon.log(), r"path cell: takes the connection it opened early")

            # Now predicted: an early connection, closed unused for a small object.
            t = curl(self.lab, f"{CDN_URL}/{small}", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.exit_code, 0, t.stderr)
            self.assertEqual(t.sha256, object_sha256(small))
            self.assertLess(t.iface_rx["rmnet0"], 20_000, t.iface_rx)
            deadline = time.monotonic() + 3
            while self.fleetyd_connections_on(rmnet_address, daemon) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(self.fleetyd_connections_on(rmnet_address, daemon), [],
                             "the unused early connection on cellular stayed open")

            # ... and taken by a split download.
            t = curl(self.lab, f"{CDN_URL}/10MB", proxy=daemon.proxy_url, timeout=120)
            self.assertEqual(t.exit_code, 0, t.stderr)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            summary = multipath_summaries(daemon.log())[-1]
            self.assertGreater(summary["cell"]["bytes"], 1_000_000, summary)
            # Taken as it is, or — the paths' rates being measured now — it carried
            # cellular's part, asked for before the first answer (issue 17).
            self.assertRegex(daemon.log(), r"path cell: takes the connection it opened early|"
                                           r"\[\d+\] path cell asks for \[\d+, 10000000\)")

    def test_warm_connections_serve_the_next_downloads_of_any_app_connection(self):
        """Issue 16 item 3 / issue 17 item 1: each path's connection to its node stays
        warm after a download and the next download's ranges, from another app
        connection, go on it: the cell node sees fewer connections than downloads, every
        body exact, and `fleety status` counts the reuses."""
        state = Path(self.lab.info()["state_dir"])
        cell_log = state / "nginx-cell.access.log"
        start = cell_log.stat().st_size if cell_log.exists() else 0
        for _ in range(3):
            self.fetch_split("10MB")
        lines = [line for line in cell_log.read_text()[start:].splitlines() if "/10MB" in line]
        connections = {re.search(r"conn=(\d+)", line)[1] for line in lines}
        self.assertGreaterEqual(len(lines), 3, lines)
        self.assertLess(len(connections), 3, f"every download opened its own cell connections: {lines}")
        cp = self.lab.exec("cli", [fleety_cli(), "--socket", str(self.fleetyd.control_socket),
                                   "--json", "status"], timeout=10, capture_output=True, text=True)
        warm = json.loads(cp.stdout)["warm_connections"]
        self.assertGreater(warm["reused"], 0, warm)
        self.assertLessEqual(warm["idle"], 32, warm)
        cp = self.lab.exec("cli", [fleety_cli(), "--socket", str(self.fleetyd.control_socket),
                                   "status"], timeout=10, capture_output=True, text=True)
        self.assertRegex(cp.stdout, r"warm connections: \d+ idle, [1-9]\d* requests reused one")


class SegmentsInLab(LabTestCase):
    """A player's segments one after another (issue 17), at the rates of bench/segments:
    both paths 20 Mbit/s, RTT 50 ms."""

    prefix = "flw"  # (each lab test its own prefix: e2e.get has flg)
    aggregate = minimal_config() + '\n[scheduler]\nmode = "aggregate"\n'

    @classmethod
    def set_up_lab(cls):
        # /cell-norange/NAME.zip: the object under a download's name; the cellular node
        # ignores Range there (200 with the whole body, as some origins behind a CDN do).
        named = '"^/cell-norange/(?<object>[0-9]+[KMG]B)\\.zip$"'
        cls.lab.up(wifi="20mbit/25ms", cell="20mbit/25ms", extra_server={
            "wifi": f"location ~ {named} {{ try_files /$object =404; }}",
            "cell": f"location ~ {named} {{ try_files /$object =404; max_ranges 0; }}"})

    def cell_access_log(self) -> tuple[Path, int]:
        """The cellular CDN node's access log, and where the lines from now on start."""
        cell_log = Path(self.lab.info()["state_dir"]) / "nginx-cell.access.log"
        return cell_log, cell_log.stat().st_size if cell_log.exists() else 0

    def test_segments_are_split_from_their_first_round_trip(self):
        """Issue 17: a player's next segment (the host's last download had 2 MB) is split
        before its answer is known: cellular asks for its part at once, on its warm
        connection. A smaller object in between (100 kB) costs cellular one 416 for its
        guessed part, and that connection stays warm for the next segment. Every body
        exact."""
        config = self.aggregate
        ensure_object("2MB")
        ensure_object("100KB")
        cell_log, start = self.cell_access_log()
        with Fleetyd(self.lab, config_text=config, log_level="debug") as daemon:
            for i, obj in enumerate(["2MB", "2MB", "100KB", "2MB"]):
                t = curl(self.lab, f"{CDN_URL}/{obj}?seg={i}", proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.exit_code, 0, t.stderr)
                self.assertEqual(t.sha256, object_sha256(obj), f"segment {i}")
            log = daemon.log()
        self.assertRegex(log, r"path cell asks for \[\d+, 2000000\) of the 1.9 MiB")
        lines = cell_log.read_text()[start:].splitlines()
        small = [line for line in lines if "/100KB?seg=2" in line]
        self.assertEqual(len(small), 1, lines)
        self.assertIn(" 416 ", small[0])
        after = [line for line in lines if "/2MB?seg=3" in line]
        self.assertTrue(after, lines)
        conn = lambda line: re.search(r"conn=(\d+)", line)[1]  # noqa: E731
        self.assertEqual(conn(after[0]), conn(small[0]),
                         "the connection that got the 416 was not kept for the next segment")
        # The next segment's cellular part was asked before its answer, not after.
        self.assertRegex(log, r"\[4\] path cell asks for")

    def test_a_first_contact_named_like_a_download_asks_cellular_for_its_end_at_once(self):
        """Issue 17: a fresh fleetyd, a URL that names a download (/10MB.zip): cellular
        asks for the object's last bytes (`bytes=-N`) as soon as it is connected, before
        anyone knows the size, and goes on from there; the body is exact. A small object
        under such a name (100 kB) costs cellular at most that suffix, and its connection
        stays warm for the next request."""
        config = self.aggregate
        ensure_object("10MB")
        ensure_object("100KB")
        cell_log, start = self.cell_access_log()
        with Fleetyd(self.lab, config_text=config, log_level="debug") as daemon:
            t = curl(self.lab, f"{CDN_URL}/100KB.zip", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.exit_code, 0, t.stderr)
            self.assertEqual(t.sha256, object_sha256("100KB"))
            self.assertLess(t.iface_rx["rmnet0"], 192 * 1024 + 64 + 20_000, t.iface_rx)

            t = curl(self.lab, f"{CDN_URL}/10MB.zip", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.exit_code, 0, t.stderr)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            summary = multipath_summaries(daemon.log())[-1]
            self.assertGreater(summary["cell"]["bytes"], 2_000_000, summary)
            self.assertRegex(daemon.log(), r"\[2\] path cell asks for the last 192.0 KiB")
        lines = cell_log.read_text()[start:].splitlines()
        small = [line for line in lines if "/100KB.zip" in line]
        self.assertEqual(len(small), 1, lines)
        self.assertIn('range="bytes=-196672" 206', small[0])
        big = [line for line in lines if "/10MB.zip" in line]
        self.assertTrue(big and 'range="bytes=-196672" 206' in big[0], lines)
        conn = lambda line: re.search(r"conn=(\d+)", line)[1]  # noqa: E731
        self.assertEqual(conn(big[0]), conn(small[0]),
                         "the connection that brought the unused suffix was not kept warm")

    def test_a_suffix_answered_with_the_whole_object_costs_cellular_little(self):
        """Issue 17 against a node that ignores Range: the first contact's suffix ask
        (`bytes=-N`) gets 200 and the whole 10 MB. The path reads the header, lets the
        answer go and is off the host (not another version); the app gets the exact
        object from Wi-Fi, and cellular carries a few round trips of that answer, not the
        object."""
        config = self.aggregate
        ensure_object("10MB")
        cell_log, start = self.cell_access_log()
        with Fleetyd(self.lab, config_text=config, log_level="debug") as daemon:
            t = curl(self.lab, f"{CDN_URL}/cell-norange/10MB.zip", proxy=daemon.proxy_url, timeout=60)
            # The next download from the host asks nothing of that node meanwhile.
            again = curl(self.lab, f"{CDN_URL}/cell-norange/10MB.zip?again", proxy=daemon.proxy_url,
                         timeout=60)
            log = daemon.log()
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("10MB"))
        self.assertEqual(again.sha256, object_sha256("10MB"), again.stderr)
        lines = [line for line in cell_log.read_text()[start:].splitlines() if "/cell-norange/" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn('range="bytes=-196672" 200', lines[0])
        self.assertRegex(log, r"path cell: .*with 200 .*not using this path")
        self.assertNotIn("two versions", log)
        self.assertLess(t.iface_rx["rmnet0"], 100_000, t.iface_rx)
        print(f"suffix answered with 200: cellular carried {t.iface_rx['rmnet0']} bytes; "
              + next(line for line in log.splitlines() if "not using this path" in line))

    def test_a_restarted_fleetyd_still_knows_the_host_and_the_paths_rates(self):
        """Issue 17: what a download taught (the host serves 10 MB objects, each path's
        rate; Wi-Fi 50 Mbit/s here) is in the history: a fleetyd started again on it asks cellular for its part
        of the next 10 MB before the first answer, sized by the rates it measured, not
        by the defaults (an even split would give cellular half)."""
        ensure_object("10MB")
        self.lab.set_path("wifi", spec="50mbit/25ms")
        self.addCleanup(self.lab.set_path, "wifi", spec="20mbit/25ms")
        with tempfile.TemporaryDirectory(prefix="fleety-history-") as state:
            config = self.aggregate + f'\n[monitor]\nhistory = "{state}/history.db"\n'
            with Fleetyd(self.lab, config_text=config) as daemon:
                t = curl(self.lab, f"{CDN_URL}/10MB?first", proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.sha256, object_sha256("10MB"))
            with Fleetyd(self.lab, config_text=config, log_level="debug") as daemon:
                t = curl(self.lab, f"{CDN_URL}/10MB?second", proxy=daemon.proxy_url, timeout=60)
                self.assertEqual(t.exit_code, 0, t.stderr)
                self.assertEqual(t.sha256, object_sha256("10MB"))
                log = daemon.log()
        self.assertRegex(log, r"path wifi: rate measured within the last hour")
        asked = re.search(r"\[1\] path cell asks for \[(\d+), 10000000\) of the 9.5 MiB", log)
        self.assertTrue(asked, log[-3000:])
        # Wi-Fi 50, cellular 20 Mbit/s: cellular's part is the last 25-35 %, where the
        # defaults (both 10 Mbit/s) would have asked for the last half.
        self.assertGreater(int(asked[1]), 6_300_000, asked[0])
        self.assertLess(int(asked[1]), 7_800_000, asked[0])
        self.assertGreater(multipath_summaries(log)[-1]["cell"]["bytes"], 2_000_000)


if __name__ == "__main__":
    unittest.main(verbosity=2)
