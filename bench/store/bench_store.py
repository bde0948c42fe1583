"""Feature store benchmark: writes, updates, reads and bloat, each against a baseline, in one run.

    PYTHONPATH=. .venv/bin/python bench/store/bench_store.py            # default size, ~10 min on 2 cores
    PYTHONPATH=. .venv/bin/python bench/store/bench_store.py --full     # 1M-row writes and bloat rounds

It starts its own stack (catalog + 4 shards) in a temporary directory and stops it at the end, so it
never touches a developer's or a test session's data. Figures go to stdout (and ``--json FILE``).

1. Fresh writes: Tessera's writer into N = 1, 2, 4 shards vs raw binary COPY of the same rows into the
   same indexed table on one shard (the limit) vs naive row-by-row INSERT (timed on a slice).
2. Updates of existing entities: the writer vs the database's own merge (binary COPY into an unlogged
   staging table, then one INSERT ... ON CONFLICT DO UPDATE), from the same starting table.
3. Read latency p50/p99: single-id and 100-id gets through the reader, vs a bare psycopg query.
4. Bloat: 5 rounds of full-table upserts through the writer into the table with Tessera's storage
   settings and into a twin with Postgres' defaults; sizes, dead tuples and free space from pgstattuple.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_dumps

from shardctl.process import free_port
from shardctl.stack.manager import Stack
from shardctl.store.changes import LOGGED_SETTING
from shardctl.store.hashing import install_sql_functions, logical_shard_for
from shardctl.store.reader import READ_SQL, FeatureReader
from shardctl.store.schema import FEATURE_TABLE, TUNED_STORAGE, apply_schema
from shardctl.store.shardmap import ShardMap
from shardctl.store.writer import FeatureRow, FeatureWriter

FEATURE_SET = "bench_v1"
# The baselines' sessions switch the change log's row trigger off, as the writer does for its own transactions.
NO_ROW_TRIGGER = f"SET {LOGGED_SETTING} = 'on'"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RESULTS: dict[str, dict] = {}


def log(message: str) -> None:
    print(message, flush=True)


def features(rng: random.Random) -> dict[str, object]:
    """8 features: numbers, categories and a flag."""
    return {
        "spend_30d": round(rng.random() * 1000, 2),
        "spend_90d": round(rng.random() * 3000, 2),
        "visits_30d": rng.randrange(100),
        "visits_90d": rng.randrange(300),
        "tier": ("bronze", "silver", "gold")[rng.randrange(3)],
        "country": ("de", "fr", "us", "jp")[rng.randrange(4)],
        "churn_score": rng.random(),
        "active": rng.random() < 0.5,
    }


def make_rows(n: int, round_: int = 0) -> list[FeatureRow]:
    """n entities with 8 features; ``round_`` changes every value (and moves the event time forward)."""
    rng = random.Random(round_)
    ts = T0 + timedelta(hours=round_)
    return [FeatureRow(f"customer-{i:08d}", ts, features(rng)) for i in range(n)]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def reset_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {FEATURE_TABLE}")
        conn.execute("CHECKPOINT")


def vacuum(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {FEATURE_TABLE}")
        conn.execute("CHECKPOINT")


def raw_copy(dsn: str, rows: Iterable[FeatureRow], table: str = FEATURE_TABLE) -> None:
    """The limit: binary COPY straight into the indexed table, same rows, same JSON encoder, no checks, and no
    change-log row trigger (the writer logs each batch's changes in one set-based insert instead). ``rows`` is read
    once, so a generator streams them."""
    with psycopg.connect(dsn) as conn:
        conn.execute(NO_ROW_TRIGGER)
        set_json_dumps(msgspec.json.encode, conn)
        with conn.cursor() as cur:
            sql = f"COPY {table} (logical_shard, entity_id, feature_set, features, event_ts) FROM STDIN (FORMAT BINARY)"
            with cur.copy(sql) as copy:
                copy.set_types(["int4", "text", "text", "jsonb", "timestamptz"])
                for r in rows:
                    copy.write_row((logical_shard_for(r.entity_id), r.entity_id, FEATURE_SET, r.features, r.event_ts))


def naive_inserts(dsn: str, rows: list[FeatureRow]) -> None:
    """One INSERT statement per row (one transaction, so this baseline is not slowed by commits)."""
    with psycopg.connect(dsn) as conn:
        set_json_dumps(msgspec.json.encode, conn)
        from psycopg.types.json import Jsonb

        for r in rows:
            conn.execute(
                f"INSERT INTO {FEATURE_TABLE} (logical_shard, entity_id, feature_set, features, event_ts) "
                "VALUES (%s, %s, %s, %s, %s)",
                (logical_shard_for(r.entity_id), r.entity_id, FEATURE_SET, Jsonb(r.features), r.event_ts),
            )


DB_MERGE_SQL = f"""
INSERT INTO {FEATURE_TABLE} AS t (logical_shard, entity_id, feature_set, features, event_ts)
SELECT logical_shard, entity_id, '{FEATURE_SET}', features, event_ts FROM bench_stage
ON CONFLICT (logical_shard, entity_id, feature_set) DO UPDATE
   SET features = excluded.features, event_ts = excluded.event_ts
"""


def db_merge(dsn: str, rows: Iterable[FeatureRow]) -> None:
    """The database's own merge: binary COPY into an unlogged staging table, then one upsert (no row trigger);
    ``rows`` is read once."""
    with psycopg.connect(dsn) as conn:
        conn.execute(NO_ROW_TRIGGER)
        set_json_dumps(msgspec.json.encode, conn)
        conn.execute("DROP TABLE IF EXISTS bench_stage")
        conn.execute(
            "CREATE UNLOGGED TABLE bench_stage (logical_shard integer, entity_id text, features jsonb, "
            "event_ts timestamptz)"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY bench_stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "jsonb", "timestamptz"])
                for r in rows:
                    copy.write_row((logical_shard_for(r.entity_id), r.entity_id, r.features, r.event_ts))
            cur.execute(DB_MERGE_SQL)
        conn.execute("DROP TABLE bench_stage")


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def bench_writes(dsns: list[str], rows: list[FeatureRow], naive_rows: int) -> None:
    n = len(rows)
    log(f"\n== 1. fresh writes: {n:,} new entities x 8 features ==")
    for dsn in dsns:
        reset_table(dsn)
    raw = timed(lambda: raw_copy(dsns[0], rows))
    reset_table(dsns[0])
    naive = timed(lambda: naive_inserts(dsns[0], rows[:naive_rows]))
    reset_table(dsns[0])
    figures = {"raw_copy_rows_s": rate(n, raw), "naive_insert_rows_s": rate(naive_rows, naive)}
    log(f"raw binary COPY, 1 shard        {raw:7.2f} s  {rate(n, raw):>10,.0f} rows/s  (the limit)")
    log(
        f"naive row-by-row INSERT         {naive:7.2f} s  {rate(naive_rows, naive):>10,.0f} rows/s"
        f"  ({naive_rows:,} rows)"
    )
    for shards in (1, 2, 4):
        for dsn in dsns:
            reset_table(dsn)
        with FeatureWriter(ShardMap(1, tuple(dsns[:shards]))) as writer:
            report = writer.write(FEATURE_SET, rows)
        assert report.inserted == n, report
        r = rate(n, report.seconds)
        figures[f"writer_{shards}_shards_rows_s"] = r
        log(
            f"Tessera writer, {shards} shard(s)       {report.seconds:7.2f} s  {r:>10,.0f} rows/s  "
            f"= {r / figures['raw_copy_rows_s']:.2f} x raw COPY, {r / figures['naive_insert_rows_s']:.1f} x naive"
            f"  (fast path on {len(report.fast_path_shards)}/{shards})"
        )
    figures["writer_1_shard_vs_raw_copy"] = figures["writer_1_shards_rows_s"] / figures["raw_copy_rows_s"]
    RESULTS["fresh_writes"] = figures


def bench_updates(dsn: str, rows: list[FeatureRow]) -> None:
    n = len(rows)
    log(f"\n== 2. updates: {n:,} existing entities, every value changed, 1 shard ==")
    changed = make_rows(n, round_=1)

    def fresh_table() -> None:
        reset_table(dsn)
        raw_copy(dsn, rows)
        vacuum(dsn)

    fresh_table()
    baseline = timed(lambda: db_merge(dsn, changed))
    fresh_table()
    with FeatureWriter(ShardMap(1, (dsn,))) as writer:
        report = writer.write(FEATURE_SET, changed)
        assert report.updated == n, report
        again = writer.write(FEATURE_SET, changed)
        assert again.unchanged == n, again
    ours = report.seconds
    figures = {
        "db_merge_rows_s": rate(n, baseline),
        "writer_update_rows_s": rate(n, ours),
        "writer_vs_db_merge": baseline / ours,
        "writer_unchanged_rewrite_rows_s": rate(n, again.seconds),
    }
    log(f"DB merge (unlogged COPY + upsert) {baseline:7.2f} s  {rate(n, baseline):>10,.0f} rows/s  (the baseline)")
    log(
        f"Tessera writer                    {ours:7.2f} s  {rate(n, ours):>10,.0f} rows/s  "
        f"= {baseline / ours:.2f} x the DB merge"
    )
    log(f"Tessera writer, same batch again  {again.seconds:7.2f} s  {rate(n, again.seconds):>10,.0f} rows/s  (no-op)")
    RESULTS["updates"] = figures


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def read_latency(
    dsns: list[str], sample: Callable[[random.Random, int], list[str]], iterations: int
) -> dict[str, dict[str, float]]:
    """p50/p99 of 1-id and 100-id gets through the reader (ids from ``sample(rng, size)``), beside the same query
    bare on server 0 for the wanted ids it holds."""
    rng = random.Random(7)
    figures = {}
    shard_map = ShardMap(1, tuple(dsns))
    with FeatureReader(shard_map) as reader, psycopg.connect(dsns[0], autocommit=True) as bare:
        for _ in range(50):
            reader.get_features(sample(rng, 100), FEATURE_SET)
        for label, size in (("single", 1), ("batch100", 100)):
            ours, base = [], []
            for _ in range(iterations):
                wanted = sample(rng, size)
                started = time.perf_counter()
                result = reader.get_features(wanted, FEATURE_SET)
                ours.append(time.perf_counter() - started)
                assert len(result.records) == size, (len(result.records), size)
                on_zero = [i for i in wanted if shard_map.server_index_for(i) == 0] or wanted[:1]
                started = time.perf_counter()
                bare.execute(READ_SQL, (FEATURE_SET, [logical_shard_for(i) for i in on_zero], on_zero)).fetchall()
                base.append(time.perf_counter() - started)
            p50, p99 = percentiles(ours)
            b50, b99 = percentiles(base)
            figures[label] = {"p50_ms": p50, "p99_ms": p99, "bare_query_p50_ms": b50, "bare_query_p99_ms": b99}
            log(
                f"{label:<9} reader p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   |  bare psycopg query on one shard "
                f"p50 {b50:6.2f} ms  p99 {b99:6.2f} ms"
            )
    return figures


def bench_reads(dsns: list[str], rows: list[FeatureRow], iterations: int) -> None:
    log(f"\n== 3. read latency: {len(rows):,} entities on {len(dsns)} shards, {iterations:,} gets each ==")
    for dsn in dsns:
        reset_table(dsn)
    with FeatureWriter(ShardMap(1, tuple(dsns))) as writer:
        writer.write(FEATURE_SET, rows)
    for dsn in dsns:
        vacuum(dsn)
    ids = [r.entity_id for r in rows]
    RESULTS["reads"] = read_latency(dsns, lambda rng, size: rng.sample(ids, size), iterations)


def bloat_database(admin_dsn: str, name: str, tuned: bool) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn) as conn:
        install_sql_functions(conn)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    apply_schema(dsn)
    if not tuned:  # the same table on Postgres' storage defaults
        with psycopg.connect(dsn) as conn:
            conn.execute(f"ALTER TABLE {FEATURE_TABLE} RESET ({', '.join(TUNED_STORAGE)})")
    return dsn


def table_health(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        heap = conn.execute(
            f"SELECT table_len, tuple_count, dead_tuple_count, dead_tuple_percent, free_percent "
            f"FROM pgstattuple('{FEATURE_TABLE}')"
        ).fetchone()
        index = conn.execute(f"SELECT index_size, avg_leaf_density FROM pgstatindex('{FEATURE_TABLE}_pkey')").fetchone()
        conn.execute("SELECT pg_stat_force_next_flush()")
        hot = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s", (FEATURE_TABLE,)
        ).fetchone()
    return {
        "table_mb": heap[0] / 2**20,
        "live_tuples": heap[1],
        "dead_tuples": heap[2],
        "dead_pct": float(heap[3]),
        "free_pct": float(heap[4]),
        "index_mb": index[0] / 2**20,
        "index_leaf_density": float(index[1]),
        "updates": hot[0] if hot else 0,
        "hot_updates": hot[1] if hot else 0,
    }


def bench_bloat(admin_dsn: str, n: int, rounds: int) -> None:
    log(f"\n== 4. bloat: {n:,} entities, {rounds} rounds of full-table upserts through the writer ==")
    figures = {}
    for label, tuned in (("tessera_settings", True), ("postgres_defaults", False)):
        dsn = bloat_database(admin_dsn, f"bloat_{label}", tuned)
        with FeatureWriter(ShardMap(1, (dsn,))) as writer:
            writer.write(FEATURE_SET, make_rows(n, round_=0))
            loaded = table_health(dsn)
            seconds = []
            for round_ in range(1, rounds + 1):
                report = writer.write(FEATURE_SET, make_rows(n, round_=round_))
                assert report.updated == n, report
                seconds.append(report.seconds)
        time.sleep(2)  # let a triggered autovacuum get going, as it would between real rounds
        after = table_health(dsn)
        figures[label] = {"after_load": loaded, "after_rounds": after, "round_seconds": seconds}
        hot_pct = 100 * after["hot_updates"] / after["updates"] if after["updates"] else 0.0
        log(
            f"{label:<18} table {loaded['table_mb']:7.1f} -> {after['table_mb']:7.1f} MB   "
            f"index {loaded['index_mb']:6.1f} -> {after['index_mb']:6.1f} MB   "
            f"dead {after['dead_tuples']:>9,} ({after['dead_pct']:.1f}%)  free {after['free_pct']:.1f}%   "
            f"HOT {hot_pct:5.1f}%   rounds {statistics.mean(seconds):.2f} s avg"
        )
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE bloat_{label} WITH (FORCE)")
    t, d = figures["tessera_settings"], figures["postgres_defaults"]
    growth = {
        k: {
            "table_growth": v["after_rounds"]["table_mb"] / v["after_load"]["table_mb"],
            "index_growth": v["after_rounds"]["index_mb"] / v["after_load"]["index_mb"],
        }
        for k, v in figures.items()
    }
    figures["growth"] = growth
    log(
        f"growth after {rounds} rounds: table x{growth['tessera_settings']['table_growth']:.2f} vs "
        f"x{growth['postgres_defaults']['table_growth']:.2f} (defaults); index "
        f"x{growth['tessera_settings']['index_growth']:.2f} vs x{growth['postgres_defaults']['index_growth']:.2f}; "
        f"final size {t['after_rounds']['table_mb'] + t['after_rounds']['index_mb']:.0f} MB vs "
        f"{d['after_rounds']['table_mb'] + d['after_rounds']['index_mb']:.0f} MB"
    )
    RESULTS["bloat"] = figures


@contextmanager
def shard_stack(prefix: str, shards: int = 4) -> Iterator[list[str]]:
    """A private stack of ``shards`` servers (and its catalog) in a temporary directory; yields the shards' DSNs and
    purges it on the way out, also after SIGTERM (e.g. a CI timeout, turned into SystemExit)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack = Stack(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        state = stack.up(shards=shards, base_port=free_port(block=10))
        log(f"stack: {shards} shards, postgres {state.postgres['version']}")
        yield [s.dsn() for s in stack.postgres_servers(state)[1:]]
    finally:
        failed = stack.down(purge=True)
        if failed:
            log(f"could not stop: {failed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="1M-row writes, updates and bloat rounds")
    parser.add_argument("--rows", type=int, default=None, help="rows for writes and updates (default 300k)")
    parser.add_argument("--bloat-rows", type=int, default=None, help="rows for the bloat rounds (default 200k)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--read-iterations", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--only", choices=["writes", "updates", "reads", "bloat"], action="append")
    args = parser.parse_args(argv)
    rows_n = args.rows or (1_000_000 if args.full else 300_000)
    bloat_n = args.bloat_rows or (1_000_000 if args.full else 200_000)
    if rows_n < 1000 or bloat_n < 1000 or args.rounds < 1:
        parser.error("--rows and --bloat-rows must be >= 1000, --rounds >= 1")
    only = set(args.only or ["writes", "updates", "reads", "bloat"])

    log(f"load average before: {os.getloadavg()}  (2-core machine shared with others)")
    started = time.perf_counter()
    with shard_stack("tessera-bench-") as dsns:
        rows = make_rows(rows_n)
        if "writes" in only:
            bench_writes(dsns, rows, naive_rows=min(20_000, rows_n))
        if "updates" in only:
            bench_updates(dsns[0], rows)
        if "reads" in only:
            bench_reads(dsns[:2], rows[:100_000], args.read_iterations)
        del rows
        if "bloat" in only:
            bench_bloat(dsns[0], bloat_n, args.rounds)
    log(f"\nload average after: {os.getloadavg()}; total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
