#!/usr/bin/env bash
# Set everything up and run every check: lint, then the tests (which start their own real servers on
# ports of their own and stop them by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --with-fallbacks  # the fallback servers too: a test runs the stack on them
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/dg check defs  # the Dagster code location loads (orchestration/definitions.py)
# Independent tests in parallel: most of them wait on servers, so 4 workers keep 2 cores busy. Each worker
# starts its own servers on its own ports and data dirs; tests/scheduling.py keeps the tests that share an
# expensive session fixture on one worker and hands out the longest units first. TEST_WORKERS=0 runs serially.
.venv/bin/python -m pytest -n "${TEST_WORKERS:-4}" --dist loadgroup --no-loadscope-reorder \
    --durations=25 "$@"  # the slowest tests, to keep the run under its time budget
