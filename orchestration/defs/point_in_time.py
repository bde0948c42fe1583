"""Point-in-time training data: churn labels with a time, the training set joined to the features as they were
at each label's as-of time, and the online/offline skew check beside it."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from orchestration import labels, skew, training_sets
from orchestration.defs.customer_features import CUSTOMER_FEATURES
from orchestration.defs.raw_events import RAW_EVENTS
from orchestration.point_in_time import LeakageError, build_training_set
from orchestration.resources import TesseraResource


class LabelConfig(dg.Config):
    horizon_days: int = Field(default=7, ge=1, le=90, description="churn = no event in (t, t + horizon]")
    every_days: int = Field(default=7, ge=1, le=90, description="days between as-of dates")
    warmup_days: int = Field(default=7, ge=1, le=365, description="days of history before the first as-of date")


@dg.asset(deps=[RAW_EVENTS], group_name="pipeline", kinds={"postgres"})
def churn_labels(config: LabelConfig, tessera: TesseraResource) -> dg.MaterializeResult:
    """For each as-of date t: the entities active in (t - horizon, t], labelled churned when they have no event
    in (t, t + horizon]; as-of dates without a full horizon of landed data after them are left out."""
    spec = labels.LabelSpec(config.horizon_days, config.every_days, config.warmup_days)
    try:
        frame = labels.build_labels(tessera.dsn(), spec)
    except labels.LabelError as exc:
        raise dg.Failure(str(exc)) from exc
    labels.store_labels(tessera.dsn(), frame, config.horizon_days)
    per_date = frame.groupby("as_of")[labels.LABEL].agg(["size", "mean"])
    table = ["| as-of | entities | churned |", "|---|---:|---:|"]
    table += [f"| {t:%Y-%m-%d %H:%M} UTC | {int(n):,} | {rate:.1%} |" for t, (n, rate) in per_date.iterrows()]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "dagster/column_schema": training_sets.LABEL_SCHEMA,
            "horizon_days": config.horizon_days,
            "as_of_dates": len(per_date),
            "churned_share": float(frame[labels.LABEL].mean()),
            "per_as_of": dg.MetadataValue.md("\n".join(table)),
        }
    )


@dg.asset(deps=[churn_labels, RAW_EVENTS], group_name="pipeline", kinds={"postgres"})
def churn_training_set(tessera: TesseraResource) -> dg.MaterializeResult:
    """Each label joined to the features as of its as-of time (historical retrieval from the raw events, with
    the definition the shards are written with), stored for training and inspection."""
    stored = labels.load_labels(tessera.dsn())
    if stored.empty:
        raise dg.Failure("no labels stored: materialize churn_labels first")
    try:
        built = build_training_set(tessera.dsn(), stored)
    except LeakageError as exc:
        raise dg.Failure(str(exc)) from exc
    training_sets.store(tessera.dsn(), built.frame, built.features)
    lag = (built.frame["as_of"] - built.frame["feature_ts"]).dt.total_seconds() / 86_400
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(built.frame),
            "dagster/column_schema": training_sets.TRAINING_SET_SCHEMA,
            "features": len(built.features),
            "excluded_features": dg.MetadataValue.json(built.excluded),
            "max_feature_age_days": float(lag.max()),
            "rule": "features of each row from events with event_ts <= as_of only",
        }
    )


class SkewCheckConfig(dg.Config):
    sample_size: int = Field(default=200, ge=1, le=100_000)
    seed: int = 0


@dg.asset_check(
    asset=churn_training_set,
    blocking=True,
    additional_deps=[CUSTOMER_FEATURES],  # what serving reads
    description="For a sample of entities, the features serving reads from the shards now equal the historical "
    "builder's features as of now (a mismatch names the entities and the features).",
)
def online_offline_skew(config: SkewCheckConfig, tessera: TesseraResource) -> dg.AssetCheckResult:
    report = check_skew(tessera, skew.sample_entities(tessera.dsn(), config.sample_size, config.seed))
    return dg.AssetCheckResult(
        passed=report.passed,
        description=report.description(),
        metadata={
            "sampled_entities": report.compared,
            "mismatched_entities": len(report.mismatches),
            "mismatches": dg.MetadataValue.json(dict(sorted(report.mismatches.items())[:50])),
        },
    )


def check_skew(tessera: TesseraResource, entity_ids: list[str]) -> skew.SkewReport:
    """Read ``entity_ids`` through the serving read path and compare with the builder as of now."""
    with tessera.feature_store() as store:
        result = store.get_features(entity_ids, tessera.feature_set)
    if result.failed:
        raise dg.Failure(f"shards {sorted(result.failed)} could not be read for the skew check")
    online = {e: (r.event_ts, r.features) for e, r in result.records.items()}
    return skew.skew_report(tessera.dsn(), online, entity_ids, datetime.now(UTC))
