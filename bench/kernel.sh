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
# The start-up's yardstick: the code as it was when the scale issue was filed (the parent of
# 643466c, that work's first commit), from the source, timed in the same boot: the goal is half
# its time ("half today's time in the kernel"). It runs on today's node_modules plus the one
# package it had and today's tree has not (yargs-parser, fetched with npm). Without git history
# or npm the bench falls back to the fixed 300 ms goal (half the 0.6 s measured then).
then_commit=643466c^
export CLUSTERF_THEN=""
if git -C "$root" cat-file -e "$then_commit" 2>/dev/null; then
  then_dir="$build/then"
  mkdir -p "$then_dir/node_modules"
  git -C "$root" archive "$then_commit" | tar -x -C "$then_dir"
  for m in "$root"/node_modules/* "$root"/node_modules/.bin; do ln -s "$m" "$then_dir/node_modules/"; done
  if npm install --silent --no-save --no-package-lock --prefix "$build/then-deps" yargs-parser@22.0.0 >/dev/null 2>&1; then
    ln -s "$build/then-deps/node_modules/yargs-parser" "$then_dir/node_modules/yargs-parser"
    export CLUSTERF_THEN="$then_dir" CLUSTERF_THEN_COMMIT="$(git -C "$root" rev-parse --short "$then_commit")"
  else
    echo "bench/kernel.sh: npm could not fetch yargs-parser for the start-up yardstick; the fixed 300 ms goal applies" >&2
  fi
fi
bash test/kernel/vm.sh bash -c "'$root/node_modules/.bin/bun' '$root/bench/kernel-sync.ts' && '$root/node_modules/.bin/bun' '$root/bench/kernel-daemon.ts'"
