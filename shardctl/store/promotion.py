"""The model lifecycle's rules, free of I/O: when a candidate beats the serving model, what a manual promotion
requires, and which version a rollback returns to.

The registry (``registry.py``) stores what these rules decide; orchestration measures the figures they compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shardctl.errors import ModelLifecycleError

# Metrics a promotion may be judged on, and whether a higher figure is the better one.
HIGHER_IS_BETTER: dict[str, bool] = {"auc": True, "aucpr": True, "logloss": False}
PromotionMetric = Literal["auc", "aucpr", "logloss"]

PROMOTE = "promote"
ROLLBACK = "rollback"


class PromotionError(ModelLifecycleError, ValueError):
    """A promotion or rollback that cannot happen as asked (the message says why; nothing was changed)."""


class PromotionConflictError(PromotionError):
    """The compare-and-set lost: the serving version is not the one the promotion said it replaces."""


class PromotionRefusedError(PromotionError):
    """A manual promotion without a passing out-of-time comparison against the version serving now."""


class NothingToRollBackError(PromotionError):
    """No earlier promoted version to return to."""


@dataclass(frozen=True)
class Evaluation:
    """A candidate and the serving model scored on the same out-of-time rows, and the verdict."""

    id: int
    model_name: str
    candidate: int
    serving: int | None  # None: nothing was serving, the candidate needed only its own figure
    metric: str
    candidate_score: float
    serving_score: float | None
    margin: float
    passed: bool
    rows: int
    evaluated_at: datetime
    details: dict[str, Any]

    def describe(self) -> str:
        if self.serving is None:
            figure = f"{self.metric} {self.candidate_score:.4f} on {self.rows} out-of-time rows"
            return f"version {self.candidate}: {figure}, nothing serving"
        verdict = "beats" if self.passed else "does not beat"
        return (
            f"version {self.candidate} ({self.metric} {self.candidate_score:.4f}) {verdict} version {self.serving} "
            f"({self.serving_score:.4f}) by more than {self.margin:g} on the same {self.rows} out-of-time rows"
        )


@dataclass(frozen=True)
class Promotion:
    """One change of the served version: a promotion (with its figures when it was compared) or a rollback."""

    id: int
    model_name: str
    alias: str
    version: int
    replaces: int | None
    action: str  # PROMOTE or ROLLBACK
    forced: bool
    metric: str | None
    candidate_score: float | None
    serving_score: float | None
    promoted_at: datetime
    note: str


def conflict_message(model_name: str, serving: int | None, expected: int | None) -> str:
    """What a lost compare-and-set says: which version serves, which one the promotion expected."""

    def named(version: int | None) -> str:
        return "nothing" if version is None else f"version {version}"

    return (
        f"{model_name} serves {named(serving)}, not {named(expected)}: the serving version changed; nothing was changed"
    )


def beats(metric: str, candidate: float, serving: float | None, margin: float = 0.0) -> bool:
    """Whether ``candidate`` improves on ``serving`` by more than ``margin`` (in the metric's better direction).
    Nothing serving: the candidate wins. A margin of 0 still asks for a strict improvement, so a model never
    replaces an equal one."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown promotion metric {metric!r}; one of {sorted(HIGHER_IS_BETTER)}")
    if margin < 0:
        raise ValueError(f"the promotion margin must be >= 0, not {margin}")
    if serving is None:
        return True
    improvement = candidate - serving if HIGHER_IS_BETTER[metric] else serving - candidate
    return improvement > margin


def promotion_stack(history: Iterable[Promotion]) -> list[int]:
    """The versions a rollback walks back through, oldest first: each promotion pushes its version, each
    rollback pops the one it left. The last element is the version serving now."""
    stack: list[int] = []
    for record in history:
        if record.action == ROLLBACK:
            if stack and stack[-1] == record.replaces:
                stack.pop()
            if not stack or stack[-1] != record.version:
                stack.append(record.version)
        else:
            stack.append(record.version)
    return stack


def rollback_target(history: Sequence[Promotion], serving: int | None) -> int:
    """The previously promoted version, or ``NothingToRollBackError``."""
    stack = promotion_stack(history)
    if serving is None:
        raise NothingToRollBackError("nothing is serving: there is nothing to roll back")
    if not stack or stack[-1] != serving:
        raise NothingToRollBackError(f"version {serving} is serving but was not promoted through the registry's record")
    if len(stack) < 2:
        raise NothingToRollBackError(f"version {serving} is the only version ever promoted: nothing to roll back to")
    return stack[-2]


def manual_promotion_evidence(
    candidate: int, serving: int | None, evaluations: Sequence[Evaluation]
) -> Evaluation | None:
    """The comparison a manual promotion of ``candidate`` rests on: its newest evaluation against the version
    serving now, which must have passed. Nothing serving: its newest evaluation if any (None if never evaluated).
    Raises ``PromotionRefusedError`` naming what is missing."""
    mine = [e for e in evaluations if e.candidate == candidate]
    if serving is None:
        return mine[-1] if mine else None
    against = [e for e in mine if e.serving == serving]
    if not against:
        raise PromotionRefusedError(
            f"version {candidate} was never compared with version {serving}, which serves now: "
            "run the pipeline's production_model step, or pass --force"
        )
    newest = against[-1]
    if not newest.passed:
        raise PromotionRefusedError(f"refused: {newest.describe()}; pass --force to promote it anyway")
    return newest
