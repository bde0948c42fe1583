"""How much a plan moves: rows counted per logical shard, bytes from the table's size per row.

Counting is exact (an index range scan per logical shard, ``logical_shard`` leading the key); bytes are
an estimate, rows times the table's average on-disk bytes per row (heap, TOAST and indexes over
``pg_class.reltuples``), which is what the copy will write and the cleanup will free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from shardctl.control.migration.plan import Move, group_by_pair
from shardctl.control.migration.table import MovedTable, count_rows


@dataclass(frozen=True)
class MoveEstimate:
    source: str
    target: str
    logical_shards: tuple[int, ...]
    rows: int
    bytes: int


def bytes_per_row(conn: psycopg.Connection, table: MovedTable) -> float:
    """Average on-disk bytes per row (0 for an empty table)."""
    row = conn.execute(
        "SELECT pg_total_relation_size(oid), greatest(reltuples, 0) FROM pg_class WHERE oid = to_regclass(%s)",
        (table.name,),
    ).fetchone()
    if row is None:
        return 0.0
    rows = row[1]
    if not rows:  # never analysed (a young table): count it
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident)).fetchone()[0]
    return row[0] / rows if rows else 0.0


def estimate_moves(
    moves: Iterable[Move], dsn_of: Mapping[str, str], *, table: MovedTable | None = None
) -> list[MoveEstimate]:
    """One estimate per (source, target) pair of the plan, read from each source server."""
    table = table or MovedTable()
    estimates = []
    for (source, target), shards in group_by_pair(moves).items():
        with psycopg.connect(dsn_of[source], connect_timeout=5) as conn:
            rows = sum(count_rows(conn, table, shards).values())
            size = bytes_per_row(conn, table)
        estimates.append(MoveEstimate(source, target, shards, rows, round(rows * size)))
    return estimates
