#!/bin/bash
# run.sh [KERNEL_TEST_FILES...]: the kernel tests (default: test/kernel/*.kernel.ts) in one boot
# of the user-mode kernel with IPVS (shared/tools/run-in-kernel.sh, beside the repository).
# Puts uml-shim/ first on PATH: its linux.uml preloads a ptrace fix that User-Mode Linux 6.1
# needs on hosts with a large XSAVE area (AMX); it needs gcc and is harmless elsewhere.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
RUN_IN_KERNEL=${RUN_IN_KERNEL:-${CLUSTERF_SHARED:-$(cd .. && pwd)/shared}/tools/run-in-kernel.sh}
[ $# -gt 0 ] || set -- test/kernel/*.kernel.ts
files=(); for f in "$@"; do case $f in /*|./*) files+=("$f");; *) files+=("./$f");; esac; done
if command -v gcc >/dev/null; then export PATH="$here/uml-shim:$PATH"; fi
exec bash "$RUN_IN_KERNEL" "$root/node_modules/.bin/bun" test --timeout 300000 "${files[@]}"
