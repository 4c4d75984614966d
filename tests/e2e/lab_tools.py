#!/usr/bin/env python3
"""Small stdlib-only network tools run inside the lab's namespaces by the e2e
tests (via `fleety-lab exec` / Lab.exec), each bounded in time:

  lab_tools.py dns --server IP [--dev IFACE] [--type A|AAAA] NAME
      one DNS query over UDP (socket bound with SO_BINDTODEVICE when --dev);
      prints JSON {"rcode": .., "answers": [..], "elapsed_ms": ..}
  lab_tools.py sink --bind IP [--port N] [--max-seconds S]
      accepts one TCP connection, reads to EOF, records a byte timeline,
      answers with a JSON summary on the connection and prints it
  lab_tools.py upload --dst IP [--port N] [--dev IFACE] --bytes N [--max-seconds S]
      sends N bytes to a sink, prints the sink's JSON summary
  lab_tools.py echo-server --bind IP [--port N] [--max-seconds S]
      echoes every connection's bytes back
  lab_tools.py echo-client --dst IP [--port N] --bytes N [--max-seconds S]
      sends N random bytes to an echo server, prints JSON with the sha256 of what it
      sent and of what came back
  lab_tools.py http-once --bind IP [--port N] [--max-seconds S]
      answers one request per connection (claiming keep-alive), then closes it
  lab_tools.py http-files --bind IP [--port N] --dir DIR [--max-seconds S]
      serves the files of DIR (GET/HEAD, no Range), logs each request as a JSON line

IP may be IPv6, link-local ones with their interface: fe80::1%to-cli.
"""

import argparse
import functools
import hashlib
import http.server
import json
import os
import random
import socket
import socketserver
import struct
import sys
import threading
import time

QTYPES = {"A": 1, "AAAA": 28}


