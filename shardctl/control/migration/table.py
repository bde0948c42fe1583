"""The moved table as the migration engine sees it: a name, its key, the column that names the logical shard.

The engine never hard-codes the store's DDL (phase B moves ``shardctl/store/schema.py``): it only needs the table
to be flat with ``logical_shard`` leading its primary key, which ``check_layout`` asserts on a live server
before anything is published. ``FLAT_TABLE_DDL`` is that layout, used by the tests and benchmarks until the
store's own schema adopts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from shardctl.errors import ControlError

SHARD_COLUMN = "logical_shard"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

FLAT_TABLE_DDL = """CREATE TABLE {table} (
    logical_shard integer NOT NULL CHECK (logical_shard >= 0),
    entity_id     text NOT NULL CHECK (entity_id <> ''),
    feature_set   text NOT NULL CHECK (feature_set <> ''),
    features      jsonb NOT NULL,
    event_ts      timestamptz NOT NULL,
    version       bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    PRIMARY KEY (logical_shard, entity_id, feature_set)
) WITH (fillfactor = 50)"""


class LayoutError(ControlError, RuntimeError):
    """The table cannot be moved by logical shard (missing, or ``logical_shard`` not leading its key)."""


def identifier(name: str) -> str:
    """``name`` after refusing anything but lower-case snake case (names reach DDL and slot names)."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"unsafe SQL identifier {name!r}: use lower-case letters, digits and _ (max 63)")
    return name


@dataclass(frozen=True)
class MovedTable:
    """A table moved by logical shard; ``key`` is its primary key after ``logical_shard``."""

    name: str = "entity_features"
    key: tuple[str, ...] = ("entity_id", "feature_set")

    def __post_init__(self) -> None:
        identifier(self.name)
        for column in self.key:
            identifier(column)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.name)

    def ddl(self) -> sql.Composed:
        """The flat layout for this table name (tests, benchmarks, provisioning until the store adopts it)."""
        return sql.SQL(FLAT_TABLE_DDL).format(table=self.ident)


def primary_key(conn: psycopg.Connection, table: str) -> tuple[str, ...]:
    """The table's primary key columns in index order; empty if the table has none."""
    rows = conn.execute(
        """SELECT a.attname
             FROM pg_index i
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) ON true
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
            ORDER BY k.pos""",
        (table,),
    ).fetchall()
    return tuple(r[0] for r in rows)


def check_layout(conn: psycopg.Connection, table: MovedTable) -> None:
    """Refuse a table whose primary key is not ``(logical_shard, *key)``.

    Why it matters: a row filter on a column outside the replica identity makes every UPDATE and DELETE of
    the table fail on the source (probed on PG 15 and 18), and the key leading with the logical shard keeps
    a shard's rows contiguous in the index for counting, copying and cleanup.
    """
    found = primary_key(conn, table.name)
    if not found:
        raise LayoutError(f"table {table.name!r} is missing or has no primary key")
    if found != (SHARD_COLUMN, *table.key):
        raise LayoutError(f"table {table.name!r} has primary key {found}; expected {(SHARD_COLUMN, *table.key)}")


def count_rows(conn: psycopg.Connection, table: MovedTable, shards: Iterable[int]) -> dict[int, int]:
    """Rows per logical shard (an index range scan each: ``logical_shard`` leads the key)."""
    query = sql.SQL("SELECT {col}, count(*) FROM {table} WHERE {col} = ANY(%s) GROUP BY 1").format(
        col=sql.Identifier(SHARD_COLUMN), table=table.ident
    )
    return dict(conn.execute(query, (list(shards),)).fetchall())
