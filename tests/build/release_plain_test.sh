#!/usr/bin/env bash
# The packager's build (issue 19): `cmake -DCMAKE_BUILD_TYPE=Release` with nothing else
# must not make warnings errors, and must compile the code GCC 12 once warned on
# falsely at -O3 (the path history: -Wrestrict). The whole build is the packaging test's
# and the README's; this one is quick: it configures and builds the path and core
# libraries only.
#   tests/build/release_plain_test.sh SOURCE_DIR
set -euo pipefail
source_dir=${1:?usage: release_plain_test.sh SOURCE_DIR}
build=$(mktemp -d /tmp/fleety-release-plain.XXXXXX)
trap 'rm -rf "$build"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake -S "$source_dir" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; fail "cmake -DCMAKE_BUILD_TYPE=Release does not configure"; }
flags=$(ninja -C "$build" -t commands fleety_path fleety_core)
grep -q -- ' -O3 ' <<<"$flags" || fail "the Release build does not compile with -O3"
if grep -q -- '-Werror' <<<"$flags"; then
  fail "a plain Release build makes warnings errors (FLEETY_WERROR is for the dev preset)"
fi
ninja -C "$build" fleety_path fleety_core >"$build/build.log" 2>&1 ||
  { tail -n 40 "$build/build.log"; fail "the plain Release build of fleety_path fails"; }
warnings=$(grep -c 'warning:' "$build/build.log" || true)
echo "ok: plain Release build of fleety_path and fleety_core, -O3, no -Werror ($warnings warnings)"
