#!/usr/bin/env bash
# Installs what clusterf and its tests need on a fresh Debian machine with Node and npm:
# the npm packages (Bun among them) and the Debian packages for the real parts the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(docker.io busybox-static etcd-server etcd-client libnl-3-200 libnl-genl-3-200 user-mode-linux kmod iproute2 ipvsadm curl procps)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd-server's Debian package starts a system etcd on 2379; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund >/dev/null
fi
