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
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
import sqlglot
from sqlglot import exp

from shardctl.store.grants import grant_shard_privileges

FEATURE_TABLE = "entity_features"
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


class SchemaError(RuntimeError):
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
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


FENCE_DDL = """CREATE TABLE tessera_shard_fence (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    min_epoch  bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tessera_shard_fence DEFAULT VALUES"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "entity feature table", feature_table_ddl()),
    Migration(2, "shard-map epoch fence", FENCE_DDL),
)

_MIGRATIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def apply_schema(dsn: str, *, connect_timeout: int = 5) -> list[int]:
    """Bring one shard to the newest schema; returns the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    with psycopg.connect(dsn, connect_timeout=connect_timeout) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            conn.execute(_MIGRATIONS_DDL)
        for migration in MIGRATIONS:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                row = conn.execute(
                    f"SELECT checksum FROM {MIGRATIONS_TABLE} WHERE version = %s", (migration.version,)
                ).fetchone()
                if row is not None:
                    if row[0] != migration.checksum:
                        raise SchemaError(
                            f"shard {dsn!r}: migration {migration.version} ({migration.name}) was applied with "
                            f"checksum {row[0]}, the code now has {migration.checksum}: add a new migration instead"
                        )
                    continue
                conn.execute(migration.sql)
                conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied_now.append(migration.version)
        with conn.transaction():  # every time: tables of later migrations get their grants too
            grant_shard_privileges(conn)
    return applied_now


def apply_all(shard_map) -> dict[int, list[int]]:  # shard_map: shardctl.store.shardmap.ShardMap
    """Apply the schema to every shard of the map; returns the versions applied now, by shard index."""
    return {index: apply_schema(dsn) for index, dsn in enumerate(shard_map.dsns)}


def placement_query(total_shards: int, shard_index: int, table: str = FEATURE_TABLE) -> str:
    """Rows on this shard, and how many of them the routing function sends elsewhere (must be 0)."""
    if total_shards < 1 or not 0 <= shard_index < total_shards:
        raise SchemaError(f"shard index {shard_index} out of range for {total_shards} shards")
    target = exp.func("tessera_shard_for", exp.column("entity_id"), exp.Literal.number(total_shards))
    misplaced = exp.Filter(
        this=exp.Count(this=exp.Star()),
        expression=exp.Where(this=exp.NEQ(this=target, expression=exp.Literal.number(shard_index))),
    )
    stored_hash_wrong = exp.Filter(
        this=exp.Count(this=exp.Star()),
        expression=exp.Where(
            this=exp.NEQ(
                this=exp.column("entity_hash"), expression=exp.func("tessera_entity_hash", exp.column("entity_id"))
            )
        ),
    )
    query = sqlglot.select(
        exp.Count(this=exp.Star()).as_("total_rows"),
        misplaced.as_("misplaced_rows"),
        stored_hash_wrong.as_("wrong_hash_rows"),
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
