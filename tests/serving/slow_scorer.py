"""Test-only scorer (``python -m tests.serving.slow_scorer run``): the real ``python -m serving.scorer`` whose every
scoring call scores its rows ``SLOW_SCORING_REPEAT`` times in the JVM, so a batch keeps it busy long enough for a
test to kill it mid-round with the same JPype calls production makes (not a sleep, not a mock)."""

from __future__ import annotations

import os
import sys

from serving.scorer.__main__ import main
from tests.serving.slow_scoring import slow_down

if __name__ == "__main__":
    slow_down(int(os.environ["SLOW_SCORING_REPEAT"]))
    sys.exit(main())
