#!/usr/bin/env bash
# The main job: set everything up, bring the local stack up, run the whole Dagster graph on it
# (raw data -> profile -> shard key check -> features per shard -> H2O model -> registry), and summarize.
# Scale: TESSERA_DEMO_DAYS daily partitions x TESSERA_DEMO_ROWS_PER_DAY rows (default 30 x 34,000 = 1.02M).
# `stack up` also starts the precomputing scorer; after the graph promoted a model, every entity is scored with it
# (the re-scoring job's pass), so the prediction below is a lookup.
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

# Precomputed predictions: every entity scored with the promoted model (the scorer keeps them current from here;
# with the Dagster daemon up, the rescore_predictions job does this on every promotion and rollback).
if .venv/bin/python -m serving.scorer rescore; then :; else echo "demo: re-scoring failed (no model promoted?)" >&2; fi

# Serving: create an API key (printed once: it is yours to keep), start the prediction service, score one real
# entity with the key, stop the service by PID. Runs only when a model is promoted (the pipeline, when present,
# trains and promotes one before this step).
demo_entity="$(.venv/bin/python - <<'PY' 2>/dev/null || true
import psycopg
from shardctl.store.registry import ModelRegistry
from shardctl.settings import load_settings

s = load_settings()
model = ModelRegistry(s.catalog_dsn).current(s.model_name) if s.catalog_dsn else None
if model is not None:
    for dsn in s.shard_dsns():
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT entity_id FROM entity_features WHERE feature_set = %s LIMIT 1", (model.feature_set,)
            ).fetchone()
        if row:
            print(row[0])
            break
PY
)"
if [ -n "$demo_entity" ]; then
    demo_key="$(.venv/bin/shardctl keys create "demo-$(date -u +%Y%m%d-%H%M%S)" --scope predict --scope models:read)"
    echo "API key for the prediction service (shown once; the catalog keeps only its hash): $demo_key"
    echo "  e.g. curl -H \"Authorization: Bearer \$KEY\" -H 'content-type: application/json' -d '{\"entity_id\": \"$demo_entity\"}' http://127.0.0.1:8000/v1/predictions"
    demo_port="$(.venv/bin/python -c 'from shardctl.process import free_port; print(free_port())')"
    .venv/bin/python -m serving --port "$demo_port" --workers 1 >/tmp/tessera-serving-demo.log 2>&1 &
    serving_pid=$!
    TESSERA_DEMO_API_KEY="$demo_key" .venv/bin/python - "$demo_port" "$demo_entity" <<'PY' && served=0 || served=$?
import os, sys, time, httpx

port, entity = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
for _ in range(120):
    try:
        if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
auth = {"Authorization": f"Bearer {os.environ['TESSERA_DEMO_API_KEY']}"}  # from the environment, never argv
r = httpx.post(f"{base}/v1/predictions", json={"entity_id": entity}, headers=auth, timeout=10)
print(f"prediction for {entity}: HTTP {r.status_code} {r.text}")
sys.exit(0 if r.status_code == 200 else 1)
PY
    kill "$serving_pid" && wait "$serving_pid" || true
    echo "Prediction service stopped (PID $serving_pid)."
    [ "$served" = 0 ] || { echo "demo: the prediction request failed (log: /tmp/tessera-serving-demo.log)" >&2; exit 1; }
else
    echo "demo: no promoted model with features on the shards after the pipeline ran" >&2
    exit 1
fi

echo
echo "Stack is up (data in ${TESSERA_DATA_DIR:-.tessera}). Dagster UI: .venv/bin/python -m orchestration dev"
echo "Stop it with: .venv/bin/shardctl stack down"
