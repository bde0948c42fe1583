"""The daily half of the graph: the calendar, its two partitioned assets (raw events, features), the job a backfill
runs and the schedule that runs yesterday's partition at 01:00 UTC.

Why a ``@dg.definitions`` function and not module-level objects: the calendar starts on the deployment's first day
of data (``TESSERA_PIPELINE__START_DATE``, which is also the synthetic population's day 0), and Dagster fixes a
partitions definition when the definitions are built: no run config reaches it. Reading the setting here, once, when
the code location loads (rather than when a module is imported) keeps the value documented and deployment-owned. A
date fixed in code would turn that setting into a code change, and ``DynamicPartitionsDefinition`` would lose what
the daily job relies on: date-range backfills and ``build_schedule_from_partitioned_job``.
"""

from __future__ import annotations

import dagster as dg

from orchestration.defs.customer_features import customer_features_asset
from orchestration.defs.raw_events import raw_events_asset
from orchestration.settings import PipelineSettings


def daily_calendar(pipeline: PipelineSettings) -> dg.DailyPartitionsDefinition:
    """One partition per day of raw events, from the deployment's start date."""
    return dg.DailyPartitionsDefinition(start_date=pipeline.start_date.isoformat())


@dg.definitions
def daily() -> dg.Definitions:
    calendar = daily_calendar(PipelineSettings())
    assets = [raw_events_asset(calendar), customer_features_asset(calendar)]
    job = dg.define_asset_job(
        "daily_partitions",
        selection=dg.AssetSelection.assets(*assets),
        partitions_def=calendar,
        description="One day: land the raw events, then write that day's features to the shards (backfill this).",
    )
    # At 01:00 UTC, the last complete day's partition (yesterday); Dagster keys each tick's run by its partition,
    # so a repeated tick is a no-op.
    schedule = dg.build_schedule_from_partitioned_job(job, hour_of_day=1, minute_of_hour=0)
    return dg.Definitions(assets=assets, jobs=[job], schedules=[schedule])
