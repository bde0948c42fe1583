"""Cutover prototype under load: how long writes to the moving logical shards pause, and whether anything
fails, over repeated cutovers (a quarter of the logical shards moved A -> B, then back, and so on).

    PYTHONPATH=. .venv/bin/python bench/migrate/bench_cutover.py                 # 10 cutovers, ~1-2 min
    PYTHONPATH=. .venv/bin/python bench/migrate/bench_cutover.py --cutovers 4 --rows 20000

Not the store's writer (phase B wires the fence into it): a writer thread that routes each upsert by a
placement and an epoch held in memory, checks the per-logical-shard fence in the write's transaction
(``shardctl/store/fence.py``), and on ``FencedError`` waits for the next epoch and re-routes; a reader
thread reads acknowledged entities where the placement says. Each cutover: link set up and synced, verify
clean, then fence the moving logical shards on the source, ``wait_caught_up``, publish the new placement
(writers follow), and afterwards tear the link down and delete the moved rows from the source.
At the end every acknowledged write is checked row by row on the server the final placement names.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.migrate.servers import add_common_options, run_per_version, server_pair
from shardctl.control.migration import replication
from shardctl.control.migration.cleanup import delete_moved_rows
from shardctl.control.migration.table import MovedTable
from shardctl.control.migration.verify import verify
from shardctl.store import fence
from shardctl.store.hashing import shard_for

MOVING = tuple(range(1, 256, 4))
TABLE = MovedTable(name="cutover_features")


@dataclass
class Routing:
    """The placement every thread routes by, and its epoch; ``publish`` is the in-memory NOTIFY."""

    placement: dict[int, str]
    epoch: int = 1
    changed: threading.Condition = field(default_factory=threading.Condition)

    def snapshot(self) -> tuple[dict[int, str], int]:
        with self.changed:
            return self.placement, self.epoch

    def publish(self, placement: dict[int, str], epoch: int) -> None:
        with self.changed:
            self.placement, self.epoch = placement, epoch
            self.changed.notify_all()

    def wait_newer(self, epoch: int, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.epoch > epoch, timeout)


@dataclass
class Load:
    routing: Routing
    entities: int
    writes: list[tuple[float, float]] = field(default_factory=list)  # (start, latency) of acknowledged writes
    acked: dict[str, int] = field(default_factory=dict)  # entity -> acknowledged writes = expected version
    write_errors: list[str] = field(default_factory=list)
    reads: int = 0
    read_errors: list[str] = field(default_factory=list)
    read_misses: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def writer(self, rate: float) -> None:
        rng = random.Random(7)
        conns: dict[str, psycopg.Connection] = {}
        while not self.stop.is_set():
            entity = f"c{rng.randrange(self.entities)}"
            shard = shard_for(entity, 256)
            start = time.perf_counter()
            try:
                self._write(conns, entity, shard)
                self.writes.append((start, time.perf_counter() - start))
                self.acked[entity] = self.acked.get(entity, 0) + 1
            except Exception as exc:  # counted, not raised: the benchmark reports every outcome
                self.write_errors.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(max(0.0, 1 / rate - (time.perf_counter() - start)))
        for conn in conns.values():
            conn.close()

    def _write(self, conns: dict[str, psycopg.Connection], entity: str, shard: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            placement, epoch = self.routing.snapshot()
            dsn = placement[shard]
            conn = conns.get(dsn) or conns.setdefault(dsn, psycopg.connect(dsn))
            try:
                with conn.transaction():
                    fence.check(conn, [shard], epoch)
                    conn.execute(
                        f"INSERT INTO {TABLE.name} VALUES (%s, %s, 'fs1', '{{}}', now(), 1) "
                        "ON CONFLICT (logical_shard, entity_id, feature_set) "
                        f"DO UPDATE SET version = {TABLE.name}.version + 1, event_ts = now()",
                        (shard, entity),
                    )
                return
            except fence.FencedError:
                if time.monotonic() > deadline:
                    raise
                self.routing.wait_newer(epoch, 5)

    def reader(self) -> None:
        rng = random.Random(11)
        conns: dict[str, psycopg.Connection] = {}
        while not self.stop.is_set():
            known = list(self.acked)
            if not known:
                self.stop.wait(0.01)
                continue
            entity = rng.choice(known)
            shard = shard_for(entity, 256)
            placement, _ = self.routing.snapshot()
            try:
                conn = conns.get(placement[shard]) or conns.setdefault(
                    placement[shard], psycopg.connect(placement[shard], autocommit=True)
                )
                row = conn.execute(
                    f"SELECT version FROM {TABLE.name} "
                    "WHERE logical_shard = %s AND entity_id = %s AND feature_set = 'fs1'",
                    (shard, entity),
                ).fetchone()
                self.reads += 1
                self.read_misses += row is None
            except psycopg.Error as exc:
                self.read_errors.append(str(exc))
            self.stop.wait(0.002)
        for conn in conns.values():
            conn.close()


def cutover(routing: Routing, source: str, target: str, link_id: int) -> dict:
    link = replication.Link(replication.link_name(link_id, 0), source, target, MOVING, TABLE)
    replication.start(link)
    replication.wait_synced(link, timeout=300)
    report = verify(source, target, MOVING, table=TABLE, catch_up=lambda: replication.wait_caught_up(link))
    placement, epoch = routing.snapshot()
    start = time.perf_counter()
    fence.raise_fence(source, MOVING, epoch + 1, lock_timeout_s=5)
    fenced = time.perf_counter()
    replication.wait_caught_up(link)
    drained = time.perf_counter()
    routing.publish({s: (target if s in MOVING else server) for s, server in placement.items()}, epoch + 1)
    end = time.perf_counter()
    teardown = replication.teardown(link)
    deleted = delete_moved_rows(source, MOVING, table=TABLE, reindex=False).deleted_rows
    return {
        "window": (start, end),
        "fence_s": round(fenced - start, 3),
        "drain_s": round(drained - fenced, 3),
        "window_s": round(end - start, 3),
        "verify_clean": report.clean,
        "teardown_complete": teardown.complete,
        "moved_rows": deleted,
    }


def run(bin_dir: Path, rows: int, cutovers: int, rate: float) -> dict:
    with server_pair(bin_dir) as (a, b, version):
        for dsn in (a, b):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(TABLE.ddl())
            fence.ensure_fence(dsn, 256)
        routing = Routing({s: a for s in range(256)})
        load = Load(routing, entities=rows)
        with psycopg.connect(a) as conn, conn.cursor().copy(f"COPY {TABLE.name} FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((shard_for(f"c{i}", 256), f"c{i}", "fs1", "{}", "2026-01-01Z", 1))
        load.acked = {f"c{i}": 1 for i in range(rows)}
        threads = [threading.Thread(target=load.writer, args=(rate,)), threading.Thread(target=load.reader)]
        for thread in threads:
            thread.start()
        results = []
        try:
            time.sleep(2)
            for n in range(cutovers):
                source, target = (a, b) if n % 2 == 0 else (b, a)
                results.append(cutover(routing, source, target, n + 1))
                time.sleep(1)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(30)
        placement, _ = routing.snapshot()
        wrong, duplicated = check_rows(load, placement, (a, b))
    return summarize(version, load, results, wrong, duplicated)


def check_rows(load: Load, placement: dict[int, str], servers: tuple[str, str]) -> tuple[int, int]:
    """Acknowledged writes whose row is not on the named server with the expected version; keys on both."""
    stored: dict[str, dict[str, int]] = {}
    for dsn in servers:
        with psycopg.connect(dsn) as conn:
            stored[dsn] = dict(conn.execute(f"SELECT entity_id, version FROM {TABLE.name}").fetchall())
    wrong = sum(stored[placement[shard_for(e, 256)]].get(e) != v for e, v in load.acked.items())
    duplicated = len(stored[servers[0]].keys() & stored[servers[1]].keys())
    return wrong, duplicated


def summarize(version: str, load: Load, results: list[dict], wrong: int, duplicated: int) -> dict:
    in_window = [
        lat for start, lat in load.writes if any(w0 - lat <= start <= w1 for w0, w1 in (r["window"] for r in results))
    ]
    outside = [
        lat
        for start, lat in load.writes
        if not any(w0 - 1 <= start <= w1 + 1 for w0, w1 in (r["window"] for r in results))
    ]
    worst = [
        max((lat for start, lat in load.writes if r["window"][0] - lat <= start <= r["window"][1]), default=0.0)
        for r in results
    ]
    return {
        "version": version,
        "cutovers": len(results),
        "writes_acked": len(load.writes),
        "write_errors": len(load.write_errors),
        "first_write_errors": load.write_errors[:3],
        "reads": load.reads,
        "read_errors": len(load.read_errors),
        "read_misses": load.read_misses,
        "rows_wrong_after": wrong,
        "rows_duplicated_after": duplicated,
        "write_latency_p50_ms_outside_cutover": round(statistics.median(outside) * 1000, 2) if outside else None,
        "worst_write_latency_per_cutover_ms": {
            "p50": round(statistics.median(worst) * 1000, 1),
            "max": round(max(worst) * 1000, 1),
        },
        "writes_during_windows": len(in_window),
        "window_s": [r["window_s"] for r in results],
        "fence_s": [r["fence_s"] for r in results],
        "drain_s": [r["drain_s"] for r in results],
        "verify_clean": all(r["verify_clean"] for r in results),
        "teardown_complete": all(r["teardown_complete"] for r in results),
        "moved_rows": [r["moved_rows"] for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--cutovers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="writes per second")
    add_common_options(parser)
    args = parser.parse_args(argv)
    return run_per_version(args, lambda bin_dir: run(bin_dir, args.rows, args.cutovers, args.rate))


if __name__ == "__main__":
    sys.exit(main())
