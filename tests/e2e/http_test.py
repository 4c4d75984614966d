#!/usr/bin/env python3
"""HTTP correctness through fleetyd (issue 4, item 7; RFC 9110 / RFC 9112).

fleetyd splits downloads over two paths, but to the app it must be an ordinary HTTP/1.1
proxy: every response the app receives has the status, end-to-end header fields and
body bytes the origin would have sent it directly. Each test fetches through fleetyd in
the lab (40 Mbit/s, 10 ms one way on both paths) and compares with a direct fetch bound
to wlan0, or with the object's bytes (the file the CDNs serve):

 a. several requests on one keep-alive app connection (small, multipath, 404);
 b. HEAD of a big object: its header fields, no body (the next response on the
    connection starts right after the header);
 c. the app's own Range on /100MB (closed, open, suffix): 206, Content-Range, exact
    bytes; at least min_split_size (2 MB) it is fetched over both paths, below on one;
 d. If-Range: current ETag → 206, stale ETag → 200 with the whole object;
 e. multi-range and conditional requests (304) pass through on one path;
 f. a CDN that ignores Range (`max_ranges 0`) on one path or both;
 g. gzip'ed, chunked responses: the raw compressed bytes unchanged, never split;
 h. 3xx / 4xx / 5xx unchanged (Location, body);
 i. hop-by-hop fields (Connection and what it names, Keep-Alive, Proxy-Connection)
    stripped in both directions;
 j. fleetyd asks the first path for the head of a plain GET only (Range: bytes=0-N):
    the app still gets the origin's 200 for the empty, the small and the big object,
    and a server answering that range with 416 is asked again without it.
Request smuggling is covered in proxy_test.py.

Where curl can't show a property (no body after a HEAD or a 304 on a reused
connection, exact request header fields), this file runs itself in the client
namespace as a raw HTTP/1.1 client: `http_test.py --exchange HOST PORT < requests.json`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import shutil
import socket
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))

PREFIX = "flh"
SPEC = "40mbit/10ms"
CDN = "http://cdn.fleety.test"
MIN_SPLIT = 2_000_000  # the min_split_size these tests set (the default "auto" varies)
# Response fields that legitimately differ between a direct fetch and one through a
# proxy: per-hop framing and connection management, the time, and the proxy's Via.
PER_HOP = {"date", "via", "connection", "keep-alive", "transfer-encoding", "content-length",
           "proxy-connection"}


# --------------------------------------------------------------------------
# The raw client, run inside the lab's client namespace

def _read_response(f, method: str) -> dict[str, Any]:
    """One response from `f`, framed as RFC 9112 §6.3 says a client must: no body for
    HEAD, 1xx, 204 and 304 whatever the fields say; chunked; Content-Length; close."""
    status_line = f.readline(65536)
    if not status_line:
        raise ValueError("connection closed before a response")
    m = re.fullmatch(rb"HTTP/(\d\.\d) (\d{3}) ?(.*)\r\n", status_line)
    if not m:
        raise ValueError(f"bad status line {status_line[:120]!r}")
    headers: list[list[str]] = []
    while True:
        line = f.readline(65536)
        if not line:
            raise ValueError("connection closed inside the header")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append([name, value.strip()])
    status = int(m[2])

    def values(name: str) -> list[str]:
        return [v for k, v in headers if k.lower() == name]

    body = b""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        framing = "none"
    elif any("chunked" in v.lower() for v in values("transfer-encoding")):
        framing = "chunked"
        parts = []
        while True:
            size_line = f.readline(1024)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline(65536) not in (b"\r\n", b"\n", b""):  # trailer section
                    pass
                break
            parts.append(f.read(size))
            if f.read(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
        body = b"".join(parts)
    elif values("content-length"):
        framing = "length"
        n = int(values("content-length")[0])
        body = f.read(n)
        if len(body) != n:
            raise ValueError(f"body ended after {len(body)} of {n} bytes")
    else:
        framing = "close"
        body = f.read()
    return {"version": m[1].decode(), "status": status, "reason": m[3].decode("latin-1"),
            "headers": headers, "framing": framing, "body_len": len(body),
            "sha256": hashlib.sha256(body).hexdigest(), "body": body[:4096].decode("latin-1")}


def exchange_main(host: str, port: int) -> None:
    """Sends the requests of stdin's JSON list ({method, target, headers}) one after the
    other on one connection, reads each response; prints a JSON list of them, with an
    error entry if one could not be read, then `leftover`: bytes that came after the last
    response (a body sent where none may be)."""
    requests = json.load(sys.stdin)
    out: list[dict[str, Any]] = []
    with socket.create_connection((host, port), timeout=60) as s:
        f = s.makefile("rb")
        for r in requests:
            head = [f"{r['method']} {r['target']} HTTP/1.1"]
            head += [f"{k}: {v}" for k, v in r["headers"]]
            s.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            try:
                out.append(_read_response(f, r["method"]))
            except (ValueError, OSError) as e:
                out.append({"error": f"{type(e).__name__}: {e}"})
                break
        s.settimeout(0.5)
        try:
            leftover = f.read1(4096)
        except OSError:  # timeout: nothing more came, as it should be
            leftover = b""
    out.append({"leftover": leftover.decode("latin-1")})
    print(json.dumps(out))


if __name__ == "__main__" and sys.argv[1:2] == ["--exchange"]:
    exchange_main(sys.argv[2], int(sys.argv[3]))
    sys.exit(0)


# --------------------------------------------------------------------------
# The tests

from fleety_lab import OBJECT_DIR, PATHS  # noqa: E402
from harness import Fleetyd, LabTestCase, minimal_config, object_sha256  # noqa: E402


def file_sha256(path: Path, start: int = 0, end_inclusive: int | None = None) -> str:
    """sha256 of bytes [start, end_inclusive] of a file the CDNs serve."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = (end_inclusive + 1 - start) if end_inclusive is not None else None
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class Reply:
    """What curl received: the final response's status and fields, the body's digest
    (and the body itself when small), bytes per client interface, fleetyd's log lines."""
    exit_code: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes | None
    body_len: int
    sha256: str
    iface_rx: dict[str, int]
    log: str
    stderr: str

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def end_to_end(self) -> dict[str, list[str]]:
        """Header fields by lower-case name, without the per-hop ones."""
        out: dict[str, list[str]] = {}
        for k, v in self.headers:
            if k.lower() not in PER_HOP:
                out.setdefault(k.lower(), []).append(v)
        return out

    def describe(self) -> str:
        lines = [f"exit {self.exit_code}, status {self.status}, {self.body_len} body bytes, "
                 f"sha256 {self.sha256[:16]}, rx {self.iface_rx}"]
        lines += [f"  {k}: {v}" for k, v in self.headers]
        if self.stderr.strip():
            lines.append(f"  curl: {self.stderr.strip()}")
        if self.log.strip():
            lines += ["  fleetyd: " + line for line in self.log.strip().splitlines()]
        return "\n".join(lines)


