"""What bench/aggregation, bench/events and bench/plot share: the clients under
test, one time-bounded download with an optional event in the middle, the
single-path baselines, summaries and the gnuplot figures.

Every download here is bounded in time: a client that hangs is killed (its
whole process group) and reported as failed, so one stuck peer cannot stall a
grid that takes an hour. A download counts as ok only if the client exited 0
and the sha256 of the bytes it wrote is the object's.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import ANYCAST_DNS, CDN_NAME, Lab, LabError, parse_object_size, parse_spec  # noqa: E402
from harness import Fleetyd, file_sha256, minimal_config  # noqa: E402

RESULTS = REPO / "bench" / "results"
LAB_TOOLS = REPO / "tests" / "e2e" / "lab_tools.py"

# The multipath clients a benchmark can compare (--peers).
PEERS = ("fleety-cost", "fleety-aggregate", "aria2", "mptcp")
BASELINES = ("wifi alone", "cellular alone")

# TCP goodput / tbf rate in this lab (1448 payload bytes per 1514-byte frame,
# plus start-up); only used for duration estimates and time bounds.
GOODPUT = 0.93


@dataclasses.dataclass
class Download:
    """What one client did with one object."""
    client: str
    exit_code: int | None  # None: killed at its time bound
    seconds: float
    body_bytes: int
    sha256: str
    iface_rx: dict[str, int]  # bytes received per client interface during the download
    expected_sha256: str = ""
    event_at: float | None = None  # seconds after the start when the event was applied
    rx_after_event: dict[str, int] = dataclasses.field(default_factory=dict)
    note: str = ""  # the fleetyd log line, the MPTCP handshakes, why it failed
    stderr: str = ""

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None

    @property
    def sha_ok(self) -> bool:
        return self.sha256 == self.expected_sha256

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.sha_ok

    @property
    def mbit_s(self) -> float:
        return self.body_bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def cell_share(self) -> float:
        total = self.iface_rx.get("wlan0", 0) + self.iface_rx.get("rmnet0", 0)
        return self.iface_rx.get("rmnet0", 0) / total if total else 0.0

    def failure(self) -> str:
        """Why it is not ok, in a few words ('' when ok)."""
        if self.timed_out:
            return f"killed at its time bound ({self.seconds:.0f} s)"
        if self.exit_code != 0:
            err = " ".join(self.stderr.split())[:120]
            return f"exit {self.exit_code}{': ' + err if err else ''}"
        if not self.sha_ok:
            return f"sha256 mismatch ({self.body_bytes} bytes written)"
        return ""


Event = tuple[float, Callable[[], None]]  # (seconds after the start, what to do then)


def _rx(lab: Lab) -> dict[str, int]:
    return {name: c["rx"] for name, c in lab.iface_bytes().items()}


def timed_download(lab: Lab, client: str, argv: Sequence[str], out_path: Path, timeout: float,
                   expected_sha256: str, event: Event | None = None,
                   stdout_path: Path | None = None) -> Download:
    """Runs argv in the client namespace (it must write the body to out_path),
    applies `event` at its time, and kills the whole process group if it is not
    done after `timeout` seconds. Its stdout goes to stdout_path if given (else
    nowhere)."""
    errf = tempfile.TemporaryFile()
    outf = open(stdout_path, "wb") if stdout_path is not None else subprocess.DEVNULL
    before = _rx(lab)
    start = time.monotonic()
    try:
        proc = lab.popen("cli", list(argv), stdin=subprocess.DEVNULL, stdout=outf,
                         stderr=errf, start_new_session=True)
    finally:
        if stdout_path is not None:
            outf.close()  # the child has its own copy
    event_at = None
    rx_at_event: dict[str, int] = {}
    exit_code: int | None = None
    try:
        while True:
            exit_code = proc.poll()
            if exit_code is not None:
                break
            now = time.monotonic() - start
            if now > timeout:
                break
            if event is not None and event_at is None and now >= event[0]:
                rx_at_event = _rx(lab)
                event[1]()
                event_at = time.monotonic() - start
            time.sleep(0.005)  # the figures' resolution: 5 ms of a 1 s download
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    seconds = time.monotonic() - start
    after = _rx(lab)
    errf.seek(0)
    stderr = errf.read().decode(errors="replace")
    errf.close()
    sha, size = file_sha256(out_path)
    return Download(client, exit_code, seconds, size, sha,
                    {k: after[k] - before.get(k, 0) for k in after}, expected_sha256,
                    event_at,
                    {k: after[k] - rx_at_event.get(k, 0) for k in after} if rx_at_event else {},
                    stderr=stderr)


def _curl_argv(out: Path, url: str, timeout: float, extra: Sequence[str] = ()) -> list[str]:
    return ["curl", "-sS", "-o", str(out), "--max-time", str(int(timeout) + 1), *extra, url]


def download(lab: Lab, client: str, obj: str, expected_sha256: str, timeout: float,
             event: Event | None = None) -> Download:
    """One download of /obj by a multipath client (one of PEERS):

    - fleety-cost / fleety-aggregate: curl through a fresh fleetyd (scheduler
      mode cost / aggregate) for http://cdn.fleety.test/obj;
    - aria2: aria2c --multiple-interface=wlan0,rmnet0 -x2 -s2 -k1M;
    - mptcp: `mptcpize run curl` to the lab's MPTCP server (Lab.mptcp_up());
      ok only if MP_CAPABLE was answered and rmnet0 joined (no fallback to TCP);
      the time of a name lookup over wlan0 is added, as for the single paths.
    """
    url = f"http://{CDN_NAME}/{obj}"
    with tempfile.TemporaryDirectory(prefix="fleety-bench-") as tmp:
        out = Path(tmp) / "body"
        if client.startswith("fleety-"):
            mode = client.split("-", 1)[1]
            config = minimal_config() + f'\n[scheduler]\nmode = "{mode}"\n'
            with Fleetyd(lab, config_text=config) as daemon:
                d = timed_download(lab, client, _curl_argv(out, url, timeout, [
                    "--proxy", daemon.proxy_url]), out, timeout, expected_sha256, event)
            lines = [l for l in daemon.log().splitlines() if f"/{obj} " in l and "GET" in l]
            d.note = lines[-1].strip() if lines else ""
            if not d.ok:
                d.note = (d.note + " | log tail: "
                          + " / ".join(daemon.log().strip().splitlines()[-3:])).strip(" |")
        elif client == "aria2":
            argv = ["aria2c", "-q", "--allow-overwrite=true", "--file-allocation=none",
                    "--multiple-interface=wlan0,rmnet0", "-x2", "-s2", "-k1M", "--max-tries=2",
                    f"--timeout={int(min(timeout, 60))}", "-d", tmp, "-o", "body", url]
            d = timed_download(lab, client, argv, out, timeout, expected_sha256, event)
        elif client == "mptcp":
            # The lab's MPTCP server has one address and no name of its own; an app would
            # look its name up first (over Wi-Fi, its initial subflow's path): that counts.
            _, lookup_s = name_lookup(lab, "wlan0")
            before = lab.mptcp_counters()
            argv = lab.mptcp_argv(_curl_argv(out, f"http://{lab.MPTCP_SERVER}/{obj}", timeout, [
                "--noproxy", "*", "-H", f"Host: {CDN_NAME}"]))
            d = timed_download(lab, client, argv, out, timeout, expected_sha256, event)
            delta = {k: v - before.get(k, 0) for k, v in lab.mptcp_counters().items()}
            capable, joins = delta.get("MPCapableSYNACKRX", 0), delta.get("MPJoinSynAckRx", 0)
            d.seconds += lookup_s
            d.note = f"MP_CAPABLE {capable}, MP_JOIN {joins}, name lookup {lookup_s * 1000:.0f} ms"
            if d.ok and (capable < 1 or joins < 1):
                # fell back to one TCP connection: not the reference we claim
                d.exit_code, d.stderr = -1, f"no MPTCP aggregation ({d.note})"
        else:
            raise SystemExit(f"unknown client {client}: use {', '.join(PEERS)}")
    return d


def name_lookup(lab: Lab, iface: str) -> tuple[str, float]:
    """The CDN's address from the resolver reached over `iface`, and the seconds the
    query took (measured inside the querying process, without its start-up)."""
    cp = lab.exec("cli", [sys.executable, str(LAB_TOOLS), "dns", "--server", ANYCAST_DNS,
                          "--dev", iface, CDN_NAME], timeout=20, capture_output=True, text=True)
    if cp.returncode != 0:
        raise LabError(f"name lookup of {CDN_NAME} over {iface} failed: {cp.stderr.strip()}")
    answer = json.loads(cp.stdout)
    if not answer["answers"]:
        raise LabError(f"no address for {CDN_NAME} over {iface}: {answer}")
    return answer["answers"][0], answer["elapsed_ms"] / 1000


def single_path(lab: Lab, cdn: str, iface: str, obj: str, seconds: float,
                expected_sha256: str) -> Download:
    """Goodput of one path alone: the name looked up over iface, then curl bound to
    iface, for at most `seconds` (at 0.5 Mbit/s a whole 100 MB object would take 27
    minutes). The lookup's time counts, as it does for every multipath client that
    starts from the name (fleety, aria2): an app alone on the path pays it too."""
    client = "wifi alone" if iface == "wlan0" else "cellular alone"
    address, lookup_s = name_lookup(lab, iface)
    if address != cdn:
        raise LabError(f"{CDN_NAME} over {iface} is {address}, expected that path's CDN {cdn}")
    with tempfile.TemporaryDirectory(prefix="fleety-bench-") as tmp:
        out = Path(tmp) / "body"
        argv = ["curl", "-sS", "-o", str(out), "--max-time", f"{seconds:g}", "--noproxy", "*",
                "--interface", iface, "-H", f"Host: {CDN_NAME}", f"http://{cdn}/{obj}"]
        d = timed_download(lab, client, argv, out, seconds + 30, expected_sha256)
    d.seconds += lookup_s
    d.note = f"name lookup {lookup_s * 1000:.0f} ms"
    # curl exits 28 when --max-time ends the download: expected here.
    if d.exit_code not in (0, 28) or d.body_bytes == 0:
        raise LabError(f"single-path download on {iface} failed: {d.failure()}")
    if d.exit_code == 28:
        d.exit_code, d.expected_sha256 = 0, d.sha256  # a prefix, not the object
    return d


def rate_bps(spec: str) -> float:
    """The rate of a lab SPEC in bit/s (unlimited: 1 Gbit/s for estimates)."""
    r = parse_spec(spec).rate_bps
    return float(r) if r is not None else 1e9


def rtt_ms(spec: str) -> float:
    return 2 * parse_spec(spec).delay_us / 1000


def object_bytes(obj: str) -> int:
    return parse_object_size(obj)


def download_bound(obj: str, best_rate_bps: float) -> float:
    """Time bound for a multipath client: 3x what the best single path alone
    would need, plus 30 s; a client slower than that is broken, not slow."""
    return 30 + 3 * object_bytes(obj) * 8 / (GOODPUT * best_rate_bps)


def summarize(values: Iterable[float], fmt: str = ".2f") -> str:
    """'median (min–max)' or '–'."""
    v = list(values)
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:{fmt}}"
    return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}–{max(v):{fmt}})"


def congestion_control() -> str:
    return subprocess.run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"],
                          capture_output=True, text=True).stdout.strip()


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def report_description(md_path: Path, first_table_line: str, default: str) -> str:
    """What OUT.md says above its first table (the line starting `first_table_line`), for
    --report to keep when it rewrites the tables; `default` when there is no such file."""
    old = md_path.read_text().splitlines() if md_path.exists() else []
    end = next((i for i, line in enumerate(old) if line.startswith(first_table_line)), len(old))
    return "\n".join(old[:end]).rstrip() or default


def truthy(v) -> bool:
    return v is True or str(v).strip().lower() in ("true", "1", "yes")


# --------------------------------------------------------------------------
# figures (gnuplot; regenerated from the CSV by bench/plot)

# one colour per client in every figure
CLIENT_COLORS = {"ideal": "#000000", "wifi alone": "#9e9e9e", "cellular alone": "#616161",
                 "fleety-cost": "#1f77b4", "fleety-aggregate": "#6baed6", "aria2": "#ff7f0e",
                 "mptcp": "#2ca02c"}
_OTHER_COLORS = ["#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _color(client: str, i: int) -> str:
    return CLIENT_COLORS.get(client, _OTHER_COLORS[i % len(_OTHER_COLORS)])


def _gp_str(s: str) -> str:
    """A gnuplot double-quoted string (newlines become \\n)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _bar_chart_prologue(png_path: Path, width: int, height: int) -> list[str]:
    """gnuplot settings shared by our bar charts: PNG output, median bars with min-max
    whiskers ('?' for a missing value)."""
    return [
        f"set terminal pngcairo size {width},{height} font 'DejaVu Sans,11'",
        f"set output {_gp_str(str(png_path))}",
        "set datafile missing '?'",
        "set style data histograms",
        "set style histogram errorbars gap 2 lw 1",
        "set style fill solid 0.9 border rgb '#333333'",
        "set boxwidth 0.9",
    ]


