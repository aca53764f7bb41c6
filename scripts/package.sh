#!/usr/bin/env bash
# Builds the clusterf packages from this tree (`npm run package`):
#   dist/clusterf_<version>_amd64.deb        (dpkg-deb)
#   dist/clusterf-<version>-1.x86_64.rpm     (rpmbuild from Debian's rpm package)
# with <version> from package.json; the last two lines on stdout are those two paths.
# See packaging/README.md for what is in them and why.
# Installs the Debian tools it needs when they are missing (dpkg-dev, rpm; lintian and systemd
# too, for checking the packages), with sudo unless run as root.
#
# Environment:
#   CLUSTERF_PKG_COMPRESSION=fast   xz level 1 instead of 6 (~5 s instead of ~40 s a package;
#                                   the tests use it)
#   CLUSTERF_MAINTAINER="Name <address>"   the Maintainer/Packager field
#   CLUSTERF_BUN_TARGET=bun-linux-x64-baseline   compile for CPUs without AVX2 (Bun downloads
#                                   that runtime); default: the running Bun's own target
#   CLUSTERF_PKG_DIST=DIR           write the packages there instead of dist/ (the tests do)
#   SOURCE_DATE_EPOCH               timestamps of the packaged files (default: the last commit)
set -euo pipefail
umask 022
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
DIST=${CLUSTERF_PKG_DIST:-$ROOT/dist}
mkdir -p "$DIST"; DIST=$(cd "$DIST" && pwd)
BUN=$ROOT/node_modules/.bin/bun
PKG=$ROOT/packaging
started=$(date +%s)
log() { echo "package: $*" >&2; }
die() { echo "package: error: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
missing=()
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$BUN" ] || npm ci --no-audit --no-fund >/dev/null

# --- version, dates, names -----------------------------------------------------------------
VERSION=$("$BUN" -e 'console.log(require("./package.json").version)')
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || die "package.json version \"$VERSION\" is not x.y.z[-pre][+build]"
# A semver pre-release (1.0.0-rc.1) must sort before its release: "~" in both Debian and RPM.
PKG_VERSION=${VERSION/-/\~}
PKG_VERSION=${PKG_VERSION//-/.}
RPM_RELEASE=1
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
MAINTAINER=${CLUSTERF_MAINTAINER:-clusterf maintainers <clusterf@example.org>}
case "${CLUSTERF_PKG_COMPRESSION:-}" in
  fast) XZ_LEVEL=1 ;;
  "") XZ_LEVEL=6 ;;
  *) die "CLUSTERF_PKG_COMPRESSION must be fast or unset" ;;
esac
DEB_OUT=$DIST/clusterf_${PKG_VERSION}_amd64.deb
RPM_OUT=$DIST/clusterf-${PKG_VERSION}-${RPM_RELEASE}.x86_64.rpm
WORK=$DIST/work
rm -rf "$WORK" "$DEB_OUT" "$RPM_OUT"
mkdir -p "$WORK"

