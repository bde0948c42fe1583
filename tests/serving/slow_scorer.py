"""Test-only scorer (``python -m tests.serving.slow_scorer run``): the real ``python -m serving.scorer`` whose every
scoring call scores its rows ``SLOW_SCORING_REPEAT`` times in the JVM, so a batch keeps it busy long enough for a
test to kill it mid-round with the same JPype calls production makes (not a sleep, not a mock)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from serving.scorer.__main__ import main
from serving.scoring import LoadedModel, Score


def _slow_down(repeat: int) -> None:
    score_once = LoadedModel.score

    def score_repeatedly(self: LoadedModel, rows: Sequence[Mapping[str, Any]]) -> list[Score]:
        for _ in range(repeat - 1):
            score_once(self, rows)
        return score_once(self, rows)

    LoadedModel.score = score_repeatedly  # type: ignore[method-assign]


if __name__ == "__main__":
    _slow_down(int(os.environ["SLOW_SCORING_REPEAT"]))
    sys.exit(main())
