#!/usr/bin/env bash
# The main job: set everything up, bring the local stack up, and report it.
# The stack stays up afterwards; stop it with `.venv/bin/shardctl stack down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/shardctl stack up
echo
echo "Stack is up (data in ${TESSERA_DATA_DIR:-.tessera}). Stop it with: .venv/bin/shardctl stack down"
