"""Migration building blocks against their baselines, on two local servers (not a test: figures only).

    PYTHONPATH=. .venv/bin/python bench/migrate/bench_copy.py                  # 300k rows, system PG, ~1 min
    PYTHONPATH=. .venv/bin/python bench/migrate/bench_copy.py --rows 1000000 --bin-dir /usr/lib/postgresql/15/bin

Loads ``--rows`` rows in the moved layout on server A, then moves a quarter of the logical shards to B:
- raw COPY: ``COPY (SELECT ... WHERE logical_shard = ANY(...)) TO STDOUT`` streamed into ``COPY ... FROM STDIN``
  on B, the floor for moving those rows between the same two servers;
- the link: publication + slot + subscription until the initial copy is ready (``replication.start``,
  ``wait_synced``), then the catch-up of a burst of 10k updates (``wait_caught_up``);
- verify of the moved logical shards, and cleanup of them on A (DELETE, VACUUM, REINDEX CONCURRENTLY).
Both servers run from one template in a temporary directory and are stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psycopg

from bench.migrate.servers import add_common_options, run_per_version, server_pair
from shardctl.control.migration import replication
from shardctl.control.migration.cleanup import delete_moved_rows
from shardctl.control.migration.table import MovedTable
from shardctl.control.migration.verify import verify
from shardctl.store.hashing import shard_for

MOVING = tuple(range(0, 256, 4))
COLUMNS = "logical_shard, entity_id, feature_set, features, event_ts, version"


def load(dsn: str, table: MovedTable, rows: int) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {table.name} ({COLUMNS}) FROM STDIN") as copy:
            for i in range(rows):
                entity = f"customer-{i}"
                features = json.dumps({"spend": i * 1.5, "visits": i % 97, "tier": f"t{i % 3}", "active": i % 2 == 0})
                copy.write_row((shard_for(entity, 256), entity, "customer_activity_v1", features, "2026-01-01Z", 1))
        conn.execute(f"ANALYZE {table.name}")


def raw_copy(source: str, target: str, table: MovedTable) -> tuple[int, float]:
    """Rows of the moving logical shards streamed A -> B with COPY; (rows, seconds)."""
    start = time.perf_counter()
    rows = 0
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        with (
            src.cursor().copy(
                f"COPY (SELECT {COLUMNS} FROM {table.name} WHERE logical_shard = ANY(%s)) TO STDOUT",
                (list(MOVING),),
            ) as out,
            dst.cursor().copy(f"COPY {table.name} ({COLUMNS}) FROM STDIN") as into,
        ):
            for chunk in out:
                into.write(chunk)
        rows = dst.execute(
            f"SELECT count(*) FROM {table.name} WHERE logical_shard = ANY(%s)", (list(MOVING),)
        ).fetchone()[0]
    return rows, time.perf_counter() - start


def run(bin_dir: Path, rows: int) -> dict:
    table = MovedTable(name="bench_features")
    with server_pair(bin_dir) as (source, target, version):
        for dsn in (source, target):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(table.ddl())
        load(source, table, rows)
        moved, raw_s = raw_copy(source, target, table)
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {table.name}")

        link = replication.Link(replication.link_name(1, 0), source, target, MOVING, table)
        start = time.perf_counter()
        replication.start(link)
        replication.wait_synced(link, timeout=1800)
        link_s = time.perf_counter() - start

        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {table.name} SET version = version + 1 WHERE (logical_shard, entity_id) IN "
                f"(SELECT logical_shard, entity_id FROM {table.name} WHERE logical_shard = ANY(%s) LIMIT 10000)",
                (list(MOVING),),
            )
        start = time.perf_counter()
        replication.wait_caught_up(link)
        catch_up_s = time.perf_counter() - start

        start = time.perf_counter()
        report = verify(source, target, MOVING, table=table, catch_up=lambda: replication.wait_caught_up(link))
        verify_s = time.perf_counter() - start
        teardown = replication.teardown(link)

        start = time.perf_counter()
        cleaned = delete_moved_rows(source, MOVING, table=table)
        cleanup_s = time.perf_counter() - start
    return {
        "version": version,
        "rows": rows,
        "moved_rows": moved,
        "raw_copy_s": round(raw_s, 2),
        "raw_copy_rows_per_s": round(moved / raw_s),
        "link_copy_s": round(link_s, 2),
        "link_copy_rows_per_s": round(moved / link_s),
        "link_vs_raw": round(link_s / raw_s, 2),
        "catch_up_10k_updates_s": round(catch_up_s, 2),
        "verify_s": round(verify_s, 2),
        "verify_clean": report.clean,
        "teardown_complete": teardown.complete,
        "cleanup_s": round(cleanup_s, 2),
        "cleanup_deleted": cleaned.deleted_rows,
        "source_bytes_before_after": [cleaned.before.total_bytes, cleaned.after.total_bytes],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    add_common_options(parser)
    args = parser.parse_args(argv)
    return run_per_version(args, lambda bin_dir: run(bin_dir, args.rows))


if __name__ == "__main__":
    sys.exit(main())
