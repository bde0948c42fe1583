"""Request count and latency per route and status, as a bare ASGI middleware.

It records what Litestar's Prometheus middleware recorded (``tessera_serving_request_duration_seconds`` and
``tessera_serving_requests_total``, labels method, path template, status code) at a fraction of the cost:
no ``Request`` object per call and one cached child metric per (method, path, status). Measured on the
hit path with one worker: p99 23 ms at 3500 req/s with Litestar's middleware, 5 ms without.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

REQUEST_SECONDS = Histogram(
    "tessera_serving_request_duration_seconds",
    "Request latency inside the worker, by method, route and status",
    ["method", "path", "status_code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REQUESTS = Counter(
    "tessera_serving_requests_total",
    "Requests answered, by method, route and status",
    ["method", "path", "status_code"],
)
NOT_MEASURED = frozenset({"/metrics"})


def _status_of(exc: BaseException) -> int:
    """The status the app's exception handlers answer for ``exc`` (bad bodies: 422; see serving.app)."""
    if isinstance(exc, HTTPException):
        return 422 if exc.status_code == 400 else exc.status_code
    return 500


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record_request(method: str, path: str, status: int, seconds: float) -> None:
    """Count one answered request and observe its latency (one cached child metric per label set)."""
    key = (method, path, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (REQUEST_SECONDS.labels(*key), REQUESTS.labels(*key))
    children[0].observe(seconds)
    children[1].inc()


class RequestMetrics:
    """Litestar middleware: runs after routing, so ``path_template`` names the route, not the raw path.
    (Single predictions answered by ``serving.fast_path`` record themselves, with the same labels.)"""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path_template") or scope.get("path", "")
        if scope["type"] != "http" or path in NOT_MEASURED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except BaseException as exc:
            status = _status_of(exc)
            raise
        finally:
            record_request(scope["method"], path, status, time.perf_counter() - started)
