#!/usr/bin/env bash
# The README's first command: clusterf-ipvs on config.example in file-only mode. It programs the
# kernel when IPVS is there and we may (root); otherwise it prints the table it would program.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x node_modules/.bin/bun ] || npm ci --no-audit --no-fund >/dev/null
args=(-config-path=config.example -etcd-machines= -print -once -state-dir="${TMPDIR:-/tmp}/clusterf-state")
if [ "$(id -u)" = 0 ] && [ -e /proc/net/ip_vs ]; then
  exec bin/clusterf-ipvs "${args[@]}" "$@"
fi
echo "start: no IPVS in this kernel (or not root): printing the table it would program (-ipvs-mock)" >&2
exec bin/clusterf-ipvs "${args[@]}" -ipvs-mock "$@"
