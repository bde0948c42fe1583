"""The precomputing scorer: one process per deployment (``python -m serving.scorer``) that scores entities when
their features change and writes the predictions serving looks up first (``serving/scorer/engine.py``)."""

from serving.scorer.engine import Progress, Scorer
from serving.scorer.settings import ScorerSettings

__all__ = ["Progress", "Scorer", "ScorerSettings"]
