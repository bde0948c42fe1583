"""Models fitted on the point-in-time training set and judged out of time (later as-of dates than any
training label's window), plus the latest-state baseline that shows how much the old training set leaked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import h2o
import pandas as pd
from h2o.estimators import H2OGradientBoostingEstimator

from orchestration.feature_engineering import CATEGORICAL_FEATURES, FEATURES
from orchestration.labels import LABEL
from orchestration.point_in_time import split_out_of_time
from shardctl.store.export import ExportedRow


class TrainingDataError(ValueError):
    """The split cannot make a meaningful model (empty side, a single class)."""


@dataclass
class Fitted:
    model: h2o.estimators.H2OEstimator
    algorithm: str
    metrics: dict[str, float]
    varimp: list[tuple[str, float]]
    train_rows: int
    valid_rows: int
    leaderboard: pd.DataFrame | None = None
    details: dict[str, object] = field(default_factory=dict)


def split(frame: pd.DataFrame, horizon_days: int, validation_dates: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The out-of-time split, refused when either side is empty or has a single class."""
    try:
        train, valid = split_out_of_time(frame, horizon_days, validation_dates)
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    for name, part in (("training", train), ("validation", valid)):
        if part[LABEL].nunique() < 2:
            raise TrainingDataError(f"the {name} split ({len(part)} rows) has a single class: need more data")
    return train, valid


# The columns of every frame H2O gets: the features and the label (what the H2O heap is sized from).
FRAME_COLUMNS = (*FEATURES, LABEL)


def h2o_frame(frame: pd.DataFrame) -> h2o.H2OFrame:
    """The features and the label ("yes"/"no") with explicit column types."""
    data = frame[list(FRAME_COLUMNS)].copy()
    data[LABEL] = data[LABEL].map({True: "yes", False: "no"})
    types = {c: "enum" for c in (*CATEGORICAL_FEATURES, LABEL)}
    types.update({c: "real" for c in FEATURES if c not in CATEGORICAL_FEATURES})
    return h2o.H2OFrame(data, column_types=types)


def metrics(model: h2o.estimators.H2OEstimator, train_hf: h2o.H2OFrame, valid_hf: h2o.H2OFrame) -> dict[str, float]:
    perf = model.model_performance(valid_hf)
    return {
        "auc": float(perf.auc()),
        "logloss": float(perf.logloss()),
        "train_auc": float(model.model_performance(train_hf).auc()),
    }


def varimp(model: h2o.estimators.H2OEstimator) -> list[tuple[str, float]]:
    table = model.varimp() if model.algo != "stackedensemble" else None
    return [(name, float(scaled)) for name, _, scaled, _ in table] if table else []


def fit_gbm(train: pd.DataFrame, valid: pd.DataFrame, *, ntrees: int, max_depth: int, seed: int) -> Fitted:
    """The fixed GBM; the cluster must be connected."""
    train_hf, valid_hf = h2o_frame(train), h2o_frame(valid)
    model = H2OGradientBoostingEstimator(ntrees=ntrees, max_depth=max_depth, learn_rate=0.1, seed=seed)
    try:
        model.train(x=list(FEATURES), y=LABEL, training_frame=train_hf, validation_frame=valid_hf)
        scores = metrics(model, train_hf, valid_hf)
    finally:
        h2o.remove([train_hf, valid_hf])
    return Fitted(model, "h2o-gbm", scores, varimp(model), len(train), len(valid))


def latest_state_frame(exported: Iterable[ExportedRow], labels: pd.DataFrame) -> pd.DataFrame:
    """The old way, for comparison only: every label row gets its entity's *latest* stored features (computed
    from events up to the entity's last active day, often after the as-of time)."""
    columns: dict[str, list] = {"entity_id": [], **{f: [] for f in FEATURES}}
    for row in exported:  # column lists as the rows stream by: no dict kept per entity
        columns["entity_id"].append(row.entity_id)
        for f in FEATURES:
            columns[f].append(row.features.get(f))
    latest = pd.DataFrame(columns)
    return labels[["as_of", "entity_id", LABEL]].merge(latest, on="entity_id", how="inner")
