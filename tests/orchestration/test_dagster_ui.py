"""End to end through the real Dagster webserver and daemon (`dagster dev`) with Postgres storage: a run
and a partition backfill launched through GraphQL, as the UI launches them, both waited on to success."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from orchestration.dagster_dev import DagsterDev, start_dagster_dev
from orchestration.instance import REPO_ROOT, WORKSPACE_YAML, prepare_home

LOCATION = {"repositoryLocationName": "tessera", "repositoryName": "__repository__"}

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } }
}"""
PARTITION_RUNS = """
query($day: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $day}]}) {
    ... on Runs { results { status tags { key value } } }
  }
}"""
BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { status tags { key value } } }
  }
}"""


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def dagster_dev(settings, pipeline_env):
    dev = start_dagster_dev(settings, pipeline_env, timeout=300)  # a loaded parallel run
    try:
        yield dev
    finally:
        left = dev.stop()
        assert left == [], f"dagster processes still running: {left}"


def _run_status(dev: DagsterDev, run_id: str) -> str:
    return dev.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]


@pytest.mark.req("PLAT.dagster-ui")
@pytest.mark.req("PLAT.backfills")
def test_run_and_backfill_launched_through_graphql_succeed_with_postgres_storage(
    dagster_dev, settings, days, pipeline_env
) -> None:
    dev = dagster_dev
    launched = dev.graphql(
        LAUNCH_RUN,
        {
            "params": {
                "selector": {**LOCATION, "jobName": "daily_partitions"},
                "runConfigData": {},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": days[0].isoformat()}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    backfill = dev.graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "partitionNames": [days[1].isoformat(), days[2].isoformat()],
                "assetSelection": [{"path": ["raw_events"]}, {"path": ["customer_features"]}],
            }
        },
    )["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    backfill_id = backfill["backfillId"]

    # The same kind of backfill from the command line (what an operator types), queued for the daemon; its code
    # location is loaded with the same settings as the webserver's.
    env = {**os.environ, **prepare_home(settings), **pipeline_env, "PYTHONPATH": str(REPO_ROOT)}
    dagster = Path(sys.executable).parent / "dagster"
    cli = subprocess.run(
        [
            str(dagster),
            "job",
            "backfill",
            "-w",
            str(WORKSPACE_YAML),
            "-j",
            "daily_partitions",
            "--noprompt",
            "--from",
            days[3].isoformat(),
            "--to",
            days[3].isoformat(),
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # the CLI loads the code location in process: minutes on a machine busy with a parallel run
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    status = _wait(lambda: (s := _run_status(dev, run_id)) in ("SUCCESS", "FAILURE", "CANCELED") and s, 180, "run")
    assert status == "SUCCESS", dev.log_file.read_text()[-3000:]
    final = _wait(
        lambda: (
            (s := dev.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"])
            not in ("REQUESTED", "CANCELING")
            and s
        ),
        240,
        "backfill",
    )
    runs = dev.graphql(BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
    partitions = sorted(t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition")
    assert final in ("COMPLETED", "COMPLETED_SUCCESS"), (final, runs)
    assert partitions == [days[1].isoformat(), days[2].isoformat()]
    assert {r["status"] for r in runs} == {"SUCCESS"}

    def cli_runs_done():
        runs = [
            r for d in days[3:4] for r in dev.graphql(PARTITION_RUNS, {"day": d.isoformat()})["runsOrError"]["results"]
        ]
        finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return len(finished) >= 1 and finished

    cli_runs = _wait(cli_runs_done, 240, "the CLI backfill's runs")
    assert {r["status"] for r in cli_runs} == {"SUCCESS"}
    assert all(any(t["key"] == "dagster/backfill" for t in r["tags"]) for r in cli_runs)

    # The runs were stored in the catalog's dagster database, and the data landed.
    with psycopg.connect(settings.dagster_dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'").fetchone()[0]
    assert stored >= 4
    with psycopg.connect(settings.catalog_dsn) as conn:
        landed = conn.execute(
            "SELECT count(DISTINCT event_date) FROM raw_events WHERE event_date = ANY(%s)", (days[:4],)
        ).fetchone()[0]
    assert landed == 4
