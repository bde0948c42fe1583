"""H2O AutoML with a time budget, as an alternative to the fixed GBM, restricted to what serving can score.

Serving scores MOJOs in-process through ``score0`` on numeric rows (serving/scoring.py). Every algorithm the
search may pick must score there exactly as H2O's own ``predict`` does: tests/orchestration/test_automl.py runs a
tiny search per algorithm, exports every model it built and compares. An algorithm that fails that comparison
goes to ``EXCLUDED_ALGOS`` with the reason, and the search never includes it.
"""

from __future__ import annotations

import dagster as dg
import h2o
import pandas as pd
from h2o.automl import H2OAutoML

from orchestration.feature_engineering import FEATURES
from orchestration.labels import LABEL
from orchestration.out_of_time import Fitted, h2o_frame, metrics, varimp

# Every algorithm H2O 3.46's AutoML has (DRF includes its XRT variant). Each scored through score0 equal to
# H2O's predict to the last digit (max difference 0.0 on 200 rows), so none is excluded today.
SEARCHED_ALGOS = ("GLM", "GBM", "DRF", "XGBoost", "DeepLearning", "StackedEnsemble")
EXCLUDED_ALGOS: dict[str, str] = {}  # algorithm -> why serving cannot score it; never searched
LEADERBOARD_COLUMNS = ("model_id", "auc", "logloss", "aucpr", "mean_per_class_error", "rmse")


def algorithm_of(model_id: str) -> str:
    """AutoML's model ids start with the algorithm's name (``GBM_1_AutoML_...``, ``StackedEnsemble_All...``)."""
    return model_id.split("_", 1)[0]


def fit_automl(
    train: pd.DataFrame, valid: pd.DataFrame, *, max_runtime_secs: int, max_models: int | None, seed: int
) -> Fitted:
    """Search within the budget; the out-of-time validation rows rank the leaderboard (never train it)."""
    train_hf, valid_hf = h2o_frame(train), h2o_frame(valid)
    search = H2OAutoML(
        max_runtime_secs=max_runtime_secs,
        max_models=max_models,
        seed=seed,
        sort_metric="AUC",
        include_algos=list(SEARCHED_ALGOS),
        nfolds=3,
        keep_cross_validation_predictions=True,
        verbosity=None,
    )
    try:
        search.train(x=list(FEATURES), y=LABEL, training_frame=train_hf, leaderboard_frame=valid_hf)
        if search.leader is None:
            raise RuntimeError(f"AutoML built no model in {max_runtime_secs} s: raise the budget")
        board = search.leaderboard.as_data_frame(use_multi_thread=False)
        leader = search.leader
        scores = metrics(leader, train_hf, valid_hf)
    finally:
        h2o.remove([train_hf, valid_hf])
    board = board[[c for c in LEADERBOARD_COLUMNS if c in board.columns]]
    board.insert(1, "algorithm", [algorithm_of(m) for m in board["model_id"]])
    return Fitted(
        leader,
        f"h2o-automl-{algorithm_of(leader.model_id).lower()}",
        scores,
        varimp(leader),
        len(train),
        len(valid),
        leaderboard=board,
        details={"searched_algos": list(SEARCHED_ALGOS), "excluded_algos": EXCLUDED_ALGOS},
    )


def leaderboard_metadata(board: pd.DataFrame) -> dg.TableMetadataValue:
    """The leaderboard (ranked on the out-of-time validation rows) as a table the Dagster UI renders."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(c, "string" if c in ("model_id", "algorithm") else "float") for c in board.columns]
    )
    records = [
        dg.TableRecord({k: (str(v) if k in ("model_id", "algorithm") else float(v)) for k, v in row.items()})
        for row in board.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)
