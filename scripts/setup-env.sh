#!/usr/bin/env bash
# Prepare everything the demo and the tests need, idempotently:
#   - OS packages (only when running as root; otherwise says what is missing)
#   - a virtualenv in .venv with the package installed editable, with extras
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run by hand.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GLIMPSE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${GLIMPSE_EXTRAS:-dev}"

# OS packages the project needs on Debian 12 / Raspberry Pi OS.
#   gcc, python3-dev, libasound2-dev: build pyalsaaudio (no wheels on PyPI)
#   chromium: the browser tier of the tests (Playwright drives Debian's build)
#   alsa-utils: aplay/arecord, for looking at devices by hand
#   systemd, shellcheck: systemd-analyze verify/security on the units, shellcheck
#     on scripts/provision.sh (tests/integration/test_provision.py)
#   debootstrap, systemd-container: a Debian root booted with systemd-nspawn, the
#     service provisioned and supervised for real inside it (tests/system/test_systemd_boot.py)
#   iproute2, nftables, coturn: the network fault tests (tests/system/faults, as root: network
#     namespaces, links cut or lossy via nftables, a real TURN relay the tests start)
#   qemu-user-static, binfmt-support: arm64 (Raspberry Pi) roots built with debootstrap
#     and run under qemu-user through binfmt_misc, the service provisioned and streaming
#     in them (tests/system/test_arm64.py); binfmt-support registers qemu's handler (update-binfmts)
#   libsdl2-2.0-0, libsdl2-ttf-2.0-0, fonts-dejavu-core: the kiosk display (PySDL2 loads the
#     system's SDL2: KMS/DRM, X11, Wayland); xvfb: an X server for its tests (test_display_screen.py)
#   janus, simple-whip-server: a real SFU for the WHIP publisher's tests (Janus's VideoRoom
#     behind Meetecho's WHIP server; tests/support/janus.py starts both with its own config)
APT_PACKAGES=(python3 python3-venv python3-dev gcc libasound2-dev chromium alsa-utils
              systemd shellcheck debootstrap systemd-container iproute2 nftables coturn
              qemu-user-static binfmt-support libsdl2-2.0-0 libsdl2-ttf-2.0-0 fonts-dejavu-core
              xvfb janus simple-whip-server)

# simple-whip-server needs Debian's nodejs; where another Node.js is installed (e.g.
# NodeSource's, which conflicts with Debian's libnode), its files and its node-*
# dependencies are unpacked into this directory instead (dpkg -x) and run with that
# Node.js (tests/support/janus.py looks here, or in GLIMPSE_SWHIP_ROOT).
SWHIP_ROOT="${GLIMPSE_SWHIP_ROOT:-/opt/swhip}"

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    if [ "$pkg" = simple-whip-server ] && [ -f "$SWHIP_ROOT/usr/share/simple-whip-server/src/server.js" ]; then
      continue
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
fi

unpack_swhip() {
  local debs pkgs
  debs="$(mktemp -d)"
  pkgs="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances simple-whip-server 2>/dev/null \
          | grep -E '^(node-|libjs-|simple-whip-server|fonts-font-awesome)' | sort -u)"
  # shellcheck disable=SC2086  # one package name per word
  (cd "$debs" && apt-get download $pkgs >/dev/null 2>&1)
  mkdir -p "$SWHIP_ROOT"
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$SWHIP_ROOT"; done
  rm -rf "$debs"
  echo "setup: simple-whip-server unpacked into $SWHIP_ROOT (the installed Node.js runs it)"
}

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing OS packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      rest=()
      for pkg in "${missing[@]}"; do [ "$pkg" = simple-whip-server ] || rest+=("$pkg"); done
      apt-get install -y -qq --no-install-recommends "${rest[@]}" >/dev/null
      unpack_swhip
    fi
  else
    echo "setup: not root, not installing OS packages: ${missing[*]}" >&2
    echo "setup: run 'sudo apt-get install ${missing[*]}' if the next steps fail" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the project's dependencies changed.
stamp="$VENV/.glimpse-edge-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing glimpse-edge[$EXTRAS] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
  echo "$want" > "$stamp"
fi
