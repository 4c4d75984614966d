#!/usr/bin/env python3
"""Sends raw bytes to an HTTP server and prints the status line of the answer.

    raw_http.py HOST PORT < REQUEST_BYTES   → prints e.g. "HTTP/1.1 400 Bad Request" (or "closed")

For requests no well-behaved client would send (smuggling vectors), from inside a
lab namespace.
"""
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
payload = sys.stdin.buffer.read()
with socket.create_connection((host, port), timeout=10) as s:
    s.sendall(payload)
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
print(data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed")
