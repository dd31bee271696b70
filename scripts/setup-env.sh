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
APT_PACKAGES=(python3 python3-venv python3-dev gcc libasound2-dev chromium alsa-utils
              systemd shellcheck debootstrap systemd-container iproute2 nftables coturn
              qemu-user-static binfmt-support libsdl2-2.0-0 libsdl2-ttf-2.0-0 fonts-dejavu-core
              xvfb)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing OS packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
