#!/usr/bin/env bash
# The test command: set up what is needed, then lint, type-check and test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k config).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup-env.sh"
cd "$ROOT"
echo "== ruff";  .venv/bin/ruff check glimpse_edge tests scripts
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
