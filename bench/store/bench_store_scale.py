"""The feature store at ten times the demo's data (issue 23, item 3): write and update rates against the database's
own limits, read latency, bloat after full update passes and bytes per row, with the rows streamed in chunks so
the benchmark's own memory stays flat; then the features column's layout (jsonb, jsonb with lz4, typed columns)
compared on the same rows.

    PYTHONPATH=. .venv/bin/python bench/store/bench_store_scale.py                 # 10M rows on 4 servers
    PYTHONPATH=. .venv/bin/python bench/store/bench_store_scale.py --rows 200000   # a quick look

1. Load: every row written fresh through Tessera's writer onto 4 servers, in chunks of ``--chunk`` rows.
   Baseline: raw binary COPY of one server's share (rows / servers) into an indexed twin table on one server (its
   change-log row trigger off: the writer logs changes in one set-based insert per batch instead).
2. Update passes: ``--passes`` full passes through the writer, every value changed. Baseline: the database's own
   merge (binary COPY into an unlogged staging table, then one upsert) of one server's share on the twin.
3. Reads at full size: p50/p99 of 1-id and 100-id gets through the reader, beside a bare query on one server.
4. Bloat and disk: each server's table and index before and after the passes (pgstattuple), bytes per row.
5. Layout: one server's share loaded by binary COPY into the same table three ways (the store's jsonb column,
   that column with lz4 compression and a low TOAST target so it is actually compressed, and one typed column per
   feature): bytes per row, COPY rate and a bare single-id read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import psutil
import psycopg

from bench.store.bench_store import (
    FEATURE_SET,
    T0,
    bloat_database,
    db_merge,
    features,
    percentiles,
    rate,
    raw_copy,
    read_latency,
    shard_stack,
    table_health,
    timed,
    vacuum,
)
from shardctl.store.hashing import logical_shard_for
from shardctl.store.schema import FEATURE_TABLE, TUNED_STORAGE
from shardctl.store.shardmap import ShardMap
from shardctl.store.writer import FeatureRow, FeatureWriter

SERVERS = 4
RESULTS: dict[str, object] = {}
TYPED_COLUMNS = (
    ("spend_30d", "float8"),
    ("spend_90d", "float8"),
    ("visits_30d", "int4"),
    ("visits_90d", "int4"),
    ("tier", "text"),
    ("country", "text"),
    ("churn_score", "float8"),
    ("active", "bool"),
)


def log(message: str) -> None:
    print(message, flush=True)


def row_chunks(first: int, count: int, pass_: int, chunk: int) -> Iterator[list[FeatureRow]]:
    """Entities ``first .. first + count`` in lists of ``chunk`` rows; ``pass_`` changes every value. Only one
    chunk is alive at a time, so 10M rows cost the benchmark a chunk's memory."""
    ts = T0 + timedelta(hours=pass_)
    for start in range(first, first + count, chunk):
        rng = random.Random(f"{pass_}:{start}")
        stop = min(first + count, start + chunk)
        yield [FeatureRow(f"customer-{i:09d}", ts, features(rng)) for i in range(start, stop)]


def streamed(count: int, pass_: int, chunk: int) -> Iterator[FeatureRow]:
    """``row_chunks`` as one stream of rows (still one chunk alive at a time), for the baselines' single COPY."""
    return itertools.chain.from_iterable(row_chunks(0, count, pass_, chunk))


def copy_typed(dsn: str, table: str, rows: Iterable[FeatureRow]) -> None:
    """Binary COPY of ``rows`` into ``table`` with one typed column per feature (the layout comparison's third)."""
    names = ", ".join(name for name, _ in TYPED_COLUMNS)
    sql = f"COPY {table} (logical_shard, entity_id, feature_set, {names}, event_ts) FROM STDIN (FORMAT BINARY)"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(["int4", "text", "text", *(kind for _, kind in TYPED_COLUMNS), "timestamptz"])
        for r in rows:
            values = [r.features[name] for name, _ in TYPED_COLUMNS]
            copy.write_row((logical_shard_for(r.entity_id), r.entity_id, FEATURE_SET, *values, r.event_ts))


