#!/usr/bin/env bash
# Install glimpse-edge as a systemd service on Debian 12 / Raspberry Pi OS, idempotently.
#
#   sudo scripts/provision.sh [--ws-url URL] [--api-url URL] [--room ID]
#                             [--token-file FILE | --username NAME --password-file FILE]
#   sudo scripts/provision.sh --uninstall [--purge]
#   scripts/provision.sh --dry-run ...        what would change, changing nothing
#
# Every step prints one line: "<step>: unchanged", "<step>: changed (...)",
# "<step>: would change (...)" with --dry-run, or "<step>: skipped (why)". A second
# run with the same arguments prints "unchanged" for every step.
#
# What it does (docs/deployment.md has the long version):
#   packages   OS packages (apt), picamera2 from the OS on a Raspberry Pi
#   user       system user glimpse-edge, in groups video, audio, render
#   dirs       /etc/glimpse-edge (+ config.d), /var/lib/glimpse-edge, /opt/glimpse-edge
#   venv       /opt/glimpse-edge/venv (--system-site-packages on a Pi, for picamera2)
#   package    glimpse-edge from the checkout this script is in
#   config     /etc/glimpse-edge/config.toml from config/glimpse-edge.toml, only if absent
#   fleet      config.d/00-provision.toml from --ws-url/--api-url/--room/auth flags
#   secrets    /etc/glimpse-edge/token or password: mode 0600, owned by glimpse-edge
#   units      systemd/* into /etc/systemd/system, enabled
#   service    started (or restarted after an upgrade) when systemd is running
#
# --root DIR installs into DIR instead of / (a throwaway root for tests, an image
# being built): no OS packages, and nothing is started.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USER_NAME=glimpse-edge
# video: cameras, codecs and the display's /dev/dri/card*; audio: ALSA; render: the GPU's
# /dev/dri/renderD*. Whether or not [display] is on: a reload can turn it on.
GROUPS_WANTED=(video audio render)
CONF_DIR=/etc/glimpse-edge
STATE_DIR=/var/lib/glimpse-edge
OPT_DIR=/opt/glimpse-edge
VENV=$OPT_DIR/venv
UNIT_DIR=/etc/systemd/system
UNITS=(glimpse-edge.service glimpse-edge-reload.path glimpse-edge-reload.service)
ENABLE=(glimpse-edge.service glimpse-edge-reload.path)
# build deps of pyalsaaudio (no wheels on PyPI), the venv, ALSA tools, CA roots
APT_PACKAGES=(python3 python3-venv python3-dev gcc libasound2-dev alsa-utils ca-certificates)
PI_APT_PACKAGES=(python3-picamera2 python3-libcamera)

ROOT=/
DRY_RUN=0
UNINSTALL=0
PURGE=0
PACKAGES=1
START=1
PI=auto
PYTHON=
WS_URL='' API_URL='' ROOM='' TOKEN_FILE='' USERNAME='' PASSWORD_FILE=''
FLEET=0

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --ws-url URL          server.ws_url          --api-url URL   server.api_url
  --room ID             room.id                --display-name NAME  room.display_name
  --token-file FILE     copy FILE to /etc/glimpse-edge/token and use it
  --username NAME --password-file FILE
                        log in as NAME; FILE is copied to /etc/glimpse-edge/password
  --uninstall           stop, disable and remove the service and the venv;
                        configuration, secrets and the user are kept
  --purge               with --uninstall: remove those as well
  --dry-run             print what would change; change nothing
  --root DIR            install into DIR instead of /
  --pi / --no-pi        force Raspberry Pi handling (default: detect)
  --python PATH         interpreter for the venv (default /usr/bin/python3)
  --no-packages         do not install OS packages
  --no-start            install and enable, but do not start
EOF
}

die() { echo "provision: $*" >&2; exit 2; }
DISPLAY_NAME=''
while [ $# -gt 0 ]; do
  case "$1" in
    --ws-url) WS_URL=${2:?}; FLEET=1; shift ;;
    --api-url) API_URL=${2:?}; FLEET=1; shift ;;
    --room) ROOM=${2:?}; FLEET=1; shift ;;
    --display-name) DISPLAY_NAME=${2:?}; FLEET=1; shift ;;
    --token-file) TOKEN_FILE=${2:?}; FLEET=1; shift ;;
    --username) USERNAME=${2:?}; FLEET=1; shift ;;
    --password-file) PASSWORD_FILE=${2:?}; FLEET=1; shift ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --root) ROOT=${2:?}; shift ;;
    --pi) PI=1 ;;
    --no-pi) PI=0 ;;
    --python) PYTHON=${2:?}; shift ;;
    --no-packages) PACKAGES=0 ;;
    --no-start) START=0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
  shift
