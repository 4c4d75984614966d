#!/usr/bin/env python3
"""The main job: one object over Wi-Fi alone, cellular alone and through fleetyd.

Brings up the lab (default Wi-Fi 20mbit/25ms, cellular 20mbit/25ms: RTT 50 ms on
both), runs fleetyd with the minimal config of the issue, downloads the object
three ways, checks every sha256, prints what each path carried and the
aggregation rate = fleety throughput / (Wi-Fi alone + cellular alone), then tears
the lab down (also on failure or Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))

from fleety_lab import Lab, LabError  # noqa: E402
from harness import Fleetyd, curl, object_sha256  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wifi", default="20mbit/25ms", help="Wi-Fi shaping RATE/DELAY[/LOSS] (one-way delay)")
    ap.add_argument("--cell", default="20mbit/25ms", help="cellular shaping RATE/DELAY[/LOSS]")
    ap.add_argument("--object", default="100MB", help="1MB, 10MB, 100MB or 500MB")
    ap.add_argument("--prefix", default="fl", help="lab namespace prefix")
    args = ap.parse_args()

    try:
        with Lab(args.prefix) as lab:
            print(f"lab: Wi-Fi {args.wifi}, cellular {args.cell} (one-way delay); object {args.object}")
            lab.up(wifi=args.wifi, cell=args.cell, objects=[args.object])
            info = lab.info()["paths"]
            expected = object_sha256(args.object)
            host = ["-H", "Host: cdn.fleety.test"]

            def check(name, t):
                if t.exit_code != 0 or t.sha256 != expected:
                    raise LabError(f"{name}: download failed or corrupt (exit {t.exit_code}, "
                                   f"HTTP {t.http_code}, sha256 {t.sha256[:16]}…): {t.stderr.strip()}")
                return t

            print("downloading over wlan0 alone …", flush=True)
            wifi = check("wlan0", curl(lab, f"http://{info['wifi']['cdn']}/{args.object}",
                                       interface="wlan0", extra=host))
            print("downloading over rmnet0 alone …", flush=True)
            cell = check("rmnet0", curl(lab, f"http://{info['cell']['cdn']}/{args.object}",
                                        interface="rmnet0", extra=host))
            with Fleetyd(lab) as daemon:
                print(f"downloading through fleetyd ({daemon.proxy_url}) …", flush=True)
                both = check("fleety", curl(lab, f"http://cdn.fleety.test/{args.object}",
                                            proxy=daemon.proxy_url))
                summary = [l for l in daemon.log().splitlines() if "multipath" in l or "one path" in l]

            print()
            print(f"{'download':<10} {'time s':>7} {'Mbit/s':>7} {'wlan0 rx':>12} {'rmnet0 rx':>12}  sha256")
            for name, t in (("wlan0", wifi), ("rmnet0", cell), ("fleety", both)):
                print(f"{name:<10} {t.seconds:7.2f} {t.mbit_s:7.1f} {t.iface_rx['wlan0']:12,d} "
                      f"{t.iface_rx['rmnet0']:12,d}  {t.sha256[:16]}… ok")
            if summary:
                print("fleetyd:", summary[-1].split("] ", 1)[-1])
            rx_total = both.iface_rx["wlan0"] + both.iface_rx["rmnet0"]
            cell_share = both.iface_rx["rmnet0"] / rx_total if rx_total else 0.0
            aggregation = both.mbit_s / (wifi.mbit_s + cell.mbit_s)
            print(f"aggregation {aggregation:.2f}: fleety {both.mbit_s:.1f} Mbit/s, wlan0 {wifi.mbit_s:.1f} "
                  f"+ rmnet0 {cell.mbit_s:.1f} Mbit/s, cellular share {cell_share:.2f}")
        return 0
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