def parse_header_block(text: str) -> tuple[int, list[tuple[str, str]]]:
    """The last response header in curl's -D output (after any 1xx)."""
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.startswith("HTTP/")]
    if not blocks:
        return 0, []
    lines = blocks[-1].splitlines()
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return status, headers


def multipart_parts(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(Content-Range, data) of each part of a multipart/byteranges body."""
    boundary = re.search(r"boundary=\"?([^\";]+)", content_type)[1].encode()
    parts = []
    for piece in body.split(b"--" + boundary)[1:]:
        if piece.startswith(b"--"):
            break
        head, _, data = piece.partition(b"\r\n\r\n")
        cr = re.search(rb"Content-Range: *([^\r\n]+)", head, re.I)
        parts.append((cr[1].decode() if cr else "", data[:-2] if data.endswith(b"\r\n") else data))
    return parts


class HttpThroughFleetyd(LabTestCase):
    prefix = PREFIX
    log_tail_lines = 25
    fleetyd: Fleetyd
    tmp: Path
    text: Path

    @classmethod
    def set_up_lab(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="fleety-http-"))
        # A text object that gzip shrinks only to ~60%, so its compressed, chunked
        # response is still well above min_split_size.
        cls.text = cls.tmp / "words.txt"
        with open(cls.text, "w") as f:
            for i in range(100_000):
                f.write(hashlib.sha256(str(i).encode()).hexdigest() + "\n")
        cls.text.chmod(0o644)
        (cls.tmp / "empty.bin").touch(mode=0o644)
        cls.tmp.chmod(0o755)

        def server(cdn: str) -> str:
            cell_only = "max_ranges 0;" if cdn == "cell" else ""
            return f"""
        # 304 for an If-Modified-Since at or after Last-Modified (default: exact match only)
        if_modified_since before;
        # A server that ignores Range (200 with the whole body), on both CDNs / on one
        location /norange/ {{ alias {OBJECT_DIR}/; max_ranges 0; }}
        location /cell-norange/ {{ alias {OBJECT_DIR}/; {cell_only} }}
        # Compressed on the fly: chunked, no Content-Length
        location /text/ {{ alias {cls.tmp}/; default_type text/plain; gzip on;
                          gzip_types text/plain; gzip_proxied any; gzip_comp_level 1; }}
        location /files/ {{ alias {cls.tmp}/; }}
        # A server that answers any Range with 416
        location /range416/ {{ alias {OBJECT_DIR}/; if ($http_range) {{ return 416; }} }}
        location = /moved {{ return 301 /10MB; }}
        location = /unavailable {{ return 503 "down for maintenance\\n"; }}
        # Echoes the request's hop-by-hop fields; answers with hop-by-hop fields of its own
        location = /echo {{
            keepalive_timeout 65 60;
            add_header Connection "X-Bar";
            add_header X-Bar secret;
            return 200 "x-foo=[$http_x_foo] proxy-connection=[$http_proxy_connection] connection=[$http_connection] keep-alive=[$http_keep_alive]\\n";
        }}
"""
        cls.lab.up(wifi=SPEC, cell=SPEC, extra_server={c: server(c) for c in ("wifi", "cell")})
        cls.fleetyd = Fleetyd(cls.lab, config_text=minimal_config()
                              + '\n[scheduler]\nmin_split_size = "2MB"\n')
        cls.fleetyd.start()
        head = cls.curl(f"{CDN}/100MB", proxy=False, extra=["-I"])
        cls.etag = {"100MB": head.get("ETag")}
        head = cls.curl(f"{CDN}/10MB", proxy=False, extra=["-I"])
        cls.etag["10MB"] = head.get("ETag")
        cls.last_modified_10MB = head.get("Last-Modified")
        assert cls.etag["100MB"] and cls.etag["10MB"] and cls.last_modified_10MB, head.describe()

    @classmethod
    def tear_down_lab(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- helpers

    @classmethod
    def _rx(cls) -> dict[str, int]:
        return {n: c["rx"] for n, c in cls.lab.iface_bytes().items()}

    @classmethod
    def _log_since(cls, offset: int, want_lines: int) -> str:
        """fleetyd's log after `offset`, once it has `want_lines` request summaries
        (`→`), or after 3 s (a failed request has none)."""
        deadline = time.monotonic() + 3
        while True:
            text = cls.fleetyd.log()[offset:]
            if text.count(" → ") >= want_lines or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    @classmethod
    def curl(cls, url: str, proxy: bool = True, extra: Sequence[str] = (),
             timeout: float = 60, keep_body_up_to: int = 1 << 20,
             interface: str = "wlan0") -> Reply:
        """curl in the client namespace, through fleetyd or directly over `interface`."""
        with tempfile.TemporaryDirectory(prefix="fleety-http-") as tmp:
            head, body = Path(tmp) / "head", Path(tmp) / "body"
            argv = ["curl", "-sS", "-D", str(head), "-o", str(body),
                    "--max-time", str(int(timeout))]
            argv += (["--proxy", cls.fleetyd.proxy_url] if proxy
                     else ["--noproxy", "*", "--interface", interface])
            log_offset = len(cls.fleetyd.log())
            before = cls._rx()
            cp = cls.lab.exec("cli", [*argv, *extra, url], timeout=timeout + 10,
                              capture_output=True, text=True)
            after = cls._rx()
            status, headers = parse_header_block(head.read_text(errors="replace")
                                                 if head.exists() else "")
            data_len = body.stat().st_size if body.exists() else 0
            data = body.read_bytes() if body.exists() and data_len <= keep_body_up_to else None
            digest = file_sha256(body) if body.exists() else hashlib.sha256(b"").hexdigest()
        log = cls._log_since(log_offset, 1) if proxy else ""
        return Reply(cp.returncode, status, headers, data, data_len, digest,
                     {k: after[k] - before.get(k, 0) for k in after}, log, cp.stderr)

    def exchange(self, requests: list[tuple[str, str, list[tuple[str, str]]]]
                 ) -> tuple[list[dict[str, Any]], str, dict[str, int], str]:
        """Raw requests (method, absolute URL, fields) on one connection to fleetyd:
        (responses, leftover bytes after the last one, bytes per interface, fleetyd log)."""
        payload = json.dumps([{"method": m, "target": t, "headers": h} for m, t, h in requests])
        log_offset = len(self.fleetyd.log())
        before = self._rx()
        cp = self.lab.exec("cli", [sys.executable, str(Path(__file__).resolve()), "--exchange",
                                   "127.0.0.1", str(self.fleetyd.port)],
                           input=payload, capture_output=True, text=True, timeout=120)
        after = self._rx()
        rx = {k: after[k] - before.get(k, 0) for k in after}
        self.assertEqual(cp.returncode, 0, f"raw client failed: {cp.stderr}")
        out = json.loads(cp.stdout)
        log = self._log_since(log_offset, len(requests))
        responses, leftover = out[:-1], out[-1]["leftover"]
        print(f"raw exchange of {len(requests)} requests:")
        for r in responses:
            if "error" in r:
                print(f"  ERROR {r['error']}")
            else:
                print(f"  {r['status']} {r['reason']} framing={r['framing']} {r['body_len']} B "
                      f"sha256 {r['sha256'][:16]} fields {r['headers']}")
        print(f"  leftover {leftover[:80]!r}, rx {rx}")
        print("  fleetyd: " + "\n  fleetyd: ".join(log.strip().splitlines()))
        return responses, leftover, rx, log

    def assert_same_response(self, got: Reply, direct: Reply, what: str) -> None:
        """Status, end-to-end fields and body as a direct fetch got them."""
        diag = f"{what}\n--- through fleetyd:\n{got.describe()}\n--- direct:\n{direct.describe()}"
        self.assertEqual(got.exit_code, 0, diag)
        self.assertEqual(got.status, direct.status, diag)
        self.assertEqual(got.end_to_end(), direct.end_to_end(), diag)
        self.assertEqual((got.body_len, got.sha256), (direct.body_len, direct.sha256), diag)
        if got.get("Content-Length") is not None:
            self.assertEqual(int(got.get("Content-Length")), got.body_len, diag)

    # ---- a

    def test_a_keep_alive_connection_mixed_requests(self):
        """Small, multipath, 404, small again: one app connection, every answer exact."""
        names = ["1MB", "10MB", "no-such-object", "1MB"]
        with tempfile.TemporaryDirectory(prefix="fleety-http-") as tmp:
            argv = ["curl", "-sS", "--max-time", "60", "--proxy", self.fleetyd.proxy_url,
                    "-w", "%{http_code} %{num_connects} %{size_download}\\n"]
            for i, n in enumerate(names):
                argv += [f"{CDN}/{n}", "-o", f"{tmp}/{i}"]
            log_offset = len(self.fleetyd.log())
            before = self._rx()
            cp = self.lab.exec("cli", argv, timeout=80, capture_output=True, text=True)
            after = self._rx()
            digests = [file_sha256(Path(f"{tmp}/{i}")) for i in range(len(names))]
            body_404 = Path(f"{tmp}/2").read_bytes()
        log = self._log_since(log_offset, len(names))
        rx = {k: after[k] - before[k] for k in after}
        print(f"curl: {cp.stdout.strip()!r} {cp.stderr.strip()}; rx {rx}\n{log}")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        rows = [line.split() for line in cp.stdout.strip().splitlines()]
        self.assertEqual([r[0] for r in rows], ["200", "200", "404", "200"], rows)
        self.assertEqual([r[1] for r in rows], ["1", "0", "0", "0"],
                         f"curl opened more than one connection to fleetyd: {rows}")
        self.assertEqual(digests[0], object_sha256("1MB"))
        self.assertEqual(digests[1], object_sha256("10MB"), "the multipath object is wrong")
        self.assertEqual(digests[3], object_sha256("1MB"), "the request after the 404 is wrong")
        direct = self.curl(f"{CDN}/no-such-object", proxy=False)
        self.assertEqual(body_404, direct.body, "the 404's body differs from a direct fetch")
        # One session served all four, and the 10 MB one was split.
        sessions = re.findall(r"\[(\d+)\] GET \S+ → ", log)
        self.assertEqual(len(sessions), 4, log)
        self.assertEqual(len(set(sessions)), 1, f"not one app connection: {sessions}\n{log}")
        self.assertRegex(log, r"/10MB → 200 multipath")
        self.assertGreater(rx["rmnet0"], 2_000_000, "the 10 MB object was not split")

    # ---- b

    def test_b_head_of_a_big_object(self):
        """HEAD /100MB: the GET's header fields (Content-Length 100000000), no body: the
        next response on the connection starts right after the header."""
        direct = self.curl(f"{CDN}/100MB", proxy=False, extra=["-I"])
        responses, leftover, rx, log = self.exchange([
            ("HEAD", f"{CDN}/100MB", [("Host", "cdn.fleety.test")]),
            ("GET", f"{CDN}/no-such-object", [("Host", "cdn.fleety.test")]),
        ])
        for r in responses:
            self.assertNotIn("error", r, f"the HEAD's answer was not followed by a clean "
                                         f"response: {responses}")
        head, after = responses
        self.assertEqual(head["status"], 200)
        fields = {k.lower(): v for k, v in head["headers"]}
        self.assertEqual(fields.get("content-length"), "100000000", head)
        self.assertNotIn("transfer-encoding", fields, head)
        for name in ("etag", "last-modified", "content-type", "accept-ranges"):
            self.assertEqual(fields.get(name), direct.get(name),
                             f"{name}: {head} vs {direct.describe()}")
        self.assertEqual(after["status"], 404, responses)
        self.assertEqual(leftover, "")
        self.assertLess(rx["wlan0"] + rx["rmnet0"], 100_000, f"a HEAD fetched a body: {rx}")
        self.assertRegex(log, r"HEAD \S+/100MB → 200 one path")

    # ---- c

    def test_c_app_range_on_a_big_object(self):
        """The app's own Range: 206 with the origin's Content-Range and exactly those bytes;
        from 2 MB on fetched over both paths (`→ 206 multipath`), below on one. fleetyd
        asks the first path for the range's head only (not for a suffix range)."""
        size = 100_000_000
        cases = [("bytes=1000000-59999999", 1_000_000, 59_999_999),
                 ("bytes=50000000-", 50_000_000, size - 1),
                 ("bytes=-30000000", size - 30_000_000, size - 1),
                 ("bytes=5000000-5999999", 5_000_000, 5_999_999)]
        for header, first, last in cases:
            with self.subTest(range=header):
                length = last + 1 - first
                got = self.curl(f"{CDN}/100MB", extra=["-H", f"Range: {header}"], timeout=90)
                print(f"Range: {header}: {got.body_len} B in, rx {got.iface_rx}\n{got.log.strip()}")
                diag = got.describe()
                self.assertEqual(got.exit_code, 0, diag)
                self.assertEqual(got.status, 206, diag)
                self.assertEqual(got.get("Content-Range"), f"bytes {first}-{last}/{size}", diag)
                self.assertEqual(got.get("Content-Length"), str(length), diag)
                self.assertEqual(got.get("ETag"), self.etag["100MB"], diag)
                self.assertEqual(got.body_len, length, diag)
                self.assertEqual(got.sha256, file_sha256(OBJECT_DIR / "100MB", first, last),
                                 f"other bytes than {first}-{last} of the object\n{diag}")
                if length >= MIN_SPLIT:
                    self.assertRegex(got.log, r"GET \S+/100MB → 206 multipath",
                                     f"a {length} B range was not fetched over both paths\n{diag}")
                    self.assertGreater(got.iface_rx["rmnet0"], 0.2 * length,
                                       f"rmnet0 carried too little of the range\n{diag}")
                    if not header.startswith("bytes=-"):
                        # The first path asked for the head of the range, not all of it:
                        # no response is cut short, nothing received is thrown away
                        # (TCP/IP headers are ~4.6% of what the interfaces count).
                        self.assertLess(sum(got.iface_rx.values()), 1.08 * length, diag)
                else:
                    # Whole in one response, or (this host serves downloads: a small head
                    # range first) the rest behind it on the same path.
                    self.assertRegex(got.log,
                                     r"GET \S+/100MB → 206 (one path|multipath: .* cell: 0 bytes)",
                                     diag)
                    self.assertLess(got.iface_rx["rmnet0"], 50_000, diag)

    # ---- d

    def test_d_if_range(self):
        """If-Range with the current ETag: the range; with a stale one: the whole object."""
        first, last = 1_000_000, 8_999_999
        got = self.curl(f"{CDN}/10MB", extra=["-H", f"Range: bytes={first}-{last}",
                                              "-H", f"If-Range: {self.etag['10MB']}"])
        print(f"If-Range current: rx {got.iface_rx}\n{got.log.strip()}")
        diag = got.describe()
        self.assertEqual(got.exit_code, 0, diag)
        self.assertEqual(got.status, 206, diag)
        self.assertEqual(got.get("Content-Range"), f"bytes {first}-{last}/10000000", diag)
        self.assertEqual(got.sha256, file_sha256(OBJECT_DIR / "10MB", first, last), diag)

        stale = '"00000000-989680"'
        got = self.curl(f"{CDN}/10MB", extra=["-H", f"Range: bytes={first}-{last}",
                                              "-H", f"If-Range: {stale}"])
        print(f"If-Range stale: rx {got.iface_rx}\n{got.log.strip()}")
        diag = got.describe()
        self.assertEqual(got.exit_code, 0, diag)
        self.assertEqual(got.status, 200, diag)
        self.assertIsNone(got.get("Content-Range"), diag)
        self.assertEqual(got.get("Content-Length"), "10000000", diag)
        self.assertEqual(got.sha256, object_sha256("10MB"), f"not the whole object\n{diag}")

    # ---- e

    def test_e_multi_range_passes_through_on_one_path(self):
        direct = self.curl(f"{CDN}/10MB", proxy=False, extra=["-H", "Range: bytes=0-99,200-299"])
        got = self.curl(f"{CDN}/10MB", extra=["-H", "Range: bytes=0-99,200-299"])
        diag = f"--- through fleetyd:\n{got.describe()}\n--- direct:\n{direct.describe()}"
        self.assertEqual(got.status, 206, diag)
        ctype = got.get("Content-Type") or ""
        self.assertTrue(ctype.startswith("multipart/byteranges"), diag)
        parts = multipart_parts(got.body, ctype)
        obj = (OBJECT_DIR / "10MB").read_bytes()[:300]
        self.assertEqual(parts, [("bytes 0-99/10000000", obj[0:100]),
                                 ("bytes 200-299/10000000", obj[200:300])], diag)
        # Identical to the direct answer but for nginx's boundary, a per-process counter.
        def normalized(r: Reply) -> tuple:
            b = re.search(r"boundary=(\S+)", r.get("Content-Type"))[1]
            fields = r.end_to_end()
            fields["content-type"] = [v.replace(b, "B") for v in fields["content-type"]]
            return r.status, fields, r.body.replace(b.encode(), b"B"), r.get("Content-Length")
        self.assertEqual(normalized(got), normalized(direct), diag)
        self.assertRegex(got.log, r"/10MB → 206 one path", diag)
        self.assertLess(got.iface_rx["rmnet0"], 50_000, diag)

    def test_e_conditional_requests_get_304_without_body(self):
        """If-None-Match (current ETag), If-Modified-Since (future): 304, no body, and the
        next response on the same connection is intact."""
        etag = self.etag["10MB"]
        future = "Fri, 01 Jan 2100 00:00:00 GMT"
        direct = self.curl(f"{CDN}/10MB", proxy=False, extra=["-H", f"If-None-Match: {etag}"])
        self.assertEqual(direct.status, 304, direct.describe())
        responses, leftover, rx, log = self.exchange([
            ("GET", f"{CDN}/10MB", [("Host", "cdn.fleety.test"), ("If-None-Match", etag)]),
            ("GET", f"{CDN}/10MB", [("Host", "cdn.fleety.test"), ("If-Modified-Since", future)]),
            ("GET", f"{CDN}/1MB", [("Host", "cdn.fleety.test")]),
        ])
        for r in responses:
            self.assertNotIn("error", r, f"a response could not be read (bytes after a 304?): "
                                         f"{responses}")
        inm, ims, after = responses
        for name, r in (("If-None-Match", inm), ("If-Modified-Since", ims)):
            fields = {k.lower(): v for k, v in r["headers"]}
            self.assertEqual(r["status"], 304, f"{name}: {r}")
            self.assertEqual(fields.get("etag"), etag, f"{name}: {r}")
            self.assertEqual(fields.get("last-modified"), self.last_modified_10MB, f"{name}: {r}")
            # The origin's 304 has no Transfer-Encoding, and its 200 would have a
            # Content-Length: a "Transfer-Encoding: chunked" added on the way claims a
            # coding nobody applied (RFC 9112 §6.1) and invites a chunked body after it.
            self.assertNotIn("transfer-encoding", fields, f"{name}: {r}")
        self.assertEqual((after["status"], after["sha256"]), (200, object_sha256("1MB")), after)
        self.assertEqual(leftover, "")
        self.assertLess(rx["rmnet0"], 50_000, rx)
        self.assertEqual(len(re.findall(r"/10MB → 304 one path", log)), 2, log)

    # ---- f

    def test_f_server_ignoring_range_on_the_cell_path(self):
        # The premise: the cell CDN answers a range request for it with 200, wifi's with 206.
        # (By address: curl's own DNS query would leave on wlan0 and get the wifi CDN.)
        for path, status in (("cell", 200), ("wifi", 206)):
            iface, cdn = PATHS[path].iface, PATHS[path].cdn
            premise = self.curl(f"http://{cdn}/cell-norange/10MB", proxy=False, interface=iface,
                                extra=["-I", "-H", "Range: bytes=0-99"])
            self.assertEqual(premise.status, status, f"{iface}: {premise.describe()}")
        got = self.curl(f"{CDN}/cell-norange/10MB")
        print(got.describe())
        self.assertEqual(got.exit_code, 0, got.describe())
        self.assertEqual(got.status, 200, got.describe())
        self.assertEqual(got.sha256, object_sha256("10MB"), got.describe())
        self.assertRegex(got.log, r"path cell: \S+/cell-norange/10MB answered range \d+-\d+ "
                                  r"with 200 .*not using this path", got.describe())
        self.assertNotRegex(got.log, r"path wifi: .*not using this path", got.describe())

    def test_f_server_ignoring_range_on_both_paths(self):
        """nginx with max_ranges 0 sends no Accept-Ranges and answers ranges with 200."""
        premise = self.curl(f"{CDN}/norange/10MB", proxy=False,
                            extra=["-I", "-H", "Range: bytes=0-99"])
        self.assertEqual((premise.status, premise.get("Accept-Ranges")), (200, None),
                         premise.describe())
        got = self.curl(f"{CDN}/norange/10MB")
        print(got.describe())
        self.assertEqual(got.exit_code, 0, f"the app did not get the object\n{got.describe()}")
        self.assertEqual(got.status, 200, got.describe())
        self.assertEqual(got.sha256, object_sha256("10MB"), got.describe())

    # ---- g

    def test_g_gzip_chunked_response_passes_through_unsplit(self):
        url = f"{CDN}/text/{self.text.name}"
        gz = ["-H", "Accept-Encoding: gzip"]
        direct = self.curl(url, proxy=False, extra=gz, keep_body_up_to=1 << 24)
        got = self.curl(url, extra=gz, keep_body_up_to=1 << 24)
        diag = f"--- through fleetyd:\n{got.describe()}\n--- direct:\n{direct.describe()}"
        # The test's premise: nginx compresses on the fly, chunked, and the result is big.
        self.assertEqual(direct.get("Content-Encoding"), "gzip", diag)
        self.assertIsNone(direct.get("Content-Length"), diag)
        self.assertGreaterEqual(direct.body_len, MIN_SPLIT, diag)
        self.assertEqual(gzip.decompress(direct.body), self.text.read_bytes())
        # The compressed bytes, untouched, on one path.
        self.assertEqual(got.exit_code, 0, diag)
        self.assertEqual(got.status, 200, diag)
        self.assertEqual(got.get("Content-Encoding"), "gzip", diag)
        self.assertEqual(got.end_to_end(), direct.end_to_end(), diag)
        self.assertEqual((got.body_len, got.sha256), (direct.body_len, direct.sha256), diag)
        self.assertRegex(got.log, r"/text/\S+ → 200 one path", diag)
        self.assertLess(got.iface_rx["rmnet0"], 100_000, f"a chunked response was split\n{diag}")
        # And an app that asks for decoding gets the text.
        decoded = self.curl(url, extra=["--compressed"])
        self.assertEqual(decoded.exit_code, 0, decoded.describe())
        self.assertEqual(decoded.sha256, file_sha256(self.text), decoded.describe())

    # ---- h

    def test_h_redirect_and_errors_unchanged(self):
        for path in ("/moved", "/no-such-object", "/unavailable"):
            with self.subTest(path=path):
                direct = self.curl(f"{CDN}{path}", proxy=False)
                got = self.curl(f"{CDN}{path}")
                self.assert_same_response(got, direct, path)
                print(f"{path}: {got.status} Location={got.get('Location')} {got.body_len} B")
        self.assertEqual(direct.body, b"down for maintenance\n")

    # ---- i

    def test_i_hop_by_hop_fields_stripped_both_ways(self):
        """Connection and the fields it names, Keep-Alive and Proxy-Connection don't reach
        the server (it echoes them); the server's own (Connection: X-Bar, X-Bar,
        Keep-Alive) don't reach the app."""
        # The premise, directly: the server sees X-Foo and sends X-Bar and Keep-Alive.
        direct = self.curl(f"{CDN}/echo", proxy=False,
                           extra=["-H", "Connection: X-Foo", "-H", "X-Foo: 1"])
        self.assertIn(b"x-foo=[1]", direct.body, direct.describe())
        self.assertEqual((direct.get("X-Bar"), direct.get("Keep-Alive")), ("secret", "timeout=60"),
                         direct.describe())
        responses, leftover, rx, log = self.exchange([
            ("GET", f"{CDN}/echo", [("Host", "cdn.fleety.test"), ("Connection", "X-Foo"),
                                    ("X-Foo", "1"), ("Proxy-Connection", "keep-alive"),
                                    ("Keep-Alive", "timeout=5")]),
            ("GET", f"{CDN}/no-such-object", [("Host", "cdn.fleety.test")]),
        ])
        for r in responses:
            self.assertNotIn("error", r, responses)
        echo = responses[0]
        self.assertEqual(echo["status"], 200, echo)
        seen = dict(re.findall(r"([\w-]+)=\[([^\]]*)\]", echo["body"]))
        print(f"the server saw {seen}")
        self.assertEqual(seen["x-foo"], "",
                         f"X-Foo (named in Connection) reached the server: {seen}")
        self.assertEqual(seen["proxy-connection"], "", seen)
        self.assertEqual(seen["keep-alive"], "", seen)
        self.assertNotIn("x-foo", seen["connection"].lower(), seen)
        names = [k.lower() for k, _ in echo["headers"]]
        connection = ",".join(v for k, v in echo["headers"] if k.lower() == "connection").lower()
        self.assertNotIn("x-bar", names,
                         f"X-Bar (named in the server's Connection) reached the app: "
                         f"{echo['headers']}")
        self.assertNotIn("x-bar", connection, echo["headers"])
        self.assertNotIn("keep-alive", names, echo["headers"])
        self.assertEqual(responses[1]["status"], 404)
        self.assertEqual(leftover, "")

    # ---- j

    def test_j_head_range_is_invisible_to_the_app(self):
        """The 206 to fleetyd's head range becomes the origin's 200: for an empty object
        (nginx answers its range with a 200), one inside the head range (1 MB: on one
        path) and one beyond it (10 MB: split). A server that answers the range with 416
        is asked again without it."""
        # A fresh fleetyd: test f put the CDN's host in cooldown (one path, no head range).
        type(self).fleetyd.stop()
        type(self).fleetyd = Fleetyd(self.lab)
        self.fleetyd.start()
        for path in ("/files/empty.bin", "/1MB", "/10MB", "/range416/1MB"):
            with self.subTest(path=path):
                direct = self.curl(f"{CDN}{path}", proxy=False)
                got = self.curl(f"{CDN}{path}")
                self.assert_same_response(got, direct, path)
                self.assertEqual(got.status, 200, got.describe())
                self.assertIsNone(got.get("Content-Range"), got.describe())
                print(f"{path}: {got.status} {got.body_len} B, rx {got.iface_rx}\n{got.log}")
                if path == "/files/empty.bin":
                    self.assertRegex(got.log, r"→ 200 one path")
                elif path == "/range416/1MB":
                    self.assertRegex(got.log, r"answered our head range with 416 .*asking again")
                    self.assertRegex(got.log, r"→ 200 one path")
                elif path == "/1MB":
                    self.assertRegex(got.log, r"→ 200 one path \(small object\)")
                    self.assertLess(got.iface_rx["rmnet0"], 20_000, got.describe())
                else:
                    self.assertRegex(got.log, r"→ 200 multipath")
                    self.assertGreater(got.iface_rx["rmnet0"], 1_000_000, got.describe())


if __name__ == "__main__":
    unittest.main(verbosity=2)
