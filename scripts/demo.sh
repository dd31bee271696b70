#!/usr/bin/env bash
# The demo command: set up what is needed, then run the dev server and an
# agent joined to a demo room. Extra arguments go to `glimpse-edge demo`
# (e.g. --port 9000, --host 0.0.0.0 to let other machines in).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GLIMPSE_EXTRAS="${GLIMPSE_EXTRAS:-dev}" "$ROOT/scripts/setup-env.sh"
exec "$ROOT/.venv/bin/glimpse-edge" demo "$@"
