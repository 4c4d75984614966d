#!/usr/bin/env bash
# Installs every Debian package fleety needs to build, test, run the lab and
# benchmark. Idempotent: packages already present are skipped by apt-get.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh: run as root (apt-get and the lab's network namespaces need it)" >&2
  exit 1
fi

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config clang clang-format clang-tidy
  libclang-rt-14-dev
  # libraries (DESIGN.md "Stack")
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  libc-ares-dev libtomlplusplus-dev libspdlog-dev libfmt-dev libcli11-dev
  libsqlite3-dev libmnl-dev libnftables-dev libnetfilter-queue-dev libnfnetlink-dev libre2-dev
  libssl-dev
  libgtest-dev libgmock-dev
  # lab: namespaces, shaping, servers, peers
  iproute2 ethtool iptables nftables iputils-ping procps psmisc
  nginx-light dnsmasq-base curl wget aria2 mptcpize ffmpeg gnuplot-nox python3 openssl wrk
  # packaging test: the unit under systemd as PID 1
  systemd-container debootstrap
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The distribution's nginx/dnsmasq services are not ours: the lab starts its own
# instances inside namespaces. Stop any that apt-get started in the root namespace.
for svc in nginx dnsmasq; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
# Only the distribution's, in this (the root) network namespace: a lab's nginx runs in its own
# namespace, and another lab — a test or benchmark running beside this set-up — must
# keep its servers.
root_net=$(readlink /proc/$$/ns/net)  # ours: the set-up runs in the root namespace
for pid in $(pgrep -x nginx || true); do
  if [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) == "$root_net" ]]; then
    kill "$pid" 2>/dev/null || true
  fi
done
exit 0
