"""How the test run is split over parallel workers (pytest-xdist, ``--dist loadgroup``).

Every test belongs to a work unit that one worker runs start to end: its file, or a named group of files that
share one expensive session fixture (an HA stack, the whole asset graph), so that fixture is built once rather
than once per worker. Units are handed out in the order this module gives them (``--no-loadscope-reorder``):
the longest first, so no long unit starts last and keeps the run waiting on one worker (longest processing time
first). The order only moves tests between workers; no test is skipped, shortened or changed by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

# Files whose tests share one session fixture that takes tens of seconds to build. Within a group the files keep
# their collection (alphabetical) order, the order the single-process run always used.
SHARED_FIXTURE_GROUPS: dict[str, tuple[str, ...]] = {
    # `ha_stack`: etcd and a Patroni pair per shard. Two groups, each with an HA stack of its own.
    "ha-stack-heal": (
        "tests/ha/test_change_log_standby.py",
        "tests/ha/test_ha_credentials.py",
        "tests/ha/test_member_heal.py",
        "tests/ha/test_member_rejoin.py",
        "tests/ha/test_scorer_failover.py",
    ),
    "ha-stack-failover": (
        "tests/ha/test_backup_failover.py",
        "tests/ha/test_ha_stack.py",
        "tests/ha/test_reader_failover.py",
        "tests/ha/test_writer_failover.py",
        "tests/migrate/test_failover_during_copy.py",
    ),
    # `graph`: every day's partitions and the model job materialized on the worker's stack.
    "asset-graph-pipeline": (
        "tests/orchestration/test_automl.py",
        "tests/orchestration/test_least_privilege.py",
        "tests/orchestration/test_pipeline.py",
        "tests/orchestration/test_point_in_time.py",
        "tests/orchestration/test_promotion.py",
        "tests/orchestration/test_sql_frames.py",
    ),
    # (`tests/orchestration/test_shard_migration_job.py` runs its own stack and webserver: a unit of its own.)
    "asset-graph-ui": ("tests/orchestration/test_dagster_ui.py",),
    # `service`: the serving tests' stack, trained models and prediction service; the API key tests ask it too.
    "serving-api": (
        "tests/serving/test_api.py",
        "tests/serving/test_auth.py",
    ),
}

# Units measured at a minute or more on 2 cores, longest first; every other unit follows in collection order.
LONGEST_FIRST: tuple[str, ...] = (
    "tests/serving/test_bench_harness.py",
    "tests/k8s/test_containers.py",
    "asset-graph-pipeline",
    "asset-graph-ui",
    "ha-stack-failover",
    "tests/test_fallback_runtimes.py",
    "tests/test_bench_scale_harness.py",
    "tests/test_bench_scale_reshard.py",
    "ha-stack-heal",
    "tests/ha/test_nemesis.py",
    "tests/test_stack_servers.py",
    "tests/orchestration/test_shard_migration_job.py",
    "tests/migrate/test_online_migration.py",
    "tests/migrate/test_engine.py",
    "tests/serving/test_lifecycle.py",
    # Its own unit with its own stack (`scorer_stack`: servers, Redis, a scorer and a service, stopped and killed by
    # its tests), not the serving tests' `service`: ~1.5 min on 2 cores beside the session's trained models.
    "tests/serving/test_scorer.py",
    "tests/serving/test_operations.py",
    "tests/backup/test_backup_restore.py",
    "tests/backup/test_backup_resharding.py",
    "tests/backup/test_backup_mid_copy.py",
    "tests/ha/test_failover_scenarios.py",
)


def unit_of(path: str) -> str:
    """The work unit of a test file given relative to the repository root (``tests/...``)."""
    posix = str(PurePosixPath(path))
    for group, files in SHARED_FIXTURE_GROUPS.items():
        if posix in files:
            return group
    return posix


def dispatch_order(paths: Sequence[str]) -> list[int]:
    """Indices of ``paths`` (one per collected test, in collection order) in the order to hand them out: by
    unit, the units of ``LONGEST_FIRST`` first in that order, then the others as first collected; within a
    unit, files in their group's order and tests in collection order."""
    units = [unit_of(p) for p in paths]
    first_seen: dict[str, int] = {}
    for i, unit in enumerate(units):
        first_seen.setdefault(unit, i)

    def rank(i: int) -> tuple[int, int, int, int]:
        unit = units[i]
        head = LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)
        files = SHARED_FIXTURE_GROUPS.get(unit, ())
        within = files.index(str(PurePosixPath(paths[i]))) if files else 0
        return head, first_seen[unit], within, i

    return sorted(range(len(paths)), key=rank)
