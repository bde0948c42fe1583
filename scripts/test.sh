#!/usr/bin/env bash
# Set everything up and run every check: lint, then the tests (which start their own real servers on
# ports of their own and stop them by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --with-fallbacks  # the fallback servers too: a test runs the stack on them
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/dg check defs  # the Dagster code location loads (orchestration/definitions.py)
.venv/bin/python -m pytest --durations=25 "$@"  # the slowest tests, to keep CI under its time budget
