#!/usr/bin/env bash
# The main job (README command 1): installs what is missing, builds, brings up the
# two-path lab (Wi-Fi 20 Mbit/s + cellular 20 Mbit/s, RTT 50 ms), downloads 100 MB
# over Wi-Fi alone, over cellular alone and through fleetyd, prints what each path
# carried and the aggregation rate, and tears the lab down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
exec python3 scripts/demo.py "$@"
