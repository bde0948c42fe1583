"""Online resharding through the real store and engine (not a test: figures only).

    PYTHONPATH=. .venv/bin/python bench/migrate/bench_online.py                     # 100k rows, 10 cutovers
    PYTHONPATH=. .venv/bin/python bench/migrate/bench_online.py --rows 300000 --cutovers 10 --json online.json

A local stack of its own (the machine's PostgreSQL) with one server and ``--rows`` rows written through
``FeatureStore``; `Stack.up(servers=2)` adds server-1. Then:

1. Copy throughput: one migration 1 -> 2 servers with ``MigrationEngine`` (half the logical shards move),
   timed from the start of ``copying`` to the end of ``synced`` (publication, slot, subscription, initial
   copy, catch-up); against a raw ``COPY ... TO STDOUT`` streamed into ``COPY ... FROM STDIN`` of the same
   rows between the same two servers (afterwards, server-1 -> a scratch table on server-0).
2. The write pause at cutover: ``--cutovers`` migrations alternating 2 -> 1 and 1 -> 2 servers while a
   writer writes through the store at a steady rate (``testkit.traffic.SteadyWriter``) and a
   reader reads acknowledged ids through the store's reader. Per cutover (the engine's ``cut_over`` phase),
   the largest extra latency of an acknowledged write overlapping it (its time minus the median write time
   outside cutovers); p50 and max over the cutovers; failed writes, read errors and misses; rows moved
   against the minimum any balanced placement needs; and the row-by-row audit at the end.
The stack is stopped by PID and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from shardctl.control.migration.engine import MigrationEngine
from shardctl.process import free_port
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.shardmap import ShardMapStore
from shardctl.store.writer import FeatureRow
from testkit.traffic import (
    SteadyWriter,
    audit,
    minimum_rows_moved,
    pause_per_window,
    rows_moved,
    rows_per_logical_shard,
)

FEATURE_SET = "bench_online_v1"
PHASES_AFTER_PLAN = ("provisioned", "copying", "synced", "verified", "cut_over", "cleaned")


class StoreReader(threading.Thread):
    """Reads 20 acknowledged ids at a time through the store's reader, counting errors and misses."""

    def __init__(self, store: FeatureStore, writer: SteadyWriter):
        super().__init__(name="bench-reader", daemon=True)
        self.store, self.writer = store, writer
        self.reads = self.errors = self.misses = 0
        self.error_samples: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(3)
        while not self._halt.is_set():
            known = list(self.writer.log.acknowledged)
            if not known:
                self._halt.wait(0.05)
                continue
            ids = rng.sample(known, min(20, len(known)))
            try:
                result = self.store.get_features(ids, FEATURE_SET)
            except Exception as exc:
                self.errors += 1
                self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            self.reads += 1
            if result.failed:
                self.errors += 1
                self.error_samples.append(f"servers failed: {sorted(result.failed)}")
            self.misses += len(result.missing)
            self._halt.wait(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


def migrate(engine: MigrationEngine, to_servers: list[str], details: list[dict] | None = None) -> dict:
    """One migration, phase by phase; (start, end) monotonic times of each phase. The cut_over phase's own
    report (fence held, drain) is appended to ``details``."""
    record = engine.begin(to_servers)
    times = {}
    for phase in PHASES_AFTER_PLAN:
        started = time.monotonic()
        detail = engine.run_phase(record.id, phase)
        times[phase] = (started, time.monotonic())
        if phase == "cut_over" and details is not None:
            details.append(detail)
    return times


def raw_copy(source: str, target: str, logical_shards: list[int], scratch: str = "bench_raw_copy") -> tuple[int, float]:
    """The same rows streamed source -> a scratch copy of the table on target with COPY; (rows, seconds).

    The scratch table has the feature table's columns, generated column, indexes and storage settings (its
    fillfactor of 50 doubles the heap pages a copy writes; the target computes ``entity_hash`` for every row it
    receives), so the raw COPY writes what the migration's copy writes."""
    with psycopg.connect(source) as src:
        columns = [
            r[0]
            for r in src.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'entity_features' "
                "AND is_generated = 'NEVER' ORDER BY ordinal_position"
            )
        ]
    listed = ", ".join(columns)
    with psycopg.connect(target, autocommit=True) as dst:
        options = dst.execute("SELECT reloptions FROM pg_class WHERE oid = 'entity_features'::regclass").fetchone()
        storage = f" WITH ({', '.join(options[0])})" if options and options[0] else ""
        dst.execute(f"DROP TABLE IF EXISTS {scratch}")
        like = "LIKE entity_features INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING INDEXES"
        dst.execute(f"CREATE TABLE {scratch} ({like}){storage}")
    start = time.perf_counter()
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        with (
            src.cursor().copy(
                f"COPY (SELECT {listed} FROM entity_features WHERE logical_shard = ANY(%s)) TO STDOUT",
                (logical_shards,),
            ) as out,
            dst.cursor().copy(f"COPY {scratch} ({listed}) FROM STDIN") as into,
        ):
            for chunk in out:
                into.write(chunk)
        rows = dst.execute(f"SELECT count(*) FROM {scratch}").fetchone()[0]  # type: ignore[index]
    seconds = time.perf_counter() - start
    with psycopg.connect(target, autocommit=True) as dst:
        dst.execute(f"DROP TABLE {scratch}")
    return rows, seconds


