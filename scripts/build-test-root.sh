#!/usr/bin/env bash
# Build (once) a Debian root for the tests that run the service in one, and cache it:
#
#   sudo scripts/build-test-root.sh [--suite SUITE] [--arch ARCH] [DIR]
#
# The default is the bookworm root of this machine's architecture that
# tests/system/test_systemd_boot.py boots with systemd-nspawn, in
# /var/cache/glimpse-edge-test/bookworm-root. --suite trixie, --arch arm64 (a
# Raspberry Pi OS base, run under qemu-user through binfmt_misc:
# tests/system/test_arm64.py) build others, by default in
# /var/cache/glimpse-edge-test/[ARCH-]SUITE-root (no prefix for this machine's arch).
#
# Prints DIR. A root that is already built (its stamp matches this script's suite,
# architecture and package list) is reused as is; concurrent callers wait on a
# lock and the root appears atomically (built beside DIR, then renamed), so a
# killed build leaves no half root. Remove DIR to rebuild. Needs root, debootstrap
# and a Debian mirror (GLIMPSE_TEST_MIRROR, default http://deb.debian.org/debian);
# arm64 on another machine also needs qemu-user-static and binfmt-support: the
# script mounts binfmt_misc and enables qemu's handler when they are not (exit
# status 3 when that cannot be done: this host cannot run arm64 programs), and
# exports QEMU_CPU=cortex-a72 (a Raspberry Pi 4's core) for what runs in the root;
# run the root's programs with it too (see below, where it is set).
#
# The root holds systemd and dbus (to boot) and everything scripts/provision.sh
# installs with apt, so provisioning inside it needs PyPI but no apt. The tests
# never modify DIR: every test works on a copy.
set -euo pipefail

SUITE=bookworm
HOST_ARCH=$(dpkg --print-architecture)
ARCH=$HOST_ARCH
DIR=
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) SUITE=${2:?--suite needs a value}; shift ;;
    --arch) ARCH=${2:?--arch needs a value}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-test-root: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) DIR=$1 ;;
  esac
  shift
done
if [ -z "$DIR" ]; then
  prefix=
  [ "$ARCH" = "$HOST_ARCH" ] || prefix="$ARCH-"
  DIR=/var/cache/glimpse-edge-test/$prefix$SUITE-root
fi
MIRROR=${GLIMPSE_TEST_MIRROR:-http://deb.debian.org/debian}
# systemd, systemd-sysv, dbus: to boot it (systemd as PID 1, systemctl, journal)
# procps: /bin/kill (ExecReload), ps
# the rest: provision.sh's APT_PACKAGES (python3 python3-venv python3-dev gcc
#   libasound2-dev alsa-utils ca-certificates)
PACKAGES=(systemd systemd-sysv dbus procps
          python3 python3-venv python3-dev gcc libasound2-dev alsa-utils ca-certificates)
STAMP="$SUITE ${PACKAGES[*]}"
# (the stamp of a native root stays what it was before --arch existed: no rebuild)
[ "$ARCH" = "$HOST_ARCH" ] || STAMP="$ARCH $STAMP"

[ "$(id -u)" = 0 ] || { echo "build-test-root: run as root" >&2; exit 2; }
die() { echo "build-test-root: $*" >&2; exit 2; }
# exit status 3: this host cannot run ARCH's programs (the tests skip on it)
cannot_emulate() { echo "build-test-root: cannot run $ARCH programs here: $*" >&2; exit 3; }
command -v debootstrap >/dev/null ||
  die "debootstrap is not installed (apt-get install debootstrap)"

# A foreign architecture runs under qemu-user, through binfmt_misc: debootstrap's
# second stage here, and everything the tests run in the root. Checked (and set up
# when it is not: a host without systemd has no binfmt_misc mounted) on every call,
# also when the root is cached, since that is where the tests learn it works.
ensure_binfmt() {
  local qemu=$1 handler=/proc/sys/fs/binfmt_misc/qemu-$1 conf
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
      cannot_emulate "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc"
  fi
  if [ "$(head -n1 "$handler" 2>/dev/null)" != enabled ]; then
    if [ -f "/usr/share/binfmts/qemu-$qemu" ] && command -v update-binfmts >/dev/null; then
      update-binfmts --enable "qemu-$qemu" >&2 ||
        cannot_emulate "update-binfmts --enable qemu-$qemu failed"
    else  # systemd-binfmt's format (newer qemu packages), where update-binfmts is not
      conf=/usr/lib/binfmt.d/qemu-$qemu.conf
      [ -f "$conf" ] ||
        cannot_emulate "no qemu handler: apt-get install qemu-user-static binfmt-support"
      grep -v '^#' "$conf" > /proc/sys/fs/binfmt_misc/register ||
        cannot_emulate "cannot register $conf with binfmt_misc"
    fi
  fi
  [ "$(head -n1 "$handler" 2>/dev/null)" = enabled ] ||
    cannot_emulate "binfmt_misc: qemu-$qemu is not enabled"
  # F (fix binary): the kernel holds the interpreter open, so it works inside a root
  # that has no qemu of its own (and no copy of it has to be put there)
  grep -q '^flags: .*F' "$handler" || cannot_emulate \
    "binfmt_misc: qemu-$qemu is registered without the F flag ($(grep '^flags' "$handler"))"
}
if [ "$ARCH" != "$HOST_ARCH" ]; then
  case "$ARCH" in
    arm64)
      ensure_binfmt aarch64
      # qemu's default CPU ("max") has pointer authentication, which qemu 7.2 emulates
      # very slowly, and trixie's binaries use it (branch protection): a Pi 4's core has
      # none (those instructions are NOPs there, as now here): 10-30 times faster.
      export QEMU_CPU=${QEMU_CPU:-cortex-a72} ;;
    *) die "--arch $ARCH: this machine's own architecture or arm64" ;;
  esac
fi

parent=$(dirname "$DIR")
mkdir -p "$parent"
exec 9>"$DIR.lock"
flock 9
if [ -f "$DIR/.glimpse-edge-test-root" ] && [ "$(cat "$DIR/.glimpse-edge-test-root")" = "$STAMP" ]; then
  echo "$DIR"
  exit 0
fi

tmp="$DIR.building"
rm -rf --one-file-system "$tmp"   # a killed build may have left /proc mounted in it
start=$(date +%s)
echo "build-test-root: debootstrap $SUITE ($ARCH) into $tmp" >&2
debootstrap --variant=minbase --arch="$ARCH" --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  "$SUITE" "$tmp" "$MIRROR" >&2
# A container, not a machine: no consoles to log in on, nothing to fetch at boot.
chroot "$tmp" systemctl mask --quiet \
  getty@.service console-getty.service serial-getty@.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >&2 || true
rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*_Packages
echo "glimpse-edge-test" > "$tmp/etc/hostname"
# systemd-nspawn sets up machine-id for an empty file; none at all would be "first boot".
: > "$tmp/etc/machine-id"
echo "$STAMP" > "$tmp/.glimpse-edge-test-root"
rm -rf --one-file-system "$DIR"
mv "$tmp" "$DIR"
echo "build-test-root: built in $(( $(date +%s) - start )) s" >&2
echo "$DIR"