def on_disk(dsn: str, table: str = FEATURE_TABLE) -> tuple[int, int]:
    """(bytes of the table with its indexes and TOAST, rows)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {table}")
        size, count = conn.execute(f"SELECT pg_total_relation_size('{table}'), count(*) FROM {table}").fetchone()
    return int(size), int(count)


def bench_load(dsns: list[str], rows: int, chunk: int) -> None:
    log(f"\n== 1. load: {rows:,} new entities x 8 features through the writer onto {len(dsns)} servers ==")
    seconds = 0.0
    peak_rss = 0
    with FeatureWriter(ShardMap(1, tuple(dsns))) as writer:
        for batch in row_chunks(0, rows, 0, chunk):
            report = writer.write(FEATURE_SET, batch)
            assert report.inserted == len(batch), report
            seconds += report.seconds
            peak_rss = max(peak_rss, psutil.Process().memory_info().rss)
    figures = {"writer_rows_s": rate(rows, seconds), "seconds": seconds, "bench_peak_rss_mb": peak_rss / 2**20}
    log(f"Tessera writer, {len(dsns)} servers    {seconds:8.1f} s  {rate(rows, seconds):>10,.0f} rows/s")
    RESULTS["load"] = figures


def bench_baselines(admin_dsn: str, share: int, chunk: int) -> None:
    """Raw COPY and the database's merge of one server's share, on a twin database of server 0."""
    log(f"\n== baselines: one server's share ({share:,} rows) on a twin table ==")
    dsn = bloat_database(admin_dsn, "scale_twin", tuned=True)
    # The limits are the table's own COPY and upsert: bench_store's baselines switch the change log's row trigger
    # off, as the writer does (it replaces the trigger by one set-based insert per batch, shardctl/store/changes.py).
    try:
        raw = timed(lambda: raw_copy(dsn, streamed(share, 0, chunk)))
        vacuum(dsn)
        merge = timed(lambda: db_merge(dsn, streamed(share, 1, chunk)))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("DROP DATABASE scale_twin WITH (FORCE)")
    RESULTS["baselines"] = {"raw_copy_rows_s": rate(share, raw), "db_merge_rows_s": rate(share, merge)}
    log(f"raw binary COPY, 1 server       {raw:8.1f} s  {rate(share, raw):>10,.0f} rows/s  (the write limit)")
    log(f"DB merge (COPY + upsert)        {merge:8.1f} s  {rate(share, merge):>10,.0f} rows/s  (the update baseline)")


def bench_reads(dsns: list[str], rows: int, iterations: int) -> None:
    log(f"\n== 3. reads at {rows:,} rows on {len(dsns)} servers, {iterations:,} gets each ==")
    RESULTS["reads"] = read_latency(
        dsns, lambda rng, size: [f"customer-{i:09d}" for i in rng.sample(range(rows), size)], iterations
    )


def health(dsns: list[str]) -> dict[str, float]:
    """The servers' tables summed: sizes in MB, dead tuples, bytes per live row (table, index and TOAST)."""
    parts = [table_health(dsn) for dsn in dsns]
    total = sum(on_disk(dsn)[0] for dsn in dsns)
    live = sum(p["live_tuples"] for p in parts)
    return {
        "table_mb": sum(p["table_mb"] for p in parts),
        "index_mb": sum(p["index_mb"] for p in parts),
        "dead_tuples": sum(p["dead_tuples"] for p in parts),
        "live_tuples": live,
        "updates": sum(p["updates"] for p in parts),
        "hot_updates": sum(p["hot_updates"] for p in parts),
        "bytes_per_row": total / live if live else 0.0,
    }


def bench_passes(dsns: list[str], rows: int, chunk: int, passes: int) -> None:
    log(f"\n== 2 and 4. {passes} full update passes of {rows:,} rows through the writer; bloat and disk ==")
    before = health(dsns)
    log(
        f"after the load: table {before['table_mb']:,.0f} MB, index {before['index_mb']:,.0f} MB, "
        f"{before['bytes_per_row']:.0f} bytes per row"
    )
    seconds = []
    with FeatureWriter(ShardMap(1, tuple(dsns))) as writer:
        for pass_ in range(1, passes + 1):
            spent = 0.0
            for batch in row_chunks(0, rows, pass_, chunk):
                report = writer.write(FEATURE_SET, batch)
                assert report.updated == len(batch), report
                spent += report.seconds
            seconds.append(spent)
            log(f"pass {pass_}: {spent:8.1f} s  {rate(rows, spent):>10,.0f} rows/s")
    time.sleep(2)
    after = health(dsns)
    hot = 100 * after["hot_updates"] / after["updates"] if after["updates"] else 0.0
    log(
        f"after {passes} passes: table {after['table_mb']:,.0f} MB (x{after['table_mb'] / before['table_mb']:.2f}), "
        f"index {after['index_mb']:,.0f} MB (x{after['index_mb'] / before['index_mb']:.2f}), "
        f"{after['dead_tuples']:,} dead, HOT {hot:.1f} %, {after['bytes_per_row']:.0f} bytes per row"
    )
    RESULTS["passes"] = {
        "pass_seconds": seconds,
        "writer_update_rows_s": [rate(rows, s) for s in seconds],
        "before": before,
        "after": after,
        "hot_pct": hot,
    }


