"""The per-shard schema: applied once per shard, recorded, drift reported; identifiers and DDL checked."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shardctl.store.hashing import install_sql_functions
from shardctl.store.schema import (
    MIGRATIONS,
    TUNED_STORAGE,
    SchemaError,
    apply_all,
    apply_schema,
    feature_table_ddl,
    placement_query,
    profile_query,
    safe_identifier,
    validate_create_table,
)
from shardctl.store.shardmap import ShardMapStore


@pytest.mark.req("JTBD-03.schema")
def test_schema_is_on_every_shard_recorded_and_reapplying_is_a_no_op(settings) -> None:
    shard_map = ShardMapStore(settings.catalog_dsn).current()  # as the control plane (the writer may not)
    assert apply_all(shard_map) == {0: [], 1: []}
    for dsn in shard_map.dsns:
        with psycopg.connect(dsn) as conn:
            recorded = conn.execute("SELECT version, checksum FROM tessera_schema_migrations ORDER BY 1").fetchall()
            assert recorded == [(m.version, m.checksum) for m in MIGRATIONS]
            options = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'entity_features'").fetchone()[0]
            assert f"fillfactor={TUNED_STORAGE['fillfactor']}" in options
            conn.execute(profile_query()).fetchone()


@pytest.mark.req("JTBD-03.schema")
def test_a_migration_changed_after_it_was_applied_is_reported(settings) -> None:
    """On a scratch database of shard 0, so the shared shard's own records stay untouched."""
    scratch = f"schema_{uuid.uuid4().hex[:8]}"
    admin_dsn = settings.shard_dsns()[0]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {scratch}")
    scratch_dsn = make_conninfo(admin_dsn, dbname=scratch)
    try:
        with psycopg.connect(scratch_dsn) as conn:
            install_sql_functions(conn)
        assert apply_schema(scratch_dsn) == [m.version for m in MIGRATIONS]
        assert apply_schema(scratch_dsn) == []
        with psycopg.connect(scratch_dsn) as conn:
            conn.execute("UPDATE tessera_schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(SchemaError, match="migration 1"):
            apply_schema(scratch_dsn)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")


@pytest.mark.req("JTBD-03.schema")
@pytest.mark.parametrize("name", ["", "Entity", "x; DROP TABLE t", 'a"b', "1abc", "a" * 64, None])
def test_unsafe_identifiers_are_refused(name) -> None:
    with pytest.raises(SchemaError, match="unsafe SQL identifier"):
        safe_identifier(name)
    with pytest.raises(SchemaError):
        feature_table_ddl(name)


@pytest.mark.req("JTBD-03.schema")
def test_generated_ddl_and_queries_parse_and_bad_ddl_is_refused() -> None:
    assert "fillfactor = 50" in feature_table_ddl("bench_tuned")
    assert "WITH" not in feature_table_ddl("bench_default", storage=None)
    with pytest.raises(SchemaError, match="exactly one"):
        validate_create_table("CREATE TABLE t (a int); DROP TABLE u", "t")
    with pytest.raises(SchemaError, match="expected 't'"):
        validate_create_table("CREATE TABLE u (a int)", "t")
    with pytest.raises(SchemaError, match="logical shards must lie in"):
        placement_query([0, 256])
    assert "NOT LOGICAL_SHARD IN (1, 3)" in placement_query([3, 1, 3]).upper()
    assert "TESSERA_SHARD_FOR(ENTITY_ID, 256)" in placement_query([1]).upper()
