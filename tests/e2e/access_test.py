#!/usr/bin/env python3
"""Least privilege (issue 18, item 5): who on the host may use fleetyd.

fleetyd's proxy, DNS and intercept ports serve root and the `[access]` group only: an
nftables rule on the owner of the local socket refuses every other user at once (a reset,
not a hang). The control socket is root:GROUP 0660; a member may look and `fleety run`,
only root may change what everyone gets. `fleety run` works for a member without root
(fleetyd moves the caller, known by SO_PEERCRED, into the app's cgroup) and under sudo
runs the program as the user who ran sudo. CONNECT tunnels only to `[proxy]
connect_ports` (443). The users are numeric ids run with setpriv: a member is any uid
with the group "users" (gid 100, on every Debian) as its group, an outsider is nobody.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

from harness import (INTERCEPT_CONFIG, Fleetyd, LabTestCase, fleety_cli,  # noqa: E402
                     object_sha256, with_lab_resolv_conf)

PREFIX = "flq"
HOST = "cdn.fleety.test"
GROUP = "users"
MEMBER = ["--reuid", "4242", "--regid", "100", "--clear-groups"]
OUTSIDER = ["--reuid", "65534", "--regid", "65534", "--clear-groups"]
DNS_PORT = 3053  # [intercept] dns_port's default
CONFIG = INTERCEPT_CONFIG + f'\n[access]\ngroup = "{GROUP}"\n'


class Access(LabTestCase):
    prefix = PREFIX

    @classmethod
    def set_up_lab(cls):
        cls.lab.up(wifi="40mbit/5ms", cell="40mbit/5ms", objects=["1MB"])
        cls.fleetyd = Fleetyd(cls.lab, config_text=CONFIG, net_only=True)
        cls.fleetyd.workdir.chmod(0o755)  # the control socket's directory: reachable
        cls.fleetyd.start()

    def setUp(self):
        if grp.getgrnam(GROUP).gr_gid != 100:
            self.skipTest(f"group {GROUP} is not gid 100 here")

    def as_user(self, who: list[str], argv: list[str], timeout: float = 30,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """argv in the client namespace as the user `who` (setpriv options)."""
        full_env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                    "FLEETY_CONTROL": str(self.fleetyd.control_socket), **(env or {})}
        wrapped = ["env", "-i", *[f"{k}={v}" for k, v in full_env.items()],
                   "setpriv", *who, *argv]
        return self.lab.exec("cli", with_lab_resolv_conf(self.lab, wrapped), timeout=timeout,
                             net_only=True, capture_output=True, text=True)

    def proxied_sha256(self, who: list[str], url: str = f"http://{HOST}/1MB",
                       extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return self.as_user(who, ["sh", "-c", 'curl -sS --max-time 20 "$@" | sha256sum', "curl",
                                  "-x", self.fleetyd.proxy_url, *extra, url])

    def test_other_users_are_refused_at_the_ports_the_group_and_root_are_served(self):
        want = object_sha256("1MB")
        for who in ([], MEMBER):  # root, a member
            cp = self.proxied_sha256(who)
            self.assertTrue(cp.stdout.startswith(want), f"{who}: {cp.stderr}")
        started = time.monotonic()
        cp = self.as_user(OUTSIDER, ["curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                                     "-x", self.fleetyd.proxy_url, f"http://{HOST}/1MB"])
        refused_in = time.monotonic() - started
        self.assertEqual(cp.returncode, 7, f"an outsider should be refused: {cp.stderr}")
        self.assertLess(refused_in, 5, "refused at once, not left to time out")
        # The DNS port (UDP and TCP) and the intercept port refuse an outsider as well.
        probe = ("import socket,sys\n"
                 "for kind, port in ((socket.SOCK_DGRAM, %d), (socket.SOCK_STREAM, %d),"
                 " (socket.SOCK_STREAM, 3129)):\n"
                 "    s = socket.socket(socket.AF_INET, kind); s.settimeout(3)\n"
                 "    try:\n"
                 "        s.connect(('127.0.0.1', port)); s.send(b'\\0' * 12); s.recv(512)\n"
                 "        print(port, 'answered')\n"
                 "    except ConnectionRefusedError:\n"
                 "        print(port, 'refused')\n"
                 "    except OSError as e:\n"
                 "        print(port, 'error', e)\n") % (DNS_PORT, DNS_PORT)
        cp = self.as_user(OUTSIDER, [sys.executable, "-c", probe])
        # (A datagram the output hook rejects fails its send with EPERM.)
        self.assertEqual(cp.stdout.split("\n")[:3],
                         [f"{DNS_PORT} error [Errno 1] Operation not permitted",
                          f"{DNS_PORT} refused", "3129 refused"], cp.stderr)
        self.assertIn("refuse other local users", self.fleetyd.log())

    def test_a_users_owner_rules_apply_to_what_fleetyd_relays_for_them(self):
        # The admin's rule: uid 4242 may not reach web servers. Through fleetyd (proxy or
        # fleety run) it must hold as it would direct: fleetyd's upstream sockets for the
        # user's flows are the user's.
        rules = ("table inet e2e_owner {\n chain output {\n"
                 "  type filter hook output priority 10; policy accept;\n"
                 "  meta skuid 4242 tcp dport 80 counter reject with tcp reset\n }\n}\n")
        cp = self.lab.exec("cli", ["nft", "-f", "-"], input=rules, text=True, net_only=True,
                           capture_output=True, timeout=10)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.addCleanup(lambda: self.lab.exec("cli", ["nft", "delete", "table", "inet",
                                                      "e2e_owner"], net_only=True, timeout=10))
        want = object_sha256("1MB")
        self.assertTrue(self.proxied_sha256([]).stdout.startswith(want), "root is not concerned")
        cp = self.proxied_sha256(MEMBER)
        self.assertFalse(cp.stdout.startswith(want), "the member's rule did not apply")
        uid, cgroup, sha = self.run_app(MEMBER, "e2e-owner-rule")[:3]
        self.assertEqual((uid, cgroup), ("4242", "/fleety/e2e-owner-rule"))
        self.assertNotEqual(sha, want, "the member's rule did not apply to fleety run")
        counted = self.lab.exec("cli", ["nft", "list", "table", "inet", "e2e_owner"],
                                net_only=True, capture_output=True, text=True, timeout=10).stdout
        self.assertRegex(counted, r"counter packets [1-9]")

    def test_connect_tunnels_only_to_the_configured_ports(self):
        ca = self.lab.tls_info()["ca"]
        cp = self.proxied_sha256([], f"https://{HOST}/1MB", ("--cacert", ca))
        self.assertTrue(cp.stdout.startswith(object_sha256("1MB")), cp.stderr)
        cp = self.as_user([], ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-p", "-x",
                               self.fleetyd.proxy_url, f"http://{HOST}:22/"])
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("403", cp.stderr)
        self.assertIn("refused CONNECT cdn.fleety.test:22", self.fleetyd.log())

    def test_the_control_socket_is_root_and_the_groups(self):
        mode = os.stat(self.fleetyd.control_socket)
        self.assertEqual(stat.S_IMODE(mode.st_mode), 0o660)
        self.assertEqual((mode.st_uid, mode.st_gid), (0, 100))
        cp = self.as_user(OUTSIDER, [fleety_cli(), "status"])
        self.assertEqual(cp.returncode, 1)
        self.assertIn("no permission", cp.stderr)
        cp = self.as_user(MEMBER, [fleety_cli(), "status"])
        self.assertEqual(cp.returncode, 0, cp.stderr)
        cp = self.as_user(MEMBER, [fleety_cli(), "apps", "disable", "anything"])
        self.assertEqual(cp.returncode, 1)
        self.assertIn("only root may ask app.disable", cp.stderr)

    def run_app(self, who: list[str], app: str, env: dict[str, str] | None = None,
                run_options: tuple[str, ...] = ()) -> list[str]:
        """`fleety run` of a program that prints its uid, its cgroup and the sha256 of 1 MB
        fetched with no proxy (so taken over only if the app is intercepted)."""
        program = ('id -u; grep -o "/fleety/.*" /proc/self/cgroup; '
                   f'curl -sS --noproxy "*" --max-time 20 http://{HOST}/1MB | sha256sum')
        cp = self.as_user(who, [fleety_cli(), "run", "--app", app, *run_options, "--", "sh", "-c",
                                program], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return cp.stdout.split()

    def test_fleety_run_needs_no_root_and_never_keeps_it_unasked(self):
        want = object_sha256("1MB")
        uid, cgroup, sha = self.run_app(MEMBER, "e2e-member")[:3]
        self.assertEqual((uid, cgroup, sha), ("4242", "/fleety/e2e-member", want))
        self.assertIn("(uid 4242) runs as app e2e-member", self.fleetyd.log())
        self.assertIn(f"GET http://{HOST}/1MB", self.fleetyd.log(), "the app was not taken over")
        # Under sudo: the program runs as the user who ran sudo, unless --as-root.
        sudo = {"SUDO_UID": "65534", "SUDO_GID": "65534", "SUDO_USER": "nobody"}
        uid, cgroup, sha = self.run_app([], "e2e-sudo", env=sudo)[:3]
        self.assertEqual((uid, cgroup, sha), ("65534", "/fleety/e2e-sudo", want))
        uid, cgroup, sha = self.run_app([], "e2e-sudo", env=sudo, run_options=("--as-root",))[:3]
        self.assertEqual((uid, cgroup, sha), ("0", "/fleety/e2e-sudo", want))
        # An outsider cannot reach fleetyd at all.
        cp = self.as_user(OUTSIDER, [fleety_cli(), "run", "--", "true"])
        self.assertEqual(cp.returncode, 1)
        self.assertIn("no permission", cp.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
