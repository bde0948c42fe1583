"""Logical shards placed on named servers: the in-place schema migration of an older store, the catalog's
server registry, compare-and-set publishing and epoch acknowledgements, routing by placement, pools that
survive a placement-only epoch, and the writer that waits at a per-logical-shard fence and re-routes.

Each test works in scratch databases on the session stack's first server (two databases stand for two
servers: they have different DSNs), so nothing here disturbs the shared store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from shardctl.process import wait_until
from shardctl.settings import TesseraSettings
from shardctl.store.fence import FencedError, raise_fence
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS, install_sql_functions, logical_shard_for, shard_for
from shardctl.store.reader import READ_SQL, FeatureReader
from shardctl.store.schema import FENCE_DDL, MIGRATIONS, MIGRATIONS_TABLE, apply_schema, feature_table_ddl
from shardctl.store.shardmap import ShardMap, ShardMapError, ShardMapStore
from shardctl.store.writer import FeatureWriter
from tests.store.conftest import make_rows
from tests.store.fence_gate import fence_gate, transaction_ended, wait_for_blocked_session

OLD_CATALOG_DDL = """
CREATE TABLE tessera_shard_epochs (epoch bigint PRIMARY KEY, total_shards integer NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(), note text NOT NULL DEFAULT '');
CREATE TABLE tessera_shard_map (epoch bigint NOT NULL REFERENCES tessera_shard_epochs (epoch),
    shard_index integer NOT NULL, dsn text NOT NULL, PRIMARY KEY (epoch, shard_index));
