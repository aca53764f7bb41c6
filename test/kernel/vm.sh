#!/bin/bash
# vm.sh CMD [ARGS...]: runs CMD as root inside Debian's User-Mode Linux 6.1 (a real kernel with
# IPVS as modules), then powers the guest off and exits with CMD's status.
#
# The guest's root file system is the host's / (hostfs, read-write), so CMD sees the repository,
# node_modules and every installed program at the same paths, and starts in the caller's working
# directory with the caller's environment. The guest has only `lo`: no packet can leave it, and
# each network namespace made inside it has its own IPVS table. CMD's stdout and stderr come back
# on this script's stdout and stderr (the guest's tty1 and tty2 are wired to our fds 1 and 2).
#
# Needs the Debian packages user-mode-linux, kmod, iproute2 (scripts/setup.sh installs them).
# Environment:
#   CLUSTERF_VM_TIMEOUT  seconds before the guest is killed (default 900; exit 124)
#   CLUSTERF_VM_MEM      guest memory (default 1G)
#   CLUSTERF_VM_CPU      host CPU the guest is pinned to (default: the last one; empty = unpinned).
#                        Unpinned, UML's threads migrate between CPUs and run several times slower.
#   CLUSTERF_VM_MODULES  modules loaded at boot (default ip_vs; the schedulers load on demand)
#   CLUSTERF_VM_CACHE    where the module tree link and the compiled ptrace shim are kept
#
# Facts this relies on: the UML kernel has no modules under the host's /lib/modules, so the guest's
# modprobe is pointed (through /proc/sys/kernel/modprobe and MODPROBE_OPTIONS) at a tree whose
# lib/modules/<version> links to /usr/lib/uml/modules/<version>. On hosts whose XSAVE area is larger
# than UML's buffer (AMX), UML panics at boot ("ptrace set fp regs failed"); uml-xstate.c, preloaded
# into linux.uml, fixes that and is harmless elsewhere (compiled once when gcc is there).
# Files the tests change while daemons watch them must live on the guest's tmpfs (/run): inotify
# does not report changes on hostfs.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
uml=$(command -v linux.uml || true)
[ -n "$uml" ] || uml=/usr/bin/linux.uml
[ -x "$uml" ] || { echo "vm.sh: linux.uml not found (apt-get install user-mode-linux)" >&2; exit 127; }
kver=$(ls /usr/lib/uml/modules 2>/dev/null | sort -V | tail -1)
[ -n "$kver" ] || { echo "vm.sh: no module tree under /usr/lib/uml/modules" >&2; exit 127; }

cache=${CLUSTERF_VM_CACHE:-${TMPDIR:-/tmp}/clusterf-vm}
mkdir -p "$cache/lib/modules"
ln -sfn "/usr/lib/uml/modules/$kver" "$cache/lib/modules/$kver"

preload=
if command -v gcc >/dev/null; then
  shim="$cache/uml-xstate-$(cksum < "$here/uml-xstate.c" | cut -d' ' -f1).so"
  if [ ! -f "$shim" ]; then
    gcc -O2 -shared -fPIC -o "$shim.$$" "$here/uml-xstate.c" -ldl && mv "$shim.$$" "$shim"
  fi
  preload=$shim
fi

run=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
cat > "$run/modprobe" <<EOF
#!/bin/sh
exec /sbin/modprobe -d '$cache' "\$@"
EOF
chmod +x "$run/modprobe"
export -p > "$run/env"
printf '%q ' "$@" > "$run/cmd"

# The guest's init: a minimal system (proc, sys, dev, tmpfs /run, pts, shm), modules, lo up; then
# CMD with stdout on tty1 and stderr on tty2 (as pipes, like under CI), its status in $run/rc.
cat > "$run/init" <<EOF
#!/bin/bash
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
ln -sfn /proc/self/fd /dev/fd
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm /run/netns
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
stty -F /dev/tty1 raw -echo 2>/dev/null; stty -F /dev/tty2 raw -echo 2>/dev/null
echo '$run/modprobe' > /proc/sys/kernel/modprobe
for m in ${CLUSTERF_VM_MODULES-ip_vs}; do '$run/modprobe' "\$m" || echo "vm.sh: modprobe \$m failed" > /dev/tty2; done
ip link set lo up
source '$run/env'
export MODPROBE_OPTIONS='-d $cache'
cd $(printf %q "$PWD") || exit 1
( eval "\$(cat '$run/cmd')" < /dev/null 2> >(cat > /dev/tty2) | cat > /dev/tty1; echo "\${PIPESTATUS[0]}" > '$run/rc' )
sleep 0.2; sync
poweroff -f
EOF
chmod +x "$run/init"

pin=()
cpu=${CLUSTERF_VM_CPU-$(( $(nproc) - 1 ))}
[ -n "$cpu" ] && pin=(taskset -c "$cpu")
status=0
LD_PRELOAD="$preload${LD_PRELOAD:+:$LD_PRELOAD}" timeout "${CLUSTERF_VM_TIMEOUT:-900}" "${pin[@]}" "$uml" \
  mem="${CLUSTERF_VM_MEM:-1G}" root=/dev/root rootfstype=hostfs rootflags=/ rw init="$run/init" \
  uml_dir="$run" con=null con1=null,fd:1 con2=null,fd:2 quiet loglevel=0 < /dev/null || status=$?
if [ -s "$run/rc" ]; then exit "$(cat "$run/rc")"; fi
[ "$status" = 124 ] && { echo "vm.sh: guest timed out after ${CLUSTERF_VM_TIMEOUT:-900}s" >&2; exit 124; }
echo "vm.sh: the guest reported no exit status (linux.uml exit $status)" >&2
exit 125