done

[ -n "$TOKEN_FILE" ] && [ -n "$USERNAME$PASSWORD_FILE" ] &&
  die "use --token-file, or --username with --password-file, not both"
[ -n "$USERNAME" ] && [ -z "$PASSWORD_FILE" ] && die "--username needs --password-file"
[ -n "$PASSWORD_FILE" ] && [ -z "$USERNAME" ] && die "--password-file needs --username"
for f in "$TOKEN_FILE" "$PASSWORD_FILE"; do
  [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge goes with --uninstall"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}   # prefix for paths on disk; "" for the real root
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (or try --dry-run)"
fi

# systemd is running the machine we install into: only then start/stop/reload.
SYSTEMD_LIVE=0
if [ -z "$R" ] && [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  SYSTEMD_LIVE=1
fi
if [ "$PI" = auto ]; then
  PI=0
  if grep -qs "Raspberry Pi" /proc/device-tree/model; then PI=1; fi
fi
if [ -z "$PYTHON" ]; then
  PYTHON=/usr/bin/python3
  [ -x "$PYTHON" ] || PYTHON=$(command -v python3)
fi

# -- reporting and acting ------------------------------------------------------

CHANGES=0
report() {  # report STEP unchanged | report STEP changed WHAT | report STEP skipped WHY
  local step=$1 what=$2; shift 2
  case "$what" in
    unchanged) printf '%-9s unchanged\n' "$step:" ;;
    skipped) printf '%-9s skipped (%s)\n' "$step:" "$*" ;;
    changed)
      CHANGES=$((CHANGES + 1))
      if [ "$DRY_RUN" = 1 ]; then
        printf '%-9s would change (%s)\n' "$step:" "$*"
      else
        printf '%-9s changed (%s)\n' "$step:" "$*"
      fi ;;
  esac
}

# Run a command unless --dry-run; its output goes to stderr, one line per step on stdout.
act() {
  if [ "$DRY_RUN" = 1 ]; then
    return 0
  fi
  "$@" >&2
}

uid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/passwd" 2>/dev/null; }
gid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/group" 2>/dev/null; }

# owner:group mode of a path, numerically, or "" if missing
meta() { stat -c '%u:%g %a' "$1" 2>/dev/null || true; }

# ensure_dir STEP-LIST-VAR PATH OWNER GROUP MODE
ensure_dir() {
  local path=$1 owner=$2 group=$3 mode=$4 uid gid
  uid=$(uid_of "$owner"); gid=$(gid_of "$group")
  if [ ! -d "$R$path" ]; then
    act install -d -o "${uid:-0}" -g "${gid:-0}" -m "$mode" "$R$path"
    DIR_CHANGES+=("created $path")
  elif [ "$(meta "$R$path")" != "${uid:-0}:${gid:-0} $mode" ]; then
    act chown "${uid:-0}:${gid:-0}" "$R$path"
    act chmod "$mode" "$R$path"
    DIR_CHANGES+=("fixed owner/mode of $path")
  fi
}

# install_file SRC DEST OWNER GROUP MODE: copy when content or metadata differ.
# Sets FILE_CHANGE to a description, or "" when the file was already right.
install_file() {
  local src=$1 dest=$2 owner=$3 group=$4 mode=$5 uid gid
  uid=$(uid_of "$owner"); gid=$(gid_of "$group")
  FILE_CHANGE=
  if [ ! -f "$R$dest" ]; then
    FILE_CHANGE="created $dest"
  elif ! cmp -s "$src" "$R$dest"; then
    FILE_CHANGE="updated $dest"
  elif [ "$(meta "$R$dest")" != "${uid:-0}:${gid:-0} $mode" ]; then
    FILE_CHANGE="fixed owner/mode of $dest"
  else
    return 0
  fi
  act install -o "${uid:-0}" -g "${gid:-0}" -m "$mode" "$src" "$R$dest"
}

systemctl_root() {
  if [ -z "$R" ]; then systemctl "$@"; else systemctl --root="$ROOT" "$@"; fi
}

# -- install steps ---------------------------------------------------------------

