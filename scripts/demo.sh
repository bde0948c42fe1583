#!/usr/bin/env bash
# The main job: set everything up, bring the local stack up, run the whole Dagster graph on it
# (raw data -> profile -> shard key check -> features per shard -> H2O model -> registry), and summarize.
# Scale: TESSERA_DEMO_DAYS daily partitions x TESSERA_DEMO_ROWS_PER_DAY rows (default 30 x 34,000 = 1.02M).
# The stack stays up afterwards; stop it with `.venv/bin/shardctl stack down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/shardctl stack up
echo
.venv/bin/python -m orchestration run \
    --days "${TESSERA_DEMO_DAYS:-30}" \
    --rows-per-day "${TESSERA_DEMO_ROWS_PER_DAY:-34000}" \
    --entities "${TESSERA_DEMO_ENTITIES:-50000}"

# --- serving: the prediction service's demo step goes here (serve one prediction from the promoted model) ---

echo
echo "Stack is up (data in ${TESSERA_DATA_DIR:-.tessera}). Dagster UI: .venv/bin/python -m orchestration dev"
echo "Stop it with: .venv/bin/shardctl stack down"
