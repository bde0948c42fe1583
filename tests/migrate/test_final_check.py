"""The cutover's final check, on real servers with real replication between them.

The feature table (the store's schema, change log included): counts taken before the fence in held snapshots,
then, under it, only the keys written since; a copy that differs in a written key or in an untouched one is
named by its logical shard. Any other table: every moved logical shard's rows counted on both sides (every
server at once, so writers wait for the slowest count)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardctl.control.migration import replication
from shardctl.control.migration.final_check import FinalCheck, count_mismatches
from shardctl.control.migration.table import MovedTable, count_rows
from shardctl.store.hashing import logical_shard_for
from shardctl.store.schema import apply_schema
from tests.migrate.conftest import ServerPair, load_rows

FEATURES = MovedTable()  # the store's own table: entity_features, keyed (logical_shard, entity_id, feature_set)
ENTITIES = [f"fc-{i}" for i in range(2_000)]
MOVING = tuple(sorted({logical_shard_for(e) for e in ENTITIES} & set(range(0, 256, 2))))


@pytest.mark.req("JTBD-03.migration")
def test_without_a_change_log_the_check_counts_and_names_each_links_differing_logical_shard(
    servers: ServerPair, moved_table: MovedTable
) -> None:
    for dsn in (servers.source, servers.target):
        load_rows(dsn, moved_table, 600)
    with psycopg.connect(servers.source) as conn:
        shards = sorted(count_rows(conn, moved_table, range(256)))
    half = len(shards) // 2
    first, second = (
        replication.Link(replication.link_name(1, n), servers.source, servers.target, tuple(part), moved_table)
        for n, part in enumerate((shards[:half], shards[half:]))
    )
    assert count_mismatches([first, second], moved_table) == {first: [], second: []}

    lacking = shards[-1]  # one of the second link's logical shards loses a row on the target
    with psycopg.connect(servers.target) as conn:
        conn.execute(
            f"DELETE FROM {moved_table.name} WHERE ctid = "
            f"(SELECT ctid FROM {moved_table.name} WHERE logical_shard = %s LIMIT 1)",
            (lacking,),
        )
    assert count_mismatches([first, second], moved_table) == {first: [], second: [lacking]}
    with FinalCheck([first, second], moved_table) as check:
        check.prepare()
        result = check.run()
    assert result.method == "counts"
    assert result.mismatches == {first: [], second: [lacking]}


@dataclass(frozen=True)
class FeatureServers:
    """A database of its own with the store's schema on each server, its moving shards linked and copied."""

    source: str
    target: str
    link: replication.Link


def _database(dsn: str, name: str) -> str:
    return make_conninfo("", **{**conninfo_to_dict(dsn), "dbname": name})


@pytest.fixture
def feature_servers(servers: ServerPair) -> Iterator[FeatureServers]:
    name = f"fc_{uuid.uuid4().hex[:10]}"
    for dsn in (servers.source, servers.target):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    source, target = _database(servers.source, name), _database(servers.target, name)
    link = replication.Link(replication.link_name(uuid.uuid4().int % 10**9, 0), source, target, MOVING, FEATURES)
    try:
        for dsn in (source, target):
            apply_schema(dsn)
        with psycopg.connect(source) as conn:
            conn.execute(
                "INSERT INTO entity_features (logical_shard, entity_id, feature_set, features, event_ts) "
                "SELECT tessera_shard_for(e, 256), e, 'fs', '{\"v\": 0}', now() FROM unnest(%s::text[]) e",
                (ENTITIES,),
            )
        replication.start(link)
        replication.wait_synced(link, timeout=120)
        yield FeatureServers(source, target, link)
    finally:
        replication.teardown(link, purge_target=True)
        for dsn in (servers.source, servers.target):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _moving(count: int, skip: int = 0) -> list[str]:
    return [e for e in ENTITIES if logical_shard_for(e) in MOVING][skip : skip + count]


def _write_on(dsn: str, statement: str, entities: list[str]) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(statement, (entities,))


@pytest.mark.req("JTBD-03.migration")
def test_the_check_compares_only_the_keys_written_since_its_snapshots_and_names_a_differing_copy(
    feature_servers: FeatureServers,
) -> None:
    source, target, link = feature_servers.source, feature_servers.target, feature_servers.link
    with FinalCheck([link], FEATURES) as check:
        check.prepare()  # as before the fence; then writes land on the moving shards, and replication applies them
        updated, deleted = _moving(30), _moving(10, skip=30)
        _write_on(source, "UPDATE entity_features SET features = '{\"v\": 1}' WHERE entity_id = ANY(%s)", updated)
        _write_on(source, "DELETE FROM entity_features WHERE entity_id = ANY(%s)", deleted)
        _write_on(
            source,
            "INSERT INTO entity_features (logical_shard, entity_id, feature_set, features, event_ts) "
            "SELECT tessera_shard_for(e, 256), e, 'fs', '{}', now() FROM unnest(%s::text[]) e",
            ["fc-new-1", "fc-new-2", "fc-new-3"],
        )
        replication.wait_caught_up(link)  # the drain
        result = check.run()
    inserted_moving = sum(1 for e in ("fc-new-1", "fc-new-2", "fc-new-3") if logical_shard_for(e) in MOVING)
    assert result.method == "changes"
    assert result.keys_compared == len(updated) + len(deleted) + inserted_moving
    assert result.clean, result.mismatches

    # A written key whose copy differs: replication applied the source's update, then the target's row changed.
    written = _moving(1, skip=50)
    with FinalCheck([link], FEATURES) as check:
        check.prepare()
        _write_on(source, "UPDATE entity_features SET features = '{\"v\": 2}' WHERE entity_id = ANY(%s)", written)
        replication.wait_caught_up(link)
        _write_on(target, "UPDATE entity_features SET features = '{\"v\": 3}' WHERE entity_id = ANY(%s)", written)
        result = check.run()
    assert (result.method, result.keys_compared) == ("changes", 1)
    assert result.mismatches == {link: [logical_shard_for(written[0])]}

    # A key nobody wrote since the snapshots, missing from the target's copy: the held counts disagree. (The
    # differing row above is not written again, so only ``verify``, before the fence, would see it now.)
    untouched = next(e for e in _moving(100, skip=60) if logical_shard_for(e) != logical_shard_for(written[0]))
    _write_on(target, "DELETE FROM entity_features WHERE entity_id = ANY(%s)", [untouched])
    with FinalCheck([link], FEATURES) as check:
        check.prepare()
        result = check.run()
    assert (result.method, result.keys_compared) == ("changes", 0)
    assert result.mismatches == {link: [logical_shard_for(untouched)]}
