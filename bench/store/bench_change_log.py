"""What the change log (``shardctl/store/changes.py``) costs bulk writes: the writer's fresh-entity path (one
binary COPY into the table) and its merge path (COPY into staging, INSERT ... ON CONFLICT DO UPDATE), with the
statement triggers enabled and disabled, alternating, on one shard of a private stack.

    PYTHONPATH=. .venv/bin/python bench/store/bench_change_log.py [--rows 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.store.bench_store import make_rows
from shardctl.process import free_port
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.changes import CHANGE_TABLE


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack = Stack(Path(tempfile.mkdtemp(prefix="tessera-bench-changelog-")))
    out: dict[str, list[float]] = {}
    try:
        stack.up(shards=1, base_port=free_port(block=10))
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        dsn = settings.shard_dsns()[0]
        fresh, changed = make_rows(args.rows, 0), make_rows(args.rows, 1)
        with FeatureStore.open(settings) as store, psycopg.connect(dsn, autocommit=True) as conn:
            for run in range(args.runs):
                for logged in (True, False) if run % 2 == 0 else (False, True):
                    conn.execute(f"ALTER TABLE entity_features {'ENABLE' if logged else 'DISABLE'} TRIGGER USER")
                    conn.execute("TRUNCATE entity_features")
                    conn.execute(f"TRUNCATE {CHANGE_TABLE}")
                    conn.execute("VACUUM ANALYZE entity_features")
                    tag = "logged" if logged else "not logged"
                    for path, rows in (("fresh (COPY)", fresh), ("merge (update all)", changed)):
                        started = time.perf_counter()
                        store.write("bench_changes_v1", rows)
                        seconds = time.perf_counter() - started
                        out.setdefault(f"{path}, {tag}", []).append(seconds)
                        print(f"  run {run + 1} {path:>20} {tag:>10}: {seconds:6.2f} s", flush=True)
                    log_rows, log_bytes = conn.execute(
                        f"SELECT count(*), pg_total_relation_size('{CHANGE_TABLE}') FROM {CHANGE_TABLE}"
                    ).fetchone()
                    if logged:
                        print(f"    change log after the run: {log_rows} rows, {log_bytes / 1e6:.1f} MB", flush=True)
        print(f"\n{args.rows} rows, median of {args.runs} (min-max):")
        for name, secs in out.items():
            print(f"  {name:>32}: {statistics.median(secs):6.2f} s ({min(secs):.2f}-{max(secs):.2f})")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        stack.down(purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