def bind_device(sock: socket.socket, dev: str | None) -> None:
    if dev:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode() + b"\0")


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def skip_name(msg: bytes, off: int) -> int:
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def dns_query(server: str, name: str, qtype: str, dev: str | None, timeout: float) -> dict:
    qid = random.randrange(65536)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", QTYPES[qtype], 1)
    family, _, _, _, sockaddr = socket.getaddrinfo(server, 53, type=socket.SOCK_DGRAM,
                                                   flags=socket.AI_NUMERICHOST)[0]
    s = socket.socket(family, socket.SOCK_DGRAM)
    bind_device(s, dev)
    s.settimeout(timeout)
    t0 = time.monotonic()
    s.sendto(query, sockaddr)
    while True:
        msg, _ = s.recvfrom(4096)
        if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == qid:
            break
    elapsed = (time.monotonic() - t0) * 1000
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    answers = []
    for _ in range(an):
        off = skip_name(msg, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        rdata = msg[off:off + rdlen]
        off += rdlen
        if rtype == 1 and rdlen == 4:
            answers.append(socket.inet_ntoa(rdata))
        elif rtype == 28 and rdlen == 16:
            answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return {"rcode": flags & 0xF, "answers": answers, "elapsed_ms": round(elapsed, 2)}


def tcp_address(host: str, port: int) -> tuple[int, tuple]:
    """(family, sockaddr) of a numeric IPv4 or IPv6 address; an IPv6 one may carry its
    interface ("fe80::1%wlan0"), which becomes the scope id."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_NUMERICHOST)[0]
    return family, sockaddr


def display(sockaddr: tuple) -> str:
    """"198.18.1.2:80" or "[fe80::2%wlan0]:80" (the peer, as a test reads it)."""
    if len(sockaddr) == 4:
        scope = sockaddr[3]
        host = sockaddr[0].split("%")[0]
        if scope:
            try:
                host += "%" + socket.if_indextoname(scope)
            except OSError:
                host += f"%{scope}"
        return f"[{host}]:{sockaddr[1]}"
    return f"{sockaddr[0]}:{sockaddr[1]}"


def listening_socket(bind: str, port: int, backlog: int, max_seconds: float) -> socket.socket:
    """A TCP listener on bind:port whose accept waits at most max_seconds; says so on
    stdout (the tests wait for that line)."""
    family, sockaddr = tcp_address(bind, port)
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(sockaddr)
    ls.listen(backlog)
    ls.settimeout(max_seconds)
    print(json.dumps({"listening": f"{bind}:{port}"}), flush=True)
    return ls


def sink(bind: str, port: int, max_seconds: float) -> dict:
    ls = listening_socket(bind, port, 1, max_seconds)
    conn, peer = ls.accept()
    deadline = time.monotonic() + max_seconds
    conn.settimeout(max_seconds)
    total = 0
    first = None
    timeline = []  # (seconds since first byte, bytes), every >= 20 ms
    last_mark = 0.0
    while time.monotonic() < deadline:
        data = conn.recv(1 << 18)
        now = time.monotonic()
        if not data:
            break
        if first is None:
            first = now
        total += len(data)
        if now - last_mark >= 0.02:
            timeline.append((round(now - first, 4), total))
            last_mark = now
    end = time.monotonic()
    summary = {"peer": display(peer), "bytes": total,
               "seconds": round(end - first, 4) if first else 0.0,
               "timeline": timeline + [(round(end - first, 4) if first else 0.0, total)]}
    try:
        conn.sendall(json.dumps(summary).encode())
    finally:
        conn.close()
        ls.close()
    return summary


def upload(dst: str, port: int, dev: str | None, nbytes: int, max_seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bind_device(s, dev)
    s.settimeout(max_seconds)
    t0 = time.monotonic()
    s.connect((dst, port))
    block = os.urandom(1 << 16)
    left = nbytes
    deadline = t0 + max_seconds
    while left > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("upload took longer than --max-seconds")
        n = s.send(block[:min(left, len(block))])
        left -= n
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        reply += data
    summary = json.loads(reply)
    summary["client_seconds"] = round(time.monotonic() - t0, 4)
    return summary


def echo_server(bind: str, port: int, max_seconds: float) -> None:
    """Echoes every connection's bytes back until it closes (each in a thread), for at
    most max_seconds in all."""
    ls = listening_socket(bind, port, 16, max_seconds)
    deadline = time.monotonic() + max_seconds

    def serve(conn: socket.socket) -> None:
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        with conn:
            try:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError as e:  # a reset client (the selector moved it) is no error here
                print(json.dumps({"closed": str(e), "t": time.time()}), flush=True)

    while time.monotonic() < deadline:
        try:
            conn, peer = ls.accept()
        except socket.timeout:
            break
        print(json.dumps({"accepted": display(peer), "t": time.time()}), flush=True)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def echo_client(dst: str, port: int, nbytes: int, max_seconds: float) -> dict:
    """Sends nbytes of random bytes (from a thread) and reads the echo back; the sha256
    of both."""
    payload = os.urandom(nbytes)
    family, sockaddr = tcp_address(dst, port)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(max_seconds)
    s.connect(sockaddr)

    def send() -> None:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)

    local, peer = s.getsockname(), s.getpeername()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = bytearray()
    while data := s.recv(1 << 16):
        received += data
    sender.join(max_seconds)
    s.close()
    return {"sent": len(payload), "received": len(received), "local": display(local),
            "peer": display(peer),
            "sent_sha256": hashlib.sha256(payload).hexdigest(),
            "received_sha256": hashlib.sha256(received).hexdigest()}


def ping_client(dst: str, port: int, interval: float, max_seconds: float) -> None:
    """A game's connection: a short message every `interval` seconds and its echo, for
    max_seconds in all. When the connection fails (reset, closed, no echo within 2 s) it
    says so and connects again at once. One JSON line per event, with the time."""
    family, sockaddr = tcp_address(dst, port)
    deadline = time.monotonic() + max_seconds
    n = 0
    while time.monotonic() < deadline:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(sockaddr)
            print(json.dumps({"event": "connected", "t": time.time()}), flush=True)
            while time.monotonic() < deadline:
                n += 1
                message = f"ping {n}\n".encode()
                started = time.monotonic()
                s.sendall(message)
                echo = b""
                while len(echo) < len(message):
                    data = s.recv(len(message) - len(echo))
                    if not data:
                        raise ConnectionError("closed by the other side")
                    echo += data
                if echo != message:
                    raise ConnectionError(f"wrong echo {echo!r}")
                rtt = time.monotonic() - started
                if n % 20 == 0:
                    print(json.dumps({"event": "rtt", "t": time.time(), "rtt_ms": rtt * 1000}),
                          flush=True)
                time.sleep(max(0.0, interval - rtt))
        except OSError as e:  # ConnectionError, socket.timeout
            print(json.dumps({"event": "lost", "t": time.time(), "error": str(e)}), flush=True)
            time.sleep(0.05)
        finally:
            s.close()


def http_once(bind: str, port: int, max_seconds: float) -> None:
    """An HTTP server that answers one request per connection with a 200 that claims
    keep-alive, then closes the connection a moment later anyway (as a server whose idle
    timeout just ran out does). The body names the request target."""
    ls = listening_socket(bind, port, 16, max_seconds)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = ls.accept()
        except socket.timeout:
            break
        with conn:
            try:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        break
                    request += data
                if b" " not in request:
                    continue
                target = request.split(b" ", 2)[1]
                body = b"once:" + target
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() +
                             b"\r\nConnection: keep-alive\r\n\r\n" + body)
                time.sleep(0.1)
            except OSError:
                continue  # a client that went away


def http_files(bind: str, port: int, directory: str, max_seconds: float) -> None:
    """http.server's file handler (GET/HEAD, HTTP/1.0 answers, Range ignored) on bind:port,
    IPv4 or IPv6 with a scope, for at most max_seconds; one JSON line per request."""
    family, sockaddr = tcp_address(bind, port)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
            headers = getattr(self, "headers", None)
            print(json.dumps({"peer": display(self.client_address), "request": format % args,
                              "range": headers.get("Range") if headers else None}), flush=True)

    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

        def server_bind(self) -> None:
            # HTTPServer's own would look its name up (getfqdn): no resolver in the lab.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "lab", self.server_address[1]

    server = Server(sockaddr, functools.partial(Handler, directory=directory))
    server.timeout = 0.5
    print(json.dumps({"listening": display(server.socket.getsockname())}), flush=True)
    deadline = time.monotonic() + max_seconds
    with server:
        while time.monotonic() < deadline:
            server.handle_request()


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dns")
    d.add_argument("--server", required=True)
    d.add_argument("--dev")
    d.add_argument("--type", default="A", choices=sorted(QTYPES))
    d.add_argument("--timeout", type=float, default=3.0)
    d.add_argument("name")
    k = sub.add_parser("sink")
    k.add_argument("--bind", required=True)
    k.add_argument("--port", type=int, default=5001)
    k.add_argument("--max-seconds", type=float, default=30.0)
    u = sub.add_parser("upload")
    u.add_argument("--dst", required=True)
    u.add_argument("--port", type=int, default=5001)
    u.add_argument("--dev")
    u.add_argument("--bytes", type=int, required=True)
    u.add_argument("--max-seconds", type=float, default=30.0)
    e = sub.add_parser("echo-server")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, default=7007)
    e.add_argument("--max-seconds", type=float, default=120.0)
    c = sub.add_parser("echo-client")
    c.add_argument("--dst", required=True)
    c.add_argument("--port", type=int, default=7007)
    c.add_argument("--bytes", type=int, required=True)
    c.add_argument("--max-seconds", type=float, default=30.0)
    g = sub.add_parser("ping-client")
    g.add_argument("--dst", required=True)
    g.add_argument("--port", type=int, default=7007)
    g.add_argument("--interval", type=float, default=0.05)
    g.add_argument("--max-seconds", type=float, default=30.0)
    h = sub.add_parser("http-once")
    h.add_argument("--bind", required=True)
    h.add_argument("--port", type=int, default=8080)
    h.add_argument("--max-seconds", type=float, default=60.0)
    f = sub.add_parser("http-files")
    f.add_argument("--bind", required=True)
    f.add_argument("--port", type=int, default=8080)
    f.add_argument("--dir", required=True)
    f.add_argument("--max-seconds", type=float, default=60.0)
    a = ap.parse_args()
    if a.cmd == "http-files":
        http_files(a.bind, a.port, a.dir, a.max_seconds)
        return 0
    if a.cmd == "ping-client":
        ping_client(a.dst, a.port, a.interval, a.max_seconds)
        return 0
    if a.cmd == "http-once":
        http_once(a.bind, a.port, a.max_seconds)
        return 0
    if a.cmd == "echo-server":
        echo_server(a.bind, a.port, a.max_seconds)
        return 0
    if a.cmd == "echo-client":
        print(json.dumps(echo_client(a.dst, a.port, a.bytes, a.max_seconds)))
        return 0
    if a.cmd == "dns":
        print(json.dumps(dns_query(a.server, a.name, a.type, a.dev, a.timeout)))
    elif a.cmd == "sink":
        print(json.dumps(sink(a.bind, a.port, a.max_seconds)))
    else:
        print(json.dumps(upload(a.dst, a.port, a.dev, a.bytes, a.max_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
