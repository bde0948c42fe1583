"""The model job and its schedule: profile, key check, training and promotion over everything, every day after
the daily partitions landed (the daily job and its schedule are built with the calendar, in ``defs/daily.py``)."""

import dagster as dg

from orchestration.defs.churn_model import churn_model, production_model
from orchestration.defs.point_in_time import churn_labels, churn_training_set
from orchestration.defs.raw_profile import raw_profile
from orchestration.defs.shard_key import shard_key

model_job = dg.define_asset_job(
    "profile_and_train",
    selection=dg.AssetSelection.assets(
        raw_profile, shard_key, churn_labels, churn_training_set, churn_model, production_model
    ),
    description="Profile all raw data, check the shard key, label, build the point-in-time training set (skew "
    "check), train, register and promote.",
    tags={
        "tessera/h2o": "train",
        # On Kubernetes (k8s/dagster/instance.yaml) the run pod is sized for the H2O JVM (TESSERA_H2O__MAX_MEM=auto
        # gives it up to half the limit) plus the Python process; the run queue lets one tessera/h2o run at a time.
        "dagster-k8s/config": {
            "container_config": {"resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "4Gi"}}},
        },
    },
)

model_schedule = dg.ScheduleDefinition(
    name="daily_training",
    job=model_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="After the daily partitions landed: re-profile and retrain.",
)
