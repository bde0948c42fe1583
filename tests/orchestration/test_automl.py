"""AutoML as the alternative to the fixed GBM: every algorithm the search may pick scores in serving's score0 path
exactly as H2O's own predict does, the option is a constrained config field, and the leaderboard is table
metadata. Tiny budgets on the pipeline's small point-in-time training set and the session's H2O JVM."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import h2o
import pydantic
import pytest
from h2o.automl import H2OAutoML
from h2o.estimators.xgboost import H2OXGBoostEstimator

from orchestration import automl, h2o_runtime, out_of_time, training_sets
from orchestration.defs.churn_model import TrainConfig
from orchestration.feature_engineering import FEATURES
from orchestration.labels import LABEL
from serving.scoring import LoadedModel
from shardctl.store.registry import ModelVersion
from tests.orchestration.conftest import HORIZON_DAYS, QUIET

ROWS = 150


@pytest.fixture(scope="module")
def split(graph, settings):
    frame = training_sets.load(settings.catalog_dsn)
    return out_of_time.split(frame, HORIZON_DAYS, 1)


def _served(model: h2o.estimators.H2OEstimator, directory: Path) -> LoadedModel:
    mojo = Path(model.download_mojo(path=str(directory), get_genmodel_jar=True))
    version = ModelVersion(
        model_name="automl-parity",
        version=1,
        created_at=datetime.now(UTC),
        algorithm=model.algo,
        feature_set="none",
        features=list(FEATURES),
        metrics={},
        artifact_path=str(mojo),
        genmodel_jar=str(directory / "h2o-genmodel.jar"),
        details={},
    )
    return LoadedModel(version)


@pytest.mark.req("PLAT.automl")
def test_every_algorithm_automl_may_pick_scores_in_serving_as_h2o_predicts(split, h2o_server, tmp_path) -> None:
    train, valid = split
    h2o_runtime.connect(h2o_server.url)
    rows = valid.head(ROWS)
    records = rows[list(FEATURES)].to_dict("records")
    searches = [[a] for a in automl.SEARCHED_ALGOS if a != "StackedEnsemble"] + [["GLM", "GBM", "StackedEnsemble"]]
    seen: set[str] = set()
    train_hf, rows_hf = out_of_time.h2o_frame(train), out_of_time.h2o_frame(rows)
    for algos in searches:
        search = H2OAutoML(
            max_models=len(algos) - 1 or 1,
            max_runtime_secs=60,
            seed=1,
            include_algos=algos,
            # Cross-validation only where the ensemble needs its folds' predictions: a fold model is never the
            # one served, and single-algorithm searches without folds train a quarter of the models.
            nfolds=3 if "StackedEnsemble" in algos else 0,
            keep_cross_validation_predictions="StackedEnsemble" in algos,
            verbosity=None,
        )
        search.train(x=list(FEATURES), y=LABEL, training_frame=train_hf)
        for model_id in search.leaderboard.as_data_frame(use_multi_thread=False)["model_id"]:
            model = h2o.get_model(model_id)
            expected = model.predict(rows_hf).as_data_frame(use_multi_thread=False)["yes"].tolist()
            served = _served(model, tmp_path / model_id)
            assert [s.score for s in served.score(records)] == pytest.approx(expected, abs=1e-9), model_id
            seen.add(model.algo)
    wanted = {a.lower() for a in automl.SEARCHED_ALGOS}
    if not H2OXGBoostEstimator.available():
        wanted.discard("xgboost")  # this machine's H2O has no XGBoost: the search cannot pick it either
    assert wanted <= seen
    assert set(automl.EXCLUDED_ALGOS).isdisjoint(automl.SEARCHED_ALGOS)


@pytest.mark.req("PLAT.automl")
def test_automl_is_a_constrained_config_option_and_reports_its_leaderboard(graph, defs) -> None:
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(algorithm="deep-magic")
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(algorithm="automl", automl_max_runtime_secs=1)
    # max_models ends the search; the budget only bounds it (20 s built no model once on a loaded machine)
    config = {"algorithm": "automl", "automl_max_runtime_secs": 120, "automl_max_models": 2}
    config["compare_latest_state"] = False
    run_config = {"ops": {"churn_model": {"config": config}}, **QUIET}
    result = defs.resolve_job_def("profile_and_train").execute_in_process(
        instance=graph["instance"], asset_selection=[dg.AssetKey("churn_model")], run_config=run_config
    )
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["algorithm"].value.startswith("h2o-automl-")
    board = meta["leaderboard"]
    assert isinstance(board, dg.TableMetadataValue)
    assert 1 <= len(board.records) <= 4  # 2 models, maybe stacked ensembles of them
    assert [c.name for c in board.schema.columns][:3] == ["model_id", "algorithm", "auc"]
    assert board.records[0].data["auc"] == pytest.approx(meta["out_of_time_auc"].value)