def _run_gnuplot(script: str, workdir: Path) -> None:
    if shutil.which("gnuplot") is None:
        raise RuntimeError("gnuplot not found: run scripts/setup.sh (package gnuplot-nox)")
    (workdir / "plot.gp").write_text(script)
    cp = subprocess.run(["gnuplot", str(workdir / "plot.gp")], capture_output=True, text=True,
                        timeout=60)
    if cp.returncode != 0:
        raise RuntimeError(f"gnuplot failed: {cp.stderr.strip()}")


def _row_label(r: dict) -> str:
    """x label of a grid row: the Wi-Fi rate, and the RTTs when they differ."""
    wifi = r.get("wifi", "?").replace("mbit", " Mbit/s").replace("kbit", " kbit/s")
    w_rtt, c_rtt = r.get("wifi_rtt_ms") or r.get("rtt_ms"), r.get("cell_rtt_ms") or r.get("rtt_ms")
    if w_rtt and c_rtt and float(w_rtt) != float(c_rtt):
        return f"{wifi}\nRTT {float(w_rtt):g}/{float(c_rtt):g} ms"
    return wifi


def plot_aggregation(csv_path: Path, png_path: Path) -> Path:
    """Like the paper's Fig. 10: grouped bars of the aggregation rate (median,
    whiskers min–max) per grid row (Wi-Fi rate), one bar per client, one panel
    per object size. Reads only the CSV, so it can be redrawn without rerunning."""
    rows = read_csv(csv_path)
    if not rows:
        raise RuntimeError(f"{csv_path} has no rows")
    for r in rows:
        r.setdefault("row", r.get("wifi", "?"))
        if not r.get("row"):
            r["row"] = r.get("wifi", "?")
    grid = list(dict.fromkeys(r["row"] for r in rows))
    objects = sorted(dict.fromkeys(r["object"] for r in rows), key=object_bytes)
    clients = list(dict.fromkeys(r["client"] for r in rows))
    labels = {g: _row_label(next(r for r in rows if r["row"] == g)) for g in grid}
    with tempfile.TemporaryDirectory(prefix="fleety-plot-") as tmp:
        work = Path(tmp)
        for obj in objects:
            with open(work / f"{obj}.dat", "w") as f:
                for g in grid:
                    cols = [str(grid.index(g))]
                    for c in clients:
                        v = [float(r["aggregation"]) for r in rows
                             if r["row"] == g and r["object"] == obj and r["client"] == c
                             and truthy(r["ok"])]
                        cols += ([f"{statistics.median(v):.4f}", f"{min(v):.4f}", f"{max(v):.4f}"]
                                 if v else ["?", "?", "?"])
                    f.write(" ".join(cols) + "\n")
        xtics = ", ".join(f"{_gp_str(labels[g])} {i}" for i, g in enumerate(grid))
        panel_h = 360
        lines = [
            *_bar_chart_prologue(png_path, 1100, panel_h * len(objects) + 40),
            "set yrange [0:1.15]",
            "set ytics 0.2",
            "set grid ytics lc rgb '#dddddd'",
            "set ylabel 'aggregation rate'",
            f"set xtics ({xtics}) nomirror",
            "set key outside right top vertical",
            "set lmargin at screen 0.07",
            "set rmargin at screen 0.80",
            "set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb '#555555'",
            f"set multiplot layout {len(objects)},1 title "
            + _gp_str("aggregation rate = throughput / (Wi-Fi alone + cellular alone, same run); "
                      "median, whiskers min–max"),
        ]
        lines.append(f"set xrange [-0.6:{len(grid) - 0.4}]")
        lines.append("set xlabel " + _gp_str("Wi-Fi rate (cellular 20 Mbit/s; RTT 50 ms on both "
                                             "paths unless noted)") + " offset 0,-0.8")
        lines.append("set bmargin 5")  # room for two-line row labels above the axis label
        for n, obj in enumerate(objects):
            if n:
                lines.append("unset key")
            plots = []
            for i, c in enumerate(clients):
                col = 2 + 3 * i
                plots.append(f"{_gp_str(str(work / (obj + '.dat')))} using {col}:{col + 1}:{col + 2} "
                             f"title {_gp_str(c)} lc rgb '{_color(c, i)}'")
            lines.append(f"set title {_gp_str(obj)}")
            lines.append("plot " + ", \\\n     ".join(plots))
        lines.append("unset multiplot")
        png_path.parent.mkdir(parents=True, exist_ok=True)
        _run_gnuplot("\n".join(lines) + "\n", work)
    return png_path


