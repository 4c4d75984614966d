"""Running fleetyd and download clients inside the lab, measured.

Shared by the end-to-end tests (tests/e2e/), the main job (scripts/demo.py) and the
benchmarks (bench/): start fleetyd in the client namespace with a config, fetch a
URL with curl or aria2c, and report the sha256 of what the client received, its
goodput and the bytes each interface carried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import weakref
from pathlib import Path
from typing import Sequence

from fleety_lab import ANYCAST_DNS, Lab, LabError, OBJECT_DIR

REPO = Path(__file__).resolve().parent.parent

# The minimal config of issue 3, as users copy it from the README; must work as it is.
MINIMAL_CONFIG_FILE = REPO / "docs" / "examples" / "minimal.toml"


def minimal_config(port: int = 3128) -> str:
    """docs/examples/minimal.toml, listening on `port`."""
    return MINIMAL_CONFIG_FILE.read_text().replace("127.0.0.1:3128", f"127.0.0.1:{port}")


class Lines:
    """The JSON lines a helper process prints (lab_tools servers and clients), read by a
    thread so that every wait is bounded."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.queue: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.queue.put(json.loads(line))
            except ValueError:
                self.queue.put({"text": line.rstrip()})

    def wait_for(self, key: str, timeout: float, where=None) -> dict:
        """The next line with `key` (and for which where(line) holds, if given)."""
        deadline = time.monotonic() + timeout
        for item in self.seen:
            if key in item and (where is None or where(item)):
                self.seen.remove(item)
                return item
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if key in item and (where is None or where(item)):
                return item
            self.seen.append(item)
        raise AssertionError(f"no '{key}' line within {timeout:g} s; seen {self.seen}")

    def drain(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                out, self.seen = self.seen, []
                return out


def find_fleetyd() -> str:
    """fleetyd from $FLEETYD, else the default build directory."""
    explicit = os.environ.get("FLEETYD")
    candidates = [explicit] if explicit else []
    candidates += [str(REPO / "build" / "src" / "app" / "fleetyd")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise LabError("fleetyd not found: build it (cmake -S . -B build -G Ninja && ninja -C build) "
                   "or set FLEETYD=/path/to/fleetyd")


def fleety_cli() -> str:
    """The fleety CLI from $FLEETY, else beside fleetyd."""
    return os.environ.get("FLEETY") or str(Path(find_fleetyd()).with_name("fleety"))


# The lab's two paths as fleetyd's config names them. Each path names its resolver: under
# nsenter fleetyd sees the host's resolv.conf, not the lab's (the anycast address answers
# per ISP, by the interface the query leaves on).
LAB_PATHS_TOML = f"""
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
"""

# fleetyd taking over apps (`fleety run`, [[app]]) on the lab's two paths: its proxy on
# 3128, the redirected connections on 3129.
INTERCEPT_CONFIG = f"""
[proxy]
listen = "127.0.0.1:3128"
[intercept]
enabled = true
port = 3129
{LAB_PATHS_TOML}"""


def object_sha256(name: str) -> str:
    """sha256 of a lab object as the CDNs serve it."""
    h = hashlib.sha256()
    with open(OBJECT_DIR / name, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Fleetyd:
    """fleetyd running in the lab's client namespace; a context manager that stops it
    (SIGTERM, then SIGKILL) and keeps its log."""

    def __init__(self, lab: Lab, config_text: str | None = None, port: int = 3128,
                 log_level: str = "info", extra_args: Sequence[str] = (), net_only: bool = False):
        self.lab = lab
        self.net_only = net_only  # nsenter --net: needed for interception (cgroups)
        self.port = port
        self.workdir = Path(tempfile.mkdtemp(prefix="fleetyd-"))
        # The directory (config, log, history) lives as long as this object, so a test can
        # read the log after stop() or start() it again; then it goes, unless the developer
        # keeps the lab's leftovers to read (FLEETY_LAB_KEEP=1).
        if not os.environ.get("FLEETY_LAB_KEEP"):
            weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        self.config_path = self.workdir / "fleety.toml"
        text = config_text if config_text is not None else minimal_config(port)
        # Each fleetyd its own control socket: tests run several side by side.
        self.control_socket = self.workdir / "control.sock"
        if "[control]" not in text:
            text += f'\n[control]\nsocket = "{self.control_socket}"\n'
        # ... and its own path history: what one test measured must not seed the next.
        if "[monitor]" not in text:
            text += f'\n[monitor]\nhistory = "{self.workdir / "history.db"}"\n'
        # ... and no metrics listener unless the test asks (several may share a namespace).
        if "[metrics]" not in text:
            text += '\n[metrics]\nlisten = ""\n'
        self.config_path.write_text(text)
        self.log_path = self.workdir / "fleetyd.log"
        self.args = [find_fleetyd(), "--config", str(self.config_path), "--log-level", log_level,
                     *extra_args]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Fleetyd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.process = self.lab.popen("cli", self.args, stdout=log, stderr=subprocess.STDOUT,
                                          net_only=self.net_only)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabError(f"fleetyd exited with {self.process.returncode}: {self.log()}")
            if "listening on" in self.log():
                return
            time.sleep(0.05)
        raise LabError(f"fleetyd did not start within {timeout:g}s: {self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclasses.dataclass
class Transfer:
    """What one download did."""
    exit_code: int
    seconds: float
    body_bytes: int
    sha256: str
    iface_rx: dict[str, int]     # bytes received on each client interface during the transfer
    stderr: str = ""
    http_code: str = ""

    @property
    def mbit_s(self) -> float:
        return self.body_bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _rx(lab: Lab) -> dict[str, int]:
    return {name: c["rx"] for name, c in lab.iface_bytes().items()}


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 (hex) and size of a file; of nothing if it does not exist."""
    h = hashlib.sha256()
    size = 0
    if path.exists():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def _measured(lab: Lab, argv: Sequence[str], out_path: Path, timeout: float,
              net_only: bool = False) -> Transfer:
    before = _rx(lab)
    start = time.monotonic()
    cp = lab.exec("cli", list(argv), timeout=timeout, capture_output=True, text=True,
                  net_only=net_only)
    seconds = time.monotonic() - start
    after = _rx(lab)
    digest, size = file_sha256(out_path)
    return Transfer(cp.returncode, seconds, size, digest,
                    {k: after[k] - before.get(k, 0) for k in after}, cp.stderr, cp.stdout.strip())


def curl(lab: Lab, url: str, proxy: str | None = None, interface: str | None = None,
         extra: Sequence[str] = (), timeout: float = 600.0) -> Transfer:
    """curl URL in the client namespace (through `proxy`, or bound to `interface`)."""
    with tempfile.TemporaryDirectory(prefix="fleety-dl-") as tmp:
        out = Path(tmp) / "body"
        argv = ["curl", "-sS", "-o", str(out), "-w", "%{http_code}", "--max-time", str(int(timeout))]
        if proxy:
            argv += ["--proxy", proxy]
        else:
            argv += ["--noproxy", "*"]
        if interface:
            argv += ["--interface", interface]
        argv += [*extra, url]
        return _measured(lab, argv, out, timeout + 10)


def measured_download(lab: Lab, argv: Sequence[str], out_path: Path, timeout: float = 600.0,
                      net_only: bool = False) -> Transfer:
    """Runs argv (which writes the body to out_path) in the client namespace; what it
    received and what each interface counted meanwhile."""
    return _measured(lab, argv, out_path, timeout, net_only)


def with_lab_resolv_conf(lab: Lab, argv: Sequence[str]) -> list[str]:
    """argv in a private mount namespace whose /etc/resolv.conf is the lab client's
    (`nsenter --net`, which interception needs, keeps the host's: it names a resolver the
    lab can't reach), as a program on the client would see it."""
    resolv = f"/etc/netns/{lab.ns('cli')}/resolv.conf"
    return ["unshare", "--mount", "--", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv, *argv]


def aria2c(lab: Lab, url: str, interfaces: Sequence[str] = ("wlan0", "rmnet0"),
           timeout: float = 600.0) -> Transfer:
    """The peer: aria2c splitting one download over the interfaces."""
    with tempfile.TemporaryDirectory(prefix="fleety-aria2-") as tmp:
        out = Path(tmp) / "body"
        n = len(interfaces)
        argv = ["aria2c", "-q", "--allow-overwrite=true", "--file-allocation=none",
                f"--multiple-interface={','.join(interfaces)}", f"-x{n}", f"-s{n}", "-k1M",
                "--max-tries=2", f"--timeout={int(min(timeout, 60))}", "-d", tmp, "-o", "body", url]
        return _measured(lab, argv, out, timeout + 10)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class LabTestCase(unittest.TestCase):
    """A test class that owns one lab for all its tests: `prefix` names it,
    `set_up_lab()` builds what the class needs in it, `tear_down_lab()` releases that.
    A class-wide fleetyd set up in `cls.fleetyd` is stopped first, and the last
    `log_tail_lines` of its log printed (what a failed test's reader wants).
    The lab is torn down after the last test, and at once if set-up fails."""

    prefix = "fle"
    lab: Lab
    fleetyd: "Fleetyd | None" = None
    log_tail_lines = 15

    @classmethod
    def set_up_lab(cls) -> None:
        raise NotImplementedError

    @classmethod
    def tear_down_lab(cls) -> None:
        pass

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(cls.prefix)
        cls.lab.__enter__()
        try:
            cls.set_up_lab()
        except BaseException:
            cls.lab.__exit__(None, None, None)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if isinstance(cls.fleetyd, Fleetyd):  # (a class may name a method so)
                cls.fleetyd.stop()
                tail = cls.fleetyd.log().splitlines()[-cls.log_tail_lines:]
                print("--- fleetyd log (tail) ---\n" + "\n".join(tail))
            cls.tear_down_lab()
        finally:
            cls.lab.__exit__(None, None, None)
