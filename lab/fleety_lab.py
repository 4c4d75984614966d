"""fleety network lab: a client with two access paths (Wi-Fi and cellular) to
an emulated Internet, built from network namespaces on this machine.

    <p>-cli   --wlan0--  <p>-wlan  (ISP router, shaping)  --+
                                                           +-- <p>-inet (CDNs, DNS)
    <p>-cli   --rmnet0-  <p>-rmnet (ISP router, shaping)  --+

All of a path's shaping lives in its router namespace: tbf on both egress
veths (rate) and a fleety-delayline NFQUEUE consumer (one-way delay and loss
per direction). See lab/README.md for the diagram, addresses and commands.

Use it from the command line (lab/fleety-lab) or from Python:

    from fleety_lab import Lab
    with Lab("flt") as lab:
        lab.up(wifi="40mbit/20ms", cell="25mbit/40ms/1%")
        lab.exec("cli", ["curl", "--interface", "wlan0", "http://198.18.10.1/10MB"])

Only the Python standard library is used. Everything needs root.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

# --------------------------------------------------------------------------
# Constants: names and addresses (all from 198.18.0.0/15, RFC 2544 benchmarking)

STATE_ROOT = Path("/run/fleety-lab")
OBJECT_DIR = Path("/var/cache/fleety-lab/objects")
NETNS_ETC = Path("/etc/netns")
DEFAULT_PREFIX = "fl"
DEFAULT_SPEC = "20mbit/25ms"
DEFAULT_OBJECTS = ("1MB", "10MB", "100MB")
OBJECT_SEED = b"fleety-lab objects v1\0"
OBJECT_CHUNK = 1 << 20
CMD_TIMEOUT = 15.0  # seconds, for every helper command the lab runs itself
EXEC_TIMEOUT = 3600.0  # default for exec()/`fleety-lab exec`

ANYCAST_DNS = "198.18.0.53"
CDN_NAME = "cdn.fleety.test"
# HTTPS on every CDN address (not the MPTCP server's: port 80 only), with a certificate
# for CDN_NAME and the CDN addresses signed by a test CA made at `up` (see make_tls)
TLS_PORT = 443
TLS_DIR = "tls"  # in the lab's state dir
TLS_CA_NAME = "fleety lab test CA"
TLS_DAYS = 30
FRAME_BYTES = 1514  # a full Ethernet frame on the veths (MTU 1500 + 14)

NAMESPACES = ("cli", "wlan", "rmnet", "inet")


@dataclasses.dataclass(frozen=True)
class PathDef:
    name: str  # wifi | cell
    iface: str  # client interface
    router: str  # short namespace name of the ISP router
    client_addr: str
    gateway: str
    subnet: str
    table: int
    metric: int
    router_uplink: str  # router side of the router<->inet /30
    inet_addr: str  # inet side of the router<->inet /30
    inet_iface: str  # inet's veth toward this router
    cdn: str  # this ISP's CDN node
    dns: str  # this ISP's resolver
    seed: int  # delayline PRNG seed


PATHS: dict[str, PathDef] = {
    "wifi": PathDef("wifi", "wlan0", "wlan", "198.18.1.2", "198.18.1.1", "198.18.1.0/24", 101,
                    100, "198.18.101.1", "198.18.101.2", "to-wlan", "198.18.10.1",
                    "198.18.10.53", 1),
    "cell": PathDef("cell", "rmnet0", "rmnet", "198.18.2.2", "198.18.2.1", "198.18.2.0/24", 102,
                    200, "198.18.102.1", "198.18.102.2", "to-rmnet", "198.18.20.1",
                    "198.18.20.53", 2),
}
PATH_ALIASES = {"wifi": "wifi", "wlan0": "wifi", "wlan": "wifi",
                "cell": "cell", "rmnet0": "cell", "rmnet": "cell"}
LINK_STATES = ("up", "down", "blackhole")
ROUTER_CLI_IF = "to-cli"
ROUTER_INET_IF = "to-inet"
# IPv6 (opt-in: up(ipv6=True), `up --ipv6`): link-local only, on the client<->router
# links, the same pair on both (fe80::1%wlan0 and fe80::1%rmnet0 are two routers: the
# interface tells them apart). There is no IPv6 range for the lab; nothing routes these.
IPV6_GATEWAY = "fe80::1"  # each router's to-cli
IPV6_CLIENT = "fe80::2"  # the client's wlan0 and rmnet0


class LabError(Exception):
    """A lab operation failed; str() is a one-line explanation."""


# --------------------------------------------------------------------------
# SPEC parsing: RATE/DELAY[/LOSS], e.g. 20mbit/25ms/0.5%

_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000,
               "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
_DELAY_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000}


@dataclasses.dataclass(frozen=True)
class DirSpec:
    """Shaping of one direction of one path."""
    rate_bps: int | None  # None = unlimited
    delay_us: int  # one-way delay added in this direction
    loss_pct: float  # random loss in this direction, percent

    def __str__(self) -> str:
        return format_spec(self)

    def to_json(self) -> dict[str, Any]:
        return {"rate_bps": self.rate_bps, "delay_us": self.delay_us, "loss_pct": self.loss_pct,
                "spec": format_spec(self)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "DirSpec":
        return DirSpec(d["rate_bps"], int(d["delay_us"]), float(d["loss_pct"]))


def parse_rate(text: str) -> int | None:
    t = text.strip().lower()
    if t in ("unlimited", "inf", "none"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+)", t)
    if not m or m.group(2) not in _RATE_UNITS:
        raise LabError(f"bad rate '{text}': use e.g. 500kbit, 20mbit, 1gbit or unlimited")
    bps = int(round(float(m.group(1)) * _RATE_UNITS[m.group(2)]))
    if bps < 8_000:
        raise LabError(f"rate '{text}' is too low (minimum 8kbit)")
    return bps


def parse_delay_us(text: str) -> int:
    t = text.strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(us|ms|s)?", t)
    if not m:
        raise LabError(f"bad delay '{text}': use e.g. 25ms, 500us, 0")
    us = int(round(float(m.group(1)) * _DELAY_UNITS[m.group(2) or "ms"]))
    if us > 60_000_000:
        raise LabError(f"delay '{text}' is too long (maximum 60s)")
    return us


def parse_loss(text: str) -> float:
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%?", t)
    if not m or float(m.group(1)) > 100.0:
        raise LabError(f"bad loss '{text}': use a percentage such as 0.5% or 10")
    return float(m.group(1))


def parse_spec(text: str, base: DirSpec | None = None) -> DirSpec:
    """Parses RATE/DELAY[/LOSS]; an omitted LOSS is 0. With a base (the current
    setting), a field given as '-' keeps the base's value, e.g. '-/-/5%'."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise LabError(f"bad SPEC '{text}': expected RATE/DELAY[/LOSS], e.g. 20mbit/25ms/0.5%")
    if len(parts) == 2:
        parts.append("0")

    def field(i: int, parse, base_value):
        if parts[i].strip() == "-":
            if base is None:
                raise LabError(f"'-' in SPEC '{text}' needs an existing value to keep")
            return base_value
        return parse(parts[i])

    return DirSpec(
        field(0, parse_rate, base.rate_bps if base else None),
        field(1, parse_delay_us, base.delay_us if base else 0),
        field(2, parse_loss, base.loss_pct if base else 0.0),
    )