def plot_events(csv_path: Path, png_path: Path) -> Path:
    """Completion time per event, one bar per client (median, whiskers
    min–max, failed runs left out) next to the ideal the remaining capacity allows."""
    rows = read_csv(csv_path)
    if not rows:
        raise RuntimeError(f"{csv_path} has no rows")
    events = list(dict.fromkeys(r["event"] for r in rows))
    clients = ["ideal", *dict.fromkeys(r["client"] for r in rows)]
    with tempfile.TemporaryDirectory(prefix="fleety-plot-") as tmp:
        work = Path(tmp)
        with open(work / "events.dat", "w") as f:
            for i, ev in enumerate(events):
                cols = [str(i)]
                for c in clients:
                    if c == "ideal":
                        v = [float(r["ideal_s"]) for r in rows if r["event"] == ev]
                    else:
                        v = [float(r["seconds"]) for r in rows
                             if r["event"] == ev and r["client"] == c and truthy(r["ok"])]
                    cols += ([f"{statistics.median(v):.3f}", f"{min(v):.3f}", f"{max(v):.3f}"]
                             if v else ["?", "?", "?"])
                f.write(" ".join(cols) + "\n")
        xtics = ", ".join(f"{_gp_str(ev)} {i}" for i, ev in enumerate(events))
        plots = []
        for i, c in enumerate(clients):
            col = 2 + 3 * i
            plots.append(f"{_gp_str(str(work / 'events.dat'))} using {col}:{col + 1}:{col + 2} "
                         f"title {_gp_str(c)} lc rgb '{_color(c, i)}'")
        obj = rows[0].get("object", "")
        script = "\n".join([
            *_bar_chart_prologue(png_path, 1000, 420),
            "set yrange [0:*]",
            "set grid ytics lc rgb '#dddddd'",
            "set ylabel 'completion time (s)'",
            f"set xtics ({xtics}) nomirror",
            f"set xrange [-0.6:{len(events) - 0.4}]",
            "set key outside right top vertical",
            "set title " + _gp_str(f"{obj} at 20+20 Mbit/s, RTT 50 ms; event at t = "
                                   f"{float(rows[0].get('at_s', 5)):g} s; failed runs left out"),
            "plot " + ", \\\n     ".join(plots),
        ]) + "\n"
        png_path.parent.mkdir(parents=True, exist_ok=True)
        _run_gnuplot(script, work)
    return png_path
