#!/usr/bin/env bash
# Build (once) the Debian bookworm root that tests/test_systemd_boot.py boots with
# systemd-nspawn, and cache it:
#
#   sudo scripts/build-test-root.sh [DIR]      default /var/cache/glimpse-edge-test/bookworm-root
#
# Prints DIR. A root that is already built (its stamp matches this script's package
# list) is reused as is; concurrent callers wait on a lock and the root appears
# atomically (built beside DIR, then renamed), so a killed build leaves no half root.
# Remove DIR to rebuild. Needs root, debootstrap and a Debian mirror
# (GLIMPSE_TEST_MIRROR, default http://deb.debian.org/debian).
#
# The root holds systemd and dbus (to boot) and everything scripts/provision.sh
# installs with apt, so provisioning inside it needs PyPI but no apt. The tests
# never modify DIR: every test boots a copy.
set -euo pipefail

DIR=${1:-/var/cache/glimpse-edge-test/bookworm-root}
SUITE=bookworm
MIRROR=${GLIMPSE_TEST_MIRROR:-http://deb.debian.org/debian}
# systemd, systemd-sysv, dbus: to boot it (systemd as PID 1, systemctl, journal)
# procps: /bin/kill (ExecReload), ps
# the rest: provision.sh's APT_PACKAGES (python3 python3-venv python3-dev gcc
#   libasound2-dev alsa-utils ca-certificates)
PACKAGES=(systemd systemd-sysv dbus procps
          python3 python3-venv python3-dev gcc libasound2-dev alsa-utils ca-certificates)
STAMP="$SUITE ${PACKAGES[*]}"

[ "$(id -u)" = 0 ] || { echo "build-test-root: run as root" >&2; exit 2; }
command -v debootstrap >/dev/null || {
  echo "build-test-root: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }

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
echo "build-test-root: debootstrap $SUITE into $tmp" >&2
debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
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
