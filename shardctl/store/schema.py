"""The per-shard schema, defined once here and applied idempotently to every shard.

Migrations are numbered; each runs in its own transaction under an advisory lock and is recorded in
``tessera_schema_migrations`` on the shard with a checksum of its SQL, so re-applying is a no-op and a
migration edited after it shipped is reported instead of silently skipped. sqlglot validates every
identifier that reaches SQL text, parses the generated DDL (exactly one ``CREATE TABLE`` of the expected
name), and builds the verification and profiling queries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg
import sqlglot
from sqlglot import exp

from shardctl.errors import StoreError
from shardctl.store import predictions
from shardctl.store.changes import change_log_ddl
from shardctl.store.connection import connect
from shardctl.store.errors import describe_dsn
from shardctl.store.fence import FENCE_DDL as FENCE_TABLE_DDL
from shardctl.store.fence import FENCE_ROWS_SQL
from shardctl.store.grants import grant_shard_privileges
from shardctl.store.hashing import SQL_FUNCTIONS, TOTAL_LOGICAL_SHARDS

FEATURE_TABLE = "entity_features"
if predictions.FEATURE_TABLE != FEATURE_TABLE:  # its SQL names the feature table itself (no import cycle)
    raise ImportError("shardctl.store.predictions names another feature table")
MIGRATIONS_TABLE = "tessera_schema_migrations"
_SCHEMA_LOCK_KEY = 0x7E55E7A2
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Storage settings for an update-heavy table (why: docs/architecture/logical.md, "Storage settings").
TUNED_STORAGE: Mapping[str, int | float] = {
    "fillfactor": 50,
    "autovacuum_vacuum_scale_factor": 0.02,
    "autovacuum_vacuum_threshold": 1000,
    "autovacuum_vacuum_insert_scale_factor": 0.05,
    "autovacuum_analyze_scale_factor": 0.02,
    "autovacuum_vacuum_cost_limit": 2000,
}


class SchemaError(StoreError, RuntimeError):
    """Unsafe identifier, invalid DDL, or a shard whose recorded migrations disagree with the code."""


def safe_identifier(name: str) -> str:
    """``name`` rendered as a Postgres identifier, after refusing anything but lower-case snake case."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise SchemaError(f"unsafe SQL identifier {name!r}: use lower-case letters, digits and _ (max 63)")
    return exp.to_identifier(name).sql("postgres")


def feature_table_ddl(table: str = FEATURE_TABLE, storage: Mapping[str, int | float] | None = TUNED_STORAGE) -> str:
    """The entity feature table. ``storage=None`` gives Postgres' defaults (the benchmark's untuned twin)."""
    name = safe_identifier(table)
    with_clause = ""
    if storage:
        params = ", ".join(
            f"{safe_identifier(k)} = {float(v) if isinstance(v, float) else int(v)}" for k, v in storage.items()
        )
        with_clause = f" WITH ({params})"
    ddl = f"""CREATE TABLE {name} (
    entity_id   text NOT NULL CHECK (entity_id <> ''),
    feature_set text NOT NULL CHECK (feature_set <> ''),
    entity_hash bigint GENERATED ALWAYS AS (tessera_entity_hash(entity_id)) STORED,
    features    jsonb NOT NULL,
    event_ts    timestamptz NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    PRIMARY KEY (entity_id, feature_set)
){with_clause}"""
    validate_create_table(ddl, table)
    return ddl


def validate_create_table(ddl: str, table: str) -> None:
    """Refuse DDL that is not exactly one ``CREATE TABLE table``: catches typos before any shard sees them."""
    try:
        statements = sqlglot.parse(ddl, read="postgres")
    except sqlglot.errors.ParseError as exc:
        raise SchemaError(f"invalid DDL for {table}: {exc}") from exc
    if len(statements) != 1 or not isinstance(statements[0], exp.Create) or statements[0].kind != "TABLE":
        raise SchemaError(f"DDL for {table} must be exactly one CREATE TABLE statement")
    created = statements[0].find(exp.Table)
    if created is None or created.name != table:
        raise SchemaError(f"DDL creates {created.name if created else None!r}, expected {table!r}")


