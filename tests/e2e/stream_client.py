#!/usr/bin/env python3
"""An app that is not a download manager (issue 16), for the lab tests: it reads a
server-sent-event stream, waits on a long poll, or echoes over a WebSocket, against the
lab's streaming server (lab/streams.py), directly or through an HTTP proxy, and prints
one JSON line of what it saw.

  stream_client.py sse URL [--proxy HOST:PORT]    {"ticks": n, "late_ms": [...], "status": 200}
  stream_client.py get URL [--proxy HOST:PORT] [--pause S [--pause-after BYTES]]
                                                  {"status": s, "bytes": n, "seconds": t, "gaps": [...], "sha256": h}
  stream_client.py ws URL [--proxy HOST:PORT] [--messages N]   {"status": 101, "echoed": n}

The server stamps each event with its clock; this machine's clock is the same, so
late_ms is how long after the server sent it the event reached the app.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import time
from urllib.parse import urlsplit


def connect(url: str, proxy: str | None, timeout: float,
            receive_buffer: int = 0) -> tuple[socket.socket, str]:
    """A socket to the server (or the proxy) and the request target to send;
    `receive_buffer` (bytes, before the handshake): a small window, so that the sender
    sees at once that the app stopped reading."""
    u = urlsplit(url)
    if proxy:
        host, port = proxy.rsplit(":", 1)
        target = url
    else:
        host, port = u.hostname, u.port or 80
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if receive_buffer:
        address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
        s = socket.socket(address[0], socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        s.settimeout(timeout)
        s.connect(address[4])
    else:
        s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, target


def read_head(f) -> tuple[int, dict[str, str]]:
    status_line = f.readline().decode("latin-1")
    while status_line.startswith("HTTP/1.1 1") and not status_line.startswith("HTTP/1.1 101"):
        while f.readline() not in (b"\r\n", b""):  # an interim response
            pass
        status_line = f.readline().decode("latin-1")
    status = int(status_line.split()[1]) if status_line else 0
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def body_pieces(f, headers: dict[str, str]):
    """The body as it arrives (chunked, length or until close)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                return
            yield f.read(size)
            f.readline()
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            piece = f.read1(min(left, 65536))
            if not piece:
                return
            left -= len(piece)
            yield piece
    else:
        while piece := f.read1(65536):
            yield piece


def request(s: socket.socket, target: str, host: str, extra: str = "") -> None:
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())


def run_sse(args) -> dict:
    s, target = connect(args.url, args.proxy, args.timeout)
    request(s, target, urlsplit(args.url).netloc, "Accept: text/event-stream\r\n")
    f = s.makefile("rb")
    status, headers = read_head(f)
    late, pending = [], b""
    for piece in body_pieces(f, headers):
        now_ns = time.time_ns()
        pending += piece
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    sent = json.loads(line[6:])["sent_ns"]
                    late.append(round((now_ns - sent) / 1e6, 1))
    return {"status": status, "ticks": len(late), "late_ms": late}


def run_get(args) -> dict:
    s, target = connect(args.url, args.proxy, args.timeout, 65536 if args.pause else 0)
    started = time.monotonic()
    request(s, target, urlsplit(args.url).netloc)
    f = s.makefile("rb")
    status, headers = read_head(f)
    total, gaps, last = 0, [], time.monotonic()
    digest = hashlib.sha256()
    paused = False
    try:
        for piece in body_pieces(f, headers):
            now = time.monotonic()
            gaps.append(round(now - last, 2))
            total += len(piece)
            digest.update(piece)
            if args.pause and not paused and total >= args.pause_after:
                time.sleep(args.pause)  # a paused player: reads nothing meanwhile
                paused = True
            last = time.monotonic()
    except (ConnectionError, OSError) as e:
        return {"status": status, "bytes": total, "error": str(e),
                "seconds": round(time.monotonic() - started, 2)}
    return {"status": status, "bytes": total, "seconds": round(time.monotonic() - started, 2),
            "gaps": gaps, "sha256": digest.hexdigest()}


def ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def run_ws(args) -> dict:
    s, target = connect(args.url, args.proxy, args.timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    request(s, target, urlsplit(args.url).netloc,
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n")
    f = s.makefile("rb")
    status, headers = read_head(f)
    echoed = 0
    if status == 101:
        for i in range(args.messages):
            message = f"message {i} {'x' * (i * 37 % 300)}".encode()
            s.sendall(ws_frame(message))
            head = f.read(2)
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(f.read(2), "big")
            if f.read(n) == message:
                echoed += 1
    return {"status": status, "echoed": echoed, "upgrade": headers.get("upgrade", "")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("sse", "get", "ws"))
    ap.add_argument("url")
    ap.add_argument("--proxy")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--messages", type=int, default=5)
    ap.add_argument("--pause", type=float, default=0,
                    help="get: stop reading this many seconds once --pause-after bytes came")
    ap.add_argument("--pause-after", type=int, default=1_000_000)
    args = ap.parse_args()
    result = {"sse": run_sse, "get": run_get, "ws": run_ws}[args.mode](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
