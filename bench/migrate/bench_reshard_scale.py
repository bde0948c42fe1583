"""Resharding at scale under load (issue 23, item 4): 2 -> 3 servers holding ``--rows`` rows (default 5M) while a
writer writes through the store and an open-loop client asks the real prediction service, audited row by row.

    PYTHONPATH=. .venv/bin/python bench/migrate/bench_reshard_scale.py                  # 5M rows
    PYTHONPATH=. .venv/bin/python bench/migrate/bench_reshard_scale.py --rows 200000    # a quick look

A stack of its own with 2 servers; ``--rows`` rows written through ``FeatureStore`` in chunks; the served entities,
a tiny promoted model and the prediction service (``testkit.online``); a third server added (``stack up``). Then
``shardctl migrate plan``'s report (rows, bytes and what the target needs on disk), and the migration phase by
phase with ``MigrationEngine`` while ``testkit.traffic``'s writer (about half new entities, half updates) and
open-loop client (``--client-rate`` requests a second of 10 ids each) run throughout. Figures:

- copy rate: moved rows over the time from the start of ``copying`` to the end of ``synced``, against raw
  ``COPY ... TO STDOUT`` streams into ``COPY ... FROM STDIN`` of the same rows from the same sources to the same
  target (right before the migration, under the same traffic, one stream per planned pair, all at once as the
  engine copies, each relayed by a process of its own, into a scratch table with the feature table's generated
  column, indexes and storage settings);
  the ratio is the migration's time over the raw copy's (goal <= 1.3);
- the cutover's write pause: the largest extra latency of an acknowledged write overlapping the ``cut_over`` phase
  (its time minus the median write outside it), and the phase's fence, drain and final check (its method, time
  and the keys it compared under the fence);
- cleanup: the ``cleaned`` phase's duration (the moved rows deleted from the sources) and the client's p99 during
  it against its p99 outside every phase and the raw copy;
- failed requests and writes, and the row-by-row audit (lost, stale, duplicated, misplaced rows).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.migrate.bench_online import migrate, raw_copy
from shardctl.control.migration.engine import MigrationEngine
from shardctl.process import free_port
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.shardmap import ShardMapStore
from shardctl.store.writer import FeatureRow
from testkit.online import SERVED_ENTITIES, online_env, served_id
from testkit.traffic import OpenLoopClient, SteadyWriter, audit, pause_per_window, rows_moved, rows_per_logical_shard

FEATURE_SET = "bench_reshard_v1"
TO_SERVERS = ["server-0", "server-1", "server-2"]


def seed(settings: TesseraSettings, rows: int, chunk: int) -> float:
    """``rows`` entities (``seq`` 0) through the store in chunks; returns rows per second."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    with FeatureStore.open(settings) as store:
        for start in range(0, rows, chunk):
            batch = range(start, min(rows, start + chunk))
            store.write(FEATURE_SET, [FeatureRow(f"seed-{i:08d}", t0, {"seq": 0, "i": i}) for i in batch])
    return rows / (time.perf_counter() - started)


def p99_ms(latencies: list[float]) -> float | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)


def client_p99(sent_at: list[float], latencies: list[float], inside: list[tuple[float, float]]) -> dict:
    """The client's p99 for requests sent inside the windows ``inside`` and outside every one of them."""
    within = [lat for at, lat in zip(sent_at, latencies, strict=True) if any(a <= at <= b for a, b in inside)]
    return {"requests": len(within), "p99_ms": p99_ms(within)}


def raw_copy_pairs(servers: dict[str, str], pairs: list[dict]) -> tuple[int, float]:
    """Each planned (source, target) pair's rows by raw COPY into a scratch table on its target, every pair at once
    as the engine copies them (one link per source in parallel); (rows, seconds from the first stream's start to the
    last one's end). Each stream is relayed by a process of its own: relayed by threads of this process, it shared
    the interpreter with the writer and the client (measured: 27-28 s against 12-18 s without the traffic)."""
    with ProcessPoolExecutor(max_workers=len(pairs), mp_context=multiprocessing.get_context("spawn")) as pool:
        copies = [
            pool.submit(_timed_raw_copy, servers[p["source"]], servers[p["target"]], p["logical_shards"], f"raw_{i}")
            for i, p in enumerate(pairs)
        ]
        done = [copy.result() for copy in copies]
    return sum(rows for rows, _, _ in done), max(end for _, _, end in done) - min(start for _, start, _ in done)


def _timed_raw_copy(source: str, target: str, logical_shards: list[int], scratch: str) -> tuple[int, float, float]:
    """``raw_copy`` in a process of its own: (rows, wall-clock start, wall-clock end) of its stream."""
    rows, seconds = raw_copy(source, target, logical_shards, scratch)
    ended = time.time()
    return rows, ended - seconds, ended


