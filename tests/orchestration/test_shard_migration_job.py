"""The Dagster job `shard_migration`, launched through the real webserver's GraphQL as the UI launches it,
moves logical shards onto an added server with shardctl's engine: every phase an op, the verification
report and progress in the ops' metadata, run config naming servers only (no DSN anywhere in the run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from orchestration.dagster_dev import DagsterDev, start_dagster_dev
from shardctl.control.migration.journal import PHASES
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.shardmap import ShardMapStore
from shardctl.store.writer import FeatureRow
from testkit.traffic import audit
from tests.conftest import _random_base_port
from tests.orchestration.test_dagster_ui import LAUNCH_RUN, LOCATION, _run_status, _wait

FEATURE_SET = "job_migration_v1"
ROWS = 2000
OUTPUT_METADATA = """
query($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on ExecutionStepOutputEvent { stepKey metadataEntries { label ... on JsonMetadataEntry { jsonString } } }
      }
    }
  }
}"""


@pytest.fixture
def grown_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, TesseraSettings]]:
    """A stack of its own: one server with rows, then a second one added (empty, registered, unplaced)."""
    stack = Stack(tmp_path_factory.mktemp("job_stack"))
    stack.up(servers=1, base_port=_random_base_port())
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        with FeatureStore.open(settings) as store:
            t0 = datetime(2026, 1, 1, tzinfo=UTC)
            store.write(FEATURE_SET, [FeatureRow(f"e{i:05d}", t0, {"seq": i}) for i in range(ROWS)])
        stack.up(servers=2)
        yield stack, TesseraSettings(**json.loads(stack.settings_file.read_text()))
    finally:
        assert stack.down(purge=True) == []


@pytest.fixture
def dev(grown_stack) -> Iterator[DagsterDev]:
    _, settings = grown_stack
    running = start_dagster_dev(
        settings, timeout=300
    )  # the webserver loads the whole code location: slow on a busy machine
    try:
        yield running
    finally:
        assert running.stop() == [], "dagster processes still running"


@pytest.mark.req("JTBD-03.migration")
@pytest.mark.req("PLAT.dagster-ui")
def test_shard_migration_job_launched_from_the_ui_moves_logical_shards(grown_stack, dev: DagsterDev) -> None:
    _, settings = grown_stack
    catalog = settings.catalog_dsn or ""
    before = ShardMapStore(catalog).current().placement_by_name()
    assert set(before.values()) == {"server-0"}
    launched = dev.graphql(
        LAUNCH_RUN,
        {
            "params": {
                "selector": {**LOCATION, "jobName": "shard_migration"},
                "runConfigData": {
                    "ops": {"plan_shard_migration": {"config": {"to_servers": ["server-0", "server-1"]}}}
                },
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = _wait(lambda: (s := _run_status(dev, run_id)) in ("SUCCESS", "FAILURE", "CANCELED") and s, 400, "run")
    events = dev.graphql(OUTPUT_METADATA, {"id": run_id})["logsForRun"]["events"]
    assert status == "SUCCESS", [e.get("message") for e in events][-20:]

    outputs = {e["stepKey"]: e["metadataEntries"] for e in events if e["__typename"] == "ExecutionStepOutputEvent"}
    assert set(outputs) == {"plan_shard_migration", *(f"migrate_{p}" for p in PHASES[1:])}
    verified = {m["label"]: m for m in outputs["migrate_verified"]}
    assert "verification_report" in verified
    assert json.loads(verified["verification_report"]["jsonString"]), "the report is in the op's metadata"
    every_text = json.dumps(events)
    for secret in ("host=", "port=", "postgresql://", "user=tessera"):
        assert secret not in every_text, f"{secret!r} leaked into the run's events or metadata"

    after = ShardMapStore(catalog).current().placement_by_name()
    assert sorted(list(after.values()).count(s) for s in ("server-0", "server-1")) == [128, 128]
    acknowledged = {f"e{i:05d}": i for i in range(ROWS)}
    result = audit(ShardMapStore(catalog).registered_servers(), after, FEATURE_SET, acknowledged)
    assert result.problems() == {}
    assert result.rows == ROWS
