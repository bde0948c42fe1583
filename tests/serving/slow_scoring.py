"""Test-only app factory (``python -m serving --app tests.serving.slow_scoring:create_app``): the real service
whose every scoring call scores its rows ``SLOW_SCORING_REPEAT`` times in the JVM, so one call keeps a scoring
thread busy for seconds with the same JPype calls production makes (not a sleep, not a mock).

With ``SLOW_SCORING_ARRIVALS`` set to a file, every request that reaches the app appends its ``x-attempt``
header there first: the drain test's proof of which requests the server read."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

from serving.app import create_service
from serving.scoring import LoadedModel, Score


class RecordArrivals:
    """Appends each HTTP request's ``x-attempt`` header to a file (one ``O_APPEND`` write per line, so the
    workers' lines never interleave) before the service sees the request."""

    def __init__(self, app: ASGIApp, path: str):
        self.app = app
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            attempt = dict(scope["headers"]).get(b"x-attempt")
            if attempt is not None:
                os.write(self.fd, attempt + b"\n")
        await self.app(scope, receive, send)


def slow_down(repeat: int) -> None:
    """Make every ``LoadedModel.score`` call in this process score its rows ``repeat`` times in the JVM."""
    score_once = LoadedModel.score

    def score_repeatedly(self: LoadedModel, rows: Sequence[Mapping[str, Any]]) -> list[Score]:
        for _ in range(repeat - 1):
            score_once(self, rows)
        return score_once(self, rows)

    LoadedModel.score = score_repeatedly  # type: ignore[method-assign]


def create_app() -> ASGIApp:
    slow_down(int(os.environ["SLOW_SCORING_REPEAT"]))
    service = create_service()
    arrivals = os.environ.get("SLOW_SCORING_ARRIVALS")
    return RecordArrivals(service, arrivals) if arrivals else service
