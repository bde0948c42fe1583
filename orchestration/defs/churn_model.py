"""H2O training (a fixed GBM or AutoML) on the point-in-time training set, validated out of time, registration
in the model registry, and promotion when the new version beats the serving one on the same out-of-time rows."""

import uuid
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from orchestration import automl, labels, model_artifacts, out_of_time, promotion, training_sets
from orchestration.defs.point_in_time import churn_training_set
from orchestration.feature_engineering import FEATURES
from orchestration.resources import H2OResource, TesseraResource
from shardctl.store.export import export_feature_set
from shardctl.store.promotion import PromotionMetric


class TrainConfig(dg.Config):
    algorithm: Literal["gbm", "automl"] = Field(default="gbm", description="the fixed GBM, or an AutoML search")
    ntrees: int = Field(default=60, ge=1, le=1000, description="Trees of the GBM.")
    max_depth: int = Field(default=5, ge=1, le=20, description="Depth of each tree.")
    automl_max_runtime_secs: int = Field(default=120, ge=5, le=86_400, description="AutoML's time budget")
    automl_max_models: int | None = Field(default=None, ge=1, le=200)
    validation_dates: int = Field(default=1, ge=1, le=52, description="newest as-of dates that validate")
    compare_latest_state: bool = Field(
        default=True, description="also train on the old latest-state features, to record how much they leak"
    )
    seed: int = 42


def _fit(config: TrainConfig, train, valid) -> out_of_time.Fitted:
    if config.algorithm == "automl":
        return automl.fit_automl(
            train,
            valid,
            max_runtime_secs=config.automl_max_runtime_secs,
            max_models=config.automl_max_models,
            seed=config.seed,
        )
    return out_of_time.fit_gbm(train, valid, ntrees=config.ntrees, max_depth=config.max_depth, seed=config.seed)


def _latest_state_auc(config: TrainConfig, tessera: TesseraResource, frame, horizon: int) -> float:
    """The same labels and split with each entity's latest stored features (what training used before)."""
    with tessera.feature_store() as store:
        latest = out_of_time.latest_state_frame(export_feature_set(store.shard_map, tessera.feature_set), frame)
    train, valid = out_of_time.split(latest, horizon, config.validation_dates)
    fitted = out_of_time.fit_gbm(train, valid, ntrees=config.ntrees, max_depth=config.max_depth, seed=config.seed)
    return fitted.metrics["auc"]


@dg.asset(deps=[churn_training_set], group_name="pipeline", kinds={"h2o"})
def churn_model(
    context: dg.AssetExecutionContext, config: TrainConfig, tessera: TesseraResource, h2o_cluster: H2OResource
) -> dg.MaterializeResult:
    """A GBM (or an AutoML search) on the point-in-time training set, validated out of time (the newest as-of
    dates; training labels end before them); MOJO exported and registered as the next version of the model."""
    frame = training_sets.load(tessera.dsn())
    horizon = labels.stored_horizon(tessera.dsn())
    try:
        train, valid = out_of_time.split(frame, horizon, config.validation_dates)
    except out_of_time.TrainingDataError as exc:
        raise dg.Failure(str(exc)) from exc
    split_text = (
        f"out of time: validation as-of {valid['as_of'].min():%Y-%m-%d} and later; training as-of dates whose "
        f"{horizon}-day label window ends by then"
    )
    models_dir = Path(tessera.data_dir) / "models" / tessera.model_name
    staging = models_dir / f"staging-{uuid.uuid4().hex[:12]}"
    # The largest frame H2O holds at once: the training rows (the latest-state baseline has the same rows).
    with h2o_cluster.cluster(context.log, rows=len(frame), columns=len(out_of_time.FRAME_COLUMNS)):
        trained = _fit(config, train, valid)
        latest_auc = _latest_state_auc(config, tessera, frame, horizon) if config.compare_latest_state else None
        mojo, jar = model_artifacts.export_mojo(trained.model, staging)

    def publish(number: int) -> tuple[str, str]:
        final = models_dir / str(number)
        model_artifacts.publish_artifacts(staging, final)
        return str(final / mojo.name), str(final / jar.name)

    # The registry numbers the version and, under the same lock, publish() moves the artifacts to its folder.
    version = tessera.registry().register_published(
        tessera.model_name,
        publish,
        algorithm=trained.algorithm,
        feature_set=tessera.feature_set,
        features=list(FEATURES),
        metrics={**trained.metrics, **({"latest_state_auc": latest_auc} if latest_auc is not None else {})},
        details={
            "training_set": "point in time (churn_training_set)",
            "validation": split_text,
            promotion.VALIDATION_KEY: sorted({ts.isoformat() for ts in valid["as_of"]}),
            "horizon_days": horizon,
            "train_rows": trained.train_rows,
            "valid_rows": trained.valid_rows,
            "config": config.model_dump(),
            **trained.details,
            "dagster_run_id": context.run.run_id,
        },
    )
    board = trained.leaderboard
    return dg.MaterializeResult(
        metadata={
            "model_version": version.version,
            "algorithm": trained.algorithm,
            "auc": trained.metrics["auc"],
            "out_of_time_auc": trained.metrics["auc"],
            "logloss": trained.metrics["logloss"],
            "train_auc": trained.metrics["train_auc"],
            **({"latest_state_auc": latest_auc} if latest_auc is not None else {}),
            "train_rows": trained.train_rows,
            "validation_rows": trained.valid_rows,
            "split": split_text,
            "variable_importance": dg.MetadataValue.md(model_artifacts.varimp_markdown(trained.varimp)),
            **({} if board is None else {"leaderboard": automl.leaderboard_metadata(board)}),
            "artifact_path": dg.MetadataValue.path(version.artifact_path),
        }
    )


