"""Promotion of a trained version: the candidate and the version serving now are both scored from their MOJOs, on
the H2O cluster, on the same rows (the candidate's out-of-time validation set), so their figures compare; the
comparison is kept in the registry, and a candidate that wins is promoted as a compare-and-set that names the
version it replaces (a promotion that raced it and won makes this one fail, changing nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h2o
import pandas as pd

from orchestration.out_of_time import h2o_frame
from shardctl.store.promotion import Evaluation, Promotion, PromotionConflictError, beats
from shardctl.store.registry import ModelRegistry, ModelVersion

VALIDATION_KEY = "validation_as_of"  # in a version's details: the as-of dates of its out-of-time rows


class PromotionInputError(RuntimeError):
    """The comparison cannot be made (no recorded validation set, rows gone, a MOJO missing)."""


@dataclass(frozen=True)
class Decision:
    evaluation: Evaluation
    promotion: Promotion | None  # None: refused, or lost the compare-and-set (``reason`` says which)
    reason: str


def validation_rows(training_set: pd.DataFrame, candidate: ModelVersion) -> pd.DataFrame:
    """The candidate's out-of-time rows: the training-set rows at the as-of dates its details record."""
    dates = candidate.details.get(VALIDATION_KEY)
    if not dates:
        raise PromotionInputError(f"{candidate.key} records no out-of-time validation dates ({VALIDATION_KEY})")
    wanted = pd.to_datetime(pd.Series(dates), utc=True)
    rows = training_set[pd.to_datetime(training_set["as_of"], utc=True).isin(wanted)]
    if rows.empty:
        raise PromotionInputError(f"the training set has no rows at {candidate.key}'s validation dates {dates}")
    return rows


def mojo_score(version: ModelVersion, frame: h2o.H2OFrame, metric: str) -> float:
    """``metric`` of ``version``'s MOJO on ``frame`` (the cluster must be connected)."""
    if not Path(version.artifact_path).is_file():
        raise PromotionInputError(f"{version.key}'s MOJO {version.artifact_path} is missing")
    model = h2o.upload_mojo(version.artifact_path)
    try:
        return float(getattr(model.model_performance(frame), metric)())
    finally:
        h2o.remove(model)


def promote_if_better(
    registry: ModelRegistry,
    candidate: ModelVersion,
    serving: ModelVersion | None,
    rows: pd.DataFrame,
    *,
    metric: str,
    margin: float,
) -> Decision:
    """Score both MOJOs on ``rows``, keep the figures and the verdict in the registry, then promote the
    candidate if it won and ``serving`` still serves (compare-and-set)."""
    frame = h2o_frame(rows)
    try:
        candidate_score = mojo_score(candidate, frame, metric)
        serving_score = mojo_score(serving, frame, metric) if serving is not None else None
    finally:
        h2o.remove(frame)
    evaluation = registry.record_evaluation(
        candidate.model_name,
        candidate=candidate.version,
        serving=serving.version if serving is not None else None,
        metric=metric,
        candidate_score=candidate_score,
        serving_score=serving_score,
        margin=margin,
        passed=beats(metric, candidate_score, serving_score, margin),
        rows=len(rows),
        details={VALIDATION_KEY: candidate.details.get(VALIDATION_KEY)},
    )
    if not evaluation.passed:
        return Decision(evaluation, None, f"refused: {evaluation.describe()}")
    try:
        promotion = registry.promote(
            candidate.model_name, candidate.version, replaces=evaluation.serving, evaluation=evaluation
        )
    except PromotionConflictError as exc:
        return Decision(evaluation, None, f"not promoted: {exc}")
    return Decision(evaluation, promotion, f"promoted: {evaluation.describe()}")