def run(rows: int, cutovers: int, rate_interval: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="tessera-bench-online-"))
    stack = Stack(root / "stack")
    stack.up(servers=1, base_port=free_port(block=10))
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        catalog = settings.catalog_dsn or ""
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        with FeatureStore.open(settings) as store:
            for start in range(0, rows, 5000):
                batch = range(start, min(rows, start + 5000))
                store.write(FEATURE_SET, [FeatureRow(f"seed-{i:08d}", t0, {"seq": 0, "i": i}) for i in batch])
        stack.up(servers=2)
        maps = ShardMapStore(catalog)
        engine = MigrationEngine(catalog)

        before = maps.current().placement_by_name()
        times = migrate(engine, ["server-0", "server-1"])
        after = maps.current().placement_by_name()
        moved_shards = sorted(lg for lg in before if before[lg] != after[lg])
        servers = maps.registered_servers()
        moved_rows = rows_moved(before, after, rows_per_logical_shard(servers.values()))
        copy_s = times["synced"][1] - times["copying"][0]
        raw_rows, raw_s = raw_copy(servers["server-1"], servers["server-0"], moved_shards)
        copy = {
            "rows": rows,
            "moved_rows": moved_rows,
            "raw_copy_rows": raw_rows,
            "migration_copy_s": round(copy_s, 2),
            "migration_rows_per_s": round(moved_rows / copy_s),
            "raw_copy_s": round(raw_s, 2),
            "raw_rows_per_s": round(raw_rows / raw_s),
            "migration_vs_raw": round(copy_s / raw_s, 2),
            "phase_seconds": {p: round(b - a, 2) for p, (a, b) in times.items()},
        }
        print(json.dumps({"copy": copy}, indent=2), flush=True)

        windows, fractions, cut_details = [], [], []
        with FeatureStore.open(settings, prepare_topology=False) as store:
            writer = SteadyWriter(store, FEATURE_SET, batch=5, interval=rate_interval, prefix="load")
            reader = StoreReader(store, writer)
            writer.start()
            reader.start()
            try:
                time.sleep(2)
                for n in range(cutovers):
                    target = ["server-0"] if n % 2 == 0 else ["server-0", "server-1"]
                    placed = maps.current().placement_by_name()
                    times = migrate(engine, target, cut_details)
                    counts = rows_per_logical_shard(maps.registered_servers().values())
                    now = maps.current().placement_by_name()
                    minimum = minimum_rows_moved(placed, target, counts)
                    fractions.append(rows_moved(placed, now, counts) / max(1, minimum))
                    windows.append(times["cut_over"])
                    held = times["cut_over"][1] - times["cut_over"][0]
                    print(f"cutover {n + 1}/{cutovers} to {target}: cut_over phase {held:.3f} s", flush=True)
                time.sleep(2)
            finally:
                reader.stop()
                log = writer.stop()
        pauses = pause_per_window(log.batches, windows)
        outside = sorted(d for s, d in log.batches if not any(s <= b and s + d >= a for a, b in windows))
        final = maps.current().placement_by_name()
        seeded = {f"seed-{i:08d}": 0 for i in range(rows)}  # written before the writer started, seq 0
        checked = audit(maps.registered_servers(), final, FEATURE_SET, {**seeded, **log.acknowledged})
        cutover = {
            "cutovers": cutovers,
            "writes_acknowledged": len(log.batches),
            "writes_failed": len(log.failures),
            "write_failure_samples": log.failures[:3],
            "reads": reader.reads,
            "read_errors": reader.errors,
            "read_error_samples": reader.error_samples[:3],
            "read_misses": reader.misses,
            "write_p50_outside_cutovers_ms": round(1000 * statistics.median(outside), 1) if outside else None,
            "extra_write_latency_per_cutover_ms": [round(1000 * p) for p in pauses],
            "extra_write_latency_p50_ms": round(1000 * statistics.median(pauses)) if pauses else None,
            "extra_write_latency_max_ms": round(1000 * max(pauses)) if pauses else None,
            "cut_over_phase_s": [round(b - a, 3) for a, b in windows],
            "fence_held_ms": [d.get("fence_held_ms") for d in cut_details],
            "drain_ms": [d.get("drain_ms") for d in cut_details],
            "moved_vs_minimum": [round(f, 3) for f in fractions],
            "audit_rows": checked.rows,
            "audit_problems": {k: len(v) for k, v in vars(checked).items() if isinstance(v, list) and v},
        }
        return {"copy": copy, "cutover": cutover}
    finally:
        left = stack.down(purge=True)
        if left:
            print(f"could not stop: {', '.join(left)}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cutovers", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between the writer's batches of 5")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = run(args.rows, args.cutovers, args.interval)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