class PromotionConfig(dg.Config):
    metric: PromotionMetric = Field(
        default="auc",
        description="What is compared: both MOJOs scored on the candidate's out-of-time rows (auc, aucpr: higher is "
        "better; logloss: lower).",
    )
    margin: float = Field(
        default=0.0,
        ge=0.0,
        description="The candidate must improve the metric by more than this (0: any strict improvement; an equal "
        "model never replaces the serving one).",
    )


@dg.asset(deps=[churn_model], group_name="pipeline", kinds={"h2o", "postgres"})
def production_model(
    context: dg.AssetExecutionContext, config: PromotionConfig, tessera: TesseraResource, h2o_cluster: H2OResource
) -> dg.MaterializeResult:
    """Promote the newest version only when it beats the serving one on the newest version's out-of-time rows:
    both MOJOs scored on those same rows, on the run config's ``metric`` by more than its ``margin``; kept in the
    registry with both figures, promoted as a compare-and-set."""
    registry = tessera.registry()
    versions = registry.versions(tessera.model_name)
    if not versions:
        raise dg.Failure(f"no version of {tessera.model_name!r} is registered: materialize churn_model first")
    newest = versions[-1]
    if not Path(newest.artifact_path).exists():
        raise dg.Failure(f"version {newest.version}'s MOJO {newest.artifact_path} is missing: not promoting it")
    serving = registry.current(tessera.model_name)
    if serving is not None and serving.version == newest.version:
        return dg.MaterializeResult(
            metadata={"candidate_version": newest.version, "promoted": False, "reason": "already serving"}
        )
    try:
        rows = promotion.validation_rows(training_sets.load(tessera.dsn()), newest)
        with h2o_cluster.cluster(context.log, rows=len(rows), columns=len(out_of_time.FRAME_COLUMNS)):
            decision = promotion.promote_if_better(
                registry, newest, serving, rows, metric=config.metric, margin=config.margin
            )
    except promotion.PromotionInputError as exc:
        raise dg.Failure(str(exc)) from exc
    evaluation = decision.evaluation
    context.log.info(decision.reason)
    current = registry.current(tessera.model_name)
    return dg.MaterializeResult(
        metadata={
            "candidate_version": newest.version,
            "serving_version": evaluation.serving if evaluation.serving is not None else 0,
            "metric": evaluation.metric,
            "margin": evaluation.margin,
            "candidate_score": evaluation.candidate_score,
            "serving_score": evaluation.serving_score if evaluation.serving_score is not None else float("nan"),
            "compared_rows": evaluation.rows,
            "promoted": decision.promotion is not None,
            "reason": decision.reason,
            "production_version": current.version if current else 0,
        }
    )
