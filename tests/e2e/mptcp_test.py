#!/usr/bin/env python3
"""MPTCP where the server speaks it (paper §3, issue 6 item 8), in the two-path lab.

With [mptcp] enabled, fleetyd opens relayed upstream connections (here a plain TCP echo
flow of an app under `fleety run`) as MPTCP, their initial subflow on the path the selector
chose, and manages the client's MPTCP endpoints itself (one per path, bound to its
interface, cellular as backup by default). The server is the lab's MPTCP host
(Lab.mptcp_up: 198.18.30.1 in inet) with an echo server under `mptcpize run`, and a plain
echo server next to it. Checked:

1. cellular not backup: 20 MB echoed intact, MP_CAPABLE and MP_JOIN seen, both wlan0 and
   rmnet0 carry a good share of the bytes; `fleety status` still answers; fleetyd's
   endpoints are there while it runs (someone else's is left alone), gone after it exits,
   and the limits are back;
2. cellular as backup (the default): the same 20 MB, rmnet0 carries next to nothing, Wi-Fi
   its usual rate;
3. a server without MPTCP: the kernel falls back to TCP in the same handshake: the time to
   the first echo byte through fleetyd is the same with [mptcp] on and off (median of 5),
   no extra round trip; with net.mptcp.enabled = 0 flows are plain TCP after one warning;
4. endpoints follow an address change of rmnet0 (last: the lab's cellular routes go).

The client's endpoints are made by fleetyd alone: the ones mptcp_up() configures for its
own check are flushed (and the limits zeroed) before fleetyd starts.

Run as a script with `first-echo ...` it is the app of test 3 (see first_echo()).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import Lab  # noqa: E402
from harness import LAB_PATHS_TOML, Fleetyd, LabTestCase, fleety_cli  # noqa: E402

PREFIX = "flm"
SERVER = Lab.MPTCP_SERVER  # 198.18.30.1, on inet's lo, reachable over both paths
MPTCP_PORT, PLAIN_PORT = 7300, 7301
WLAN_ADDR, RMNET_ADDR = "198.18.1.2", "198.18.2.2"
FOREIGN_ENDPOINT = "198.18.3.9"  # someone else's endpoint (id 1): fleetyd must leave it
ECHO_BYTES = 20_000_000
TOOLS = str(Path(__file__).resolve().parent / "lab_tools.py")
ME = str(Path(__file__).resolve())


def config(mptcp: bool = True, cell_backup: bool | None = None) -> str:
    backup = "" if cell_backup is None else f"mptcp_backup = {str(cell_backup).lower()}\n"
    return f"""
[proxy]
listen = "127.0.0.1:3128"

[intercept]
enabled = true

[mptcp]
enabled = {str(mptcp).lower()}

