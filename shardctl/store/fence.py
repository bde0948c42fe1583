"""The per-logical-shard write fence: a cutover stops writes to the moving logical shards and nothing else.

Each server keeps one row per logical shard (``tessera_logical_shard_fence``, created by the schema's
migration 3). A writer locks the rows of the logical shards it wrote ``FOR SHARE`` inside its own transaction,
before it commits (``check``); ``raise_fence`` updates them, so it waits for exactly the in-flight writes to
those logical shards, and from then on a write routed on an older epoch is refused (``FencedError``: the
writer waits for the new epoch and re-routes; its caller sees latency). A fence is never lowered: a cutover
that gives up publishes a new epoch with the old placement instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from shardctl.errors import StoreError

FENCE_TABLE = "tessera_logical_shard_fence"
FENCE_DDL = f"""
CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (
    logical_shard integer PRIMARY KEY CHECK (logical_shard >= 0),
    min_epoch     bigint NOT NULL DEFAULT 0,
    changed_at    timestamptz NOT NULL DEFAULT now()
)"""
FENCE_ROWS_SQL = f"INSERT INTO {FENCE_TABLE} (logical_shard) SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING"
_CHECK_SQL = (
    f"SELECT logical_shard, min_epoch FROM {FENCE_TABLE} WHERE logical_shard = ANY(%s) ORDER BY logical_shard FOR SHARE"
)


class FencedError(StoreError, RuntimeError):
    """A write routed with an epoch below the fence of some of its logical shards: refresh and re-route."""

    def __init__(self, shards: dict[int, int], write_epoch: int):
        super().__init__(
            f"logical shards {sorted(shards)} are fenced at epoch {max(shards.values())}; the write was routed "
            f"with epoch {write_epoch}: refresh the placement and route again"
        )
        self.shards = shards
        self.write_epoch = write_epoch

    @property
    def fence_epoch(self) -> int:
        """The epoch a writer must reach before writing these logical shards again."""
        return max(self.shards.values())


def ensure_fence(dsn: str, total_shards: int) -> None:
    """Create the fence table with a row for every logical shard (a missing row could not be locked, and
    a raise would then not wait for writes to that shard). Idempotent."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute(FENCE_DDL)
        conn.execute(FENCE_ROWS_SQL, (total_shards,))


def check(conn: psycopg.Connection, shards: Iterable[int], write_epoch: int) -> None:
    """Inside the write's transaction: lock the fence rows of ``shards`` ``FOR SHARE`` and refuse the write
    if any is fenced above ``write_epoch``. The lock holds until the write commits, which is what makes
    ``raise_fence`` wait for it."""
    rows = conn.execute(_CHECK_SQL, (sorted(set(shards)),)).fetchall()
    fenced = {shard: epoch for shard, epoch in rows if epoch > write_epoch}
    if fenced:
        raise FencedError(fenced, write_epoch)


def raise_fence(dsn: str, shards: Iterable[int], epoch: int, *, lock_timeout_s: float | None = None) -> int:
    """Refuse, from now on, writes to ``shards`` routed below ``epoch``; returns the rows raised.

    Waits for in-flight writes to those logical shards only. ``lock_timeout_s`` bounds the wait (the
    cutover gives up and retries later rather than hold writers back): a timeout raises
    ``psycopg.errors.LockNotAvailable`` and nothing is raised."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        if lock_timeout_s is not None:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
        return conn.execute(
            f"UPDATE {FENCE_TABLE} SET min_epoch = greatest(min_epoch, %s), changed_at = now() "
            "WHERE logical_shard = ANY(%s)",
            (epoch, sorted(set(shards))),
        ).rowcount


def fence_epochs(dsn: str, shards: Iterable[int]) -> dict[int, int]:
    """The fence of each of ``shards`` on one server (status and tests)."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return dict(
            conn.execute(
                f"SELECT logical_shard, min_epoch FROM {FENCE_TABLE} WHERE logical_shard = ANY(%s)",
                (sorted(set(shards)),),
            ).fetchall()
        )