@dataclass(frozen=True)
class Migration:
    """One numbered change. ``sql`` runs in one transaction; ``steps`` (when given) run in order, each in its
    own transaction unless it is an ``Online`` step (``CREATE INDEX CONCURRENTLY`` cannot run in one), and
    each must be idempotent: a migration killed between steps runs again from its first step."""

    version: int
    name: str
    sql: str = ""
    steps: tuple[str | Online, ...] = ()

    @property
    def checksum(self) -> str:
        text = self.sql + "".join(f"\x00{getattr(step, 'sql', step)}" for step in self.steps)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Online:
    """A statement that must run outside a transaction (``CREATE INDEX CONCURRENTLY``)."""

    sql: str


FENCE_DDL = """CREATE TABLE tessera_shard_fence (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    min_epoch  bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tessera_shard_fence DEFAULT VALUES"""

# Migration 3: the logical shard leads the primary key (docs/architecture/logical.md, "Placement"). Existing rows
# are backfilled from the stored hash; the new key's index is built online, then swapped in as the primary key.
# Writers of an older Tessera (ON CONFLICT (entity_id, feature_set)) must be stopped while it runs.
_LOGICAL_SHARD_KEY = "entity_features_lkey"
LOGICAL_SHARD_STEPS: tuple[str | Online, ...] = (
    f"""ALTER TABLE {FEATURE_TABLE} ADD COLUMN IF NOT EXISTS logical_shard integer;
UPDATE {FEATURE_TABLE} SET logical_shard = tessera_shard_of_hash(entity_hash, {TOTAL_LOGICAL_SHARDS})
 WHERE logical_shard IS NULL;
ALTER TABLE {FEATURE_TABLE} ALTER COLUMN logical_shard SET NOT NULL;
ALTER TABLE {FEATURE_TABLE} DROP CONSTRAINT IF EXISTS entity_features_logical_shard_check;
ALTER TABLE {FEATURE_TABLE} ADD CONSTRAINT entity_features_logical_shard_check
    CHECK (logical_shard >= 0 AND logical_shard < {TOTAL_LOGICAL_SHARDS});
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('{_LOGICAL_SHARD_KEY}') AND NOT indisvalid)
    THEN EXECUTE 'DROP INDEX {_LOGICAL_SHARD_KEY}';
    END IF;
END $$""",
    Online(
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {_LOGICAL_SHARD_KEY} "
        f"ON {FEATURE_TABLE} (logical_shard, entity_id, feature_set)"
    ),
)
LOGICAL_SHARD_SWAP = f"""DO $$ BEGIN
    IF to_regclass('{_LOGICAL_SHARD_KEY}') IS NOT NULL THEN
        ALTER TABLE {FEATURE_TABLE} DROP CONSTRAINT entity_features_pkey;
        ALTER TABLE {FEATURE_TABLE} ADD CONSTRAINT entity_features_pkey PRIMARY KEY USING INDEX {_LOGICAL_SHARD_KEY};
    END IF;
END $$;
{FENCE_TABLE_DDL};
{FENCE_ROWS_SQL.replace("%s", str(TOTAL_LOGICAL_SHARDS))}"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "entity feature table", feature_table_ddl()),
    Migration(2, "shard-map epoch fence", FENCE_DDL),
    Migration(
        3, "logical shard leads the primary key; per-logical-shard fence", LOGICAL_SHARD_SWAP, LOGICAL_SHARD_STEPS
    ),
    # 3 is taken by the logical-shard key (resharding); the change log only needs entity_id and feature_set.
    Migration(4, "feature change log (cache invalidation)", change_log_ddl(FEATURE_TABLE)),
    Migration(5, "precomputed predictions and the scorer's cursors", predictions.PREDICTIONS_DDL),
)

_MIGRATIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def apply_schema(dsn: str, *, connect_timeout: int = 5) -> list[int]:
    """Bring one server to the newest schema; returns the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    with connect(dsn, connect_timeout=connect_timeout, autocommit=True) as conn:
        # A session-level lock: a migration's online steps run outside any transaction.
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_KEY,))
        try:
            conn.execute(SQL_FUNCTIONS)  # the routing functions the table's columns use (CREATE OR REPLACE)
            conn.execute(_MIGRATIONS_DDL)
            for migration in MIGRATIONS:
                if _recorded(conn, dsn, migration):
                    continue
                for step in migration.steps:
                    if isinstance(step, Online):
                        conn.execute(step.sql)
                    else:
                        with conn.transaction():
                            conn.execute(step)
                with conn.transaction():
                    if migration.sql:
                        conn.execute(migration.sql)
                    conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.version)
            with conn.transaction():  # every time: tables of later migrations get their grants too
                grant_shard_privileges(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_KEY,))
    return applied_now


