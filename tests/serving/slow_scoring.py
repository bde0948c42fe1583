"""Test-only app factory (``python -m serving --app tests.serving.slow_scoring:create_app``): the real service
whose every scoring call scores its rows ``SLOW_SCORING_REPEAT`` times in the JVM, so one call keeps a scoring
thread busy for seconds with the same JPype calls production makes (not a sleep, not a mock)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from litestar.types import ASGIApp

from serving.app import create_service
from serving.scoring import LoadedModel, Score


def create_app() -> ASGIApp:
    repeat = int(os.environ["SLOW_SCORING_REPEAT"])
    score_once = LoadedModel.score

    def score_repeatedly(self: LoadedModel, rows: Sequence[Mapping[str, Any]]) -> list[Score]:
        for _ in range(repeat - 1):
            score_once(self, rows)
        return score_once(self, rows)

    LoadedModel.score = score_repeatedly  # type: ignore[method-assign]
    return create_service()
