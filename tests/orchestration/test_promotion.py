"""Promotion on real shards, the real catalog and a real H2O JVM: the pipeline's first model is promoted with its
figure; a worse model (trained on flipped labels) and a model held to a margin it cannot meet are refused, both
figures recorded, the serving model re-scored from its MOJO on the candidate's out-of-time rows."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from orchestration import h2o_runtime, model_artifacts, out_of_time, promotion, training_sets
from orchestration.feature_engineering import FEATURES
from orchestration.labels import LABEL
from shardctl.store.registry import ModelRegistry, ModelVersion
from tests.orchestration.conftest import HORIZON_DAYS, QUIET


def _promote_newest(defs, graph, rule: dict | None = None) -> dict:
    """Materialize production_model alone (it judges the newest registered version), with the promotion ``rule``
    as its run config (unset: the asset's defaults)."""
    ops = {"production_model": {"config": rule}} if rule else {}
    result = defs.resolve_job_def("profile_and_train").execute_in_process(
        instance=graph["instance"], asset_selection=[dg.AssetKey("production_model")], run_config={**QUIET, "ops": ops}
    )
    [event] = result.get_asset_materialization_events()
    return event.materialization.metadata


def _register_trained(
    registry: ModelRegistry, settings, h2o_server, directory: Path, *, flip_labels: bool, seed: int
) -> ModelVersion:
    """A GBM trained on the stored point-in-time set's training split (labels flipped if asked), registered
    with the same out-of-time validation rows the pipeline's model has."""
    train, valid = out_of_time.split(training_sets.load(settings.catalog_dsn), HORIZON_DAYS, 1)
    if flip_labels:
        train = train.assign(**{LABEL: ~train[LABEL].astype(bool)})
    h2o_runtime.connect(h2o_server.url)
    fitted = out_of_time.fit_gbm(train, valid, ntrees=20, max_depth=4, seed=seed)
    mojo, jar = model_artifacts.export_mojo(fitted.model, directory)
    return registry.register(
        settings.model_name,
        algorithm=fitted.algorithm,
        feature_set=settings.feature_set,
        features=list(FEATURES),
        metrics=fitted.metrics,
        artifact_path=str(mojo),
        genmodel_jar=str(jar),
        details={promotion.VALIDATION_KEY: sorted({ts.isoformat() for ts in valid["as_of"]})},
    )


@pytest.mark.req("PLAT.model-promotion")
def test_the_first_model_is_promoted_with_its_out_of_time_figure(graph, settings) -> None:
    registry = ModelRegistry(settings.catalog_dsn)
    [first, *_] = registry.promotions(settings.model_name)
    assert (first.replaces, first.serving_score, first.metric) == (None, None, "auc")
    version = registry.get(settings.model_name, first.version)
    # Its MOJO re-scored on its out-of-time rows gives the figure training reported for them.
    assert first.candidate_score == pytest.approx(version.metrics["auc"], abs=1e-6)
    assert "nothing serving" in "\n".join(graph["summary"].lines())  # the demo's summary says what was checked


@pytest.mark.req("PLAT.model-promotion")
def test_a_worse_model_is_refused_and_both_figures_are_recorded(
    graph, defs, settings, h2o_server, tmp_path: Path
) -> None:
    registry = ModelRegistry(settings.catalog_dsn)
    serving = registry.current(settings.model_name)
    worse = _register_trained(registry, settings, h2o_server, tmp_path, flip_labels=True, seed=3)
    meta = _promote_newest(defs, graph)
    assert meta["promoted"].value is False
    assert meta["candidate_version"].value == worse.version
    assert meta["serving_version"].value == serving.version
    assert "refused" in meta["reason"].value
    [evaluation] = registry.evaluations(settings.model_name, worse.version)
    assert (evaluation.serving, evaluation.metric, evaluation.passed) == (serving.version, "auc", False)
    assert evaluation.candidate_score < 0.5 < evaluation.serving_score  # flipped labels rank backwards
    assert evaluation.candidate_score == pytest.approx(worse.metrics["auc"], abs=1e-6)
    # The serving model was re-scored from its MOJO on the candidate's rows (here the same dates it was
    # validated on, so the same figure as its own training run reported).
    assert evaluation.serving_score == pytest.approx(serving.metrics["auc"], abs=1e-6)
    assert evaluation.rows == meta["compared_rows"].value > 0
    assert registry.current(settings.model_name).version == serving.version


@pytest.mark.req("PLAT.model-promotion")
def test_a_margin_the_candidate_cannot_meet_refuses_it(graph, defs, settings, h2o_server, tmp_path: Path) -> None:
    registry = ModelRegistry(settings.catalog_dsn)
    serving = registry.current(settings.model_name)
    candidate = _register_trained(registry, settings, h2o_server, tmp_path, flip_labels=False, seed=11)
    # logloss can never drop by more than 5
    meta = _promote_newest(defs, graph, {"metric": "logloss", "margin": 5.0})
    assert meta["promoted"].value is False
    assert (meta["metric"].value, meta["margin"].value) == ("logloss", 5.0)
    [evaluation] = registry.evaluations(settings.model_name, candidate.version)
    assert evaluation.candidate_score == pytest.approx(candidate.metrics["logloss"], abs=1e-6)
    assert evaluation.serving_score == pytest.approx(serving.metrics["logloss"], abs=1e-6)
    assert "by more than 5" in meta["reason"].value
    assert registry.current(settings.model_name).version == serving.version
