#!/bin/bash
# bench/kernel.sh: the kernel sync benchmark (bench/kernel-sync.ts) in one boot of the user-mode
# kernel with IPVS (test/kernel/vm.sh). Prints a table: our driver vs ipvsadm -R for 200 and 1000 services x 10 dests
# (BENCH_SIZES=200,1000 to change), each round in a fresh network namespace; then the daemon
# itself: full sync, unchanged restart and one change, and the start-up on an empty tree
# (bench/kernel-daemon.ts).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# The packaged binary, what operators run: the daemon and start-up rows (bench/kernel-daemon.ts).
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$root/node_modules/.bin/bun" packaging/build.ts "$build" >/dev/null
export CLUSTERF_PACKAGED="$build/clusterf"
bash test/kernel/vm.sh bash -c "'$root/node_modules/.bin/bun' '$root/bench/kernel-sync.ts' && '$root/node_modules/.bin/bun' '$root/bench/kernel-daemon.ts'"
