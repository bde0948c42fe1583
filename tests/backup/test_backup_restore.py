"""Backups and point-in-time recovery on real servers (issue 22, item 5): one plain stack (catalog + 2 servers)
archiving into its pgBackRest repository; rows written, a consistent restore point, more rows, an accident
(rows deleted on one server, the feature table dropped on the other), then the whole stack restored to the
point as a new stack: every row acknowledged before the point is back, none written after it, the shard map's
epoch and placement as they were, and the restored store takes writes. A corrupted backup file is reported by
`shardctl backup verify`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from orchestration.definitions import defs
from orchestration.resources import BackupResource
from shardctl.backup.points import resolve
from shardctl.backup.target import open_target
from shardctl.cli import main
from shardctl.settings import load_settings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.shardmap import ShardMapStore
from shardctl.store.writer import FeatureRow

FEATURE_SET = "backup_test_v1"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _cli(stack_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"TESSERA_DATA_DIR": str(stack_dir)})


def _open_store(data_dir: Path) -> FeatureStore:
    written = json.loads((data_dir / "settings.json").read_text())
    settings = load_settings(data_dir=data_dir, catalog_dsn=written["catalog_dsn"], servers=written["servers"])
    return FeatureStore.open(settings, prepare_topology=False)  # as that stack's writer, whatever the process's


def _write(data_dir: Path, ids: list[str], value: float) -> None:
    with _open_store(data_dir) as store:
        store.write(FEATURE_SET, [FeatureRow(i, T0, {"spend": value}) for i in ids])


def _rows_by_server(data_dir: Path) -> dict[str, dict[str, int]]:
    """Each server's rows of the test's feature set: entity id -> logical shard."""
    written = json.loads((data_dir / "settings.json").read_text())
    found = {}
    for entry in written["servers"]:
        with psycopg.connect(entry["dsn"]) as conn:
            rows = conn.execute(
                "SELECT entity_id, logical_shard FROM entity_features WHERE feature_set = %s", (FEATURE_SET,)
            ).fetchall()
        found[entry["name"]] = dict(rows)
    return found


@pytest.mark.req("PLAT.backup-schedule")
def test_the_nightly_backup_and_its_verification_run_as_dagster_jobs(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedules are in the code location (the UI lists them); the backup job backs up every server and takes
    a point, the verify job checks the checksums and restores the newest point into a scratch stack it removes."""
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(stack.settings_file))
    built = defs()
    assert built.resolve_schedule_def("nightly_backup").cron_schedule == "0 1 * * *"
    assert built.resolve_schedule_def("nightly_backup_verification").job.name == "verify_backups"
    _write(stack.data_dir, [f"dagster-{n}" for n in range(5)], 0.5)
    resources = {"backups": BackupResource(data_dir=str(stack.data_dir))}
    backed = built.resolve_job_def("backup").execute_in_process(resources=resources)
    assert backed.success
    point = backed.output_for_node("base_backup")
    verified = built.resolve_job_def("verify_backups").execute_in_process(resources=resources)
    assert verified.success
    assert verified.output_for_node("verify_checksums") == point
    assert verified.output_for_node("restore_newest") == 5  # the rows written before the point, restored
    assert not Path(f"{stack.data_dir}-verify-restore").exists()