"""


def reader_sessions(dsn: str) -> dict[int, datetime]:
    """The sessions on ``dsn``'s database whose last statement was a feature read (a reader's pooled
    connections), by backend PID, with when each connected."""
    prefix = READ_SQL.split("%s")[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, backend_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND starts_with(query, %s)",
            (prefix,),
        )
        return dict(rows.fetchall())


@pytest.fixture
def scratch(settings: TesseraSettings) -> Iterator[dict[str, str]]:
    """Three scratch databases on the first server: a catalog and two 'servers'."""
    admin = settings.shard_dsns()[0]
    names = {role: f"pl_{role}_{uuid.uuid4().hex[:6]}" for role in ("catalog", "a", "b")}
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f"CREATE DATABASE {name}")
    try:
        yield {role: make_conninfo(admin, dbname=name) for role, name in names.items()}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.req("JTBD-03.schema")
def test_a_store_from_before_logical_shards_is_migrated_in_place(scratch: dict[str, str]) -> None:
    dsn = scratch["a"]
    with psycopg.connect(dsn) as conn:  # the store as versions 1 and 2 left it, with rows in it
        install_sql_functions(conn)
        conn.execute(MIGRATIONS_TABLE_DDL)
        conn.execute(feature_table_ddl())
        conn.execute(FENCE_DDL)
        for version, migration in ((1, "entity feature table"), (2, "shard-map epoch fence")):
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES (%s, %s, %s)",
                (version, migration, MIGRATIONS[version - 1].checksum),
            )
        conn.execute(
            "INSERT INTO entity_features (entity_id, feature_set, features, event_ts) "
            "SELECT 'old' || i, 'fs', '{}'::jsonb, now() FROM generate_series(1, 2000) i"
        )
    assert apply_schema(dsn) == [3, 4, 5]  # 4: the change log, after the key moved; 5: precomputed predictions
    assert apply_schema(dsn) == []
    with psycopg.connect(dsn) as conn:
        key = conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.pos) FROM pg_index i "
            "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, pos) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = 'entity_features'::regclass AND i.indisprimary"
        ).fetchone()[0]
        assert key == ["logical_shard", "entity_id", "feature_set"]
        stored = dict(conn.execute("SELECT entity_id, logical_shard FROM entity_features").fetchall())
        assert len(stored) == 2000
        assert stored == {eid: shard_for(eid, TOTAL_LOGICAL_SHARDS) for eid in stored}
        fence_rows = conn.execute("SELECT count(*), max(min_epoch) FROM tessera_logical_shard_fence").fetchone()
        assert fence_rows == (TOTAL_LOGICAL_SHARDS, 0)
    with FeatureWriter(ShardMap(1, (dsn,))) as writer:  # the migrated table takes writes with the new key
        report = writer.write("fs", make_rows(50, prefix="old"))
    # old1..old49 are found under their backfilled keys (their stored events are newer: left alone); old0 is new
    assert (report.inserted, report.unchanged) == (1, 49)


MIGRATIONS_TABLE_DDL = f"""CREATE TABLE {MIGRATIONS_TABLE} (version integer PRIMARY KEY, name text NOT NULL,
    checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""


@pytest.mark.req("JTBD-03.shard-map")
def test_an_older_catalog_gets_server_names_and_the_initial_placement(scratch: dict[str, str]) -> None:
    with psycopg.connect(scratch["catalog"]) as conn:
        conn.execute(OLD_CATALOG_DDL)
        conn.execute("INSERT INTO tessera_shard_epochs (epoch, total_shards) VALUES (1, 2)")
        conn.execute("INSERT INTO tessera_shard_map VALUES (1, 0, %s), (1, 1, %s)", (scratch["a"], scratch["b"]))
    maps = ShardMapStore(scratch["catalog"])
    maps.ensure_schema()
    current = maps.current()
    assert current.servers == ("server-0", "server-1")
    registered = {name: conninfo_to_dict(dsn) for name, dsn in maps.registered_servers().items()}
    assert registered == {"server-0": conninfo_to_dict(scratch["a"]), "server-1": conninfo_to_dict(scratch["b"])}
    # l % 2: for two servers exactly where hash % 2 put every row before logical shards existed
    assert all(current.server_index_for(f"e{i}") == shard_for(f"e{i}", 2) for i in range(2000))


@pytest.mark.req("JTBD-03.shard-map")
def test_servers_are_registered_by_name_and_placements_publish_by_compare_and_set(scratch: dict[str, str]) -> None:
    maps = ShardMapStore(scratch["catalog"])
    first = maps.initialize([scratch["a"]])
    assert (first.servers, set(first.placement)) == (("server-0",), {0})
    maps.register_server("extra", scratch["b"])
    maps.register_server("extra", scratch["b"])  # idempotent
    with pytest.raises(ShardMapError, match="already registered"):
        maps.register_server("extra", scratch["a"])
    with pytest.raises(ShardMapError, match="bad server name"):
        maps.register_server("Bad Name", scratch["b"])
    assert maps.current().epoch == first.epoch  # registering never changes the placement

    target = {shard: ("extra" if shard % 4 == 0 else "server-0") for shard in range(TOTAL_LOGICAL_SHARDS)}
    with pytest.raises(ShardMapError, match="unknown server"):
        maps.publish_placement({**target, 0: "nowhere"}, expected_epoch=first.epoch)
    published = maps.publish_placement(target, expected_epoch=first.epoch, note="test")
    with pytest.raises(ShardMapError, match=f"at epoch {published.epoch}, not {first.epoch}"):
        maps.publish_placement(target, expected_epoch=first.epoch)
    current = maps.current()
    assert current == published
    assert current.epoch == first.epoch + 1
    assert current.placement_by_name() == target
    assert current.logical_shards_on("extra") == list(range(0, TOTAL_LOGICAL_SHARDS, 4))
    assert conninfo_to_dict(current.dsn_of("extra")) == conninfo_to_dict(scratch["b"])
    for i in range(500):
        eid = f"id{i}"
        expected = scratch["b" if logical_shard_for(eid) % 4 == 0 else "a"]
        assert conninfo_to_dict(current.dsn_for(eid)) == conninfo_to_dict(expected)


@pytest.mark.req("JTBD-03.shard-map")
def test_reads_and_writes_follow_the_placement_and_pools_survive_a_placement_only_epoch(
    scratch: dict[str, str],
) -> None:
    for dsn in (scratch["a"], scratch["b"]):
        apply_schema(dsn)
    maps = ShardMapStore(scratch["catalog"])
    first = maps.initialize([scratch["a"], scratch["b"]])
    with maps.watch(role="test") as watcher, FeatureWriter(watcher) as writer, FeatureReader(watcher) as reader:
        writer.write("fs", make_rows(400))
        assert len(reader.get_features([f"e{i}" for i in range(400)], "fs").records) == 400
        assert reader_sessions(scratch["a"])  # the reader reads server-0 through a pooled connection
        with psycopg.connect(scratch["a"]) as conn:
            before_move = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # the server's clock
        # Move every logical shard to server-0 (rows copied by hand: what a migration's copy does).
        with psycopg.connect(scratch["b"]) as src, psycopg.connect(scratch["a"]) as dst:
            rows = src.execute(
                "SELECT logical_shard, entity_id, feature_set, features, event_ts, version FROM entity_features"
            ).fetchall()
            with dst.cursor() as cur:
                cur.executemany(
                    "INSERT INTO entity_features (logical_shard, entity_id, feature_set, features, event_ts, version) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    [(*r[:3], Jsonb(r[3]), *r[4:]) for r in rows],
                )
        moved = maps.publish_placement(
            dict.fromkeys(range(TOTAL_LOGICAL_SHARDS), "server-0"), expected_epoch=first.epoch
        )
        wait_until(lambda: watcher.current.epoch == moved.epoch, 10)
        read = reader.get_features([f"e{i}" for i in range(400)], "fs")
        assert len(read.records) == 400
        assert {r.shard for r in read.records.values()} == {0}
        sessions = reader_sessions(scratch["a"])
        assert sessions  # the read just made
        assert max(sessions.values()) < before_move  # server-0 kept its pool: no connection opened since
        report = writer.write("fs", make_rows(10, prefix="after"))
        assert report.rows_per_shard == {0: 10}
        wait_until(lambda: maps.unacknowledged(moved.epoch, heartbeat_within_s=30) == [], 15)
        assert maps.acknowledgements(heartbeat_within_s=30)[watcher.process] == moved.epoch
    assert watcher.process not in maps.acknowledgements(heartbeat_within_s=30)  # stopped: gone


@pytest.mark.req("JTBD-03.shard-map")
@pytest.mark.req("JTBD-03.migration")
def test_a_write_to_a_fenced_logical_shard_waits_for_the_next_epoch_then_lands(scratch: dict[str, str]) -> None:
    apply_schema(scratch["a"])
    maps = ShardMapStore(scratch["catalog"])
    first = maps.initialize([scratch["a"]])
    rows = make_rows(100, prefix="f")
    fenced = sorted({logical_shard_for(r.entity_id) for r in rows[:3]})
    raise_fence(scratch["a"], fenced, first.epoch + 1)
    with FeatureWriter(first) as static, pytest.raises(FencedError, match="fenced at epoch"):
        static.write("fs", rows)  # a writer that cannot learn new epochs is refused, nothing written
    with psycopg.connect(scratch["a"]) as conn:
        assert conn.execute("SELECT count(*) FROM entity_features").fetchone()[0] == 0

    with maps.watch(role="test") as watcher, FeatureWriter(watcher) as writer, ThreadPoolExecutor(1) as pool:
        # Seen at its fence check, then let through: refused, the write rolls back and waits for an epoch.
        with fence_gate(scratch["a"], fenced) as gate:
            writing = pool.submit(writer.write, "fs", rows)
            writer_pid = wait_for_blocked_session(scratch["a"], gate)
        assert wait_until(lambda: transaction_ended(scratch["a"], writer_pid), 30), "the fenced write never rolled back"
        assert not writing.done(), writing.result()
        maps.publish_placement(first.placement_by_name(), expected_epoch=first.epoch, note="cutover")
        report = writing.result(30)
    assert report.retries >= 1
    assert (report.epoch, report.inserted) == (first.epoch + 1, 100)
