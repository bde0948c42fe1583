"""Compare moved logical shards, source against target: counts and content checksums per logical shard,
then, where they differ, a row-by-row report by key (missing on the target, extra on it, different).

Writes keep flowing while this runs, so one comparison of two servers read at two moments can differ
without anything being wrong. Each comparison therefore reads the source first, waits until the target
has applied everything the source had then (``catch_up``, e.g. ``replication.wait_caught_up``), and only
then reads the target; keys that still differ are read again on both sides, round after round, until
they agree or the rounds run out. A row that keeps changing is re-checked, never skipped, and is reported
if it never settles. Rows are compared by an MD5 of their text in UTC, over the columns both sides have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from shardctl.control.migration.table import SHARD_COLUMN, MovedTable, count_rows

Key = tuple  # (logical_shard, *table.key)


@dataclass(frozen=True)
class ShardSummary:
    source_rows: int
    target_rows: int
    matched: bool


@dataclass
class VerifyReport:
    """A VDiff-like result; ``clean`` only when every logical shard matched in the end."""

    shards: dict[int, ShardSummary] = field(default_factory=dict)
    missing: list[Key] = field(default_factory=list)  # on the source, not on the target
    extra: list[Key] = field(default_factory=list)  # on the target, not on the source
    different: list[Key] = field(default_factory=list)
    rechecked: int = 0  # keys read again because they differed at first

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different) and all(s.matched for s in self.shards.values())

    def summary(self) -> str:
        rows = sum(s.source_rows for s in self.shards.values())
        if self.clean:
            return f"clean: {len(self.shards)} logical shards, {rows} rows, {self.rechecked} re-checked"
        return (
            f"NOT clean: {len(self.missing)} missing, {len(self.extra)} extra, {len(self.different)} different "
            f"(first: {(self.missing + self.extra + self.different)[:5]})"
        )


def verify(
    source_dsn: str,
    target_dsn: str,
    logical_shards: Iterable[int],
    *,
    table: MovedTable | None = None,
    catch_up: Callable[[], object] | None = None,
    rounds: int = 5,
) -> VerifyReport:
    """Compare ``logical_shards`` on both servers; ``catch_up`` runs between each source and target read."""
    table = table or MovedTable()
    shards = sorted(set(logical_shards))
    barrier = catch_up or (lambda: None)
    report = VerifyReport()
    with compare_connection(source_dsn) as source, compare_connection(target_dsn) as target:
        columns = common_columns(source, target, table)
        src = _shard_sums(source, table, columns, shards)
        barrier()
        dst = _shard_sums(target, table, columns, shards)
        suspects = [s for s in shards if src.get(s) != dst.get(s)]
        pending: dict[Key, tuple[str | None, str | None]] = {}
        if suspects:
            src_rows = _row_hashes(source, table, columns, suspects)
            barrier()
            dst_rows = _row_hashes(target, table, columns, suspects)
            pending = {k: (src_rows.get(k), dst_rows.get(k)) for k in src_rows.keys() | dst_rows.keys()}
            pending = {k: v for k, v in pending.items() if v[0] != v[1]}
        report.rechecked = len(pending)
        for _ in range(rounds):
            if not pending:
                break
            keys = sorted(pending)
            src_rows = hashes_of_keys(source, table, columns, keys)
            barrier()
            dst_rows = hashes_of_keys(target, table, columns, keys)
            pending = {k: (src_rows.get(k), dst_rows.get(k)) for k in keys}
            pending = {k: v for k, v in pending.items() if v[0] != v[1]}
        final_src = count_rows(source, table, shards)
        final_dst = count_rows(target, table, shards)
    bad_shards = {k[0] for k in pending}
    for shard in shards:
        report.shards[shard] = ShardSummary(final_src.get(shard, 0), final_dst.get(shard, 0), shard not in bad_shards)
    for key, (in_source, in_target) in sorted(pending.items()):
        if in_target is None:
            report.missing.append(key)
        elif in_source is None:
            report.extra.append(key)
        else:
            report.different.append(key)
    return report


def compare_connection(dsn: str) -> psycopg.Connection:
    """An autocommit connection whose row text (the hashes) does not depend on the server's settings."""
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    conn.execute("SET TIME ZONE 'UTC'")  # timestamptz text must not depend on each server's setting
    conn.execute("SET extra_float_digits = 3")
    return conn


def common_columns(source: psycopg.Connection, target: psycopg.Connection, table: MovedTable) -> list[str]:
    query = "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
    src = {r[0] for r in source.execute(query, (table.name,))}
    dst = {r[0] for r in target.execute(query, (table.name,))}
    if not src or not dst:
        raise RuntimeError(f"table {table.name!r} is missing on the {'source' if not src else 'target'}")
    return sorted(src & dst)


def _row_hash(columns: list[str]) -> sql.Composable:
    return sql.SQL("md5(ROW({}) ::text)").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def _key_columns(table: MovedTable) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, (SHARD_COLUMN, *table.key)))


def _shard_sums(conn: psycopg.Connection, table: MovedTable, columns: list[str], shards: list[int]) -> dict:
    """Per logical shard: row count and the sum of 64-bit prefixes of row hashes (order-independent)."""
    query = sql.SQL(
        "SELECT {col}, count(*), sum(('x' || substr({h}, 1, 16))::bit(64)::bigint::numeric) "
        "FROM {table} WHERE {col} = ANY(%s) GROUP BY 1"
    ).format(col=sql.Identifier(SHARD_COLUMN), h=_row_hash(columns), table=table.ident)
    return {r[0]: (r[1], r[2]) for r in conn.execute(query, (shards,))}


def _row_hashes(conn: psycopg.Connection, table: MovedTable, columns: list[str], shards: list[int]) -> dict:
    query = sql.SQL("SELECT {keys}, {h} FROM {table} WHERE {col} = ANY(%s)").format(
        keys=_key_columns(table), h=_row_hash(columns), table=table.ident, col=sql.Identifier(SHARD_COLUMN)
    )
    return {tuple(r[:-1]): r[-1] for r in conn.execute(query, (shards,))}


def hashes_of_keys(conn: psycopg.Connection, table: MovedTable, columns: list[str], keys: list[Key]) -> dict:
    """Row hashes of exactly these keys, in one round trip (``keys_filter``)."""
    condition, arrays = keys_filter(table, keys)
    query = sql.SQL("SELECT {keys}, {h} FROM {table} WHERE {condition}").format(
        keys=_key_columns(table), h=_row_hash(columns), table=table.ident, condition=condition
    )
    return {tuple(r[:-1]): r[-1] for r in conn.execute(query, arrays)}


def keys_filter(table: MovedTable, keys: list[Key]) -> tuple[sql.Composable, list[list]]:
    """A condition that holds for exactly these keys, and its parameters: the keys travel as arrays, one per key
    column (the key columns after ``logical_shard`` are text in the moved layout), and each is found by the
    primary key's index."""
    arrays = [list(col) for col in zip(*keys, strict=True)]
    types = ["int[]", *["text[]"] * len(table.key)]
    condition = sql.SQL("({keys}) IN (SELECT * FROM unnest({arrays}))").format(
        keys=_key_columns(table), arrays=sql.SQL(", ").join(sql.SQL("%s::" + t) for t in types)
    )
    return condition, arrays