def run(rows: int, chunk: int, client_rate: float, writer_interval: float, root: Path) -> dict:
    stack = Stack(root / "stack")
    stack.up(servers=2, base_port=free_port(block=10))
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        catalog = settings.catalog_dsn or ""
        print(f"seeding {rows:,} rows on 2 servers", flush=True)
        seed_rate = seed(settings, rows, chunk)
        print(f"   {seed_rate:,.0f} rows/s", flush=True)
        maps = ShardMapStore(catalog)
        (root / "model").mkdir(exist_ok=True)
        with online_env(stack, settings, root / "model", root) as env:
            stack.up(servers=3)
            engine = MigrationEngine(catalog)
            plan = engine.plan(TO_SERVERS).to_json()
            print(
                f"plan: {plan['logical_shards_moved']} logical shards, {plan['rows']:,} rows, {plan['bytes']:,} bytes"
            )
            before = maps.current().placement_by_name()
            with FeatureStore.open(settings, prepare_topology=False) as store:
                writer = SteadyWriter(store, FEATURE_SET, batch=5, interval=writer_interval, prefix="load")
                ids = [served_id(i) for i in range(SERVED_ENTITIES)]
                client = OpenLoopClient(env.service.url, ids, rate=client_rate, headers=env.service.auth_headers)
                writer.start()
                client.start()
                try:
                    time.sleep(10)  # the traffic's steady state before the migration
                    print("raw COPY of the same rows from the same sources to the same target", flush=True)
                    raw_started = time.monotonic()
                    raw_rows, raw_s = raw_copy_pairs(maps.registered_servers(), plan["pairs"])
                    raw_window = (raw_started, time.monotonic())
                    time.sleep(5)
                    details: list[dict] = []
                    times = migrate(engine, TO_SERVERS, details)
                    time.sleep(10)
                finally:
                    requests = client.stop()
                    writes = writer.stop()
        after = maps.current().placement_by_name()
        servers = maps.registered_servers()
        moved_rows = rows_moved(before, after, rows_per_logical_shard(servers.values()))
        copy_s = times["synced"][1] - times["copying"][0]
        windows = [*times.values(), raw_window]
        outside = [
            lat
            for at, lat in zip(requests.sent_at, requests.latencies, strict=True)
            if not any(a <= at <= b for a, b in windows)
        ]
        pause = pause_per_window(writes.batches, [times["cut_over"]])
        seeded = {f"seed-{i:08d}": 0 for i in range(rows)}
        checked = audit(servers, after, FEATURE_SET, {**seeded, **writes.acknowledged}, writes.uncertain)
        return {
            "rows": rows,
            "seed_rows_per_s": round(seed_rate),
            "plan": {k: plan[k] for k in ("logical_shards_moved", "rows", "bytes")} | {"disk": plan.get("disk")},
            "moved_rows": moved_rows,
            "phase_seconds": {p: round(b - a, 2) for p, (a, b) in times.items()},
            "migration_copy_s": round(copy_s, 2),
            "migration_rows_per_s": round(moved_rows / copy_s),
            "raw_copy_rows": raw_rows,
            "raw_copy_s": round(raw_s, 2),
            "raw_rows_per_s": round(raw_rows / raw_s),
            "migration_vs_raw": round(copy_s / raw_s, 2),
            "cutover_write_pause_ms": round(1000 * max(pause)) if pause else None,
            "cutover_fence_held_ms": details[0].get("fence_held_ms") if details else None,
            "cutover_drain_ms": details[0].get("drain_ms") if details else None,
            "cutover_final_check": {k: details[0].get(k) for k in ("final_check", "final_check_ms", "keys_compared")}
            if details
            else None,
            "cleanup_s": round(times["cleaned"][1] - times["cleaned"][0], 2),
            "client_p99_during_cleanup": client_p99(requests.sent_at, requests.latencies, [times["cleaned"]]),
            "client_p99_during_copy": client_p99(
                requests.sent_at, requests.latencies, [(times["copying"][0], times["synced"][1])]
            ),
            "client_p99_outside_ms": p99_ms(outside),
            "client_p50_outside_ms": round(1000 * statistics.median(outside), 1) if outside else None,
            "requests": dict(requests.outcomes),
            "request_failure_samples": requests.failures[:3],
            "writes_acknowledged": len(writes.batches),
            "writes_failed": len(writes.failures),
            "audit_rows": checked.rows,
            "audit_problems": {k: len(v) for k, v in vars(checked).items() if isinstance(v, list) and v},
        }
    finally:
        left = stack.down(purge=True)
        if left:
            print(f"could not stop: {', '.join(left)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="rows per write while seeding")
    parser.add_argument("--client-rate", type=float, default=50.0, help="prediction requests a second (10 ids each)")
    parser.add_argument("--writer-interval", type=float, default=0.02, help="seconds between the writer's batches of 5")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tessera-bench-reshard-"))
    root.chmod(0o755)  # the stack's Postgres runs as an unprivileged user
    result = run(args.rows, args.chunk, args.client_rate, args.writer_interval, root)
    shutil.rmtree(root, ignore_errors=True)  # the service's log and the model (kept when the run raised)
    print(json.dumps(result, indent=2))
    ok = not result["audit_problems"] and not result["writes_failed"] and set(result["requests"]) == {"ok"}
    print(
        f"\nmigration copy {result['migration_rows_per_s']:,} rows/s vs raw COPY {result['raw_rows_per_s']:,} rows/s: "
        f"x{result['migration_vs_raw']} the raw copy's time; cutover pause {result['cutover_write_pause_ms']} ms; "
        f"cleanup {result['cleanup_s']} s (client p99 {result['client_p99_during_cleanup']['p99_ms']} ms vs "
        f"{result['client_p99_outside_ms']} ms outside); {'clean' if ok else 'NOT CLEAN'}: "
        f"{result['requests']}, {result['writes_failed']} failed writes, audit {result['audit_problems'] or 'clean'}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