# --- the executable ------------------------------------------------------------------------
"$BUN" packaging/build.ts "$WORK/build"
BIN=$WORK/build/clusterf
mapfile -t COMMANDS <"$WORK/build/commands"
[ ${#COMMANDS[@]} -gt 0 ] || die "the build contains no daemon"
# Each command must start from the compiled binary under its own name.
mkdir -p "$WORK/try"
for cmd in "${COMMANDS[@]}"; do
  ln -sf ../build/clusterf "$WORK/try/$cmd"
  "$WORK/try/$cmd" -help >"$WORK/$cmd.help" 2>&1 || die "$cmd -help failed: $(head -3 "$WORK/$cmd.help")"
  grep -q "^Usage: $cmd " "$WORK/$cmd.help" || die "$cmd -help printed no usage line"
done
UNITS=$(printf '%s.service ' "${COMMANDS[@]}"); UNITS=${UNITS% }
DISABLED_UNITS=$(printf '%s.service ' "${COMMANDS[@]}" | sed 's/clusterf-ipvs.service //'); DISABLED_UNITS=${DISABLED_UNITS% }
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
for cmd in "${COMMANDS[@]}"; do
  "$BUN" packaging/manpage.ts "$cmd" "$VERSION" "$DATE" <"$WORK/$cmd.help" >"$WORK/$cmd.8"
  gzip -9n <"$WORK/$cmd.8" >"$WORK/$cmd.8.gz"
done
# Licenses of what is bundled into the binary.
# (RPM License: every distinct license expression, joined with AND.)
LICENSES=$( (echo MIT; cut -d' ' -f3- "$WORK/build/bundled-packages") | sort -u |
  awk '{ if (index($0, " ")) $0 = "(" $0 ")"; printf "%s%s", (NR > 1 ? " AND " : ""), $0 }')
# Years of the project's commits (for the copyright notice).
first=$(git log --max-parents=0 --format=%ad --date=format:%Y 2>/dev/null | sort | sed -n 1p || true)
YEARS=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y); [ -z "$first" ] || [ "$first" = "$YEARS" ] || YEARS="$first-$YEARS"
# copyright FILE: packaging/copyright with the bundled npm packages listed in its header.
copyright() {
  { sed '/@BUNDLED@/,$d' "$PKG/copyright"
    sed 's/^/   /' "$WORK/build/bundled-packages"
    sed '1,/@BUNDLED@/d' "$PKG/copyright"; } | sed "s|@YEARS@|$YEARS|" >"$1"
  chmod 0644 "$1"
}

# --- staging -------------------------------------------------------------------------------
# stage DIR DEFAULTS_DIR UNIT_DIR: the files both packages share, laid out for one of them.
stage() {
  local dir=$1 defaults=$2 unitdir=$3 cmd
  install -D -m 0755 "$BIN" "$dir/usr/lib/clusterf/clusterf"
  install -d -m 0755 "$dir/usr/bin" "$dir$unitdir" "$dir$defaults" "$dir/usr/share/man/man8" \
    "$dir/etc/clusterf/services" "$dir/etc/clusterf/routes" "$dir/usr/share/doc/clusterf"
  for cmd in "${COMMANDS[@]}"; do
    ln -s ../lib/clusterf/clusterf "$dir/usr/bin/$cmd"
    sed "s|@DEFAULTS_DIR@|$defaults|g" "$PKG/systemd/$cmd.service" >"$dir$unitdir/$cmd.service"
    # 0600: the flags file may hold ETCD_PASSWORD.
    install -m 0600 "$PKG/defaults/$cmd" "$dir$defaults/$cmd"
    install -m 0644 "$WORK/$cmd.8.gz" "$dir/usr/share/man/man8/$cmd.8.gz"
  done
  chmod 0644 "$dir$unitdir"/*.service
  install -m 0644 "$PKG/etc/README" "$dir/etc/clusterf/.README"
  cp -r "$ROOT/config.example" "$dir/usr/share/doc/clusterf/examples"
  install -m 0644 "$ROOT/README.md" "$dir/usr/share/doc/clusterf/README.md"
  find "$dir/usr/share/doc/clusterf" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
}

# Every file's time: SOURCE_DATE_EPOCH (same input, same package contents).
clamp_times() { find "$1" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +; }

# --- .deb ----------------------------------------------------------------------------------
DEB=$WORK/deb
stage "$DEB" /etc/default /lib/systemd/system
copyright "$DEB/usr/share/doc/clusterf/copyright"
{
  printf 'clusterf (%s) unstable; urgency=medium\n\n' "$PKG_VERSION"
  printf '  * clusterf %s, built from %s.\n\n' "$VERSION" "$(git describe --always --dirty 2>/dev/null || echo 'a source tree')"
  printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$DEB/usr/share/doc/clusterf/changelog.gz"
gzip -9n "$DEB/usr/share/doc/clusterf/README.md"
install -D -m 0644 "$PKG/deb/lintian-overrides" "$DEB/usr/share/lintian/overrides/clusterf"
install -d -m 0755 "$DEB/DEBIAN"
# The binary's own ELF imports are glibc only (libnl is opened at run time, through bun:ffi, and
# is named in the control file). dpkg-shlibdeps would ask for the build host's glibc (2.34 on
# bookworm, where libpthread and libdl moved into libc); the symbol versions say what it needs.
NOT_GLIBC=$(objdump -p "$BIN" | awk '/NEEDED/ {print $2}' |
  grep -Ev '^(ld-linux-x86-64\.so\.2|lib(c|dl|m|pthread|rt|util|resolv)\.so\.[0-9]+)$' || true)
[ -z "$NOT_GLIBC" ] || die "the binary links more than glibc ($NOT_GLIBC): packaging/deb/control needs those dependencies"
GLIBC=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$GLIBC" ] || die "no glibc symbol versions found in the binary"
SHLIBS="libc6 (>= $GLIBC)"
SIZE=$(du -sk --exclude=DEBIAN "$DEB" | cut -f1)
sed -e "s|@VERSION@|$PKG_VERSION|" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@INSTALLED_SIZE@|$SIZE|" \
  -e "s|@SHLIBS_DEPENDS@|$SHLIBS|" "$PKG/deb/control" >"$DEB/DEBIAN/control"
for s in postinst prerm postrm; do
  sed -e "s|@UNITS@|$UNITS|g" -e "s|@DISABLED_UNITS@|$DISABLED_UNITS|g" "$PKG/deb/$s" >"$DEB/DEBIAN/$s"
  chmod 0755 "$DEB/DEBIAN/$s"
done
{
  for cmd in "${COMMANDS[@]}"; do echo "/etc/default/$cmd"; done
  echo /etc/clusterf/.README
} >"$DEB/DEBIAN/conffiles"
(cd "$DEB" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$DEB/DEBIAN/md5sums"
chmod 0644 "$DEB/DEBIAN/control" "$DEB/DEBIAN/conffiles" "$DEB/DEBIAN/md5sums"
clamp_times "$DEB"
t=$(date +%s)
dpkg-deb --root-owner-group -Zxz -z"$XZ_LEVEL" --build "$DEB" "$DEB_OUT" >/dev/null
log "$(basename "$DEB_OUT") ($(du -m "$DEB_OUT" | cut -f1) MB, $(($(date +%s) - t))s)"

# --- .rpm ----------------------------------------------------------------------------------
RPM=$WORK/rpm
stage "$RPM" /etc/sysconfig /usr/lib/systemd/system
install -d -m 0755 "$RPM/usr/share/licenses/clusterf"
copyright "$RPM/usr/share/licenses/clusterf/copyright"
clamp_times "$RPM"
{
  echo '%defattr(-,root,root,-)'
  echo '%dir /usr/lib/clusterf'
  echo /usr/lib/clusterf/clusterf
  for cmd in "${COMMANDS[@]}"; do
    echo "/usr/bin/$cmd"
    echo "/usr/lib/systemd/system/$cmd.service"
    echo "%config(noreplace) /etc/sysconfig/$cmd"
    echo "/usr/share/man/man8/$cmd.8.gz"
  done
  echo '%dir /etc/clusterf'
  echo '%dir /etc/clusterf/services'
  echo '%dir /etc/clusterf/routes'
  echo '%config /etc/clusterf/.README'
  echo '%doc /usr/share/doc/clusterf'
  echo '%license /usr/share/licenses/clusterf/copyright'
} >"$RPM.files"
sed "s|@UNITS@|$UNITS|g" "$PKG/rpm/clusterf.spec" >"$WORK/clusterf.spec"
t=$(date +%s)
rpmbuild -bb --target x86_64 --quiet \
  --define "_topdir $WORK/rpmbuild" \
  --define "_rpmdir $DIST" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "_binary_payload w${XZ_LEVEL}T.xzdio" \
  --define "use_source_date_epoch_as_buildtime 1" \
  --define "clamp_mtime_to_source_epoch 1" \
  --define "_buildhost clusterf-build" \
  --define "packager $MAINTAINER" \
  --define "clusterf_stage $RPM" \
  --define "clusterf_version $PKG_VERSION" \
  --define "clusterf_release $RPM_RELEASE" \
  --define "clusterf_license $LICENSES" \
  "$WORK/clusterf.spec" >/dev/null 2> >(grep -v -e '^warning: Could not canonicalize hostname' >&2)
[ -f "$RPM_OUT" ] || die "rpmbuild did not write $RPM_OUT"
log "$(basename "$RPM_OUT") ($(du -m "$RPM_OUT" | cut -f1) MB, $(($(date +%s) - t))s)"

rm -rf "$WORK"
log "done in $(($(date +%s) - started))s: $DEB_OUT $RPM_OUT"
echo "$DEB_OUT"
echo "$RPM_OUT"
