"""H2O training on the features of every shard, registration in the model registry, and promotion."""

import uuid
from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestration import gbm
from orchestration.defs.customer_features import customer_features
from orchestration.defs.raw_events import raw_events
from orchestration.defs.shard_key import shard_key
from orchestration.feature_engineering import FEATURES, labels
from orchestration.resources import H2OResource, TesseraResource
from shardctl.store.export import export_feature_set


class TrainConfig(dg.Config):
    ntrees: int = Field(default=60, ge=1, le=1000, description="Trees of the GBM.")
    max_depth: int = Field(default=5, ge=1, le=20, description="Depth of each tree.")
    validation_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of the newest signup cohorts that validates the model."
    )
    seed: int = 42


@dg.asset(deps=[customer_features, raw_events, shard_key], group_name="pipeline", kinds={"h2o"})
def churn_model(
    context: dg.AssetExecutionContext, config: TrainConfig, tessera: TesseraResource, h2o_cluster: H2OResource
) -> dg.MaterializeResult:
    """A GBM on all stored features (read back from every shard), validated out of time; MOJO exported and
    registered as the next version of the model."""
    settings = tessera.settings()
    with tessera.feature_store() as store:
        exported = list(export_feature_set(store.shard_map, settings.feature_set))
    try:
        frame = gbm.training_frame(exported, labels(tessera.dsn()))
    except gbm.TrainingDataError as exc:
        raise dg.Failure(str(exc)) from exc
    models_dir = Path(settings.data_dir).absolute() / "models" / settings.model_name
    staging = models_dir / f"staging-{uuid.uuid4().hex[:12]}"
    with h2o_cluster.cluster(context.log):
        try:
            trained = gbm.train_gbm(
                frame,
                ntrees=config.ntrees,
                max_depth=config.max_depth,
                validation_fraction=config.validation_fraction,
                seed=config.seed,
            )
        except gbm.TrainingDataError as exc:
            raise dg.Failure(str(exc)) from exc
        mojo, jar = gbm.export_mojo(trained.model, staging)

    def publish(number: int) -> tuple[str, str]:
        final = models_dir / str(number)
        gbm.publish_artifacts(staging, final)
        return str(final / mojo.name), str(final / jar.name)

    # The registry numbers the version and, under the same lock, publish() moves the artifacts to its folder.
    version = tessera.registry().register_published(
        settings.model_name,
        publish,
        algorithm="h2o-gbm",
        feature_set=settings.feature_set,
        features=list(FEATURES),
        metrics=trained.metrics,
        details={
            "cutoff_signup_date": trained.cutoff,
            "train_rows": trained.train_rows,
            "valid_rows": trained.valid_rows,
            "ntrees": config.ntrees,
            "max_depth": config.max_depth,
            "dagster_run_id": context.run.run_id,
        },
    )
    return dg.MaterializeResult(
        metadata={
            "model_version": version.version,
            "auc": trained.metrics["auc"],
            "logloss": trained.metrics["logloss"],
            "train_auc": trained.metrics["train_auc"],
            "train_rows": trained.train_rows,
            "validation_rows": trained.valid_rows,
            "split": f"signup_date < {trained.cutoff} trains, the rest validates",
            "variable_importance": dg.MetadataValue.md(gbm.varimp_markdown(trained.varimp)),
            "artifact_path": dg.MetadataValue.path(version.artifact_path),
        }
    )


@dg.asset(deps=[churn_model], group_name="pipeline", kinds={"postgres"})
def production_model(tessera: TesseraResource) -> dg.MaterializeResult:
    """Promote the newest version when it beats the production one on validation AUC."""
    settings = tessera.settings()
    registry = tessera.registry()
    versions = registry.versions(settings.model_name)
    if not versions:
        raise dg.Failure(f"no version of {settings.model_name!r} is registered: materialize churn_model first")
    newest = versions[-1]
    if not Path(newest.artifact_path).exists():
        raise dg.Failure(f"version {newest.version}'s MOJO {newest.artifact_path} is missing: not promoting it")
    promoted = registry.promote_if_better(settings.model_name, newest.version, metric="auc")
    current = registry.current(settings.model_name)
    return dg.MaterializeResult(
        metadata={
            "candidate_version": newest.version,
            "candidate_auc": newest.metrics.get("auc", float("nan")),
            "promoted": promoted,
            "production_version": current.version if current else 0,
            "production_auc": current.metrics.get("auc", float("nan")) if current else float("nan"),
        }
    )
