"""Jobs and schedules: every day, yesterday's raw partition and its features; then profile, key check,
training and promotion over everything. Backfills of a date range use the daily job (UI or CLI)."""

import dagster as dg

from orchestration.defs.churn_model import churn_model, production_model
from orchestration.defs.customer_features import customer_features
from orchestration.defs.partitions import daily_partitions
from orchestration.defs.point_in_time import churn_labels, churn_training_set
from orchestration.defs.raw_events import raw_events
from orchestration.defs.raw_profile import raw_profile
from orchestration.defs.shard_key import shard_key

daily_partitions_job = dg.define_asset_job(
    "daily_partitions",
    selection=dg.AssetSelection.assets(raw_events, customer_features),
    partitions_def=daily_partitions,
    description="One day: land the raw events, then write that day's features to the shards (backfill this).",
)

model_job = dg.define_asset_job(
    "profile_and_train",
    selection=dg.AssetSelection.assets(
        raw_profile, shard_key, churn_labels, churn_training_set, churn_model, production_model
    ),
    description="Profile all raw data, check the shard key, label, build the point-in-time training set (skew "
    "check), train, register and promote.",
    tags={
        "tessera/h2o": "train",
        # On Kubernetes (k8s/dagster/instance.yaml) the run pod is sized for the H2O JVM (TESSERA_H2O__MAX_MEM and
        # its threads) plus the Python process; the run queue lets one tessera/h2o run at a time.
        "dagster-k8s/config": {
            "container_config": {"resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "4Gi"}}},
        },
    },
)

# At 01:00 UTC, the last complete day's partition (yesterday); Dagster keys each tick's run by its partition,
# so a repeated tick is a no-op.
daily_partitions_schedule = dg.build_schedule_from_partitioned_job(
    daily_partitions_job, hour_of_day=1, minute_of_hour=0
)

model_schedule = dg.ScheduleDefinition(
    name="daily_training",
    job=model_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="After the daily partitions landed: re-profile and retrain.",
)
