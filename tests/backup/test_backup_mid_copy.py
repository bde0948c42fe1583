"""A restore point taken while a migration copies (issue 22, item 4): the point records the server that holds
the migration's subscription; restored to it, that subscription is dropped before it could connect (it names the
original stack's source and slot) and the migration, before its cutover at the point, is aborted in the restored
stack, so every row acknowledged before the point is back once, on the server the point's placement names. The
original stack's migration, still copying while the restore runs, finishes as if nothing happened."""

from __future__ import annotations

import json

import psycopg
import pytest

from shardctl.control.migration.engine import MigrationEngine
from shardctl.stack.manager import Stack
from shardctl.store.shardmap import ShardMapStore
from tests.backup.test_backup_resharding import _cli, _placed_rows, _settings, _write

BEFORE_CUTOVER = ("provisioned", "copying", "synced")
AFTER = ("verified", "cut_over", "cleaned")


@pytest.mark.req("PLAT.backup-resharding")
def test_a_point_taken_during_the_copy_restores_without_the_migration_and_leaves_the_original_alone(
    stack: Stack,
) -> None:
    data_dir = stack.data_dir
    catalog = _settings(data_dir)["catalog_dsn"]
    first = [f"first-{n:03d}" for n in range(40)]
    _write(data_dir, first)
    _cli(data_dir, "backup", "create", "--point", "before")
    before = ShardMapStore(catalog).current()

    stack.up(servers=3)
    engine = MigrationEngine(catalog)
    record = engine.begin(["server-0", "server-1", "server-2"])
    for phase in BEFORE_CUTOVER:
        engine.run_phase(record.id, phase)
    during = [f"during-{n:03d}" for n in range(40)]
    _write(data_dir, during)  # to the sources, and copied on to server-2 by the subscription
    taken = json.loads(_cli(data_dir, "backup", "create", "--point", "mid-copy", "--json").output)
    assert taken["point"]["subscribed"] == ["server-2"], taken["point"]
    listed = json.loads(_cli(data_dir, "backup", "list", "--json").output)["points"]
    assert [p["subscribed"] for p in listed if p["name"] == "mid-copy"] == [["server-2"]]  # read back from its file

    into = data_dir.parent / "restored-mid-copy"
    restored_out = _cli(data_dir, "restore", "--to-point", "mid-copy", "--into", str(into))
    restored = Stack(into)
    try:
        assert f"migration {record.id} was at synced at the point: aborted in the restored stack" in (
            restored_out.output
        )
        shard_map, copies = _placed_rows(into)  # asserts every row is on a server its logical shard is placed on
        assert (shard_map.epoch, shard_map.servers, shard_map.placement) == (
            before.epoch,
            before.servers,
            before.placement,
        )
        assert set(copies) == set(first) | set(during), sorted(set(copies) ^ (set(first) | set(during)))
        assert set(copies.values()) == {1}
        for dsn in shard_map.dsns:
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT count(*) FROM pg_subscription").fetchone()[0] == 0, dsn
        _write(into, ["after-restore"])
        assert _placed_rows(into)[1]["after-restore"] == 1
    finally:
        assert restored.down(purge=True) == []

    late = [f"late-{n:03d}" for n in range(10)]
    _write(data_dir, late)  # the original's subscription still copies: its slot was never touched
    for phase in AFTER:
        engine.run_phase(record.id, phase)
    live_map, live = _placed_rows(data_dir)
    assert live_map.epoch > before.epoch
    assert "server-2" in {live_map.servers[i] for i in live_map.placement}
    assert set(live) == set(first) | set(during) | set(late)
    assert set(live.values()) == {1}
