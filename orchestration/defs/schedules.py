"""Jobs and schedules: every day, yesterday's raw partition and its features; then profile, key check,
training and promotion over everything. Backfills of a date range use the daily job (UI or CLI)."""

from datetime import timedelta

import dagster as dg

from orchestration.defs.features import customer_features
from orchestration.defs.point_in_time import churn_labels, churn_training_set
from orchestration.defs.profiling import raw_profile
from orchestration.defs.raw_data import raw_events
from orchestration.defs.shard_key import shard_key
from orchestration.defs.training import churn_model, production_model

daily_partitions_job = dg.define_asset_job(
    "daily_partitions",
    selection=dg.AssetSelection.assets(raw_events, customer_features),
    description="One day: land the raw events, then write that day's features to the shards (backfill this).",
)

model_job = dg.define_asset_job(
    "profile_and_train",
    selection=dg.AssetSelection.assets(
        raw_profile, shard_key, churn_labels, churn_training_set, churn_model, production_model
    ),
    description="Profile all raw data, check the shard key, label, build the point-in-time training set (skew "
    "check), train, register and promote.",
    tags={"tessera/h2o": "train"},
)


@dg.schedule(job=daily_partitions_job, cron_schedule="0 1 * * *", execution_timezone="UTC")
def daily_partitions_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """At 01:00 UTC, yesterday's partition (the last complete day); the run key makes a repeated tick a no-op."""
    yesterday = (context.scheduled_execution_time.date() - timedelta(days=1)).isoformat()
    return dg.RunRequest(run_key=yesterday, partition_key=yesterday)


model_schedule = dg.ScheduleDefinition(
    name="daily_training",
    job=model_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="After the daily partitions landed: re-profile and retrain.",
)

defs = dg.Definitions(jobs=[daily_partitions_job, model_job], schedules=[daily_partitions_schedule, model_schedule])
