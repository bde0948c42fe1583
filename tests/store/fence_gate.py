"""A gate at the per-logical-shard fence, so a test can see a write arrive at its fence check instead of
sleeping and hoping it did.

A write locks the fence rows of the logical shards it wrote ``FOR SHARE`` before it merges
(``shardctl/store/fence.py``). A transaction holding those rows ``FOR UPDATE`` makes the write queue there,
where Postgres names the waiting session (``pg_blocking_pids``); ending the transaction lets it go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg

from shardctl.process import wait_until
from shardctl.store.fence import FENCE_TABLE


@contextmanager
def fence_gate(dsn: str, shards: Iterable[int]) -> Iterator[psycopg.Connection]:
    """Hold the fence rows of ``shards`` on one server until the block ends (or the connection's
    transaction is ended earlier): writes to those logical shards wait at their fence check meanwhile."""
    with psycopg.connect(dsn) as gate:
        gate.execute(
            f"SELECT 1 FROM {FENCE_TABLE} WHERE logical_shard = ANY(%s) FOR UPDATE", (sorted(set(shards)),)
        ).fetchall()
        yield gate
        gate.rollback()


def wait_for_blocked_session(dsn: str, gate: psycopg.Connection, timeout: float = 30.0) -> int:
    """The backend PID of the first session on ``dsn``'s server seen waiting for a lock ``gate``'s transaction
    holds (polled from another session: one transaction sees one snapshot of pg_stat_activity); fails the
    test if none arrives within ``timeout`` seconds (the write never reached its fence check)."""
    waiting: list[int] = []

    def arrived() -> bool:
        with psycopg.connect(dsn, autocommit=True) as probe:
            waiting.extend(
                pid
                for (pid,) in probe.execute(
                    "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (gate.info.backend_pid,)
                )
            )
        return bool(waiting)

    assert wait_until(arrived, timeout), f"no session waited at the fence gate within {timeout:.0f} s"
    return waiting[0]


def transaction_ended(dsn: str, pid: int) -> bool:
    """True once backend ``pid`` is outside any transaction (idle) or disconnected: its write rolled back or
    committed, and it holds no fence row any more."""
    with psycopg.connect(dsn, autocommit=True) as probe:
        row = probe.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is None or row[0] == "idle"