@pytest.mark.req("PLAT.backup-archiving")
@pytest.mark.req("PLAT.backup-pitr")
def test_an_accident_is_undone_by_restoring_the_whole_stack_to_a_consistent_point(stack: Stack) -> None:
    data_dir = stack.data_dir
    earlier = {eid for found in _rows_by_server(data_dir).values() for eid in found}  # earlier tests' rows
    base_ids = [f"base-{n:03d}" for n in range(20)]
    _write(data_dir, base_ids, 1.0)
    created = _cli(data_dir, "backup", "create", "--point", "first")
    assert created.exit_code == 0, created.output
    assert "restore point first taken on 3 servers" in created.output, created.output

    before_ids = [f"before-{n:03d}" for n in range(30)]
    _write(data_dir, before_ids, 2.0)
    pointed = _cli(data_dir, "backup", "point", "before-accident")
    assert pointed.exit_code == 0, pointed.output
    after_ids = [f"after-{n:03d}" for n in range(20)]
    time.sleep(0.05)
    between = datetime.now(UTC)
    _write(data_dir, after_ids, 3.0)

    # The accident: a DELETE without a WHERE on one server, the feature table dropped on the other.
    servers = json.loads((data_dir / "settings.json").read_text())["servers"]
    with psycopg.connect(servers[0]["dsn"]) as conn:
        conn.execute("DELETE FROM entity_features")
    with psycopg.connect(servers[1]["dsn"]) as conn:
        conn.execute("DROP TABLE entity_features CASCADE")

    # --to TIME resolves to the newest consistent point before it, and says so.
    point, said = resolve(open_target(stack.layout).repo, at=between)
    assert point.name == "before-accident"
    assert "resolves to restore point before-accident" in said

    into = data_dir.parent / "restored"
    listed = _cli(data_dir, "backup", "list", "--json")
    assert listed.exit_code == 0, listed.output
    restorable = {p["name"]: p["restorable"] for p in json.loads(listed.output)["points"]}
    assert (restorable["first"], restorable["before-accident"]) == (True, True)
    original = ShardMapStore(stack.layout.catalog_dsn(stack.load_state())).current()  # type: ignore[arg-type]
    started = time.monotonic()
    restored = _cli(data_dir, "restore", "--to-point", "before-accident", "--into", str(into))
    took = time.monotonic() - started
    restored_stack = Stack(into)
    try:
        assert restored.exit_code == 0, restored.output
        rows = _rows_by_server(into)
        present = {eid for found in rows.values() for eid in found}
        acknowledged = earlier | set(base_ids) | set(before_ids)
        assert present == acknowledged, sorted(present ^ acknowledged)
        restored_map = ShardMapStore(json.loads((into / "settings.json").read_text())["catalog_dsn"]).current()
        assert (restored_map.epoch, restored_map.servers, restored_map.placement) == (
            original.epoch,
            original.servers,
            original.placement,
        )
        for name, found in rows.items():  # every row on the server its epoch's placement names, once
            assert set(found.values()) <= set(restored_map.logical_shards_on(name)), name
        # The restored stack is a stack: it takes writes and answers reads, and archives into its own repository.
        _write(into, ["new-001"], 4.0)
        with _open_store(into) as store:
            got = store.get_features(["before-007", "new-001", "after-003"], FEATURE_SET)
        assert set(got.records) == {"before-007", "new-001"}
        assert got.missing == {"after-003"}
        status = CliRunner().invoke(main, ["stack", "status"], env={"TESSERA_DATA_DIR": str(into)})
        assert status.exit_code == 0, status.output
    finally:
        assert restored_stack.down(purge=True) == []
    print(f"restore of catalog + 2 servers: {took:.1f} s")


@pytest.mark.req("PLAT.backup-verify")
def test_verify_reports_a_corrupted_backup_file(stack: Stack) -> None:
    data_dir = stack.data_dir
    if not _cli(data_dir, "backup", "list", "--json").output.count('"label"'):
        assert _cli(data_dir, "backup", "create").exit_code == 0
    clean = _cli(data_dir, "backup", "verify")
    assert clean.exit_code == 0, clean.output
    repo = open_target(stack.layout).repo
    files = sorted(
        (p for p in (repo.root / "repo" / "backup" / "catalog").rglob("*") if p.is_file() and "pg_data" in p.parts),
        key=lambda p: p.stat().st_size,
    )
    victim = files[-1]
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    victim.write_bytes(bytes(data))
    corrupted = _cli(data_dir, "backup", "verify")
    assert corrupted.exit_code == 1, corrupted.output
    assert "catalog: INVALID" in corrupted.output
    assert "backup verification failed for catalog" in corrupted.output.strip().splitlines()[-1]


@pytest.mark.req("PLAT.backup-cli")
def test_bad_input_is_one_line_and_exit_1(stack: Stack, tmp_path: Path) -> None:
    data_dir = stack.data_dir
    cases = {
        ("restore", "--to-point", "no-such-point"): "no restore point named no-such-point",
        ("restore", "--to", "2000-01-01T00:00:00Z"): "no consistent restore point at or before 2000-01-01",
        ("backup", "point", "bad name!"): "bad restore point name",
        ("restore", "--to-point", "first", "--into", str(data_dir)): "cannot restore over",
    }
    for args, said in cases.items():
        result = _cli(data_dir, *args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert said in lines[-1], (args, result.output)
        assert lines[-1].startswith("Error: "), (args, result.output)
        assert "Traceback" not in result.output
    both = _cli(data_dir, "restore", "--to-point", "first", "--to", "2026-01-01")
    assert both.exit_code == 2
    assert "exactly one of" in both.output
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    refused = _cli(data_dir, "restore", "--to-point", "first", "--into", str(occupied))
    assert refused.exit_code == 1
    assert "is not empty" in refused.output
    assert (occupied / "keep.txt").read_text() == "mine"
