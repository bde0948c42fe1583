"""Backup benchmark (issue 22, item 6): base backup and restore throughput against a raw copy of the same data
directories, the time to restore the whole stack to a point (RTO), and the WAL archive's lag under a writer's
steady load (the RPO of an accident between restore points).

    PYTHONPATH=. .venv/bin/python bench/backup/bench_backup.py [--rows 200000] [--load-seconds 30] [--json FILE]

It starts its own stack (catalog + 2 servers) in a temporary directory and stops it (and the restored one) at the
end. Figures go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from shardctl.backup import base
from shardctl.backup.base import lsn_value
from shardctl.backup.points import take_point
from shardctl.backup.restore import restore
from shardctl.backup.target import open_target
from shardctl.process import free_port
from shardctl.settings import load_settings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.writer import FeatureRow

FEATURE_SET = "bench_backup_v1"


def _rows(start: int, count: int) -> list[FeatureRow]:
    ts = datetime(2026, 12, 1, tzinfo=UTC)
    return [
        FeatureRow(f"e-{n:09d}", ts, {"spend": float(n), "tier": "gold", "visits": n % 97})
        for n in range(start, start + count)
    ]


def _store(stack: Stack) -> FeatureStore:
    written = json.loads(stack.settings_file.read_text())
    return FeatureStore.open(
        load_settings(catalog_dsn=written["catalog_dsn"], servers=written["servers"]), prepare_topology=False
    )


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def raw_copy(stack: Stack, scratch: Path) -> dict[str, float]:
    """``cp -a`` of every server's data directory (not a consistent copy: the floor a backup is compared with)."""
    state = stack.load_state()
    assert state is not None
    dirs = [s.data_dir for s in stack.postgres_servers(state)]
    size = sum(_du(d) for d in dirs)
    scratch.mkdir(parents=True)
    started = time.monotonic()
    for d in dirs:
        subprocess.run(["cp", "-a", str(d), str(scratch / d.name)], check=True)
    seconds = time.monotonic() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return {"bytes": size, "seconds": round(seconds, 2), "mb_per_s": round(size / 1e6 / seconds, 1)}


def _segment_end(wal_file: str, segment_size: int) -> int:
    """The LSN where WAL file ``wal_file`` (timeline, log, segment: 8 hex digits each) ends."""
    log, seg = int(wal_file[8:16], 16), int(wal_file[16:24], 16)
    return (log << 32) + (seg + 1) * segment_size


def archive_lag(stack: Stack, seconds: float) -> dict[str, float]:
    """WAL written but not yet archived, sampled on server-0 while a writer keeps writing batches."""
    target = open_target(stack.layout)
    dsn = target.dsns["server-0"]
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with _store(stack) as store:
            n = 10_000_000
            while not stop.is_set():
                store.write(FEATURE_SET, _rows(n, 2000))
                n += 2000
                written[0] += 2000

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    lags, ages = [], []
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            lsn, archived, at, segment = conn.execute(
                "SELECT pg_current_wal_lsn()::text, last_archived_wal, last_archived_time, "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') FROM pg_stat_archiver"
            ).fetchone()
            if not archived or len(archived) < 24 or archived.endswith(".history"):
                time.sleep(0.5)
                continue
            lag = max(0, lsn_value(lsn) - _segment_end(archived, segment))
            age = (datetime.now(UTC) - at).total_seconds() if at else 0.0
            lags.append(float(lag))
            ages.append(float(age or 0))
            time.sleep(0.5)
    stop.set()
    writer.join(timeout=60)
    return {
        "rows_written": written[0],
        "unarchived_wal_bytes_p50": statistics.median(lags),
        "unarchived_wal_bytes_max": max(lags),
        "seconds_since_last_archived_max": round(max(ages), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tessera-bench-backup-"))
    stack = Stack(root / "stack")
    restored = Stack(root / "restored")
    figures: dict[str, object] = {"rows": args.rows}
    try:
        stack.up(servers=2, base_port=free_port(block=10))
        with _store(stack) as store:
            for start in range(0, args.rows, 50_000):
                store.write(FEATURE_SET, _rows(start, min(50_000, args.rows - start)))
        target = open_target(stack.layout)
        figures["raw_copy"] = raw_copy(stack, root / "raw-copy")
        report = base.create(target, full=True, point="bench-full")
        size = sum(b.size for b in report.backups)
        figures["full_backup"] = {
            "bytes": size,
            "seconds": report.seconds,
            "mb_per_s": round(size / 1e6 / report.seconds, 1),
            "stored_bytes": sum(b.repo_size for b in report.backups),
            "fence_held_ms": report.point.fence_held_ms,
        }
        figures["archive_lag"] = archive_lag(stack, args.load_seconds)
        point = take_point(target, "bench-after-load")
        done = restore(target, point, restored.data_dir)
        figures["restore"] = {"seconds": done.seconds, "mb_per_s": round(size / 1e6 / done.seconds, 1)}
    finally:
        print(json.dumps(figures, indent=2), flush=True)  # what was measured, even if a later step failed
        restored.down(purge=True)
        stack.down(purge=True)
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
