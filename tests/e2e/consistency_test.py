#!/usr/bin/env python3
"""One path's CDN serves a stale version of the object (paper §4.3; issue 4, item 6).

The lab serves /v/10MB from a different directory on each CDN: the Wi-Fi CDN has the
current object, the cellular CDN an older one of the same size. The app must receive
exactly one version, never a splice of both:
- the stale copy has its own Last-Modified/ETag: that says nothing (issue 16: nodes of
  one CDN hold the same bytes under other validators, and no path sends another node's
  validator); the overlap comparison catches it, before any of its bytes reach the app;
- the stale copy has the *same* validators (a cache that lies): likewise, the overlap.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import OBJECT_DIR  # noqa: E402
from harness import Fleetyd, LabTestCase, curl, minimal_config, object_sha256  # noqa: E402

PREFIX = "flv"


class StaleCdn(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="fleety-stale-"))
        fresh, stale, liar = (cls.tmp / d for d in ("fresh", "stale", "liar"))
        for d in (fresh, stale, liar):
            d.mkdir()
        shutil.copyfile(OBJECT_DIR / "10MB", fresh / "10MB")
        # An older version: same size, other bytes from offset 1 MB on.
        data = bytearray((OBJECT_DIR / "10MB").read_bytes())
        data[1_000_000:] = bytes(b ^ 0x5A for b in data[1_000_000:])
        (stale / "10MB").write_bytes(data)
        # The lying cache differs everywhere: the overlap check compares 64 bytes where two
        # paths' ranges meet, and a meeting point inside an identical stretch could not
        # tell the versions apart (that limit of the paper's check is in the README).
        (liar / "10MB").write_bytes(bytes(b ^ 0x5A for b in (OBJECT_DIR / "10MB").read_bytes()))
        st = os.stat(fresh / "10MB")
        os.utime(stale / "10MB", (st.st_atime, st.st_mtime - 86400))  # older: other validators
        os.utime(liar / "10MB", (st.st_atime, st.st_mtime))           # same ETag and Last-Modified
        cls.lab.up(wifi="40mbit/10ms", cell="40mbit/10ms", extra_roots=[
            f"wifi:/v/={fresh}", f"cell:/v/={stale}", f"wifi:/w/={fresh}", f"cell:/w/={liar}"])

    @classmethod
    def tear_down_lab(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def fetch(self, url: str):
        with Fleetyd(self.lab) as daemon:
            t = curl(self.lab, url, proxy=daemon.proxy_url, timeout=60)
            return t, daemon.log()

    def test_stale_copy_with_other_validators_is_caught_by_the_overlap(self):
        t, log = self.fetch("http://cdn.fleety.test/v/10MB")
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("10MB"), "the app got a splice or the stale version")
        self.assertIn("another version of the object", log)
        self.assertNotIn("answered range", log)  # not a refusal

    def test_stale_copy_with_the_same_validators_is_caught_by_the_overlap(self):
        t, log = self.fetch("http://cdn.fleety.test/w/10MB")
        self.assertEqual(t.exit_code, 0, t.stderr)
        self.assertEqual(t.sha256, object_sha256("10MB"), "the app got a splice or the stale version")
        self.assertIn("another version of the object", log)

    def test_host_stays_single_path_for_the_cooldown_then_splits_again(self):
        config = minimal_config() + '\n[scheduler]\nmismatch_cooldown = "3s"\n'
        with Fleetyd(self.lab, config_text=config) as daemon:
            t = curl(self.lab, "http://cdn.fleety.test/w/10MB", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            self.assertIn("served two versions", daemon.log())
            # Same host, another object, within the cooldown: one path, nothing on cellular.
            t = curl(self.lab, "http://cdn.fleety.test/v/10MB", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            self.assertIn("one path (host served two versions lately)", daemon.log())
            self.assertLess(t.iface_rx["rmnet0"], 100_000, t.iface_rx)
            time.sleep(3.5)
            # After it: split again (the fresh copy on both CDNs: /10MB).
            t = curl(self.lab, "http://cdn.fleety.test/10MB", proxy=daemon.proxy_url, timeout=60)
            self.assertEqual(t.sha256, object_sha256("10MB"))
            self.assertRegex(daemon.log().splitlines()[-1], r"→ 200 multipath")
            self.assertGreater(t.iface_rx["rmnet0"], 1_000_000, t.iface_rx)


if __name__ == "__main__":
    unittest.main(verbosity=2)
