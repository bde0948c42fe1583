"""Restores through resharding (issue 22, items 4 and 5): a plain stack grown from 2 to 3 servers by `shardctl
migrate run --add-server`, with a consistent restore point before the migration and one after it. Restored to
either, the store has exactly the rows acknowledged before the point, each on the server the restored epoch's
placement names, once; the shard map is that epoch's; the restored store serves reads and takes writes."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from shardctl.cli import main
from shardctl.settings import load_settings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.shardmap import ShardMap, ShardMapStore
from shardctl.store.writer import FeatureRow

FEATURE_SET = "backup_reshard_v1"


def _cli(data_dir: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env={"TESSERA_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, (args, result.output)
    return result


def _settings(data_dir: Path) -> dict:
    return json.loads((data_dir / "settings.json").read_text())


def _write(data_dir: Path, ids: list[str]) -> None:
    written = _settings(data_dir)
    settings = load_settings(data_dir=data_dir, catalog_dsn=written["catalog_dsn"], servers=written["servers"])
    with FeatureStore.open(settings, prepare_topology=False) as store:
        store.write(FEATURE_SET, [FeatureRow(i, datetime(2026, 12, 1, tzinfo=UTC), {"n": 1.0}) for i in ids])


def _placed_rows(data_dir: Path) -> tuple[ShardMap, Counter[str]]:
    """The restored map, and how many copies of each row the servers hold; asserts each row is on the server
    its logical shard is placed on."""
    current = ShardMapStore(_settings(data_dir)["catalog_dsn"]).current()
    copies: Counter[str] = Counter()
    for name, dsn in zip(current.servers, current.dsns, strict=True):
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT entity_id, logical_shard FROM entity_features WHERE feature_set = %s", (FEATURE_SET,)
            ).fetchall()
        placed = set(current.logical_shards_on(name))
        assert all(shard in placed for _, shard in rows), name
        copies.update(eid for eid, _ in rows)
    return current, copies


@pytest.mark.req("PLAT.backup-resharding")
def test_restores_before_and_after_a_two_to_three_migration_place_every_row_once(stack: Stack) -> None:
    data_dir = stack.data_dir
    first = [f"first-{n:03d}" for n in range(40)]
    _write(data_dir, first)
    _cli(data_dir, "backup", "create", "--point", "two-servers")
    before = ShardMapStore(_settings(data_dir)["catalog_dsn"]).current()

    stack.up(servers=3)
    _cli(data_dir, "migrate", "run", "--add-server", "server-2", "--json")
    moved = [f"moved-{n:03d}" for n in range(20)]
    _write(data_dir, moved)
    _cli(data_dir, "backup", "create", "--point", "three-servers")  # server-2's first backup: full
    after = ShardMapStore(_settings(data_dir)["catalog_dsn"]).current()
    assert after.epoch > before.epoch
    _write(data_dir, ["late-000", "late-001"])

    for point, expected_map, acknowledged in (
        ("two-servers", before, set(first)),
        ("three-servers", after, set(first) | set(moved)),
    ):
        into = data_dir.parent / f"restored-{point}"
        _cli(data_dir, "restore", "--to-point", point, "--into", str(into))
        restored = Stack(into)
        try:
            shard_map, copies = _placed_rows(into)
            assert (shard_map.epoch, shard_map.servers, shard_map.placement) == (
                expected_map.epoch,
                expected_map.servers,
                expected_map.placement,
            )
            assert set(copies) == acknowledged, sorted(set(copies) ^ acknowledged)
            assert set(copies.values()) == {1}  # exactly once
            _write(into, [f"after-restore-{point}"])
            assert _placed_rows(into)[1][f"after-restore-{point}"] == 1
        finally:
            assert restored.down(purge=True) == []