step_packages() {
  if [ "$PACKAGES" = 0 ]; then report packages skipped "--no-packages"; return; fi
  if [ -n "$R" ]; then report packages skipped "--root: install OS packages in the image"; return; fi
  if ! command -v dpkg-query >/dev/null; then report packages skipped "no dpkg: not Debian"; return; fi
  local wanted=("${APT_PACKAGES[@]}") missing=() pkg
  [ "$PI" = 1 ] && wanted+=("${PI_APT_PACKAGES[@]}")
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" = 0 ]; then report packages unchanged; return; fi
  act env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  act env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
  report packages changed "installed ${missing[*]}"
}

step_user() {
  local done_=() group
  local rootopt=()
  [ -n "$R" ] && rootopt=(--root "$ROOT")
  for group in "${GROUPS_WANTED[@]}"; do
    if [ -z "$(gid_of "$group")" ]; then
      act groupadd "${rootopt[@]}" --system "$group"
      done_+=("group $group")
    fi
  done
  if [ -z "$(uid_of "$USER_NAME")" ]; then
    act useradd "${rootopt[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "glimpse-edge camera agent" \
      --groups "$(IFS=,; echo "${GROUPS_WANTED[*]}")" "$USER_NAME"
    done_+=("user $USER_NAME")
  else
    local missing=()
    for group in "${GROUPS_WANTED[@]}"; do
      awk -F: -v g="$group" -v u="$USER_NAME" \
        '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 }
         END { exit !f }' "$R/etc/group" || missing+=("$group")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
      act usermod "${rootopt[@]}" --append --groups "$(IFS=,; echo "${missing[*]}")" "$USER_NAME"
      done_+=("$USER_NAME joins ${missing[*]}")
    fi
  fi
  if [ "${#done_[@]}" = 0 ]; then report user unchanged; else report user changed "${done_[*]}"; fi
}

step_dirs() {
  DIR_CHANGES=()
  # the service's user reads the configuration through its group; root owns it
  ensure_dir "$CONF_DIR" root "$USER_NAME" 750
  ensure_dir "$CONF_DIR/config.d" root "$USER_NAME" 750
  ensure_dir "$STATE_DIR" "$USER_NAME" "$USER_NAME" 700
  ensure_dir "$OPT_DIR" root root 755
  ensure_dir "$UNIT_DIR" root root 755
  if [ "${#DIR_CHANGES[@]}" = 0 ]; then report dirs unchanged
  else report dirs changed "$(IFS=';'; echo "${DIR_CHANGES[*]}")"; fi
}

step_venv() {
  local want_site=false have
  [ "$PI" = 1 ] && want_site=true
  if [ -x "$R$VENV/bin/python" ]; then
    have=$(awk -F' = ' '$1 == "include-system-site-packages" { print $2 }' "$R$VENV/pyvenv.cfg")
    if [ "$have" = "$want_site" ]; then report venv unchanged; return; fi
    act rm -rf "$R$VENV"
  fi
  local args=()
  [ "$PI" = 1 ] && args+=(--system-site-packages)
  act "$PYTHON" -m venv "${args[@]}" "$R$VENV"
  report venv changed "created $VENV$([ "$PI" = 1 ] && echo ' with system site packages')"
}

# What is installed is identified by a hash of the package's sources and the
# extras: equal means unchanged, so a second run does not reinstall.
source_stamp() {
  (cd "$SRC" && find pyproject.toml glimpse_edge -type f ! -path '*/__pycache__/*' \
     ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
    sha256sum | cut -d' ' -f1
}

step_package() {
  local extras=alsa stamp_file="$R$VENV/.glimpse-edge-source" want
  want="$(source_stamp) [$extras]"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ] &&
     [ -x "$R$VENV/bin/glimpse-edge" ]; then
    report package unchanged; return
  fi
  # a plain (not editable) install: the service must not depend on this checkout
  act "$R$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location "${SRC}[${extras}]"
  if [ "$DRY_RUN" = 0 ]; then echo "$want" > "$stamp_file"; fi
  PACKAGE_CHANGED=1
  report package changed "installed glimpse-edge from $SRC"
}

step_config() {
  if [ -f "$R$CONF_DIR/config.toml" ]; then
    # never overwritten: it is the operator's; only its owner and mode are kept right
    local uid gid
    gid=$(gid_of "$USER_NAME")
    if [ "$(meta "$R$CONF_DIR/config.toml")" != "0:${gid:-0} 640" ]; then
      act chown "0:${gid:-0}" "$R$CONF_DIR/config.toml"
      act chmod 640 "$R$CONF_DIR/config.toml"
      report config changed "fixed owner/mode of $CONF_DIR/config.toml"
    else
      report config unchanged
    fi
    return
  fi
  install_file "$SRC/config/glimpse-edge.toml" "$CONF_DIR/config.toml" root "$USER_NAME" 640
  report config changed "$FILE_CHANGE from config/glimpse-edge.toml"
}

