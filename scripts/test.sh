#!/usr/bin/env bash
# The full test suite (README command 2; CI runs it through .ci/run): installs what
# is missing, checks formatting, builds, runs the unit tests under ASan+UBSan, then
# the fuzz targets for a bounded time, then every test (unit and lab end-to-end) on
# the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== format check"
mapfile -t sources < <(git ls-files 'src/*.cpp' 'src/*.hpp' 'tests/*.cpp' 'lab/*.cpp')
clang-format --dry-run --Werror "${sources[@]}"

echo "== build"
scripts/build.sh build

echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
scripts/build.sh build-asan -DFLEETY_SANITIZE=ON -DFLEETY_E2E=OFF -DCMAKE_BUILD_TYPE=Debug
ctest --test-dir build-asan -L unit --output-on-failure -j 2
echo "== shutdown under AddressSanitizer + UndefinedBehaviorSanitizer (lab)"
ctest --test-dir build-asan -R '^e2e.shutdown$' --output-on-failure

echo "== fuzz targets (libFuzzer, clang, 30 s each)"
scripts/fuzz.sh 30

echo "== all tests (unit + lab end-to-end)"
ctest --test-dir build --output-on-failure
