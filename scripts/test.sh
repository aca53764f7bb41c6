#!/usr/bin/env bash
# The whole test suite: host tests (real etcd, real directories, the in-memory IPVS table), then
# the kernel tests in one boot of the user-mode kernel with IPVS. Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }
BUN="$PWD/node_modules/.bin/bun"
LOG=$(mktemp -d)
passed=0; failed=0

count() { # count FILE: add bun's "N pass" / "N fail" summary lines to the totals
  local p f
  p=$(grep -aE '^ *[0-9]+ pass$' "$1" | tail -1 | grep -oE '[0-9]+' || true)
  f=$(grep -aE '^ *[0-9]+ fail$' "$1" | tail -1 | grep -oE '[0-9]+' || true)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ -z "$p" ] && [ -z "$f" ]; then failed=$((failed + 1)); echo "test.sh: $2 printed no summary" >&2; fi
}

echo "== host tests"
"$BUN" test --timeout 120000 "$@" 2>&1 | tee "$LOG/host.txt"; rc=${PIPESTATUS[0]}
count "$LOG/host.txt" "host tests"
[ "$rc" = 0 ] || grep -aqE '^ *[1-9][0-9]* fail$' "$LOG/host.txt" || failed=$((failed + 1))

kernel_tests=$(ls test/kernel/*.kernel.ts 2>/dev/null || true)
if [ $# -eq 0 ] && [ -n "$kernel_tests" ]; then
  echo "== kernel tests (user-mode Linux with IPVS)"
  CLUSTERF_VM_TIMEOUT=${CLUSTERF_VM_TIMEOUT:-900} bash test/kernel/vm.sh "$BUN" test --timeout 300000 $(printf './%s ' $kernel_tests) 2>&1 | tee "$LOG/kernel.txt"
  rc=${PIPESTATUS[0]}
  count "$LOG/kernel.txt" "kernel tests"
  [ "$rc" = 0 ] || grep -aqE '^ *[1-9][0-9]* fail$' "$LOG/kernel.txt" || failed=$((failed + 1))
fi
rm -rf "$LOG"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