toml_string() {  # a TOML basic string
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# Fleet settings go into a drop-in that this script owns (and rewrites), so
# config.toml stays the operator's and a re-run with other flags just works.
step_fleet() {
  local dropin="$CONF_DIR/config.d/00-provision.toml" tmp
  if [ "$FLEET" = 0 ]; then
    if [ -f "$R$dropin" ]; then report fleet unchanged
    else report fleet skipped "no --ws-url/--api-url/--room/auth flags"; fi
    return
  fi
  tmp=$(mktemp)
  {
    echo "# Written by scripts/provision.sh from its command line; a re-run rewrites it."
    echo "# Settings here override config.toml; later drop-ins override this one."
    if [ -n "$WS_URL$API_URL" ]; then
      echo "[server]"
      [ -n "$WS_URL" ] && echo "ws_url = $(toml_string "$WS_URL")"
      [ -n "$API_URL" ] && echo "api_url = $(toml_string "$API_URL")"
    fi
    if [ -n "$ROOM$DISPLAY_NAME" ]; then
      echo "[room]"
      [ -n "$ROOM" ] && echo "id = $(toml_string "$ROOM")"
      [ -n "$DISPLAY_NAME" ] && echo "display_name = $(toml_string "$DISPLAY_NAME")"
    fi
    if [ -n "$TOKEN_FILE" ]; then
      printf '[auth]\ntoken_file = "%s/token"\nusername = ""\npassword_file = ""\n' "$CONF_DIR"
    elif [ -n "$USERNAME" ]; then
      printf '[auth]\ntoken_file = ""\nusername = %s\npassword_file = "%s/password"\n' \
        "$(toml_string "$USERNAME")" "$CONF_DIR"
    fi
  } > "$tmp"
  install_file "$tmp" "$dropin" root "$USER_NAME" 640
  rm -f "$tmp"
  if [ -z "$FILE_CHANGE" ]; then report fleet unchanged; else report fleet changed "$FILE_CHANGE"; fi
}

step_secrets() {
  local changes=() src dest
  if [ -n "$TOKEN_FILE" ]; then src=$TOKEN_FILE dest=$CONF_DIR/token
  elif [ -n "$PASSWORD_FILE" ]; then src=$PASSWORD_FILE dest=$CONF_DIR/password
  else
    report secrets skipped "no --token-file/--password-file"; return
  fi
  install_file "$src" "$dest" "$USER_NAME" "$USER_NAME" 600
  [ -n "$FILE_CHANGE" ] && changes+=("$FILE_CHANGE")
  if [ "${#changes[@]}" = 0 ]; then report secrets unchanged
  else report secrets changed "${changes[*]} (0600, owner $USER_NAME)"; fi
}

step_units() {
  local changes=() unit
  UNITS_CHANGED=0
  for unit in "${UNITS[@]}"; do
    install_file "$SRC/systemd/$unit" "$UNIT_DIR/$unit" root root 644
    [ -n "$FILE_CHANGE" ] && changes+=("$FILE_CHANGE")
  done
  if [ "${#changes[@]}" -gt 0 ]; then
    UNITS_CHANGED=1
    [ "$SYSTEMD_LIVE" = 1 ] && act systemctl daemon-reload
  fi
  local disabled=()
  for unit in "${ENABLE[@]}"; do
    if [ "$DRY_RUN" = 1 ] && [ ! -f "$R$UNIT_DIR/$unit" ]; then disabled+=("$unit"); continue; fi
    systemctl_root is-enabled --quiet "$unit" 2>/dev/null || disabled+=("$unit")
  done
  if [ "${#disabled[@]}" -gt 0 ]; then
    act systemctl_root enable --quiet "${disabled[@]}"
    changes+=("enabled ${disabled[*]}")
  fi
  if [ "${#changes[@]}" = 0 ]; then report units unchanged
  else report units changed "$(IFS=';'; echo "${changes[*]}")"; fi
}

config_ok() {  # the configuration validates (as the service will see it)
  [ -x "$VENV/bin/glimpse-edge" ] && "$VENV/bin/glimpse-edge" check-config \
    "$CONF_DIR/config.toml" >/dev/null 2>&1
}

step_service() {
  if [ -n "$R" ]; then report service skipped "--root: nothing is started"; return; fi
  if [ "$SYSTEMD_LIVE" = 0 ]; then
    report service skipped "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null)); start it on the device with: systemctl start glimpse-edge"
    return
  fi
  if [ "$START" = 0 ]; then report service skipped "--no-start"; return; fi
  if [ "$DRY_RUN" = 0 ] && ! config_ok; then
    report service skipped "configuration incomplete: glimpse-edge check-config $CONF_DIR/config.toml says what to fix; the service starts once the file is right"
    return
  fi
  if ! systemctl is-active --quiet glimpse-edge.service; then
    act systemctl start glimpse-edge.service glimpse-edge-reload.path
    report service changed "started"
  elif [ "${PACKAGE_CHANGED:-0}" = 1 ] || [ "$UNITS_CHANGED" = 1 ]; then
    act systemctl restart glimpse-edge.service
    report service changed "restarted on the new version"
  else
    systemctl is-active --quiet glimpse-edge-reload.path || act systemctl start glimpse-edge-reload.path
    report service unchanged
  fi
}

# -- uninstall -------------------------------------------------------------------

step_remove_units() {
  local changes=() unit
  if [ "$SYSTEMD_LIVE" = 1 ]; then
    for unit in "${ENABLE[@]}"; do
      if systemctl is-active --quiet "$unit"; then
        act systemctl stop "$unit"; changes+=("stopped $unit")
      fi
    done
  fi
  for unit in "${ENABLE[@]}"; do
    if [ -f "$R$UNIT_DIR/$unit" ] && systemctl_root is-enabled --quiet "$unit" 2>/dev/null; then
      act systemctl_root disable --quiet "$unit"; changes+=("disabled $unit")
    fi
  done
  for unit in "${UNITS[@]}"; do
    if [ -e "$R$UNIT_DIR/$unit" ]; then
      act rm -f "$R$UNIT_DIR/$unit"; changes+=("removed $UNIT_DIR/$unit")
    fi
  done
  if [ "${#changes[@]}" -gt 0 ] && [ "$SYSTEMD_LIVE" = 1 ]; then
    act systemctl daemon-reload
    act systemctl reset-failed glimpse-edge.service 2>/dev/null || true
  fi
  if [ "${#changes[@]}" = 0 ]; then report units unchanged
  else report units changed "$(IFS=';'; echo "${changes[*]}")"; fi
}

step_remove_path() {  # step path what
  if [ -e "$R$2" ]; then act rm -rf "$R$2"; report "$1" changed "removed $2 $3"
  else report "$1" unchanged; fi
}

step_remove_user() {
  local rootopt=() changes=()
  [ -n "$R" ] && rootopt=(--root "$ROOT")
  if [ -n "$(uid_of "$USER_NAME")" ]; then
    act userdel "${rootopt[@]}" "$USER_NAME"; changes+=("user $USER_NAME")
  fi
  # userdel removes the user's own group only where login.defs says so
  if [ -n "$(gid_of "$USER_NAME")" ]; then
    if [ "$DRY_RUN" = 1 ] || [ -n "$(gid_of "$USER_NAME")" ]; then
      act groupdel "${rootopt[@]}" "$USER_NAME"
      changes+=("group $USER_NAME")
    fi
  fi
  if [ "${#changes[@]}" = 0 ]; then report user unchanged
  else report user changed "removed ${changes[*]}"; fi
}

# -- main ------------------------------------------------------------------------

if [ "$DRY_RUN" = 1 ]; then echo "provision: dry run: nothing will be changed"; fi
if [ "$UNINSTALL" = 1 ]; then
  step_remove_units
  step_remove_path venv "$OPT_DIR" "(the virtualenv)"
  if [ "$PURGE" = 1 ]; then
    step_remove_path config "$CONF_DIR" "(configuration and secrets)"
    step_remove_path state "$STATE_DIR" "(state)"
    step_remove_user
  else
    report config skipped "kept $CONF_DIR (--purge removes it, the state and the user)"
  fi
else
  PACKAGE_CHANGED=0
  step_packages
  step_user
  step_dirs
  step_venv
  step_package
  step_config
  step_fleet
  step_secrets
  step_units
  step_service
fi
if [ "$CHANGES" = 0 ]; then
  echo "provision: nothing to do"
elif [ "$DRY_RUN" = 1 ]; then
  echo "provision: $CHANGES step(s) would change"
else
  echo "provision: $CHANGES step(s) changed"
fi