{LAB_PATHS_TOML}{backup}
[monitor]
history = ""
"""


def first_echo(dst: str, port: int, count: int, timeout: float) -> dict:
    """The app of test 3: `count` connections one after another, each sending one short
    message (no HTTP, no TLS: relayed at once) and timing connect() → its echo complete."""
    message = b"\x00first-echo\n"
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        t0 = time.monotonic()
        s.connect((dst, port))
        s.sendall(message)
        got = b""
        while len(got) < len(message):
            data = s.recv(64)
            if not data:
                break
            got += data
        out.append(round((time.monotonic() - t0) * 1000, 2))
        s.close()
        if got != message:
            raise SystemExit(f"echo {got!r} != {message!r}")
        time.sleep(0.2)
    return {"ms": out}


class MptcpInLab(LabTestCase):
    prefix = PREFIX
    servers: list[subprocess.Popen] = []

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="20mbit/25ms", cell="20mbit/25ms")
        cls.lab.mptcp_up()
        # fleetyd, not the lab, manages the client's endpoints; one foreign endpoint stays.
        cls.ip("mptcp", "endpoint", "flush")
        cls.ip("mptcp", "limits", "set", "subflow", "0", "add_addr_accepted", "0")
        cls.ip("mptcp", "endpoint", "add", FOREIGN_ENDPOINT, "id", "1")
        for port, argv in ((MPTCP_PORT, ["mptcpize", "run"]), (PLAIN_PORT, [])):
            p = cls.lab.popen("inet", [*argv, sys.executable, TOOLS, "echo-server", "--bind",
                                       SERVER, "--port", str(port), "--max-seconds", "600"],
                              stdout=subprocess.PIPE, text=True)
            cls.servers.append(p)
            line = read_line(p, 10)
            if "listening" not in line:
                raise AssertionError(f"echo server on port {port}: {line!r}")

    @classmethod
    def tear_down_lab(cls):
        for p in cls.servers:
            p.kill()
            p.wait(10)

    @classmethod
    def ip(cls, *args: str) -> str:
        cp = subprocess.run(["ip", "-n", cls.lab.ns("cli"), *args], capture_output=True,
                            text=True, timeout=10)
        if cp.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)}: {cp.stderr.strip()}")
        return cp.stdout

    def endpoints(self) -> list[dict]:
        return json.loads(self.ip("-j", "mptcp", "endpoint", "show") or "[]")

    def limits(self) -> dict[str, int]:
        words = self.ip("mptcp", "limits", "show").split()
        return {k: int(v) for k, v in zip(words[::2], words[1::2])}

    def fleetyd(self, text: str) -> Fleetyd:
        return Fleetyd(self.lab, config_text=text, net_only=True, log_level="debug")

    def run_app(self, fleetyd: Fleetyd, argv: list[str],
                timeout: float) -> subprocess.CompletedProcess:
        return self.lab.exec("cli", [fleety_cli(), "--socket", str(fleetyd.control_socket), "run",
                                     "--app", "mp", "--", *argv],
                             timeout=timeout, capture_output=True, text=True, net_only=True)

    def status(self, fleetyd: Fleetyd) -> dict:
        cp = self.lab.exec("cli", [fleety_cli(), "--socket", str(fleetyd.control_socket),
                                   "--json", "status"],
                           timeout=15, capture_output=True, text=True, net_only=True)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return json.loads(cp.stdout)

    def echo_through_fleetyd(self, fleetyd: Fleetyd) -> dict:
        """20 MB echoed by the MPTCP server for an app under `fleety run`: what the app saw,
        the bytes each interface carried (rx + tx), the MPTcpExt counters' changes, the
        subflows `ss` saw mid-transfer and the status fleety gave then."""
        before_bytes = self.lab.iface_bytes()
        before_mp = self.lab.mptcp_counters()
        seen: dict = {}

        def watch() -> None:
            time.sleep(1.5)
            # TCP sockets to the server with the MPTCP ULP: the subflows (the app's own
            # redirected socket has the same peer, but no ULP).
            cp = self.lab.exec("cli", ["ss", "-tniH", "state", "established", "dst",
                                       f"{SERVER}:{MPTCP_PORT}"], timeout=10,
                               capture_output=True, text=True)
            subflows, local = [], None
            for line in cp.stdout.splitlines():
                if line[:1].isspace():
                    if local and "tcp-ulp-mptcp" in line:
                        subflows.append(local)
                    local = None
                elif line.strip():
                    local = line.split()[2].split("%")[0].rsplit(":", 1)[0]
            seen["subflows"] = sorted(subflows)
            seen["mptcp_sockets"] = len(self.lab.exec(
                "cli", ["ss", "-MnH", "dst", f"{SERVER}:{MPTCP_PORT}"], timeout=10,
                capture_output=True, text=True).stdout.splitlines())
            seen["status"] = self.status(fleetyd)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        cp = self.run_app(fleetyd, [sys.executable, TOOLS, "echo-client", "--dst", SERVER,
                                    "--port", str(MPTCP_PORT), "--bytes", str(ECHO_BYTES),
                                    "--max-seconds", "120"], timeout=150)
        seconds = time.monotonic() - started
        watcher.join(20)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        after_bytes = self.lab.iface_bytes()
        after_mp = self.lab.mptcp_counters()
        carried = {i: after_bytes[i]["rx"] + after_bytes[i]["tx"] - before_bytes[i]["rx"]
                   - before_bytes[i]["tx"] for i in ("wlan0", "rmnet0")}
        mp = {k: v - before_mp.get(k, 0) for k, v in after_mp.items() if v != before_mp.get(k, 0)}
        return {"app": json.loads(cp.stdout), "carried": carried, "mp": mp,
                "seconds": seconds, **seen}

    def check_intact_and_mptcp(self, r: dict) -> None:
        app = r["app"]
        self.assertEqual(app["received"], ECHO_BYTES, app)
        self.assertEqual(app["received_sha256"], app["sent_sha256"])
        self.assertGreaterEqual(r["mp"].get("MPCapableSYNACKRX", 0), 1, r["mp"])  # MPTCP
        self.assertGreaterEqual(r["mp"].get("MPJoinSynAckRx", 0), 1, r["mp"])  # + a subflow
        self.assertEqual(r.get("mptcp_sockets"), 1, r)
        self.assertEqual(r.get("subflows"), [WLAN_ADDR, RMNET_ADDR], r)

    def report(self, name: str, r: dict) -> None:
        total = sum(r["carried"].values())
        print(f"{name}: {ECHO_BYTES / 1e6:.0f} MB echoed in {r['seconds']:.1f} s; wlan0 "
              f"{r['carried']['wlan0']:,} B ({r['carried']['wlan0'] / total:.0%}), rmnet0 "
              f"{r['carried']['rmnet0']:,} B ({r['carried']['rmnet0'] / total:.0%}); subflows "
              f"from {r.get('subflows')}; MPTcpExt {r['mp']}", flush=True)

    def test_1_cellular_active_both_paths_carry_subflows(self):
        with self.fleetyd(config(cell_backup=False)) as fleetyd:
            mine = [e for e in self.endpoints() if e["address"] != FOREIGN_ENDPOINT]
            self.assertEqual(
                sorted((e["address"], e.get("dev"), bool(e.get("subflow")), bool(e.get("backup")))
                       for e in mine),
                [(WLAN_ADDR, "wlan0", True, False), (RMNET_ADDR, "rmnet0", True, False)],
                self.endpoints())
            self.assertNotIn(1, [e["id"] for e in mine])  # the foreign endpoint's id
            self.assertGreaterEqual(self.limits()["subflows"], 1)
            r = self.echo_through_fleetyd(fleetyd)
            self.report("cellular active", r)
            self.check_intact_and_mptcp(r)
            total = sum(r["carried"].values())
            for iface in ("wlan0", "rmnet0"):
                self.assertGreater(r["carried"][iface], 0.25 * total, r["carried"])
            self.assertRegex(fleetyd.log(), rf"TCP to {re.escape(SERVER)}:{MPTCP_PORT}: MPTCP, "
                                            r"initial subflow on wifi")
            status = r["status"]
            self.assertEqual([p["name"] for p in status["paths"]], ["wifi", "cell"])
            self.assertTrue(any(f["app"] == "mp" and f["path"] == "wifi"
                                for f in status["flows"]), status["flows"])
        # fleetyd's endpoints and limits are gone with it; the foreign one stays.
        self.assertEqual([(e["address"], e["id"]) for e in self.endpoints()],
                         [(FOREIGN_ENDPOINT, 1)])
        self.assertEqual(self.limits(), {"add_addr_accepted": 0, "subflows": 0})

    def test_2_cellular_is_backup_by_default(self):
        with self.fleetyd(config(mptcp=False)) as fleetyd:
            plain = self.echo_through_fleetyd(fleetyd)
            self.report("plain TCP ([mptcp] off)", plain)
            self.assertEqual(plain["app"]["received_sha256"], plain["app"]["sent_sha256"])
            self.assertEqual(plain["mp"].get("MPCapableSYNTX", 0), 0, plain["mp"])
        with self.fleetyd(config()) as fleetyd:
            rmnet = [e for e in self.endpoints() if e["address"] == RMNET_ADDR]
            self.assertEqual(len(rmnet), 1, self.endpoints())
            self.assertTrue(rmnet[0].get("backup"), rmnet)
            r = self.echo_through_fleetyd(fleetyd)
            self.report("cellular backup", r)
            self.check_intact_and_mptcp(r)
            # The backup subflow exists but carries next to nothing (its handshake, ACKs).
            self.assertLess(r["carried"]["rmnet0"], 1_000_000, r["carried"])
            self.assertGreater(r["carried"]["wlan0"], 2 * ECHO_BYTES, r["carried"])
            # Wi-Fi as fast as plain TCP on it.
            self.assertLess(r["seconds"], 1.3 * plain["seconds"] + 1, (r, plain))
        self.assertEqual([e["address"] for e in self.endpoints()], [FOREIGN_ENDPOINT])

    def first_echo_ms(self, fleetyd: Fleetyd, port: int, count: int = 5) -> list[float]:
        cp = self.run_app(fleetyd, [sys.executable, ME, "first-echo", "--dst", SERVER, "--port",
                           str(port), "--count", str(count)], timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return json.loads(cp.stdout)["ms"]

    def test_3_server_without_mptcp_costs_no_extra_round_trip(self):
        with self.fleetyd(config()) as fleetyd:
            before = self.lab.mptcp_counters()
            plain_on = self.first_echo_ms(fleetyd, PLAIN_PORT)
            after = self.lab.mptcp_counters()
            mptcp_on = self.first_echo_ms(fleetyd, MPTCP_PORT)
            fallbacks = after.get("MPCapableFallbackSYNACK", 0) - before.get(
                "MPCapableFallbackSYNACK", 0)
            # Intact over the fallen-back connection too.
            cp = self.run_app(fleetyd, [sys.executable, TOOLS, "echo-client", "--dst", SERVER,
                                        "--port", str(PLAIN_PORT), "--bytes", "2000000",
                                        "--max-seconds", "60"], timeout=90)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            echoed = json.loads(cp.stdout)
            self.assertEqual(echoed["received_sha256"], echoed["sent_sha256"])
            self.assertRegex(fleetyd.log(), rf"TCP to {re.escape(SERVER)}:{PLAIN_PORT}: plain "
                                            r"TCP \(no MPTCP with the server\) on wifi")
            # A kernel without MPTCP here (net.mptcp.enabled = 0): plain TCP, one warning.
            self.lab.exec("cli", ["sysctl", "-q", "-w", "net.mptcp.enabled=0"], timeout=10,
                          check=True)
            try:
                before = self.lab.mptcp_counters()
                for _ in range(2):
                    cp = self.run_app(fleetyd, [sys.executable, TOOLS, "echo-client", "--dst",
                                                SERVER, "--port", str(MPTCP_PORT), "--bytes",
                                                "1000000", "--max-seconds", "60"], timeout=90)
                    self.assertEqual(cp.returncode, 0, cp.stderr)
                    echoed = json.loads(cp.stdout)
                    self.assertEqual(echoed["received_sha256"], echoed["sent_sha256"])
                self.assertEqual(self.lab.mptcp_counters().get("MPCapableSYNTX", 0),
                                 before.get("MPCapableSYNTX", 0))
            finally:
                self.lab.exec("cli", ["sysctl", "-q", "-w", "net.mptcp.enabled=1"], timeout=10)
            self.assertEqual(fleetyd.log().count("this kernel has no MPTCP here"), 1,
                             fleetyd.log()[-3000:])
        with self.fleetyd(config(mptcp=False)) as fleetyd:
            plain_off = self.first_echo_ms(fleetyd, PLAIN_PORT)
        med = {k: statistics.median(v) for k, v in
               (("plain_on", plain_on), ("mptcp_on", mptcp_on), ("plain_off", plain_off))}
        print(f"first echo through fleetyd, median of 5 (ms): plain server, [mptcp] on "
              f"{med['plain_on']:.1f} {plain_on}; MPTCP server, [mptcp] on {med['mptcp_on']:.1f}"
              f" {mptcp_on}; plain server, [mptcp] off {med['plain_off']:.1f} {plain_off}; "
              f"fallbacks (MPCapableFallbackSYNACK) {fallbacks}", flush=True)
        self.assertEqual(fallbacks, 5)
        # RTT 50 ms: connect + echo take two round trips (~100 ms); an extra round trip
        # would add 50 ms.
        self.assertLess(abs(med["plain_on"] - med["plain_off"]), 20, med)
        self.assertLess(abs(med["mptcp_on"] - med["plain_off"]), 20, med)
        self.assertLess(med["plain_on"], 150, med)

    def wait_for_endpoints(self, want: list[tuple], timeout: float = 3.0) -> list[tuple]:
        """fleetyd's endpoints as (address, dev, backup), once they are `want` (or after
        `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            got = sorted((e["address"], e.get("dev"), bool(e.get("backup")))
                         for e in self.endpoints() if e["address"] != FOREIGN_ENDPOINT)
            if got == sorted(want) or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def test_4_endpoints_follow_address_changes(self):
        # Last: it renumbers rmnet0 (the lab's cellular routes are gone afterwards).
        with self.fleetyd(config()) as fleetyd:
            wlan = (WLAN_ADDR, "wlan0", False)
            self.assertEqual(self.wait_for_endpoints([wlan, (RMNET_ADDR, "rmnet0", True)]),
                             [wlan, (RMNET_ADDR, "rmnet0", True)])
            renumbered = "198.18.2.3"
            changed = time.monotonic()
            self.ip("addr", "del", f"{RMNET_ADDR}/24", "dev", "rmnet0")
            self.assertEqual(self.wait_for_endpoints([wlan]), [wlan])
            self.ip("addr", "add", f"{renumbered}/24", "dev", "rmnet0")
            self.assertEqual(self.wait_for_endpoints([wlan, (renumbered, "rmnet0", True)]),
                             [wlan, (renumbered, "rmnet0", True)])
            print(f"endpoint renumbered {RMNET_ADDR} → {renumbered} within "
                  f"{time.monotonic() - changed:.2f} s", flush=True)
            self.assertRegex(fleetyd.log(), rf"endpoint {renumbered} dev rmnet0 subflow backup "
                                            r"\(id \d+\) added for path cell")
        self.assertEqual([e["address"] for e in self.endpoints()], [FOREIGN_ENDPOINT])


def read_line(p: subprocess.Popen, timeout: float) -> str:
    """The process's next stdout line, waiting at most `timeout`."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "first-echo":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("--dst", required=True)
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--count", type=int, default=5)
        ap.add_argument("--timeout", type=float, default=10.0)
        a = ap.parse_args()
        print(json.dumps(first_echo(a.dst, a.port, a.count, a.timeout)))
        return
    unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
