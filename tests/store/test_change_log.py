"""The shard's change log on real Postgres: the writer's batches and any other SQL write are logged, a reader
misses nothing when transactions commit out of sequence order, reads each change once, and old rows are pruned."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from shardctl.store.changes import CHANGE_TABLE, ChangeCursor, FeatureChange, poll_changes, start_cursor
from tests.store.conftest import make_rows


def _ids_by_shard(feature_store, feature_set: str, changes_by_shard: list[list[FeatureChange]]) -> list[set[str]]:
    return [{e for c in changes if c.feature_set == feature_set for e in c.entity_ids} for changes in changes_by_shard]


async def _open_cursors(dsns) -> list[tuple[psycopg.AsyncConnection, ChangeCursor]]:
    out = []
    for dsn in dsns:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        cursor, on_standby = await start_cursor(conn)
        assert on_standby is False
        out.append((conn, cursor))
    return out


async def _poll(feeds) -> list[list[FeatureChange]]:
    return [(await poll_changes(conn, cursor)).changes for conn, cursor in feeds]


@pytest.mark.req("JTBD-02.invalidation-events")
def test_every_write_path_is_logged(feature_store, feature_set, settings):
    """The writer's fast path (COPY) and merge path (INSERT ... ON CONFLICT) log their batch, one row per shard
    (not one per entity: the row trigger stays off in the writer's transactions); a hand-written UPDATE and
    DELETE are logged by the trigger."""
    shard_map = feature_store.shard_map
    dsns = shard_map.dsns

    async def run() -> None:
        feeds = await _open_cursors(dsns)
        try:
            rows = make_rows(50)
            for batch in (rows, make_rows(50, seed=7)):  # fresh entities (COPY), then changed values (merge)
                feature_store.write(feature_set, batch)
                polled = await _poll(feeds)
                for i, changes in enumerate(polled):
                    mine = [c for c in changes if c.feature_set == feature_set]
                    assert len(mine) == 1
                    routed = {r.entity_id for r in batch if shard_map.server_index_for(r.entity_id) == i}
                    assert set(mine[0].entity_ids) == routed
            target = shard_map.server_index_for("e5")
            # Hand-written SQL as the control plane: the store's own (writer) role may not delete.
            with psycopg.connect(settings.shard_dsns()[target], autocommit=True) as conn:
                conn.execute(
                    "UPDATE entity_features SET version = version + 1 WHERE feature_set = %s AND entity_id = 'e5'",
                    (feature_set,),
                )
                conn.execute("DELETE FROM entity_features WHERE feature_set = %s AND entity_id = 'e5'", (feature_set,))
            changes = (await _poll(feeds))[target]
            assert [c.entity_ids for c in changes if c.feature_set == feature_set] == [("e5",), ("e5",)]
            assert await _poll(feeds) == [[]] * len(dsns)  # each change is read once
        finally:
            for conn, _ in feeds:
                await conn.close()

    asyncio.run(run())


@pytest.mark.req("JTBD-02.invalidation-events")
def test_a_change_committed_after_a_later_numbered_one_is_not_skipped(feature_store, feature_set, settings):
    """Commit order is not sequence order: transaction A logs first (lower seq) but commits after B. A reader
    that polled between B's commit and A's must still read A's change (the xid watermark), and B's only once."""
    dsn = feature_store.shard_map.dsns[0]
    ids = [r.entity_id for r in make_rows(40) if feature_store.shard_map.server_index_for(r.entity_id) == 0][:2]
    first, second = ids

    async def run() -> None:
        ((reader, cursor),) = await _open_cursors([dsn])
        a = psycopg.connect(settings.shard_dsns()[0])  # hand-written SQL: as the control plane
        b = psycopg.connect(settings.shard_dsns()[0])
        try:
            insert = (
                "INSERT INTO entity_features (logical_shard, entity_id, feature_set, features, event_ts) "
                "VALUES (tessera_shard_for(%(id)s, 256), %(id)s, %(fs)s, '{}', now())"
            )
            a.execute(insert, {"id": first, "fs": feature_set})  # seq n, not committed yet
            b.execute(insert, {"id": second, "fs": feature_set})  # seq n+1
            b.commit()
            seen = await poll_changes(reader, cursor)
            assert [c.entity_ids for c in seen.changes] == [(second,)]
            a.commit()
            seen = await poll_changes(reader, cursor)
            assert [c.entity_ids for c in seen.changes] == [(first,)]
            assert (await poll_changes(reader, cursor)).changes == []
        finally:
            a.close()
            b.close()
            await reader.close()

    asyncio.run(run())


@pytest.mark.req("JTBD-02.invalidation-events")
def test_the_log_is_pruned_past_its_retention(feature_store, feature_set, settings):
    """Rows older than the retention are deleted by the next write (the table stays bounded)."""
    dsn = settings.shard_dsns()[0]  # hand-written SQL: as the control plane
    entity = next(f"p{n}" for n in range(100) if feature_store.shard_map.server_index_for(f"p{n}") == 0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {CHANGE_TABLE} (feature_set, entity_ids, changed_at) "
            "VALUES (%s, '{old}', now() - interval '1 day')",
            (feature_set,),
        )
        old = conn.execute(
            f"SELECT count(*) FROM {CHANGE_TABLE} WHERE changed_at < now() - interval '1 hour'"
        ).fetchone()[0]
        assert old >= 1
        conn.execute(
            "INSERT INTO entity_features (logical_shard, entity_id, feature_set, features, event_ts) "
            "VALUES (tessera_shard_for(%(id)s, 256), %(id)s, %(fs)s, '{}', now())",
            {"id": entity, "fs": feature_set},
        )
        left = conn.execute(
            f"SELECT count(*) FROM {CHANGE_TABLE} WHERE changed_at < now() - interval '1 hour'"
        ).fetchone()[0]
        assert left == 0
        assert conn.execute(f"SELECT count(*) FROM {CHANGE_TABLE} WHERE %s = ANY(entity_ids)", (entity,)).fetchone()[0]


def test_cursor_bookkeeping_forgets_what_the_watermark_passed():
    cursor = ChangeCursor(watermark=100)
    fresh = cursor.advance(103, [(1, 100, "fs", ["a"]), (2, 104, "fs", ["b"])])
    assert fresh == [FeatureChange("fs", ("a",)), FeatureChange("fs", ("b",))]
    assert cursor.watermark == 103
    assert cursor.handled == {2: 104}
    # Seq 2 comes again (its transaction is not older than the watermark); seq 3 is new.
    assert cursor.advance(103, [(2, 104, "fs", ["b"]), (3, 103, "fs", ["c"])]) == [FeatureChange("fs", ("c",))]
    cursor.advance(110, [])
    assert cursor.handled == {}
    assert cursor.advance(90, []) == []
    assert cursor.watermark == 110  # never moves back
