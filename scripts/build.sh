#!/usr/bin/env bash
# Configures and builds fleety with CMake + Ninja (ccache when present).
#   scripts/build.sh [BUILD_DIR] [extra cmake args...]
# Default BUILD_DIR: build (RelWithDebInfo, warnings are errors: the developer and CI build).
# The ASan+UBSan build: build-asan -DFLEETY_SANITIZE=ON. (Or CMakePresets.json: dev, asan.)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/fleety-ccache}
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLEETY_WERROR=ON "$@" >/dev/null
# Two cores, and Beast's translation units need ~1 GB each: two jobs.
ninja -C "$dir" -j 2