def format_rate(bps: int | None) -> str:
    if bps is None:
        return "unlimited"
    for unit, mult in (("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1_000)):
        if bps >= mult:
            return f"{bps / mult:g}{unit}"
    return f"{bps}bit"


def format_delay(us: int) -> str:
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def format_spec(d: DirSpec) -> str:
    s = f"{format_rate(d.rate_bps)}/{format_delay(d.delay_us)}"
    if d.loss_pct:
        s += f"/{d.loss_pct:g}%"
    return s


def tbf_params(rate_bps: int, rtt_us: int) -> tuple[int, int]:
    """burst = max(2 full frames, 2 ms of traffic);
    limit = max(1 BDP at the path's RTT, 16 full frames)."""
    bytes_per_s = rate_bps / 8.0
    burst = max(2 * FRAME_BYTES, int(bytes_per_s * 0.002))
    limit = max(int(bytes_per_s * rtt_us / 1e6), 16 * FRAME_BYTES)
    return burst, limit


# --------------------------------------------------------------------------
# Objects served by the CDNs: deterministic pseudo-random content

def parse_object_size(name: str) -> int:
    m = re.fullmatch(r"(\d+)(KB|MB|GB)", name)
    if not m:
        raise LabError(f"bad object name '{name}': use e.g. 1MB, 500MB, 2GB (decimal units)")
    size = int(m.group(1)) * {"KB": 1_000, "MB": 1_000_000, "GB": 1_000_000_000}[m.group(2)]
    if size <= 0 or size > 10_000_000_000:
        raise LabError(f"object size '{name}' out of range (1KB..10GB)")
    return size


def object_chunk(name: str, index: int, length: int) -> bytes:
    """Chunk `index` (OBJECT_CHUNK bytes each) of object `name`."""
    h = hashlib.shake_128(OBJECT_SEED + name.encode() + b"\0" + index.to_bytes(8, "big"))
    return h.digest(length)


def object_bytes(name: str, start: int, end_inclusive: int) -> bytes:
    """The bytes [start, end_inclusive] of an object, computed without the file."""
    out = bytearray()
    first, last = start // OBJECT_CHUNK, end_inclusive // OBJECT_CHUNK
    size = parse_object_size(name)
    for i in range(first, last + 1):
        length = min(OBJECT_CHUNK, size - i * OBJECT_CHUNK)
        out += object_chunk(name, i, length)
    off = start - first * OBJECT_CHUNK
    return bytes(out[off:off + end_inclusive - start + 1])


def ensure_object(name: str, object_dir: Path = OBJECT_DIR, log=None) -> Path:
    """Generates object `name` (e.g. '10MB') once into object_dir and reuses it."""
    size = parse_object_size(name)
    object_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(object_dir, 0o755)
    path = object_dir / name
    if path.is_file() and path.stat().st_size == size:
        return path
    free = shutil.disk_usage(object_dir).free
    if free < size + 256_000_000:
        raise LabError(f"not enough disk space in {object_dir} for {name} "
                       f"({free // 1_000_000} MB free)")
    if log:
        log(f"generating {path} ({size} bytes)")
    tmp = object_dir / f".{name}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            index, left = 0, size
            while left > 0:
                n = min(OBJECT_CHUNK, left)
                f.write(object_chunk(name, index, n))
                left -= n
                index += 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------
# The CDN zoo's files (issue 16): copies of objects as other nodes hold them

REPLICA_DIR = OBJECT_DIR / "replicas"  # the same bytes, another mtime: other ETag, Last-Modified
VARIANT_DIR = OBJECT_DIR / "variants"  # another version: same size, other bytes from 1 MB on
VARIANT_FROM = 1_000_000
STREAMS_PORT = 8081  # lab/streams.py on every CDN address
APP_PROXY_PORT = 8082  # and a forward proxy there: an app's own HTTP proxy


def _copy_with_mtime(src: Path, dst: Path, mtime: float, transform=None) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dst.parent, 0o755)
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and \
            abs(dst.stat().st_mtime - mtime) < 1:
        return dst
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            offset = 0
            while chunk := fin.read(OBJECT_CHUNK):
                fout.write(transform(offset, chunk) if transform else chunk)
                offset += len(chunk)
        os.chmod(tmp, 0o644)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def ensure_replica(name: str) -> Path:
    """The cell node's copy of object `name`: its bytes, with an mtime two hours older,
    so nginx gives it another ETag ("mtime-size") and Last-Modified — as two nodes of one
    CDN that synced the object at other times. Served at /replica/NAME by the cell node
    (the Wi-Fi node serves the original there)."""
    src = ensure_object(name)
    return _copy_with_mtime(src, REPLICA_DIR / name, src.stat().st_mtime - 7200)


def ensure_variant(name: str) -> Path:
    """Another version of object `name`: the same size, other bytes from VARIANT_FROM on,
    the same mtime (a cache that lies about what it holds). Served at /digest-other/NAME by
    the cell node, with its own Repr-Digest."""
    src = ensure_object(name)

    def flip(offset: int, chunk: bytes) -> bytes:
        if offset + len(chunk) <= VARIANT_FROM:
            return chunk
        keep = max(0, VARIANT_FROM - offset)
        return chunk[:keep] + bytes(b ^ 0x5A for b in chunk[keep:])

    return _copy_with_mtime(src, VARIANT_DIR / name, src.stat().st_mtime, flip)


def file_digest_b64(path: Path) -> str:
    """sha-256 of a file, base64 (RFC 9530 Repr-Digest's value), cached beside it."""
    cache = path.with_name(f".{path.name}.sha256")
    stamp = f"{path.stat().st_size} {path.stat().st_mtime_ns}"
    if cache.is_file():
        cached_stamp, _, value = cache.read_text().partition("\n")
        if cached_stamp == stamp:
            return value.strip()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(OBJECT_CHUNK):
            h.update(chunk)
    value = base64.b64encode(h.digest()).decode()
    cache.write_text(f"{stamp}\n{value}\n")
    return value


def zoo_locations(name: str, object_dir: Path, digest_objects: Iterable[str] = ()) -> str:
    """The CDN zoo (issue 16): what real CDN nodes do differently with one object, each
    under a URL prefix; the Wi-Fi node behaves plainly, the cell node as written:
      /replica/NAME     its copy has another mtime: other ETag and Last-Modified (ensure_replica)
      /weak/NAME        both nodes: a weak ETag only (as compressing CDNs send)
      /refuse/NAME      range requests get 403 (a signed URL bound to the client's address)
      /ratelimit/NAME   range requests get 429 with Retry-After: 120 (a per-address limit)
      /unavailable/NAME range requests get 503
      /digest/NAME      both nodes send Repr-Digest (sha-256) of NAME
      /digest-other/NAME another version (ensure_variant), with its own Repr-Digest
    """
    cell = name == "cell"
    refuse = lambda status, extra="": (  # noqa: E731
        f"if ($http_range) {{ {extra}return {status}; }} " if cell else "")
    out = [
        "        # The CDN zoo (issue 16, fleety_lab.zoo_locations)\n",
        f"        location /replica/ {{ alias {REPLICA_DIR if cell else object_dir}/; }}\n",
        f"        location /weak/ {{ alias {object_dir}/; etag off; "
        f"add_header ETag 'W/\"{name}-weak\"'; }}\n",
        f"        location /refuse/ {{ alias {object_dir}/; {refuse(403)}}}\n",
        f"        location /ratelimit/ {{ alias {object_dir}/; "
        f"{refuse(429, 'add_header Retry-After 120 always; ')}}}\n",
        f"        location /unavailable/ {{ alias {object_dir}/; {refuse(503)}}}\n",
    ]
    for obj in digest_objects:
        original = object_dir / obj
        if not original.is_file():
            continue
        out.append(f"        location = /digest/{obj} {{ alias {original}; "
                   f"add_header Repr-Digest 'sha-256=:{file_digest_b64(original)}:'; }}\n")
        other = VARIANT_DIR / obj if cell else original
        if other.is_file():
            out.append(f"        location = /digest-other/{obj} {{ alias {other}; "
                       f"add_header Repr-Digest 'sha-256=:{file_digest_b64(other)}:'; }}\n")
    return "".join(out)


# --------------------------------------------------------------------------
# nginx configuration: one function, easy to extend with more locations

@dataclasses.dataclass(frozen=True)
class ExtraRoot:
    """An extra directory served under a URL prefix, on one CDN or both."""
    url_prefix: str  # e.g. /stale/
    directory: str
    cdn: str | None = None  # wifi | cell | None (both)

    @staticmethod
    def parse(text: str) -> "ExtraRoot":
        cdn = None
        m = re.fullmatch(r"(?:(wifi|cell):)?(/[A-Za-z0-9._/-]*)=(/.+)", text)
        if not m:
            raise LabError(f"bad --extra-root '{text}': expected [wifi:|cell:]/PREFIX/=/DIR")
        cdn, prefix, directory = m.group(1), m.group(2), m.group(3)
        if not prefix.endswith("/"):
            prefix += "/"
        if not os.path.isdir(directory):
            raise LabError(f"--extra-root directory {directory} does not exist")
        return ExtraRoot(prefix, os.path.abspath(directory), cdn)


def per_cdn(value: str | dict[str, str] | None, what: str) -> dict[str, str]:
    """nginx text for each CDN from one string (both CDNs) or {"wifi": ..., "cell": ...}."""
    if value is None or isinstance(value, str):
        return {p: value or "" for p in ("wifi", "cell")}
    unknown = set(value) - {"wifi", "cell"}
    if unknown:
        raise LabError(f"{what}: unknown CDN {sorted(unknown)}: expected wifi and/or cell")
    return {p: value.get(p, "") for p in ("wifi", "cell")}


def nginx_config(name: str, listen_addr: str, state_dir: Path, object_dir: Path,
                 extra_roots: Iterable[ExtraRoot] = (), extra_http: str = "",
                 extra_server: str = "", aliases: Iterable[str] = (),
                 tls: "TlsFiles | None" = None, digest_objects: Iterable[str] = ()) -> str:
    """nginx.conf for the CDN node `name` (wifi|cell). Objects are served from
    object_dir at /; each ExtraRoot adds a `location PREFIX { alias DIR/; }`.
    extra_http / extra_server are appended verbatim to the http / server
    blocks (for later needs: other ports, headers, throttling...). The node also
    listens on each of `aliases` (more addresses of the same CDN node). With tls,
    every one of those addresses is also served over HTTPS on TLS_PORT (TLS 1.2 and
    1.3, HTTP/1.1, the same server block: same root, locations and keep-alive)."""
    base = state_dir / f"nginx-{name}"
    aliases = list(aliases)
    alias_listens = "".join(f"        listen {a}:80;\n" for a in aliases)
    tls_conf = ""
    if tls is not None:
        tls_conf = "".join(f"        listen {a}:{TLS_PORT} ssl;\n" for a in [listen_addr, *aliases])
        tls_conf += (f"        ssl_certificate {tls.cert};\n"
                     f"        ssl_certificate_key {tls.key};\n"
                     "        ssl_protocols TLSv1.2 TLSv1.3;\n"
                     f"        ssl_session_cache shared:fleety_{name}:1m;\n"
                     "        ssl_session_timeout 10m;\n")
    locations = []
    for r in extra_roots:
        if r.cdn in (None, name):
            locations.append(f"        location {r.url_prefix} {{ alias {r.directory}/; }}\n")
    return f"""# generated by fleety-lab: CDN node '{name}' at {listen_addr}
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {base}.pid;
error_log {base}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    log_format fleety '$remote_addr $server_addr:$server_port [$time_iso8601] '
                      '"$request" range="$http_range" $status $body_bytes_sent '
                      'sent=$bytes_sent rt=$request_time conn=$connection '
                      'tls=$ssl_protocol if_range="$http_if_range"';
    access_log {base}.access.log fleety;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server_tokens off;
{extra_http}
    server {{
        listen {listen_addr}:80;
{alias_listens}{tls_conf}        server_name {CDN_NAME} _;
        root {object_dir};
        location / {{ }}
        # Each object under the names real downloads have too (/10MB.zip, /4MB.mp4):
        # the same bytes, for clients that judge a URL by its extension.
        location ~ "^/(?<object>[0-9]+[KMG]B)\.(zip|iso|deb|mp4|m4s|ts)$" {{ try_files /$object =404; }}
{''.join(locations)}{zoo_locations(name, object_dir, digest_objects)}{extra_server}
    }}
}}
"""


# --------------------------------------------------------------------------
# TLS: a test CA made at `up`, a certificate for the CDNs signed by it, and a second CA
# that signed nothing (a client given it must fail verification)

@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """The lab's TLS files, all in one directory (<state_dir>/tls)."""
    directory: Path

    @property
    def ca(self) -> Path:  # the test CA's certificate: what a client trusts (--cacert)
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:  # the CDNs' certificate (CN and DNS SAN CDN_NAME, IP SANs)
        return self.directory / "cdn.pem"

    @property
    def key(self) -> Path:
        return self.directory / "cdn.key"

    @property
    def other_ca(self) -> Path:  # a CA certificate that signed nothing (its key is deleted)
        return self.directory / "other-ca.pem"


_OPENSSL_CNF = """# generated by fleety-lab
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = fleety-lab
[ ca_ext ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = @alt
[ alt ]
"""


def make_tls(directory: Path, ips: Iterable[str], name: str = CDN_NAME, days: int = TLS_DAYS,
             timeout: float = CMD_TIMEOUT, log=None) -> TlsFiles:
    """Makes (replacing what is there) in `directory`: a test CA (EC P-256,
    self-signed, CN TLS_CA_NAME, `days` valid), a server certificate signed by it
    (EC P-256, CN and subjectAltName DNS:`name` plus IP: each of `ips`, serverAuth),
    and other-ca.pem, a second self-signed CA that signed nothing. Uses the openssl
    CLI (each call bounded by `timeout`); about 0.1 s. Raises LabError."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    tls = TlsFiles(directory)
    ips = list(dict.fromkeys(str(ipaddress.ip_address(a)) for a in ips))
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF + f"DNS.1 = {name}\n"
                   + "".join(f"IP.{i} = {a}\n" for i, a in enumerate(ips, 1)))

    def openssl(*args: str | Path) -> None:
        argv = ["openssl", *map(str, args)]
        if log:
            log("+ " + " ".join(argv))
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LabError(f"timed out after {timeout:g}s: {' '.join(argv)}") from None
        except FileNotFoundError:
            raise LabError("openssl not found: run scripts/setup.sh (package openssl)") from None
        if cp.returncode != 0:
            raise LabError(f"'{' '.join(argv)}' failed (exit {cp.returncode}): "
                           f"{_first_line(cp.stderr) or _first_line(cp.stdout)}")

    def serial() -> str:
        return "0x" + (bytes([os.urandom(1)[0] & 0x7F | 0x01]) + os.urandom(15)).hex()

    def keygen(path: Path) -> None:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", path)
        os.chmod(path, 0o600)

    def self_signed(key: Path, cn: str, out: Path) -> None:
        openssl("req", "-new", "-x509", "-config", cnf, "-extensions", "ca_ext", "-key", key,
                "-subj", f"/CN={cn}", "-days", str(days), "-sha256", "-set_serial", serial(),
                "-out", out)
        os.chmod(out, 0o644)

    keygen(tls.ca_key)
    self_signed(tls.ca_key, TLS_CA_NAME, tls.ca)
    keygen(tls.key)
    csr = directory / "cdn.csr"
    openssl("req", "-new", "-config", cnf, "-key", tls.key, "-subj", f"/CN={name}", "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", tls.ca, "-CAkey", tls.ca_key,
            "-set_serial", serial(), "-days", str(days), "-sha256", "-extfile", cnf,
            "-extensions", "server_ext", "-out", tls.cert)
    os.chmod(tls.cert, 0o644)
    csr.unlink()
    other_key = directory / "other-ca.key"
    keygen(other_key)
    self_signed(other_key, "fleety lab other CA (signed nothing)", tls.other_ca)
    other_key.unlink()  # so it never signs anything
    openssl("verify", "-CAfile", tls.ca, "-purpose", "sslserver", tls.cert)
    return tls


# --------------------------------------------------------------------------
# small helpers

def _first_line(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _proc_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return int(rest[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()[0]


def _alive(pid: int, starttime: int | None = None) -> bool:
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    return starttime is None or _proc_starttime(pid) == starttime


def _hex_addr(ip: str, port: int) -> str:
    """Local address as /proc/net/{tcp,udp} prints it (x86: little-endian)."""
    packed = socket.inet_aton(ip)
    if sys.byteorder == "little":
        packed = packed[::-1]
    return f"{packed.hex().upper()}:{port:04X}"


def find_repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def find_delayline(explicit: str | None = None) -> str:
    """--delayline, then $FLEETY_DELAYLINE, then <repo>/build/lab/fleety-delayline,
    then PATH."""
    candidates: list[tuple[str, str]] = []
    if explicit:
        candidates.append(("--delayline", explicit))
    env = os.environ.get("FLEETY_DELAYLINE")
    if env:
        candidates.append(("FLEETY_DELAYLINE", env))
    candidates.append(("build dir", str(find_repo_root() / "build" / "lab" / "fleety-delayline")))
    for origin, c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
        if origin != "build dir":
            raise LabError(f"delayline binary from {origin} not found or not executable: {c}")
    found = shutil.which("fleety-delayline")
    if found:
        return found
    raise LabError("fleety-delayline not found (looked at --delayline, $FLEETY_DELAYLINE, "
                   f"{candidates[-1][1]}, PATH); build it with: "
                   "cmake -S . -B build -G Ninja && cmake --build build --target fleety-delayline")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("fleety-lab needs root (network namespaces, iptables, tc): run it with sudo")


def _ns_inode(nsname: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/run/netns/{nsname}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# --------------------------------------------------------------------------
# the lab

class Lab:
    """One lab instance, identified by its namespace prefix.

    Lab(prefix).up(...) builds it (tearing down an existing one of that prefix
    first); down() removes everything (idempotent). Used as a context manager,
    the lab is torn down when the block ends, also on exceptions and SIGTERM."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, delayline: str | None = None,
                 verbose: bool = False):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", prefix):
            raise LabError(f"bad prefix '{prefix}': 1-10 lowercase letters/digits, "
                           "starting with a letter")
        self.prefix = prefix
        self.delayline_arg = delayline
        self.verbose = verbose
        self.state_dir = STATE_ROOT / prefix
        self.tls = TlsFiles(self.state_dir / TLS_DIR)  # made by up() (see make_tls)
        self._children: list[subprocess.Popen] = []
        self._old_sigterm = None

    # ---- names
    def ns(self, short: str) -> str:
        """Full namespace name: cli|wlan|rmnet|inet (or a path alias) -> '<prefix>-<short>'."""
        short = {"wifi": "wlan", "cell": "rmnet", "wlan0": "wlan", "rmnet0": "rmnet"}.get(
            short, short)
        if short not in NAMESPACES:
            raise LabError(f"unknown namespace '{short}': use cli, wlan, rmnet or inet")
        return f"{self.prefix}-{short}"

    @staticmethod
    def path(name: str) -> PathDef:
        try:
            return PATHS[PATH_ALIASES[name]]
        except KeyError:
            raise LabError(f"unknown path '{name}': use wifi, wlan0, cell or rmnet0") from None

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"fleety-lab: {msg}", file=sys.stderr)

    # ---- context manager
    def __enter__(self) -> "Lab":
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not in the main thread
            self._old_sigterm = None
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.down()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    @staticmethod
    def _on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    # ---- running commands
    def _run(self, argv: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess:
        self._log("+ " + " ".join(argv))
        try:
            cp = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                                timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"timed out after {timeout:g}s: {' '.join(argv)}") from None
        except FileNotFoundError:
            raise LabError(f"command not found: {argv[0]}") from None
        if check and cp.returncode != 0:
            raise LabError(f"'{' '.join(argv)}' failed (exit {cp.returncode}): "
                           f"{_first_line(cp.stderr) or _first_line(cp.stdout)}")
        return cp

    def _ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(["ip", "-n", self.ns(ns), *args], check=check)

    def _in(self, ns: str, *argv: str, check: bool = True,
            timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
        return self._run(["ip", "netns", "exec", self.ns(ns), *argv], check=check,
                         timeout=timeout)

    def enter(self, ns: str, net_only: bool = False) -> list[str]:
        """The argv prefix that runs a command in namespace ns: `ip netns exec` (cli's
        /etc/netns resolv.conf applies), or with net_only `nsenter --net`, which keeps
        the host's /sys: `ip netns exec` remounts it, hiding /sys/fs/cgroup, which
        fleetyd's interception and `fleety run` need."""
        if net_only:
            return ["nsenter", f"--net=/run/netns/{self.ns(ns)}", "--"]
        return ["ip", "netns", "exec", self.ns(ns)]

    def exec(self, ns: str, argv: Sequence[str], timeout: float | None = EXEC_TIMEOUT,
             net_only: bool = False, **kwargs) -> subprocess.CompletedProcess:
        """subprocess.run(argv) inside namespace ns (cli|wlan|rmnet|inet); see enter()."""
        return subprocess.run([*self.enter(ns, net_only), *argv], timeout=timeout, **kwargs)

    def popen(self, ns: str, argv: Sequence[str], net_only: bool = False,
              **kwargs) -> subprocess.Popen:
        """subprocess.Popen(argv) inside namespace ns; see enter(). The caller waits for
        it; down() kills whatever is still running in the lab's namespaces."""
        return subprocess.Popen([*self.enter(ns, net_only), *argv], **kwargs)

    # ---- state files
    def _read_json(self, name: str, default):
        try:
            return json.loads((self.state_dir / name).read_text())
        except (OSError, ValueError):
            return default

    def _write_json(self, name: str, data) -> None:
        tmp = self.state_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_dir / name)

    def config(self) -> dict[str, Any]:
        cfg = self._read_json("config.json", None)
        if cfg is None:
            raise LabError(f"no lab with prefix '{self.prefix}' is up "
                           f"(no {self.state_dir}/config.json): run `fleety-lab up` first")
        return cfg

    def exists(self) -> bool:
        return self.state_dir.exists() or any(
            _ns_inode(self.ns(n)) is not None for n in NAMESPACES)

    # ---- processes
    def _spawn(self, role: str, ns: str, argv: Sequence[str]) -> subprocess.Popen:
        log_path = self.state_dir / f"{role}.log"
        with open(log_path, "ab") as log:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *argv],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)
        self._children.append(p)
        start = None
        for _ in range(50):  # the starttime identifies the pid later (pid reuse)
            start = _proc_starttime(p.pid)
            if start is not None:
                break
            time.sleep(0.002)
        pids = self._read_json("pids.json", [])
        pids.append({"role": role, "ns": self.ns(ns), "pid": p.pid, "start": start,
                     "argv": list(argv), "log": str(log_path)})
        self._write_json("pids.json", pids)
        return p

    def _wait_ready(self, role: str, p: subprocess.Popen, check, what: str,
                    timeout: float = 5.0) -> None:
        """Waits until check(pid) holds for the helper, read through
        /proc/<pid>/net once the helper is inside its namespace."""
        rec = next(r for r in self._read_json("pids.json", []) if r["pid"] == p.pid)
        want_ns = _ns_inode(rec["ns"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = os.stat(f"/proc/{p.pid}/ns/net")
                in_ns = (st.st_dev, st.st_ino) == want_ns
            except OSError:
                in_ns = False
            if p.poll() is not None:
                log = (self.state_dir / f"{role}.log").read_text(errors="replace")
                lines = [l for l in log.strip().splitlines() if l.strip()]
                raise LabError(f"{role} exited ({p.returncode}) before {what}: "
                               f"{lines[-1] if lines else 'no output'}")
            if in_ns and check(p.pid):
                return
            time.sleep(0.02)
        raise LabError(f"{role} not {what} after {timeout:g}s "
                       f"(see {self.state_dir}/{role}.log)")

    @staticmethod
    def _proc_net_has(pid: int, table: str, local: str, state: str | None = None) -> bool:
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[1] == local and (state is None or cols[3] == state):
                        return True
        except (OSError, StopIteration, IndexError):
            pass
        return False

    @staticmethod
    def _queues_bound(pid: int, queues: Iterable[int]) -> bool:
        try:
            with open(f"/proc/{pid}/net/netfilter/nfnetlink_queue") as f:
                bound = {int(line.split()[0]) for line in f if line.strip()}
        except (OSError, ValueError, IndexError):
            return False
        return set(queues) <= bound

    def _kill_pid(self, pid: int, start: int | None, group: bool) -> None:
        if not _alive(pid, start):
            return
        try:
            if group:
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    os.kill(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

    def _poll_children(self) -> None:
        """Reaps helpers this object started that have exited (no zombies)."""
        self._children = [p for p in self._children if p.poll() is None]

    def _pids_in_namespaces(self) -> list[int]:
        inodes = {i for i in (_ns_inode(self.ns(n)) for n in NAMESPACES) if i is not None}
        if not inodes:
            return []
        out = []
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inodes:
                out.append(int(entry))
        return out

    # ---- down
    def down(self) -> None:
        """Removes everything this lab made: its processes (by recorded pid and
        any other process left inside its namespaces), namespaces,
        /etc/netns/<p>-cli and the state dir. Idempotent; works after a partial up."""
        require_root()
        recorded = self._read_json("pids.json", [])
        for rec in recorded:
            self._kill_pid(int(rec["pid"]), rec.get("start"), group=True)
        # Anything else still inside our namespaces (nginx workers, commands
        # left running by exec/popen) would keep a namespace alive: TERM, then
        # KILL after 2 s; give up waiting after 5 s.
        t0 = time.monotonic()
        termed: set[int] = set()
        while True:
            self._poll_children()
            left = [int(r["pid"]) for r in recorded if _alive(int(r["pid"]), r.get("start"))]
            strays = [pid for pid in self._pids_in_namespaces() if _alive(pid)]
            if not left and not strays:
                break
            elapsed = time.monotonic() - t0
            if elapsed > 5.0:
                break
            for pid in dict.fromkeys(left + strays):
                try:
                    if elapsed > 2.0:
                        os.kill(pid, signal.SIGKILL)
                    elif pid not in termed:
                        os.kill(pid, signal.SIGTERM)
                        termed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.03)
        self._poll_children()

        errors = []
        for n in NAMESPACES:
            name = self.ns(n)
            if _ns_inode(name) is not None or os.path.exists(f"/run/netns/{name}"):
                cp = self._run(["ip", "netns", "del", name], check=False)
                if cp.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
                    errors.append(f"ip netns del {name}: {_first_line(cp.stderr)}")
        shutil.rmtree(NETNS_ETC / self.ns("cli"), ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        try:
            STATE_ROOT.rmdir()  # only when no other lab is up
        except OSError:
            pass
        if errors:
            raise LabError("; ".join(errors))

    # ---- up
    def up(self, wifi: str | None = None, cell: str | None = None,
           wifi_up: str | None = None, wifi_down: str | None = None,
           cell_up: str | None = None, cell_down: str | None = None,
           objects: Iterable[str] = (), extra_roots: Iterable[ExtraRoot | str] = (),
           extra_http: str | dict[str, str] = "", extra_server: str | dict[str, str] = "",
           cdn_aliases: dict[str, Iterable[str]] | None = None,
           ipv6: bool = False, check: bool = True) -> "Lab":
        """Builds the lab (after tearing down an existing one of this prefix).
        ipv6: IPv6 on the client's loopback and on the client<->router links, with the
        link-local addresses IPV6_GATEWAY / IPV6_CLIENT (see _enable_ipv6); off by default.
        SPECs are 'RATE/DELAY[/LOSS]', DELAY one-way per direction. extra_http /
        extra_server: nginx directives added to the CDNs' http / server blocks, one
        string for both CDNs or {"wifi": ..., "cell": ...} (e.g. a location that
        ignores Range on one CDN). cdn_aliases: more addresses of a CDN node
        ({"wifi": ["198.18.10.11"]}), served by it like its own (no DNS name
        gives them: an HTTP-DNS answer can). On failure, tears down what was made and raises
        LabError. Returns self."""
        require_root()
        delayline = find_delayline(self.delayline_arg)
        for tool in ("ip", "tc", "ethtool", "iptables-legacy", "sysctl", "nginx", "dnsmasq",
                     "curl", "openssl"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                raise LabError(f"{tool} not found: run scripts/setup.sh (as root)")
        shaping = {}
        for pname, both, up_s, down_s in (("wifi", wifi, wifi_up, wifi_down),
                                          ("cell", cell, cell_up, cell_down)):
            base = parse_spec(both or DEFAULT_SPEC)
            shaping[pname] = {
                "up": parse_spec(up_s, base) if up_s else base,
                "down": parse_spec(down_s, base) if down_s else base,
            }
        roots = [r if isinstance(r, ExtraRoot) else ExtraRoot.parse(r) for r in extra_roots]
        nginx_extra = {"http": per_cdn(extra_http, "extra_http"),
                       "server": per_cdn(extra_server, "extra_server")}
        aliases = {p: [str(ipaddress.IPv4Address(a)) for a in (cdn_aliases or {}).get(p, ())]
                   for p in ("wifi", "cell")}
        unknown = set(cdn_aliases or {}) - {"wifi", "cell"}
        if unknown:
            raise LabError(f"cdn_aliases: unknown CDN {sorted(unknown)}: expected wifi and/or cell")
        for a in (a for v in aliases.values() for a in v):
            if ipaddress.IPv4Address(a) not in ipaddress.IPv4Network("198.18.0.0/15"):
                raise LabError(f"cdn_aliases: {a} is not in 198.18.0.0/15")
        wanted = list(dict.fromkeys([*DEFAULT_OBJECTS, *objects]))
        for o in wanted:
            parse_object_size(o)

        if self.exists():
            self._log(f"tearing down the existing lab '{self.prefix}'")
            self.down()
        for o in wanted:
            ensure_object(o, log=self._log if self.verbose else None)
        # The zoo's other version of 10MB and the digests it is served with.
        ensure_variant("10MB")

        t0 = time.monotonic()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=False)
            cfg = {
                "prefix": self.prefix,
                "created": time.time(),
                "delayline": delayline,
                "objects": wanted,
                "object_dir": str(OBJECT_DIR),
                "extra_roots": [dataclasses.asdict(r) for r in roots],
                "extra_http": nginx_extra["http"],
                "extra_server": nginx_extra["server"],
                "cdn_aliases": aliases,
                "ipv6": bool(ipv6),
                "paths": {p: {"up": s["up"].to_json(), "down": s["down"].to_json(),
                              "link": "up"} for p, s in shaping.items()},
            }
            self._write_json("config.json", cfg)
            self._write_json("pids.json", [])
            self._build(delayline, shaping, roots, nginx_extra, aliases)
            if ipv6:
                self._enable_ipv6()
            if check:
                self._check_paths()
        except BaseException as e:
            try:
                self.down()
            except Exception as e2:  # keep the original error first
                raise LabError(f"{e}; teardown also failed: {e2}") from e
            if isinstance(e, LabError):
                raise
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise LabError(f"setup failed: {type(e).__name__}: {e}") from e
        self._log(f"lab '{self.prefix}' up in {time.monotonic() - t0:.2f}s")
        return self

    def _build(self, delayline: str, shaping: dict, roots: list[ExtraRoot],
               nginx_extra: dict[str, dict[str, str]],
               aliases: dict[str, list[str]] | None = None) -> None:
        # namespaces, loopback, sysctls
        for n in NAMESPACES:
            self._run(["ip", "netns", "add", self.ns(n)])
            self._ip(n, "link", "set", "lo", "up")
        etc = NETNS_ETC / self.ns("cli")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {ANYCAST_DNS}\n")
        common = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        self._in("cli", "sysctl", "-q", "-w", *common,
                 "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
                 "net.ipv4.conf.default.ignore_routes_with_linkdown=1",
                 "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for r in ("wlan", "rmnet"):
            self._in(r, "sysctl", "-q", "-w", *common, "net.ipv4.ip_forward=1",
                     "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        self._in("inet", "sysctl", "-q", "-w", *common, "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1")

        # links: veth pairs created directly between lab namespaces (never the root one)
        cli, inet = self.ns("cli"), self.ns("inet")
        for p in PATHS.values():
            r = self.ns(p.router)
            self._run(["ip", "-n", cli, "link", "add", p.iface, "type", "veth", "peer", "name",
                       ROUTER_CLI_IF, "netns", r])
            self._run(["ip", "-n", r, "link", "add", ROUTER_INET_IF, "type", "veth", "peer",
                       "name", p.inet_iface, "netns", inet])

        for ns, dev in self._veths():
            self._in(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off")

        for p in PATHS.values():
            self._ip("cli", "addr", "add", f"{p.client_addr}/24", "dev", p.iface)
            self._ip(p.router, "addr", "add", f"{p.gateway}/24", "dev", ROUTER_CLI_IF)
            self._ip(p.router, "addr", "add", f"{p.router_uplink}/30", "dev", ROUTER_INET_IF)
            self._ip("inet", "addr", "add", f"{p.inet_addr}/30", "dev", p.inet_iface)
            # no dummy driver on this kernel: the Internet's service addresses live on lo
            self._ip("inet", "addr", "add", f"{p.cdn}/32", "dev", "lo")
            self._ip("inet", "addr", "add", f"{p.dns}/32", "dev", "lo")
            self._in("cli", "sysctl", "-q", "-w",
                     f"net.ipv4.conf.{p.iface}.ignore_routes_with_linkdown=1",
                     f"net.ipv4.conf.{p.iface}.rp_filter=0")
        for pname in PATHS:
            for a in (aliases or {}).get(pname, ()):
                self._ip("inet", "addr", "add", f"{a}/32", "dev", "lo")
        for ns, dev in self._veths():
            self._ip(ns, "link", "set", dev, "up")

        # routing
        for p in PATHS.values():
            self._ip("cli", "route", "add", "default", "via", p.gateway, "dev", p.iface,
                     "metric", str(p.metric))
            self._ip("cli", "route", "add", "default", "via", p.gateway, "dev", p.iface,
                     "table", str(p.table))
            self._ip("cli", "route", "add", p.subnet, "dev", p.iface, "src", p.client_addr,
                     "table", str(p.table))
            # while the link has no carrier its routes are ignored
            # (ignore_routes_with_linkdown): traffic bound to this interface's
            # address then fails at once instead of leaking out of the other one
            self._ip("cli", "route", "add", "unreachable", "default", "metric", "4000000000",
                     "table", str(p.table))
            self._ip("cli", "rule", "add", "pref", str(1000 + p.table), "from", p.client_addr,
                     "lookup", str(p.table))
            self._ip("cli", "rule", "add", "pref", str(1100 + p.table), "oif", p.iface,
                     "lookup", str(p.table))
            self._ip(p.router, "route", "add", "default", "via", p.inet_addr)
            self._ip("inet", "route", "add", p.subnet, "via", p.router_uplink)

        # shaping: rate (tbf), then the delay lines and the rules that feed them
        for pname, p in PATHS.items():
            self._apply_tbf(p, shaping[pname]["up"], shaping[pname]["down"])
        for pname, p in PATHS.items():
            up_s, down_s = shaping[pname]["up"], shaping[pname]["down"]
            ctl = self.state_dir / f"delayline-{pname}.ctl"
            ctl.write_text(self._control_text(up_s, down_s))
            proc = self._spawn(f"delayline-{pname}", p.router, [
                delayline, "--up-queue", "0", "--down-queue", "1",
                "--up-delay-us", str(up_s.delay_us), "--down-delay-us", str(down_s.delay_us),
                "--up-loss", f"{up_s.loss_pct:g}", "--down-loss", f"{down_s.loss_pct:g}",
                "--seed", str(p.seed), "--control", str(ctl)])
            self._wait_ready(f"delayline-{pname}", proc,
                             lambda pid: self._queues_bound(pid, (0, 1)), "bound to NFQUEUE 0,1")
            ipt = ["iptables-legacy", "-w", "5"]
            self._in(p.router, *ipt, "-A", "FORWARD", "-i", ROUTER_CLI_IF, "-j", "NFQUEUE",
                     "--queue-num", "0")
            self._in(p.router, *ipt, "-A", "FORWARD", "-o", ROUTER_CLI_IF, "-j", "NFQUEUE",
                     "--queue-num", "1")
            for proto in ("udp", "tcp"):
                self._in(p.router, *ipt, "-t", "nat", "-A", "PREROUTING", "-i", ROUTER_CLI_IF,
                         "-d", ANYCAST_DNS, "-p", proto, "--dport", "53", "-j", "DNAT",
                         "--to-destination", f"{p.dns}:53")
            # Conntrack only what the DNAT needs. A new flow's packets held by
            # the delay line before its first one left are all unconfirmed;
            # when released, all but the first clash in conntrack and are
            # dropped (insert_failed) for protocols without clash resolution,
            # e.g. ICMP: ping -i 0.01 over a 20 ms RTT lost its second echo.
            for proto in ("udp", "tcp"):
                self._in(p.router, *ipt, "-t", "raw", "-A", "PREROUTING", "-i", ROUTER_CLI_IF,
                         "-d", ANYCAST_DNS, "-p", proto, "--dport", "53", "-j", "RETURN")
                self._in(p.router, *ipt, "-t", "raw", "-A", "PREROUTING", "-i", ROUTER_INET_IF,
                         "-s", p.dns, "-p", proto, "--sport", "53", "-j", "RETURN")
            self._in(p.router, *ipt, "-t", "raw", "-A", "PREROUTING", "-j", "CT", "--notrack")

        # the Internet: DNS per ISP, CDN node per ISP
        for pname, p in PATHS.items():
            role = f"dnsmasq-{pname}"
            proc = self._spawn(role, "inet", [
                "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--no-poll", "--bind-interfaces", f"--listen-address={p.dns}",
                "--port=53", "--user=root", "--group=root", f"--host-record={CDN_NAME},{p.cdn}",
                "--local=/fleety.test/", "--local-ttl=300", "--log-queries", "--log-facility=-",
                f"--pid-file={self.state_dir / (role + '.pid')}"])
            self._wait_ready(role, proc,
                             lambda pid, a=p.dns: self._proc_net_has(pid, "udp", _hex_addr(a, 53)),
                             f"listening on {p.dns}:53")
        # HTTPS on every CDN address: a test CA and a certificate for CDN_NAME and all
        # the addresses a client may reach a CDN at (the MPTCP server's too, for later)
        tls_ips = [a for pname, p in PATHS.items()
                   for a in (p.cdn, *(aliases or {}).get(pname, ()))]
        make_tls(self.tls.directory, [*tls_ips, self.MPTCP_SERVER],
                 log=self._log if self.verbose else None)
        for pname, p in PATHS.items():
            role = f"nginx-{pname}"
            base = self.state_dir / role
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            conf = self.state_dir / f"{role}.conf"
            conf.write_text(nginx_config(pname, p.cdn, self.state_dir, OBJECT_DIR, roots,
                                         nginx_extra["http"][pname],
                                         nginx_extra["server"][pname],
                                         (aliases or {}).get(pname, ()), tls=self.tls,
                                         digest_objects=("10MB",)))
            self._in("inet", "nginx", "-t", "-q", "-c", str(conf), "-p", str(base))
            proc = self._spawn(role, "inet", ["nginx", "-c", str(conf), "-p", str(base)])
            self._wait_ready(role, proc,
                             lambda pid, a=p.cdn: all(
                                 self._proc_net_has(pid, "tcp", _hex_addr(a, port), "0A")
                                 for port in (80, TLS_PORT)),
                             f"listening on {p.cdn}:80 and :{TLS_PORT}")

        # The streaming server (SSE, chunked, until-close, long polls, WebSocket) on every
        # CDN address: apps' traffic that is not a file (lab/streams.py).
        streams_at = [a for pname, p in PATHS.items()
                      for a in (p.cdn, *(aliases or {}).get(pname, ()))]
        proc = self._spawn("streams", "inet", [sys.executable, str(Path(__file__).with_name("streams.py")),
                                               *[x for a in streams_at for x in ("--listen", a)],
                                               "--port", str(STREAMS_PORT),
                                               "--proxy-port", str(APP_PROXY_PORT),
                                               "--resolve", f"{CDN_NAME}={PATHS['wifi'].cdn}"])
        self._wait_ready("streams", proc,
                         lambda pid: all(self._proc_net_has(pid, "tcp", _hex_addr(a, STREAMS_PORT), "0A")
                                         for a in streams_at),
                         f"listening on :{STREAMS_PORT}")

    def _veths(self) -> list[tuple[str, str]]:
        out = []
        for p in PATHS.values():
            out += [("cli", p.iface), (p.router, ROUTER_CLI_IF), (p.router, ROUTER_INET_IF),
                    ("inet", p.inet_iface)]
        return out

    @staticmethod
    def _control_text(up_s: DirSpec, down_s: DirSpec) -> str:
        return (f"up_delay_us={up_s.delay_us} down_delay_us={down_s.delay_us} "
                f"up_loss={up_s.loss_pct:g} down_loss={down_s.loss_pct:g}\n")

    def _apply_tbf(self, p: PathDef, up_s: DirSpec, down_s: DirSpec) -> None:
        rtt_us = up_s.delay_us + down_s.delay_us
        for dev, spec in ((ROUTER_CLI_IF, down_s), (ROUTER_INET_IF, up_s)):
            if spec.rate_bps is None:
                self._ip(p.router, "link", "show", dev)
                self._run(["tc", "-n", self.ns(p.router), "qdisc", "del", "dev", dev, "root"],
                          check=False)
                continue
            burst, limit = tbf_params(spec.rate_bps, rtt_us)
            self._run(["tc", "-n", self.ns(p.router), "qdisc", "replace", "dev", dev, "root",
                       "tbf", "rate", f"{spec.rate_bps}bit", "burst", str(burst),
                       "limit", str(limit)])

    def _enable_ipv6(self) -> None:
        """IPv6 on the client's lo (so it has ::1) and on both ends of each client<->router
        link, nowhere else (the routers' to-inet and the Internet stay IPv4-only; the
        routers don't forward IPv6). No address generation (addr_gen_mode 1), no DAD, no
        router solicitations or advertisements: the only IPv6 addresses are ::1 and the
        fixed link-local ones, fe80::1/64 on each router's to-cli, fe80::2/64 on wlan0 and
        rmnet0."""
        self._in("cli", "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0")
        for p in PATHS.values():
            for ns, dev, addr in (("cli", p.iface, IPV6_CLIENT),
                                  (p.router, ROUTER_CLI_IF, IPV6_GATEWAY)):
                conf = f"net.ipv6.conf.{dev}"
                self._in(ns, "sysctl", "-q", "-w", f"{conf}.addr_gen_mode=1",
                         f"{conf}.accept_ra=0", f"{conf}.router_solicitations=0",
                         f"{conf}.disable_ipv6=0")
                self._ip(ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")

    def _check_paths(self) -> None:
        """A HEAD request over each path, so `up` returns a working lab (and with IPv6,
        a ping of each router's link-local address)."""
        if self.config().get("ipv6"):
            for p in PATHS.values():
                cp = self._in("cli", "ping", "-n", "-q", "-c", "1", "-W", "3",
                              f"{IPV6_GATEWAY}%{p.iface}", check=False, timeout=10)
                if cp.returncode != 0:
                    raise LabError(f"IPv6 check failed: ping {IPV6_GATEWAY}%{p.iface}: "
                                   f"{_first_line(cp.stderr) or _first_line(cp.stdout)}")
        for p in PATHS.values():
            cp = self._in("cli", "curl", "-sS", "-o", "/dev/null", "-I", "--max-time", "10",
                          "--interface", p.iface, f"http://{p.cdn}/1MB", check=False,
                          timeout=15)
            if cp.returncode != 0:
                raise LabError(f"path check failed: HEAD http://{p.cdn}/1MB over {p.iface}: "
                               f"{_first_line(cp.stderr)}")
            # HTTPS, verified against the lab's CA by name
            cp = self._in("cli", "curl", "-sS", "-o", "/dev/null", "-I", "--max-time", "10",
                          "--noproxy", "*", "--interface", p.iface, "--cacert", str(self.tls.ca),
                          "--resolve", f"{CDN_NAME}:{TLS_PORT}:{p.cdn}",
                          f"https://{CDN_NAME}/1MB", check=False, timeout=15)
            if cp.returncode != 0:
                raise LabError(f"path check failed: HEAD https://{CDN_NAME}/1MB at {p.cdn} over "
                               f"{p.iface}: {_first_line(cp.stderr)}")

    # ---- set
    def set_path(self, path: str, spec: str | None = None, up: str | None = None,
                 down: str | None = None, link: str | None = None) -> dict[str, Any]:
        """Changes a path: spec (both directions), up/down (one direction; '-'
        fields keep the current value), link 'down'/'up' (carrier seen by the
        client). Returns the path's new configuration."""
        require_root()
        p = self.path(path)
        cfg = self.config()
        pc = cfg["paths"][p.name]
        cur_up, cur_down = DirSpec.from_json(pc["up"]), DirSpec.from_json(pc["down"])
        new_up, new_down = cur_up, cur_down
        if spec:
            new_up, new_down = parse_spec(spec, cur_up), parse_spec(spec, cur_down)
        if up:
            new_up = parse_spec(up, new_up)
        if down:
            new_down = parse_spec(down, new_down)
        if link not in (None, *LINK_STATES):
            raise LabError(f"bad link state '{link}': use {', '.join(LINK_STATES)}")
        if (new_up, new_down) != (cur_up, cur_down):
            self._apply_tbf(p, new_up, new_down)
            ctl = self.state_dir / f"delayline-{p.name}.ctl"
            tmp = ctl.with_suffix(".tmp")
            tmp.write_text(self._control_text(new_up, new_down))
            os.replace(tmp, ctl)
            self._signal_delayline(p.name, signal.SIGHUP)
            pc["up"], pc["down"] = new_up.to_json(), new_down.to_json()
        if link:
            self._set_link(p, link)
            pc["link"] = link
        self._write_json("config.json", cfg)
        return pc

    def _set_link(self, p: PathDef, state: str) -> None:
        """up: normal. down: the router's veth toward the client goes down, so the
        client sees NO-CARRIER; the client's iptables OUTPUT rejects what is sent
        on the interface with ICMP net-unreachable (as a phone's stack gives up
        a lost network: connects fail at once instead of timing out).
        blackhole: carrier stays, the router silently drops everything."""
        ipt = ["iptables-legacy", "-w", "5"]
        reject = ["OUTPUT", "-o", p.iface, "-m", "comment", "--comment", "fleety-lab-link-down",
                  "-j", "REJECT", "--reject-with", "icmp-net-unreachable"]
        holes = [["FORWARD", "-i", ROUTER_CLI_IF, "-m", "comment", "--comment",
                  "fleety-lab-blackhole", "-j", "DROP"],
                 ["FORWARD", "-o", ROUTER_CLI_IF, "-m", "comment", "--comment",
                  "fleety-lab-blackhole", "-j", "DROP"]]
        # back to normal first (deletes are no-ops when the rule is absent)
        while self._in("cli", *ipt, "-D", *reject, check=False).returncode == 0:
            pass
        for h in holes:
            while self._in(p.router, *ipt, "-D", *h, check=False).returncode == 0:
                pass
        if state == "down":
            self._in("cli", *ipt, "-I", *reject)
        elif state == "blackhole":
            for h in holes:
                self._in(p.router, *ipt, "-I", h[0], "1", *h[1:])
        self._ip(p.router, "link", "set", ROUTER_CLI_IF, "down" if state == "down" else "up")
        want_carrier = state != "down"
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if self._carrier("cli", p.iface) == want_carrier:
                return
            time.sleep(0.02)
        raise LabError(f"{p.iface} carrier did not become {'up' if want_carrier else 'down'} "
                       "within 3s")

    def _signal_delayline(self, pname: str, sig: int, timeout: float = 3.0) -> None:
        """Sends sig to the path's delayline; for SIGHUP waits until it logged
        the reload, so the change is in force when this returns."""
        for rec in self._read_json("pids.json", []):
            if rec["role"] != f"delayline-{pname}":
                continue
            pid = int(rec["pid"])
            if not _alive(pid, rec.get("start")):
                raise LabError(f"delayline of {pname} (pid {pid}) is not running; "
                               f"see {rec['log']}")
            log = Path(rec["log"])
            offset = log.stat().st_size if log.exists() else 0
            os.kill(pid, sig)
            if sig != signal.SIGHUP:
                return
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with open(log, "rb") as f:
                    f.seek(offset)
                    new = f.read().decode(errors="replace")
                if "reloaded" in new:
                    return
                if "control file" in new:
                    raise LabError(f"delayline of {pname} rejected the control file: "
                                   f"{_first_line(new)}")
                time.sleep(0.01)
            raise LabError(f"delayline of {pname} did not confirm the reload within "
                           f"{timeout:g}s; see {log}")
        raise LabError(f"no delayline recorded for {pname}")

    def _carrier(self, ns: str, dev: str) -> bool | None:
        cp = self._ip(ns, "-j", "link", "show", dev, check=False)
        if cp.returncode != 0:
            return None
        info = json.loads(cp.stdout)[0]
        return "NO-CARRIER" not in info.get("flags", []) and "UP" in info.get("flags", [])

    # ---- observation
    def iface_bytes(self, ns: str = "cli", ifaces: Iterable[str] | None = None
                    ) -> dict[str, dict[str, int]]:
        """{'wlan0': {'rx': .., 'tx': .., 'rx_packets': .., 'tx_packets': ..}, 'rmnet0': {..}}
        read in namespace ns (default cli; other namespaces: all non-lo links)."""
        cp = self._ip(ns, "-s", "-j", "link", "show")
        want = set(ifaces) if ifaces is not None else (
            {p.iface for p in PATHS.values()} if ns == "cli" else None)
        out = {}
        for link in json.loads(cp.stdout):
            name = link["ifname"]
            if name == "lo" or (want is not None and name not in want):
                continue
            st = link.get("stats64", link.get("stats", {}))
            out[name] = {"rx": st["rx"]["bytes"], "tx": st["tx"]["bytes"],
                         "rx_packets": st["rx"]["packets"], "tx_packets": st["tx"]["packets"]}
        return out

    def info(self) -> dict[str, Any]:
        """Addresses and names, for scripts (needs no running lab)."""
        paths = {}
        for pname, p in PATHS.items():
            paths[pname] = {
                "iface": p.iface, "client_addr": p.client_addr, "gateway": p.gateway,
                "router_ns": self.ns(p.router), "cdn": p.cdn, "cdn_url": f"http://{p.cdn}/",
                "isp_dns": p.dns, "table": p.table, "metric": p.metric,
                "ipv6_client_addr": IPV6_CLIENT, "ipv6_gateway": IPV6_GATEWAY,
            }
        return {
            "prefix": self.prefix,
            "namespaces": {n: self.ns(n) for n in NAMESPACES},
            "client_ns": self.ns("cli"),
            "dns": ANYCAST_DNS,
            "cdn_name": CDN_NAME,
            "paths": paths,
            "objects": sorted(f.name for f in OBJECT_DIR.glob("*")
                              if f.is_file() and not f.name.startswith(".")),
            "object_dir": str(OBJECT_DIR),
            "state_dir": str(self.state_dir),
            "up": (self.state_dir / "config.json").exists(),
            "ipv6": bool(self._read_json("config.json", {}).get("ipv6")),
            "tls": self.tls_info(),
            "streams_port": STREAMS_PORT,
            "app_proxy_port": APP_PROXY_PORT,
        }

    def tls_info(self) -> dict[str, Any]:
        """Where the lab's HTTPS is: {"ca": trusted CA file, "other_ca": a CA that signed
        nothing (verification against it fails), "port": 443, "name": the certificate's
        name}. Every CDN address (and alias) serves HTTPS; the files exist while the lab
        is up."""
        return {"ca": str(self.tls.ca), "other_ca": str(self.tls.other_ca), "port": TLS_PORT,
                "name": CDN_NAME}

    def helpers(self) -> list[dict[str, Any]]:
        out = []
        for rec in self._read_json("pids.json", []):
            out.append({"role": rec["role"], "pid": rec["pid"], "ns": rec["ns"],
                        "alive": _alive(int(rec["pid"]), rec.get("start")), "log": rec["log"]})
        return out

    def status(self) -> dict[str, Any]:
        cfg = self.config()
        helpers = self.helpers()
        counters = self.iface_bytes("cli")
        links = {}
        cp = self._ip("cli", "-j", "link", "show", check=False)
        if cp.returncode == 0:
            for link in json.loads(cp.stdout):
                links[link["ifname"]] = link
        cc = {}
        for n in ("cli", "inet"):
            r = self._in(n, "sysctl", "-n", "net.ipv4.tcp_congestion_control", check=False)
            cc[n] = r.stdout.strip() or None
        paths = {}
        for pname, p in PATHS.items():
            pc = cfg["paths"][pname]
            link = links.get(p.iface, {})
            qdiscs = {}
            for dev in (ROUTER_CLI_IF, ROUTER_INET_IF):
                q = self._run(["tc", "-n", self.ns(p.router), "qdisc", "show", "dev", dev],
                              check=False)
                qdiscs[dev] = _first_line(q.stdout)
            paths[pname] = {
                "iface": p.iface,
                "configured": {"up": pc["up"], "down": pc["down"], "link": pc["link"]},
                "link": {"operstate": link.get("operstate"),
                         "carrier": "NO-CARRIER" not in link.get("flags", []) and bool(link),
                         "flags": link.get("flags", [])},
                "qdisc": qdiscs,
                "helpers": [h for h in helpers if h["role"].endswith("-" + pname)],
                "counters": counters.get(p.iface),
            }
        return {"prefix": self.prefix, "state_dir": str(self.state_dir),
                "congestion_control": cc, "paths": paths, "ipv6": bool(cfg.get("ipv6")),
                "tls": {**self.tls_info(), "ca_exists": self.tls.ca.is_file()},
                "all_helpers_alive": all(h["alive"] for h in helpers) and bool(helpers)}

    # ---- kernel MPTCP: the reference that changes both ends (bench peer `mptcp`)
    #
    # Kept apart from up(): a lab is plain TCP unless a benchmark asks for this.
    # One more server in inet, reachable at one address over both paths, and
    # the client's in-kernel path manager told to add a subflow from rmnet0.
    # Only sockets opened as IPPROTO_MPTCP (e.g. under `mptcpize run`) use it;
    # fleetyd, curl and aria2 in the same lab keep plain TCP.

    MPTCP_SERVER = "198.18.30.1"  # nginx under `mptcpize run` in inet, on lo
    MPTCP_SUBFLOWS = 2

    def mptcp_up(self) -> dict[str, Any]:
        """Adds kernel MPTCP to the running lab: an nginx under `mptcpize run`
        in inet at MPTCP_SERVER:80 serving the CDNs' objects (and extra roots;
        an MPTCP listener accepts plain TCP too), and in the client
        `ip mptcp limits set subflow 2 add_addr_accepted 2` plus an endpoint
        `198.18.2.2 dev rmnet0 subflow`: a connection made over wlan0 (the main
        table's default) gets a second subflow over rmnet0. Checks with a 1 MB
        download that MP_CAPABLE and MP_JOIN both happen. Torn down with the lab
        (the nginx is a recorded helper; endpoints live in the namespace).
        Returns {'server': addr, 'url': 'http://addr/', 'endpoints': [...]}."""
        require_root()
        cfg = self.config()
        if shutil.which("mptcpize") is None:
            raise LabError("mptcpize not found: run scripts/setup.sh (package mptcpize)")
        for n in ("cli", "inet"):
            cp = self._in(n, "sysctl", "-n", "net.mptcp.enabled", check=False)
            if cp.returncode != 0:
                raise LabError("this kernel has no MPTCP (no net.mptcp.enabled sysctl)")
            self._in(n, "sysctl", "-q", "-w", "net.mptcp.enabled=1")
        addr = self.MPTCP_SERVER
        # server: its address on inet's lo (routes to both client subnets exist)
        self._ip("inet", "addr", "replace", f"{addr}/32", "dev", "lo")
        self._ip("inet", "mptcp", "limits", "set", "subflow", str(self.MPTCP_SUBFLOWS))
        role = "nginx-mptcp"
        base = self.state_dir / role
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / f"{role}.conf"
        roots = [ExtraRoot(**r) for r in cfg.get("extra_roots", [])]
        conf.write_text(nginx_config("mptcp", addr, self.state_dir, Path(cfg["object_dir"]),
                                     roots))
        self._in("inet", "nginx", "-t", "-q", "-c", str(conf), "-p", str(base))
        if not any(r["role"] == role and _alive(int(r["pid"]), r.get("start"))
                   for r in self._read_json("pids.json", [])):
            proc = self._spawn(role, "inet", ["mptcpize", "run", "nginx", "-c", str(conf),
                                              "-p", str(base)])
            self._wait_ready(role, proc,
                             lambda pid: self._proc_net_has(pid, "tcp", _hex_addr(addr, 80), "0A"),
                             f"listening on {addr}:80")
        # client: wlan0 carries the initial subflow, rmnet0 joins
        self._ip("cli", "mptcp", "limits", "set", "subflow", str(self.MPTCP_SUBFLOWS),
                 "add_addr_accepted", str(self.MPTCP_SUBFLOWS))
        self._ip("cli", "mptcp", "endpoint", "flush")
        cell = PATHS["cell"]
        self._ip("cli", "mptcp", "endpoint", "add", cell.client_addr, "dev", cell.iface,
                 "subflow")
        self._mptcp_check()
        cfg = self.config()
        cfg["mptcp"] = {"server": addr, "endpoints": [f"{cell.client_addr} dev {cell.iface}"]}
        self._write_json("config.json", cfg)
        return {"server": addr, "url": f"http://{addr}/", "endpoints": cfg["mptcp"]["endpoints"]}

    def _mptcp_check(self) -> None:
        """A 1 MB download under mptcpize: the server must answer MP_CAPABLE
        (else the connection fell back to plain TCP) and rmnet0 must join
        (a HEAD request ends before the join's handshake does)."""
        before = self.mptcp_counters()
        cp = self._in("cli", *self.mptcp_argv(["curl", "-sS", "-o", "/dev/null",
                                               "--max-time", "10", "--noproxy", "*",
                                               f"http://{self.MPTCP_SERVER}/1MB"]),
                      check=False, timeout=15)
        if cp.returncode != 0:
            raise LabError(f"MPTCP check failed: GET http://{self.MPTCP_SERVER}/1MB: "
                           f"{_first_line(cp.stderr)}")
        # the join is asynchronous: give it a few RTTs
        deadline = time.monotonic() + 3.0
        while True:
            d = {k: v - before.get(k, 0) for k, v in self.mptcp_counters().items()}
            if d.get("MPCapableSYNACKRX", 0) >= 1 and d.get("MPJoinSynAckRx", 0) >= 1:
                return
            if time.monotonic() > deadline:
                raise LabError(f"MPTCP check failed: MP_CAPABLE answered "
                               f"{d.get('MPCapableSYNACKRX', 0)}x, MP_JOIN answered "
                               f"{d.get('MPJoinSynAckRx', 0)}x (want both >= 1)")
            time.sleep(0.05)

    @staticmethod
    def mptcp_argv(argv: Sequence[str]) -> list[str]:
        """argv run with its TCP sockets turned into MPTCP ones (LD_PRELOAD)."""
        return ["mptcpize", "run", *argv]

    def mptcp_counters(self, ns: str = "cli") -> dict[str, int]:
        """The namespace's MPTcpExt counters without the prefix, e.g.
        {'MPCapableSYNACKRX': 1, 'MPJoinSynAckRx': 1, ...} (nstat MPTcp*)."""
        cp = self._in(ns, "cat", "/proc/net/netstat")
        lines = cp.stdout.splitlines()
        for head, values in zip(lines, lines[1:]):
            if head.startswith("MPTcpExt:") and values.startswith("MPTcpExt:"):
                return {k: int(v) for k, v in zip(head.split()[1:], values.split()[1:])}
        return {}


# --------------------------------------------------------------------------
# command line

def _print_status(st: dict[str, Any]) -> None:
    cc = st["congestion_control"]
    print(f"lab '{st['prefix']}' ({st['state_dir']}); congestion control: "
          f"cli={cc.get('cli')} inet={cc.get('inet')}; IPv6 "
          f"{f'on (link-local {IPV6_CLIENT} -> {IPV6_GATEWAY})' if st.get('ipv6') else 'off'}")
    tls = st.get("tls")
    if tls:
        print(f"tls: https://{tls['name']}:{tls['port']} on every CDN address; CA {tls['ca']}"
              f"{'' if tls.get('ca_exists', True) else ' (MISSING)'}; "
              f"other CA (signed nothing) {tls['other_ca']}")
    for pname, ps in st["paths"].items():
        p = PATHS[pname]
        conf = ps["configured"]
        link = ps["link"]
        print(f"{pname}: {p.iface} {p.client_addr} -> {p.cdn} "
              f"link={conf['link']} (operstate {link['operstate']}, "
              f"{'carrier' if link['carrier'] else 'NO-CARRIER'})")
        print(f"  down {conf['down']['spec']:<22} up {conf['up']['spec']}")
        for dev, q in ps["qdisc"].items():
            print(f"  tc {dev}: {q}")
        hs = ", ".join(f"{h['role']} {h['pid']} {'alive' if h['alive'] else 'DEAD'}"
                       for h in ps["helpers"])
        print(f"  helpers: {hs}")
        c = ps["counters"] or {}
        print(f"  {p.iface} counters: rx {c.get('rx')} B ({c.get('rx_packets')} pkts), "
              f"tx {c.get('tx')} B ({c.get('tx_packets')} pkts)")


def _add_common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--prefix", default=os.environ.get("FLEETY_LAB_PREFIX", DEFAULT_PREFIX),
                    help="namespace prefix (default: %(default)s)")
    ap.add_argument("--delayline", help="path of the fleety-delayline binary")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each command")


def _parser(exec_remainder: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fleety-lab",
        description="Two-path (Wi-Fi + cellular) network lab in namespaces. "
                    "SPEC = RATE/DELAY[/LOSS], e.g. 20mbit/25ms/0.5%%: RATE 500kbit|20mbit|"
                    "1gbit|unlimited, DELAY one-way per direction, LOSS percent per direction.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="build the lab (an existing one is torn down first)")
    _add_common(up)
    up.add_argument("--wifi", metavar="SPEC", help=f"both directions (default {DEFAULT_SPEC})")
    up.add_argument("--cell", metavar="SPEC", help=f"both directions (default {DEFAULT_SPEC})")
    for p in ("wifi", "cell"):
        for d in ("up", "down"):
            up.add_argument(f"--{p}-{d}", metavar="SPEC",
                            help=f"{p} {d}load direction only ('-' keeps a field)")
    up.add_argument("--objects", nargs="+", default=[], metavar="SIZE",
                    help="extra objects to serve besides 1MB 10MB 100MB, e.g. 500MB")
    up.add_argument("--extra-root", action="append", default=[], metavar="[CDN:]/PREFIX/=/DIR",
                    help="also serve DIR under /PREFIX/ (on one CDN: wifi: or cell:)")
    up.add_argument("--ipv6", action="store_true",
                    help=f"IPv6 on the client's lo and the client<->router links, link-local "
                         f"only: {IPV6_GATEWAY} on the routers, {IPV6_CLIENT} on wlan0/rmnet0")
    up.add_argument("--no-check", action="store_true", help="skip the HEAD request per path")

    down = sub.add_parser("down", help="tear the lab down (idempotent)")
    _add_common(down)

    st = sub.add_parser("set", help="change a path: SPEC, or down/up for the link")
    _add_common(st)
    st.add_argument("path", help="wifi|wlan0|cell|rmnet0")
    st.add_argument("what", nargs="?",
                    help="SPEC (both directions), or a link state: down (NO-CARRIER), "
                         "blackhole (carrier, nothing passes), up (normal)")
    st.add_argument("--up", metavar="SPEC", help="upload direction only")
    st.add_argument("--down", metavar="SPEC", help="download direction only")
    st.add_argument("--spec", dest="spec_opt", help=argparse.SUPPRESS)

    ex = sub.add_parser("exec", help="run a command in a namespace: exec NS -- CMD...")
    _add_common(ex)
    ex.add_argument("--timeout", type=float, default=EXEC_TIMEOUT,
                    help="seconds (default %(default)g); exit 124 when exceeded")
    ex.add_argument("ns", help="cli|wlan|rmnet|inet")
    # with '--' the command was split off before parsing (see _preprocess)
    if exec_remainder:
        ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")

    s = sub.add_parser("status", help="shaping, links, helpers, counters")
    _add_common(s)
    s.add_argument("--json", action="store_true")

    i = sub.add_parser("info", help="addresses and names")
    _add_common(i)
    i.add_argument("--json", action="store_true")

    o = sub.add_parser("object", help="generate objects, e.g. `object 500MB`")
    _add_common(o)
    o.add_argument("names", nargs="+", metavar="SIZE")
    return ap


def _preprocess(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """argparse treats '-/30ms' as an option and would let `exec NS CMD` eat
    exec's own options: for `set`, a SPEC starting with '-/' becomes
    --spec=... (or --up=/--down=...); for `exec`, everything after the first
    '--' is the command. Returns (argv for argparse, exec command or None)."""
    cmd = next((a for a in argv if not a.startswith("-")), None)
    if cmd == "exec" and "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    if cmd == "set":
        out: list[str] = []
        for a in argv:
            if a.startswith("-/"):
                if out and out[-1] in ("--up", "--down", "--spec"):
                    out[-1] = f"{out[-1]}={a}"
                else:
                    out.append(f"--spec={a}")
            else:
                out.append(a)
        return out, None
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fleety-lab status | head`
    argv, exec_cmd = _preprocess(list(sys.argv[1:] if argv is None else argv))
    args = _parser(exec_remainder=exec_cmd is None).parse_args(argv)
    prog = "fleety-lab"
    try:
        if args.cmd == "info":
            lab = Lab(args.prefix, args.delayline, args.verbose)
            info = lab.info()
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(f"namespaces: {' '.join(info['namespaces'].values())}")
                print(f"dns: {info['dns']} (anycast, per-ISP answer for {info['cdn_name']})")
                for pname, p in info["paths"].items():
                    print(f"{pname}: {p['iface']} {p['client_addr']} gw {p['gateway']} "
                          f"router {p['router_ns']} cdn {p['cdn']} isp-dns {p['isp_dns']}")
                print(f"objects: {' '.join(info['objects'])} in {info['object_dir']}")
                t = info["tls"]
                print(f"tls: https://{t['name']}:{t['port']} on every CDN address; "
                      f"CA {t['ca']}; other CA (signed nothing) {t['other_ca']}"
                      f"{'' if info['up'] else ' (made by up)'}")
            return 0
        require_root()
        if args.cmd == "object":
            for n in args.names:
                print(ensure_object(n, log=lambda m: print(f"{prog}: {m}", file=sys.stderr)))
            return 0
        lab = Lab(args.prefix, args.delayline, args.verbose)
        if args.cmd == "up":
            signal.signal(signal.SIGTERM, Lab._on_sigterm)
            t0 = time.monotonic()
            lab.up(wifi=args.wifi, cell=args.cell, wifi_up=args.wifi_up,
                   wifi_down=args.wifi_down, cell_up=args.cell_up, cell_down=args.cell_down,
                   objects=args.objects, extra_roots=args.extra_root, ipv6=args.ipv6,
                   check=not args.no_check)
            cfg = lab.config()
            desc = "; ".join(f"{p} down {c['down']['spec']} up {c['up']['spec']}"
                             for p, c in cfg["paths"].items())
            print(f"{prog}: lab '{lab.prefix}' up in {time.monotonic() - t0:.1f}s: {desc}")
            return 0
        if args.cmd == "down":
            lab.down()
            return 0
        if args.cmd == "set":
            link = None
            spec = args.spec_opt
            if args.what in LINK_STATES:
                link = args.what
            elif args.what:
                if spec:
                    raise LabError("set: give one SPEC")
                spec = args.what
            if not (link or spec or args.up or args.down):
                raise LabError("set: give a SPEC, up/down, --up SPEC or --down SPEC")
            pc = lab.set_path(args.path, spec=spec, up=args.up, down=args.down, link=link)
            print(f"{prog}: {Lab.path(args.path).name}: down {pc['down']['spec']} "
                  f"up {pc['up']['spec']} link {pc['link']}")
            return 0
        if args.cmd == "exec":
            cmd = exec_cmd if exec_cmd is not None else list(args.argv)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            if not cmd:
                raise LabError("exec: no command given (exec NS -- CMD...)")
            lab.ns(args.ns)
            try:
                cp = lab.exec(args.ns, cmd, timeout=args.timeout or None)
            except subprocess.TimeoutExpired:
                print(f"{prog}: exec: timed out after {args.timeout:g}s", file=sys.stderr)
                return 124
            return cp.returncode if cp.returncode >= 0 else 128 - cp.returncode
        if args.cmd == "status":
            st = lab.status()
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                _print_status(st)
            return 0
    except LabError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
