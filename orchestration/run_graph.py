"""Materialize the whole graph in-process: each day's partitions, then profile, key check, training and
promotion; then summarize what landed where. The demo and the tests both use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import dagster as dg
import psycopg

from shardctl.settings import TesseraSettings
from shardctl.store.registry import ModelRegistry
from shardctl.store.schema import FEATURE_TABLE

RunConfigLike = dg.RunConfig | dict[str, Any] | None
# Run config for the console logger: warnings and errors only (a demo run prints its own progress).
QUIET_LOGGERS: dict[str, Any] = {"console": {"config": {"log_level": "WARNING"}}}


class GraphRunError(RuntimeError):
    """A run of the graph failed; the message names the job, the partition and the failing step."""


@dataclass
class Summary:
    raw_rows: int
    rows_per_shard: dict[int, int]
    model_version: int | None
    auc: float | None
    production_version: int | None
    latest_state_auc: float | None = None
    runs: list[str] = field(default_factory=list)
    promotion_check: str | None = None  # the newest version against the one serving when it was judged

    def lines(self) -> list[str]:
        out = [f"raw events: {self.raw_rows:,} rows"]
        out += [f"features on shard {i}: {n:,} rows" for i, n in sorted(self.rows_per_shard.items())]
        if self.model_version is not None:
            line = f"model: version {self.model_version}, out-of-time AUC {self.auc:.4f} (point-in-time training set)"
            if self.latest_state_auc is not None:
                line += f"; the old latest-state features would claim {self.latest_state_auc:.4f}"
            out.append(line)
        if self.promotion_check is not None:
            out.append(f"promotion check: {self.promotion_check}")
        out.append(f"production model version: {self.production_version}")
        return out


def _failure(result: dg.ExecuteInProcessResult, what: str) -> GraphRunError:
    failed = [e for e in result.all_events if e.is_step_failure]
    reason = failed[0].event_specific_data.error.message.strip() if failed else "a step failed"
    return GraphRunError(f"{what} failed: {reason}")


def run_days(
    defs: dg.Definitions, days: list[date], instance: dg.DagsterInstance, run_config: RunConfigLike = None
) -> list[dg.ExecuteInProcessResult]:
    job = defs.resolve_job_def("daily_partitions")
    results = []
    for day in days:
        result = job.execute_in_process(
            partition_key=day.isoformat(), instance=instance, run_config=run_config or {}, raise_on_error=False
        )
        if not result.success:
            raise _failure(result, f"daily_partitions {day}")
        results.append(result)
    return results


def run_model(
    defs: dg.Definitions, instance: dg.DagsterInstance, run_config: RunConfigLike = None
) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("profile_and_train").execute_in_process(
        instance=instance, run_config=run_config or {}, raise_on_error=False
    )
    if not result.success:
        raise _failure(result, "profile_and_train")
    return result


def summarize(settings: TesseraSettings) -> Summary:
    with psycopg.connect(settings.catalog_dsn) as conn:
        raw_rows = int(conn.execute("SELECT count(*) FROM raw_events").fetchone()[0])
    per_shard = {}
    for i, dsn in enumerate(settings.shard_dsns()):
        with psycopg.connect(dsn) as conn:
            per_shard[i] = int(
                conn.execute(
                    f"SELECT count(*) FROM {FEATURE_TABLE} WHERE feature_set = %s", (settings.feature_set,)
                ).fetchone()[0]
            )
    registry = ModelRegistry(settings.catalog_dsn)
    versions = registry.versions(settings.model_name)
    newest = versions[-1] if versions else None
    current = registry.current(settings.model_name)
    checks = registry.evaluations(settings.model_name, newest.version) if newest else []
    return Summary(
        raw_rows,
        per_shard,
        newest.version if newest else None,
        newest.metrics.get("auc") if newest else None,
        current.version if current else None,
        newest.metrics.get("latest_state_auc") if newest else None,
        promotion_check=checks[-1].describe() if checks else None,
    )
