"""Graceful drain: the worker's requests in flight, counted, so shutdown closes nothing a request still uses.

On SIGTERM Granian itself stops accepting connections, closes idle keep-alive ones and lets in-flight requests
finish, but it runs the app's lifespan shutdown at the same time: without this wait, the runtime's pools,
Redis client and scoring threads would close under requests still being answered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from litestar.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)


class InFlight:
    """How many requests the worker is answering now."""

    def __init__(self) -> None:
        self.count = 0

    async def wait_idle(self, timeout_seconds: float, poll_seconds: float = 0.01) -> bool:
        """Wait until no request is in flight, at most ``timeout_seconds``; False if some were still running."""
        deadline = time.monotonic() + timeout_seconds
        while self.count and time.monotonic() < deadline:
            await asyncio.sleep(poll_seconds)
        if self.count:
            log.warning("drain: %d request(s) still in flight after %.0f s; closing", self.count, timeout_seconds)
        return not self.count


class CountInFlight:
    """ASGI wrapper around the whole service (the fast path included): counts each HTTP request from its
    arrival to its last byte sent."""

    def __init__(self, app: ASGIApp, in_flight: InFlight):
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1
