#!/usr/bin/env bash
# Builds the .deb with CPack into a temporary dir and checks it: files,
# conffiles, maintainer scripts, Depends, the packaged config passes
# `fleetyd --check` (run from the extracted package), the unit passes
# `systemd-analyze verify`. Never installs the package.
#   tests/packaging/package_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(realpath "${1:?usage: package_test.sh BUILD_DIR SOURCE_DIR}")
src=$(realpath "${2:?usage: package_test.sh BUILD_DIR SOURCE_DIR}")

fail() { echo "package_test: FAIL: $*" >&2; exit 1; }
for tool in cpack dpkg-deb; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install dpkg-dev cmake)"
done

tmp=$(mktemp -d /tmp/fleety-package-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# -B: the package and CPack's staging tree go to $tmp, not the build dir.
if ! cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/out" >"$tmp/cpack.log" 2>&1; then
  cat "$tmp/cpack.log" >&2
  fail "cpack failed"
fi
debs=("$tmp"/out/*.deb)
[[ -f ${debs[0]} && ${#debs[@]} -eq 1 ]] || fail "expected one .deb in $tmp/out, got: ${debs[*]}"
deb=${debs[0]}
echo "package: $(basename "$deb") ($(du -h "$deb" | cut -f1))"

contents=$(dpkg-deb -c "$deb")
for f in ./usr/sbin/fleetyd ./usr/bin/fleety ./etc/fleety/fleety.toml \
         ./lib/systemd/system/fleetyd.service ./usr/share/doc/fleety/README.md \
         ./usr/share/doc/fleety/install.md ./usr/share/doc/fleety/configuration.md \
         ./usr/share/doc/fleety/paths.md ./usr/share/doc/fleety/interception.md \
         ./usr/share/doc/fleety/get.md \
         ./usr/share/doc/fleety/copyright; do
  grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
# Both binaries executable.
for f in ./usr/sbin/fleetyd ./usr/bin/fleety; do
  grep -E "^-rwxr-xr-x .* $f\$" <<<"$contents" >/dev/null || fail "$f is not mode 0755"
done

field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == fleety ]] || fail "Package is '$(field Package)', not fleety"
[[ -n $(field Version) ]] || fail "no Version"
[[ -n $(field Maintainer) ]] || fail "no Maintainer"
# dpkg-shlibdeps: the libraries fleetyd links (libc, c-ares, SQLite, nftables), and the
# OpenSSL that only `fleety get` links (https://).
depends=$(field Depends)
for lib in libc6 libc-ares2 libsqlite3 libnftables libssl3; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
echo "Depends: $depends"

dpkg-deb -e "$deb" "$tmp/control"
grep -qx /etc/fleety/fleety.toml "$tmp/control/conffiles" 2>/dev/null ||
  fail "/etc/fleety/fleety.toml is not listed in conffiles"
for script in postinst prerm postrm; do
  [[ -x $tmp/control/$script ]] || fail "maintainer script $script missing or not executable"
  sh -n "$tmp/control/$script" || fail "$script: shell syntax error"
done
# The package must not start a daemon whose interfaces are guesses.
# (Comments may tell the admin how; the commands may not.)
if grep -v '^[[:space:]]*#' "$tmp/control/postinst" | grep -Eq 'systemctl +(enable|start)|--now'; then
  fail "postinst enables or starts fleetyd"
fi

dpkg-deb -x "$deb" "$tmp/root"
# The stripped, packaged binary on the packaged config.
if ! out=$("$tmp/root/usr/sbin/fleetyd" --check --config "$tmp/root/etc/fleety/fleety.toml" 2>&1); then
  fail "fleetyd --check on the packaged config: $out"
fi
echo "fleetyd --check: $out"
grep -Eq '^enabled = false' "$tmp/root/etc/fleety/fleety.toml" ||
  fail "the default config must keep [intercept] enabled = false"
"$tmp/root/usr/bin/fleety" --help >/dev/null || fail "fleety --help fails"

unit=$tmp/root/lib/systemd/system/fleetyd.service
grep -qx 'ExecStart=/usr/sbin/fleetyd --config /etc/fleety/fleety.toml' "$unit" ||
  fail "the unit's ExecStart is not /usr/sbin/fleetyd --config /etc/fleety/fleety.toml"
if command -v systemd-analyze >/dev/null; then
  # verify wants ExecStart's binary to exist: point it at the extracted one.
  sed "s#/usr/sbin/fleetyd#$tmp/root/usr/sbin/fleetyd#" "$unit" >"$tmp/fleetyd.service"
  if ! out=$(systemd-analyze verify "$tmp/fleetyd.service" 2>&1) || [[ -n $out ]]; then
    fail "systemd-analyze verify: $out"
  fi
  echo "systemd-analyze verify: ok"
  # Informational: the exposure score (offline mode, systemd >= 250).
  systemd-analyze security --offline=yes "$tmp/fleetyd.service" 2>/dev/null | tail -n1 || true
else
  echo "systemd-analyze not found: unit not verified"
fi
echo "package_test: ok"
