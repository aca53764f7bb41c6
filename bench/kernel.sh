#!/bin/bash
# bench/kernel.sh: the kernel sync benchmark (bench/kernel-sync.ts) in one boot of the user-mode
# kernel with IPVS. Prints a table: our driver vs ipvsadm -R for 200 and 1000 services x 10 dests
# (BENCH_SIZES=200,1000 to change), each round in a fresh network namespace; then the daemon
# itself: full sync, unchanged restart and one change (bench/kernel-daemon.ts).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUN_IN_KERNEL=${RUN_IN_KERNEL:-${CLUSTERF_SHARED:-$(cd .. && pwd)/shared}/tools/run-in-kernel.sh}
# see test/kernel/run.sh: the ptrace fix that User-Mode Linux needs on hosts with AMX
if command -v gcc >/dev/null; then export PATH="$root/test/kernel/uml-shim:$PATH"; fi
exec bash "$RUN_IN_KERNEL" bash -c "'$root/node_modules/.bin/bun' '$root/bench/kernel-sync.ts' && '$root/node_modules/.bin/bun' '$root/bench/kernel-daemon.ts'"
