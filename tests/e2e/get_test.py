#!/usr/bin/env python3
"""`fleety get` in the lab (issue 7, item 2): the download client without the daemon.

Over the lab's two 20 Mbit/s paths (RTT 50 ms), for http:// and https:// (a verified TLS
connection on every path, against the lab's test CA):
- the file's sha256 is the object's, every interface carried its share, and the rate is at
  least 0.90 of the two paths alone measured in the same run;
- an interrupted download resumes where the file ends, fetching only the rest;
- an untrusted certificate, a 404, a wrong --sha256 and a file that is not ours each end
  with one clear line and a non-zero exit, and lose nothing;
- a redirect is followed, a single path works alone, and a path that goes down
  mid-download leaves the rest to the other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import ANYCAST_DNS  # noqa: E402
from harness import LabTestCase, curl, fleety_cli, object_sha256  # noqa: E402

PREFIX = "flg"
SPEC = "20mbit/25ms"
BIG = "100MB"
BIG_SIZE = 100_000_000
TWO_PATHS = ["--path", "wlan0:wifi", "--path", "rmnet0:cellular", "--dns", ANYCAST_DNS]
MIN_AGGREGATION = 0.90
# A redirect on both CDNs, for the client to follow.
REDIRECT = ("        location = /moved { return 302 /10MB; }\n"
            "        location = /downgrade { return 302 http://cdn.fleety.test/10MB; }\n")


def file_sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class FleetyGet(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi=SPEC, cell=SPEC, extra_server=REDIRECT)
        cls.ca = cls.lab.info()["tls"]["ca"]
        cls.other_ca = cls.lab.info()["tls"]["other_ca"]
        cls.fleety = fleety_cli()
        # Each path alone, measured here: the baseline of the aggregation (a fixed 6 s of
        # the big object, as the rate of a long download).
        rates = {}
        for path, iface in (("wifi", "wlan0"), ("cell", "rmnet0")):
            cdn = cls.lab.info()["paths"][path]["cdn"]
            t = curl(cls.lab, f"http://{cdn}/{BIG}", interface=iface, extra=["--max-time", "6"],
                     timeout=20)
            rates[path] = t.body_bytes / t.seconds
        cls.single_Bps = rates
        print(f"alone: wlan0 {rates['wifi'] * 8e-6:.1f} Mbit/s, "
              f"rmnet0 {rates['cell'] * 8e-6:.1f} Mbit/s")

    def setUp(self):
        for path in ("wifi", "cell"):
            self.lab.set_path(path, link="up")
        self.dir = Path(tempfile.mkdtemp(prefix="fleety-get-"))

    def tearDown(self):
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()

    def get(self, url: str, *args: str, paths=TWO_PATHS, timeout: float = 120,
            interrupt_after: float | None = None) -> tuple[subprocess.CompletedProcess, dict, float]:
        """Runs `fleety get --json` in the client namespace; its result, its JSON summary
        and the bytes each interface received meanwhile."""
        argv = [self.fleety, "get", url, *paths, "--json", *args]
        before = self.lab.iface_bytes()
        start = time.monotonic()
        p = subprocess.Popen(self.lab.enter("cli") + argv, cwd=self.dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        if interrupt_after is not None:
            time.sleep(interrupt_after)
            p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            self.fail(f"fleety get did not end within {timeout} s: {err[-2000:]}")
        seconds = time.monotonic() - start
        after = self.lab.iface_bytes()
        rx = {k: after[k]["rx"] - before[k]["rx"] for k in after}
        cp = subprocess.CompletedProcess(argv, p.returncode, out, err)
        summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        summary["_rx"] = rx
        return cp, summary, seconds

    def assert_aggregates(self, url: str, *args: str):
        cp, s, seconds = self.get(url, *args)
        self.assertEqual(cp.returncode, 0, cp.stderr[-3000:])
        self.assertEqual(file_sha256(self.dir / BIG), object_sha256(BIG))
        self.assertEqual(s["sha256"], object_sha256(BIG))
        self.assertEqual(s["bytes"], BIG_SIZE)
        self.assertTrue(s["multipath"])
        rate = BIG_SIZE / s["seconds"]
        alone = self.single_Bps["wifi"] + self.single_Bps["cell"]
        aggregation = rate / alone
        print(f"{url}: {rate * 8e-6:.1f} Mbit/s = {aggregation:.2f} of both alone; "
              f"rx wlan0 {s['_rx']['wlan0']}, rmnet0 {s['_rx']['rmnet0']}; paths {s['paths']}")
        # Equal rates: each path carries about half, counted by the kernel on its interface.
        for iface in ("wlan0", "rmnet0"):
            self.assertGreater(s["_rx"][iface], 0.35 * BIG_SIZE, s["_rx"])
        by_name = {p["interface"]: p["bytes"] for p in s["paths"]}
        self.assertEqual(set(by_name), {"wlan0", "rmnet0"})
        for iface, carried in by_name.items():
            # The client's own count of the bodies is within the interface's count.
            self.assertLessEqual(carried, s["_rx"][iface])
        self.assertGreaterEqual(aggregation, MIN_AGGREGATION, cp.stderr[-2000:])

    def test_http_aggregates_both_paths(self):
        self.assert_aggregates(f"http://cdn.fleety.test/{BIG}")

    def test_https_aggregates_both_paths_with_verified_tls(self):
        self.assert_aggregates(f"https://cdn.fleety.test/{BIG}", "--cacert", self.ca)
        # Both CDNs' access logs show TLS requests: every path spoke TLS to its own CDN.
        for cdn in ("wifi", "cell"):
            log = (self.lab.state_dir / f"nginx-{cdn}.access.log").read_text()
            tls_ranges = [l for l in log.splitlines() if f"/{BIG}" in l and "tls=TLSv1" in l]
            self.assertGreater(len(tls_ranges), 3, f"{cdn}: {log[-1500:]}")

    def test_interrupted_download_resumes_where_the_file_ends(self):
        url = f"http://cdn.fleety.test/{BIG}"
        cp, s, _ = self.get(url, interrupt_after=4.0)
        self.assertEqual(cp.returncode, 130, cp.stderr[-2000:])
        self.assertIn("run the same command again to resume", cp.stderr)
        # The bytes so far are in FILE.part: FILE appears only whole.
        self.assertFalse((self.dir / BIG).exists(), "an incomplete file has the object's name")
        kept = (self.dir / f"{BIG}.part").stat().st_size
        self.assertGreater(kept, 1_000_000)
        self.assertLess(kept, BIG_SIZE)
        self.assertTrue((self.dir / f"{BIG}.fleety").exists())
        cp, s, _ = self.get(url)
        self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
        self.assertIn("resuming at", cp.stderr)
        self.assertEqual(s["resumed_from"], kept)
        self.assertEqual(s["fetched"], BIG_SIZE - kept)
        self.assertEqual(file_sha256(self.dir / BIG), object_sha256(BIG))
        self.assertFalse((self.dir / f"{BIG}.fleety").exists(), "the record outlived the download")
        self.assertFalse((self.dir / f"{BIG}.part").exists(), "the partial file outlived the download")
        # Only the rest came over the network (plus overlaps, headers, acks' worth).
        received = s["_rx"]["wlan0"] + s["_rx"]["rmnet0"]
        print(f"resumed at {kept}: received {received} for the {BIG_SIZE - kept} left")
        self.assertLess(received, (BIG_SIZE - kept) * 1.08 + 200_000)

    def test_force_keeps_the_old_file_until_the_new_one_is_whole(self):
        url = f"http://cdn.fleety.test/{BIG}"
        mine = self.dir / BIG
        mine.write_bytes(b"the user's old version")
        cp, _, _ = self.get(url, "--force", interrupt_after=3.0)
        self.assertEqual(cp.returncode, 130, cp.stderr[-2000:])
        self.assertEqual(mine.read_bytes(), b"the user's old version")
        self.assertGreater((self.dir / f"{BIG}.part").stat().st_size, 0)
        cp, s, _ = self.get(url)  # resumes the partial download: its record says so
        self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
        self.assertGreater(s["resumed_from"], 0)
        self.assertEqual(file_sha256(mine), object_sha256(BIG))
        self.assertFalse((self.dir / f"{BIG}.part").exists())

    def test_continue_resumes_a_whole_file_in_place(self):
        # curl -C - style: FILE holds the first MB of the object, no record.
        cp, _, _ = self.get("http://cdn.fleety.test/10MB", "-o", "whole", timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
        whole = self.dir / "whole"
        with open(whole, "r+b") as f:
            f.truncate(1_000_000)
        cp, s, _ = self.get("http://cdn.fleety.test/10MB", "-o", "whole", "--continue", timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
        self.assertEqual(s["resumed_from"], 1_000_000)
        self.assertEqual(file_sha256(whole), object_sha256("10MB"))
        self.assertFalse((self.dir / "whole.part").exists())

    def test_cacert_replaces_the_system_trust_store(self):
        # The "system" store (OpenSSL's SSL_CERT_FILE) trusts the lab's CA: a download
        # without --cacert works; with --cacert naming another CA the lab's is not trusted.
        os.environ["SSL_CERT_FILE"] = self.ca
        try:
            cp, _, _ = self.get("https://cdn.fleety.test/1MB", "-o", "system", timeout=30)
            self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
            cp, _, _ = self.get("https://cdn.fleety.test/1MB", "--cacert", self.other_ca, "-o",
                                "replaced", timeout=30)
        finally:
            del os.environ["SSL_CERT_FILE"]
        self.assertNotEqual(cp.returncode, 0, "--cacert added to the trust store")
        self.assertIn("certificate", cp.stderr)

    def test_untrusted_certificate_is_refused_on_every_path(self):
        cp, s, _ = self.get("https://cdn.fleety.test/10MB", "--cacert", self.other_ca, timeout=30)
        self.assertEqual(cp.returncode, 1)
        lines = [l for l in cp.stderr.splitlines() if l.startswith("fleety get:")]
        self.assertEqual(len(lines), 1, cp.stderr)
        self.assertIn("certificate verify failed", lines[0])
        self.assertIn("wlan0", lines[0])
        self.assertIn("rmnet0", lines[0])
        self.assertFalse((self.dir / "10MB").exists(), "a file was created for a refused server")

    def test_errors_are_one_line_and_lose_nothing(self):
        cp, s, _ = self.get("http://cdn.fleety.test/no-such-object", timeout=30)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("404 Not Found", cp.stderr)
        self.assertFalse((self.dir / "no-such-object").exists())

        cp, s, _ = self.get("http://cdn.fleety.test/10MB", "--sha256", "0" * 64, timeout=60)
        self.assertEqual(cp.returncode, 3, cp.stderr)
        self.assertIn("sha256 is", cp.stderr)
        self.assertFalse(s["sha256_ok"])

        cp, s, _ = self.get("http://cdn.fleety.test/1MB", "--sha256", "z" * 64, timeout=30)
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("expected 64 hexadecimal digits", cp.stderr)
        self.assertFalse((self.dir / "1MB").exists())

        mine = self.dir / "1MB"
        mine.write_bytes(b"the user's own file")
        cp, s, _ = self.get("http://cdn.fleety.test/1MB", timeout=30)
        self.assertEqual(cp.returncode, 2)
        self.assertIn("--continue resumes it, --force overwrites it", cp.stderr)
        self.assertEqual(mine.read_bytes(), b"the user's own file")

        cp, s, _ = self.get("ftp://cdn.fleety.test/1MB", timeout=30)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("not an http:// or https:// URL", cp.stderr)

        cp, s, _ = self.get("http://cdn.fleety.test/1MB", paths=["--path", "wlan9"], timeout=30)
        self.assertEqual(cp.returncode, 2)
        self.assertIn("wlan9", cp.stderr)

    def test_a_second_run_on_the_same_file_is_refused(self):
        first = {}
        t = threading.Thread(target=lambda: first.update(r=self.get(
            f"http://cdn.fleety.test/{BIG}", timeout=120)))
        t.start()
        try:
            deadline = time.monotonic() + 10
            while not (self.dir / f"{BIG}.fleety").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            cp, s, _ = self.get(f"http://cdn.fleety.test/{BIG}", "--continue", timeout=30)
        finally:
            t.join()
        self.assertEqual(cp.returncode, 1, cp.stderr)
        self.assertIn("another fleety get is writing it", cp.stderr)
        self.assertEqual(first["r"][0].returncode, 0, first["r"][0].stderr[-2000:])
        self.assertEqual(file_sha256(self.dir / BIG), object_sha256(BIG))

    def test_redirect_is_followed(self):
        cp, s, _ = self.get("https://cdn.fleety.test/moved", "--cacert", self.ca, "-o", "moved",
                            timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
        self.assertEqual(s["url"], "https://cdn.fleety.test/10MB")
        self.assertEqual(file_sha256(self.dir / "moved"), object_sha256("10MB"))

    def test_a_redirect_from_https_to_http_is_not_followed(self):
        cp, s, _ = self.get("https://cdn.fleety.test/downgrade", "--cacert", self.ca, "-o",
                            "downgraded", timeout=60)
        self.assertEqual(cp.returncode, 1, cp.stderr[-2000:])
        self.assertIn("not following https to http", cp.stderr)
        self.assertFalse((self.dir / "downgraded").exists(), "something was written")

    def test_one_path_alone(self):
        cp, s, _ = self.get("http://cdn.fleety.test/10MB", paths=["--path", "wlan0",
                                                                  "--dns", ANYCAST_DNS],
                            timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr[-2000:])
        self.assertFalse(s["multipath"])
        self.assertEqual(file_sha256(self.dir / "10MB"), object_sha256("10MB"))
        self.assertGreater(s["_rx"]["wlan0"], 10_000_000)
        self.assertLess(s["_rx"]["rmnet0"], 50_000)

    def test_path_down_mid_download_leaves_the_rest_to_the_other(self):
        def down():
            time.sleep(2.0)
            self.lab.set_path("cell", link="down")

        timer = threading.Thread(target=down)
        timer.start()
        try:
            cp, s, seconds = self.get(f"https://cdn.fleety.test/{BIG}", "--cacert", self.ca,
                                      "--max-time", "150", timeout=170)
        finally:
            timer.join()
        self.assertEqual(cp.returncode, 0, cp.stderr[-3000:])
        self.assertEqual(file_sha256(self.dir / BIG), object_sha256(BIG))
        self.assertIn("rmnet0", cp.stderr)  # the user is told which path gave up
        # Ideal: both paths for 2 s, then Wi-Fi alone.
        ideal = 2.0 + (BIG_SIZE - 2.0 * sum(self.single_Bps.values())) / self.single_Bps["wifi"]
        print(f"cellular down at 2 s: done in {s['seconds']:.1f} s, ideal {ideal:.1f} s")
        self.assertLess(s["seconds"], ideal + 6.0, cp.stderr[-2000:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
