"""What the change log (``shardctl/store/changes.py``) costs bulk writes: the writer's fresh-entity path (one
binary COPY into the table) and its merge path (COPY into staging, INSERT ... ON CONFLICT DO UPDATE), on one
shard of a private stack, in rotating order, under three designs:

- ``none``: no change log at all (the row trigger disabled, the logging function a no-op): the floor;
- ``shipped``: the writer logs its batch (one row per shard), the row trigger present but off in its transactions;
- ``statement trigger``: the design rejected: statement-level triggers with a transition table log every write.

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
from shardctl.store.changes import CHANGE_TABLE, LOG_FUNCTION, change_log_ddl
from shardctl.store.schema import FEATURE_TABLE

_LOG_FUNCTION_SIGNATURE = f"{LOG_FUNCTION}(p_feature_set text, p_entity_ids text[])"
_STATEMENT_TRIGGER = f"""CREATE OR REPLACE FUNCTION bench_log_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {CHANGE_TABLE} (feature_set, entity_ids)
    SELECT feature_set, array_agg(entity_id) FROM bench_changed GROUP BY feature_set;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_insert AFTER INSERT ON entity_features
    REFERENCING NEW TABLE AS bench_changed FOR EACH STATEMENT EXECUTE FUNCTION bench_log_statement();
CREATE TRIGGER bench_update AFTER UPDATE ON entity_features
    REFERENCING NEW TABLE AS bench_changed FOR EACH STATEMENT EXECUTE FUNCTION bench_log_statement()"""


def use_design(conn: psycopg.Connection, design: str) -> None:
    ddl = change_log_ddl(FEATURE_TABLE)
    start = ddl.index(f"CREATE FUNCTION {LOG_FUNCTION}")
    shipped_function = ddl[start : ddl.index("$$;", start) + 2].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    conn.execute("DROP TRIGGER IF EXISTS bench_insert ON entity_features")
    conn.execute("DROP TRIGGER IF EXISTS bench_update ON entity_features")
    conn.execute(f"ALTER TABLE entity_features {'ENABLE' if design == 'shipped' else 'DISABLE'} TRIGGER USER")
    if design == "shipped":
        conn.execute(shipped_function)
    else:
        conn.execute(f"CREATE OR REPLACE FUNCTION {_LOG_FUNCTION_SIGNATURE} RETURNS void LANGUAGE sql AS $$ $$")
    if design == "statement trigger":
        conn.execute(_STATEMENT_TRIGGER)


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
        designs = ("none", "shipped", "statement trigger")
        with FeatureStore.open(settings) as store, psycopg.connect(dsn, autocommit=True) as conn:
            for run in range(args.runs):
                for design in designs[run % 3 :] + designs[: run % 3]:
                    use_design(conn, design)
                    conn.execute("TRUNCATE entity_features")
                    conn.execute(f"TRUNCATE {CHANGE_TABLE}")
                    conn.execute("VACUUM ANALYZE entity_features")
                    for path, rows in (("fresh (COPY)", fresh), ("merge (update all)", changed)):
                        started = time.perf_counter()
                        store.write("bench_changes_v1", rows)
                        seconds = time.perf_counter() - started
                        out.setdefault(f"{path}, {design}", []).append(seconds)
                        print(f"  run {run + 1} {path:>20} {design:>18}: {seconds:6.2f} s", flush=True)
                    log_rows, log_bytes = conn.execute(
                        f"SELECT count(*), pg_total_relation_size('{CHANGE_TABLE}') FROM {CHANGE_TABLE}"
                    ).fetchone()
                    print(f"    change log: {log_rows} rows, {log_bytes / 1e6:.1f} MB", flush=True)
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