LAYOUTS = {
    "jsonb (the store's)": "",
    "jsonb, lz4, toast_tuple_target=128": (
        "ALTER TABLE {t} ALTER COLUMN features SET COMPRESSION lz4; ALTER TABLE {t} SET (toast_tuple_target = 128)"
    ),
    "typed columns": "ALTER TABLE {t} DROP COLUMN features; "
    + "; ".join(f"ALTER TABLE {{t}} ADD COLUMN {name} {kind}" for name, kind in TYPED_COLUMNS),
}


def bench_layouts(admin_dsn: str, share: int, chunk: int, iterations: int) -> None:
    log(f"\n== 5. layout of the features column: {share:,} rows on one server, binary COPY ==")
    dsn = bloat_database(admin_dsn, "scale_layouts", tuned=True)
    figures = {}
    try:
        for i, (label, ddl) in enumerate(LAYOUTS.items()):
            table = f"layout_{i}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE TABLE {table} (LIKE {FEATURE_TABLE} INCLUDING ALL)")
                conn.execute(f"ALTER TABLE {table} SET ({', '.join(f'{k} = {v}' for k, v in TUNED_STORAGE.items())})")
                for statement in filter(None, ddl.format(t=table).split("; ")):
                    conn.execute(statement)
            rows = streamed(share, 0, chunk)
            started = time.perf_counter()
            if label == "typed columns":
                copy_typed(dsn, table, rows)
            else:
                raw_copy(dsn, rows, table)
            seconds = time.perf_counter() - started
            size, count = on_disk(dsn, table)
            rng = random.Random(11)
            reads = []
            with psycopg.connect(dsn, autocommit=True) as conn:
                sql = f"SELECT * FROM {table} WHERE logical_shard = %s AND entity_id = %s AND feature_set = %s"
                for _ in range(iterations):
                    entity = f"customer-{rng.randrange(share):09d}"
                    started = time.perf_counter()
                    conn.execute(sql, (logical_shard_for(entity), entity, FEATURE_SET)).fetchall()
                    reads.append(time.perf_counter() - started)
            p50, p99 = percentiles(reads)
            figures[label] = {
                "bytes_per_row": size / count,
                "copy_rows_s": rate(share, seconds),
                "read_p50_ms": p50,
                "read_p99_ms": p99,
            }
            log(
                f"{label:<36} {size / count:6.0f} bytes/row  COPY {rate(share, seconds):>9,.0f} rows/s  "
                f"read p50 {p50:.3f} ms p99 {p99:.3f} ms"
            )
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("DROP DATABASE scale_layouts WITH (FORCE)")
    RESULTS["layouts"] = figures


def summary() -> None:
    load, base, passes = RESULTS.get("load"), RESULTS.get("baselines"), RESULTS.get("passes")
    if not (load and base and passes):
        return
    log("\n== ratios ==")
    log(
        f"fresh writes: writer on {SERVERS} servers / raw COPY on 1: "
        f"x{load['writer_rows_s'] / base['raw_copy_rows_s']:.2f}"
    )
    updates = passes["writer_update_rows_s"]
    log(
        f"updates: writer (mean of {len(updates)} passes) / DB merge on 1: "
        f"x{statistics.mean(updates) / base['db_merge_rows_s']:.2f} "
        f"(passes {', '.join(f'{u:,.0f}' for u in updates)} rows/s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="feature rows (entities) in the store")
    parser.add_argument("--chunk", type=int, default=250_000, help="rows per write call")
    parser.add_argument("--passes", type=int, default=3, help="full update passes")
    parser.add_argument("--read-iterations", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rows < SERVERS * 1000 or args.chunk < 1000 or args.passes < 1:
        parser.error(f"--rows must be >= {SERVERS * 1000}, --chunk >= 1000, --passes >= 1")
    started = time.perf_counter()
    with shard_stack("tessera-store-scale-", SERVERS) as dsns:
        for dsn in dsns:  # the bloat figures read pgstattuple
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        share = args.rows // SERVERS
        bench_load(dsns, args.rows, args.chunk)
        bench_baselines(dsns[0], share, args.chunk)
        bench_reads(dsns, args.rows, args.read_iterations)
        bench_passes(dsns, args.rows, args.chunk, args.passes)
        bench_layouts(dsns[0], share, args.chunk, args.read_iterations)
        summary()
    log(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
