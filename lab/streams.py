#!/usr/bin/env python3
"""The lab's streaming server (issue 16): what apps fetch that is not a file.

One asyncio process serving HTTP/1.1 on every address given (the CDN addresses, port
8081 by default), each request logged with the address it came to:

  GET /sse?ticks=N&gap_ms=G        server-sent events: N ticks G ms apart, chunked; each
                                   tick's data is {"seq": i, "sent_ns": <time.time_ns()>}
  GET /chunked?chunks=N&gap_ms=G&size=S   chunked body: N pieces of S bytes, G ms apart
  GET /until-close?chunks=N&gap_ms=G&size=S   no length: pieces, then the server closes
  GET /poll?after_ms=T             a long poll: the answer (200, "done") after T ms
  GET /ws  (Upgrade: websocket)    101, then every frame echoed back (RFC 6455)
  GET /slow-header?after_ms=T      the header after T ms, then a small body (Content-Length)

With --proxy-port, also a minimal forward proxy there (an app's own HTTP proxy): CONNECT
host:port is tunnelled; an absolute-form request is sent on to its host (Connection:
close) and the answer relayed back until the server closes.

Server and clients share the machine's clock, so a test measures how late a tick
reached the app. Bounded: every count and wait has a ceiling; a connection idle for 10
minutes is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

MAX_TICKS = 10_000
MAX_GAP_MS = 120_000
MAX_SIZE = 1 << 20
MAX_WAIT_MS = 600_000
IDLE_S = 600
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_FRAME = 1 << 20


def bounded(query: dict, key: str, default: int, ceiling: int) -> int:
    try:
        value = int(query.get(key, [default])[0])
    except ValueError:
        value = default
    return max(0, min(value, ceiling))


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log):
        self.reader = reader
        self.writer = writer
        self.log = log
        sock = writer.get_extra_info("sockname")
        self.local = f"{sock[0]}:{sock[1]}" if sock else "?"

    async def read_request(self) -> tuple[str, str, dict[str, str]] | None:
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), IDLE_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            return None
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return method, target, headers

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def serve(self) -> None:
        try:
            while True:
                request = await self.read_request()
                if request is None:
                    return
                method, target, headers = request
                self.log(f"{self.local} {method} {target} upgrade={headers.get('upgrade', '-')}")
                keep = await self.handle(method, target, headers)
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 (already gone)
                pass

    async def handle(self, method: str, target: str, headers: dict[str, str]) -> bool:
        url = urlsplit(target)
        q = parse_qs(url.query)
        path = url.path
        if path == "/sse":
            ticks = bounded(q, "ticks", 10, MAX_TICKS)
            gap = bounded(q, "gap_ms", 1000, MAX_GAP_MS) / 1000
            await self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(ticks):
                if i:
                    await asyncio.sleep(gap)
                event = f"data: {json.dumps({'seq': i, 'sent_ns': time.time_ns()})}\n\n".encode()
                await self.send(b"%x\r\n%s\r\n" % (len(event), event))
            await self.send(b"0\r\n\r\n")
            return True
        if path in ("/chunked", "/until-close"):
            chunks = bounded(q, "chunks", 10, MAX_TICKS)
            gap = bounded(q, "gap_ms", 500, MAX_GAP_MS) / 1000
            size = max(1, bounded(q, "size", 1000, MAX_SIZE))
            chunked = path == "/chunked"
            await self.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" +
                            (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
                             else b"Connection: close\r\n\r\n"))
            for i in range(chunks):
                if i:
                    await asyncio.sleep(gap)
                piece = bytes((i + k) % 251 for k in range(size))
                await self.send(b"%x\r\n%s\r\n" % (size, piece) if chunked else piece)
            if chunked:
                await self.send(b"0\r\n\r\n")
                return True
            return False
        if path in ("/poll", "/slow-header"):
            await asyncio.sleep(bounded(q, "after_ms", 20_000, MAX_WAIT_MS) / 1000)
            body = b"done\n"
            await self.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return True
        if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
            key = headers.get("sec-websocket-key", "")
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
            await self.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            await self.echo_frames()
            return False
        body = b"not found\n"
        await self.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    async def echo_frames(self) -> None:
        """RFC 6455 §5: client frames are masked; the echo goes back unmasked."""
        while True:
            try:
                head = await asyncio.wait_for(self.reader.readexactly(2), IDLE_S)
                opcode = head[0] & 0x0F
                length = head[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(await self.reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await self.reader.readexactly(8), "big")
                if length > MAX_FRAME:
                    return
                mask = await self.reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(await self.reader.readexactly(length)))
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            if opcode == 0x8:  # close: answer it and end
                await self.send(bytes([0x88, len(data[:125])]) + data[:125])
                return
            if opcode == 0x9:  # ping → pong
                opcode = 0xA
            header = bytes([0x80 | opcode])
            if len(data) < 126:
                header += bytes([len(data)])
            elif len(data) < 65536:
                header += bytes([126]) + len(data).to_bytes(2, "big")
            else:
                header += bytes([127]) + len(data).to_bytes(8, "big")
            await self.send(header + data)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await asyncio.wait_for(reader.read(65536), IDLE_S):
            writer.write(data)
            await writer.drain()
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


NAMES: dict[str, str] = {}  # --resolve NAME=ADDRESS: the proxy's own name lookups (no DNS here)


async def forward_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log) -> None:
    """One client of the forward proxy: its first request decides (CONNECT or one GET)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
        method, target, version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        log(f"proxy {method} {target}")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_r, up_w = await asyncio.open_connection(NAMES.get(host, host), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            u = urlsplit(target)
            up_r, up_w = await asyncio.open_connection(NAMES.get(u.hostname, u.hostname),
                                                       u.port or 80)
            rest = head.split(b"\r\n", 1)[1]
            lines = [l for l in rest.split(b"\r\n") if l and not l.lower().startswith(
                (b"connection:", b"proxy-connection:"))]
            origin = (u.path or "/") + (f"?{u.query}" if u.query else "")
            up_w.write(f"{method} {origin} {version}\r\n".encode() + b"\r\n".join(lines) +
                       b"\r\nConnection: close\r\n\r\n")
            await up_w.drain()
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError, ValueError, OSError):
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", action="append", required=True, help="ADDRESS (repeat)")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--proxy-port", type=int, help="also a forward proxy on this port")
    ap.add_argument("--resolve", action="append", default=[],
                    help="NAME=ADDRESS for the forward proxy's lookups (repeat)")
    ap.add_argument("--log", help="request log file (default: stderr)")
    args = ap.parse_args()
    out = open(args.log, "a", buffering=1) if args.log else sys.stderr
    for item in args.resolve:
        name, _, address = item.partition("=")
        NAMES[name] = address

    def log(line: str) -> None:
        out.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    servers = [await asyncio.start_server(lambda r, w: Connection(r, w, log).serve(), address,
                                          args.port, reuse_address=True)
               for address in args.listen]
    if args.proxy_port:
        servers += [await asyncio.start_server(lambda r, w: forward_proxy(r, w, log), address,
                                               args.proxy_port, reuse_address=True)
                    for address in args.listen]
    log(f"listening on {', '.join(f'{a}:{args.port}' for a in args.listen)}"
        + (f" (forward proxy on :{args.proxy_port})" if args.proxy_port else ""))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
