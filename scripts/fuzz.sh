#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build-fuzz) and runs each for a bounded
# time on its corpus: scripts/fuzz.sh [SECONDS per target, default 30].
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/fleety-ccache}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFLEETY_FUZZ=ON -DFLEETY_E2E=OFF -DFLEETY_WERROR=ON >/dev/null
for target in classify http_dns; do
  ninja -C build-fuzz -j 2 "fuzz_${target}"
  work=$(mktemp -d)
  cp fuzz/corpus/"${target}"/* "$work"/
  echo "== fuzz_${target}: ${seconds} s"
  # A crash's report is what matters: it is shown whole (and the input kept in $work).
  if ! build-fuzz/fuzz/"fuzz_${target}" -max_total_time="$seconds" -max_len=20000 \
      -print_final_stats=1 -artifact_prefix="$work/" "$work" >"$work.log" 2>&1; then
    grep -v '^#' "$work.log" | tail -60
    echo "fuzz_${target}: failed; inputs in $work" >&2
    exit 1
  fi
  tail -4 "$work.log"
  rm -rf "$work" "$work.log"
done
