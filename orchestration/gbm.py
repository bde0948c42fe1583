"""Training data and the H2O GBM: features read back from every shard, labels from the raw data, an
out-of-time split by signup cohort, metrics, variable importance, and the MOJO export serving loads."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h2o
import pandas as pd
from h2o.estimators import H2OGradientBoostingEstimator
from h2o.exceptions import H2OValueError

from orchestration.feature_engineering import CATEGORICAL_FEATURES, FEATURES
from shardctl.store.export import ExportedRow

LABEL = "churned"


class TrainingDataError(ValueError):
    """The training data cannot make a meaningful model (empty, one class, no validation rows)."""


@dataclass
class TrainedModel:
    model: H2OGradientBoostingEstimator
    metrics: dict[str, float]
    varimp: list[tuple[str, float]]  # (feature, scaled importance), most important first
    cutoff: str
    train_rows: int
    valid_rows: int


def training_frame(exported: Iterable[ExportedRow], labels: Iterable[dict]) -> pd.DataFrame:
    """One row per entity: its stored features, its label and signup date."""
    features = pd.DataFrame([{"entity_id": r.entity_id, **{f: r.features.get(f) for f in FEATURES}} for r in exported])
    if features.empty:
        raise TrainingDataError("no features stored for the feature set: materialize customer_features first")
    frame = features.merge(pd.DataFrame(list(labels)), on="entity_id", how="inner")
    frame[LABEL] = frame[LABEL].map({True: "yes", False: "no"})
    return frame


def split_by_time(frame: pd.DataFrame, validation_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Out of time: the newest signup cohorts validate a model trained on the older ones."""
    cutoff = frame["signup_date"].quantile(1 - validation_fraction, interpolation="nearest")
    train, valid = frame[frame["signup_date"] < cutoff], frame[frame["signup_date"] >= cutoff]
    for name, part in (("training", train), ("validation", valid)):
        if part[LABEL].nunique() < 2:
            raise TrainingDataError(f"the {name} split ({len(part)} rows) has a single class: need more data")
    return train, valid, str(cutoff)


def _h2o_frame(frame: pd.DataFrame) -> h2o.H2OFrame:
    types = {c: "enum" for c in (*CATEGORICAL_FEATURES, LABEL)}
    types.update({c: "real" for c in FEATURES if c not in CATEGORICAL_FEATURES})
    return h2o.H2OFrame(frame[[*FEATURES, LABEL]], column_types=types)


def train_gbm(
    frame: pd.DataFrame, *, ntrees: int, max_depth: int, validation_fraction: float, seed: int
) -> TrainedModel:
    """Train on the older cohorts, score the newer ones; the cluster must be connected."""
    train, valid, cutoff = split_by_time(frame, validation_fraction)
    train_hf, valid_hf = _h2o_frame(train), _h2o_frame(valid)
    model = H2OGradientBoostingEstimator(ntrees=ntrees, max_depth=max_depth, learn_rate=0.1, seed=seed)
    try:
        model.train(x=list(FEATURES), y=LABEL, training_frame=train_hf, validation_frame=valid_hf)
        perf = model.model_performance(valid_hf)
        metrics = {"auc": float(perf.auc()), "logloss": float(perf.logloss())}
        metrics["train_auc"] = float(model.model_performance(train_hf).auc())
    finally:
        h2o.remove([train_hf, valid_hf])
    varimp = [(name, float(scaled)) for name, _, scaled, _ in model.varimp()]
    return TrainedModel(model, metrics, varimp, cutoff, len(train), len(valid))


def export_mojo(model: H2OGradientBoostingEstimator, directory: Path) -> tuple[Path, Path]:
    """The MOJO zip and h2o-genmodel.jar, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        mojo = Path(model.download_mojo(path=str(directory), get_genmodel_jar=True))
    except H2OValueError as exc:
        if not is_secure_only_refusal(exc):
            raise
        raise MojoExportRefusedError(
            f"h2o {h2o.__version__} refuses MOJO export ({exc}); pin h2o==3.46.0.11, the last open-source "
            "client that exports MOJOs"
        ) from exc
    return mojo, directory / "h2o-genmodel.jar"


class MojoExportRefusedError(RuntimeError):
    """The installed h2o client refuses MOJO export (a release that reserves it for H2O-3 Secure)."""


def is_secure_only_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the client's "<operation> requires H2O-3 Secure" refusal (h2o 3.46.0.12 and later),
    as opposed to any other export failure (disk full, cluster gone), which is reported as it is."""
    return "requires H2O-3 Secure" in str(exc)


def publish_artifacts(staging: Path, final: Path) -> None:
    """Move a version's artifacts from its staging folder to ``<models>/<name>/<version>/``."""
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)


def varimp_markdown(varimp: list[tuple[str, float]], width: int = 30) -> str:
    """Variable importance as a bar chart the Dagster UI renders (Markdown, no plotting library needed)."""
    lines = ["| feature | scaled importance | |", "|---|---:|---|"]
    for name, scaled in varimp:
        lines.append(f"| `{name}` | {scaled:.3f} | {'█' * max(1, round(scaled * width))} |")
    return "\n".join(lines)