def _recorded(conn: psycopg.Connection, dsn: str, migration: Migration) -> bool:
    """Whether ``migration`` is applied on this server; ``SchemaError`` if it was applied with other SQL."""
    row = conn.execute(f"SELECT checksum FROM {MIGRATIONS_TABLE} WHERE version = %s", (migration.version,)).fetchone()
    if row is None:
        return False
    if row[0] != migration.checksum:
        raise SchemaError(
            f"shard {describe_dsn(dsn)}: migration {migration.version} ({migration.name}) was applied with "
            f"checksum {row[0]}, the code now has {migration.checksum}: add a new migration instead"
        )
    return True


def apply_all(shard_map) -> dict[int, list[int]]:  # shard_map: shardctl.store.shardmap.ShardMap
    """Apply the schema to every shard of the map; returns the versions applied now, by shard index."""
    return {index: apply_schema(dsn) for index, dsn in enumerate(shard_map.dsns)}


def placement_query(placed: Sequence[int], table: str = FEATURE_TABLE) -> str:
    """Rows on a server, how many belong to logical shards placed elsewhere, and how many carry a logical shard
    or a hash that their entity id does not give (each must be 0 outside a migration's copies)."""
    shards = sorted(set(placed))
    if any(not 0 <= s < TOTAL_LOGICAL_SHARDS for s in shards):
        raise SchemaError(f"logical shards must lie in [0, {TOTAL_LOGICAL_SHARDS}), got {shards}")
    logical_shard = exp.column("logical_shard")
    elsewhere = (
        exp.Not(this=exp.In(this=logical_shard, expressions=[exp.Literal.number(s) for s in shards]))
        if shards
        else exp.true()
    )
    derived = exp.func("tessera_shard_for", exp.column("entity_id"), exp.Literal.number(TOTAL_LOGICAL_SHARDS))

    def count_where(condition: exp.Expression) -> exp.Expression:
        return exp.Filter(this=exp.Count(this=exp.Star()), expression=exp.Where(this=condition))

    stored_hash_wrong = exp.NEQ(
        this=exp.column("entity_hash"), expression=exp.func("tessera_entity_hash", exp.column("entity_id"))
    )
    query = sqlglot.select(
        exp.Count(this=exp.Star()).as_("total_rows"),
        count_where(elsewhere).as_("misplaced_rows"),
        count_where(exp.NEQ(this=logical_shard, expression=derived)).as_("wrong_logical_shard_rows"),
        count_where(stored_hash_wrong).as_("wrong_hash_rows"),
    ).from_(exp.to_table(_checked(table)))
    return query.sql("postgres")


def profile_query(table: str = FEATURE_TABLE) -> str:
    """A cheap profile of a shard's feature table: rows, entities, feature sets, newest write, bytes."""
    name = _checked(table)
    query = sqlglot.select(
        exp.Count(this=exp.Star()).as_("total_rows"),
        exp.Count(this=exp.Distinct(expressions=[exp.column("entity_id")])).as_("entities"),
        exp.Count(this=exp.Distinct(expressions=[exp.column("feature_set")])).as_("feature_sets"),
        exp.Max(this=exp.column("written_at")).as_("newest_write"),
        exp.Max(this=exp.column("version")).as_("max_version"),
        exp.func("pg_total_relation_size", exp.Literal.string(name)).as_("total_bytes"),
    ).from_(exp.to_table(name))
    return query.sql("postgres")


def _checked(table: str) -> str:
    safe_identifier(table)
    return table
