#!/bin/bash
# run.sh [KERNEL_TEST_FILES...]: the kernel tests (default: test/kernel/*.kernel.ts) in one boot
# of the user-mode kernel with IPVS (test/kernel/vm.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
[ $# -gt 0 ] || set -- test/kernel/*.kernel.ts
files=(); for f in "$@"; do case $f in /*|./*) files+=("$f");; *) files+=("./$f");; esac; done
exec bash "$here/vm.sh" "$root/node_modules/.bin/bun" test --timeout 300000 "${files[@]}"
