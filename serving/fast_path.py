"""The single-prediction fast path: ``POST /v1/predictions`` with ``{"entity_id": ...}`` answered in front of
Litestar's request pipeline, when its outcome is a prediction.

Why: in process, a cached answer costs 15-30 us of CPU here and 55-140 us through Litestar's router, exception
middleware, dependency injection and response object (docs/benchmarks.md, "The hot path in process"). On two
cores shared with the load generator, hits were the one scenario the FastAPI baseline won before this path.
The route itself stays Litestar's: its OpenAPI, its validation and its error contract (problem details,
status codes, ``Retry-After``).

Authentication and rate limits first, with the app's own check (``serving.auth``), before the body is read: a
request without an active key with the ``predict`` scope, or over its key's rate limit, goes on to the Litestar
route, which renders the 401, 403 or 429; a request admitted here took its rate-limit token, and says so in the
scope so the route takes none.

What it answers: only a well-formed single-entity body (the same msgspec decoder as the route) whose outcome is
a prediction, with the bytes and headers the route sends. Everything else goes on to the Litestar app with the
body replayed: other routes and methods, batches, bodies without a small ``Content-Length``, malformed bodies,
no promoted model. A domain error (unknown entity, shard down) goes on too, with its outcome handed over in the
scope (``HANDED_OVER``), so the route renders it without reading or scoring the entity a second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from msgspec import UNSET

from serving.auth import ADMITTED, LIMITED
from serving.predictor import Outcome
from serving.request_metrics import record_request
from serving.runtime import ServingRuntime
from serving.schemas import decode_request, prediction_of
from serving.scoring import LoadedModel
from shardctl.store.api_keys import PREDICT

PATH = "/v1/predictions"
MAX_BODY_BYTES = 4096  # a single-entity body is < 300 bytes; anything larger takes the full route
HANDED_OVER = "tessera.outcome"  # scope key: (model, [outcome]) computed here, rendered by the route
_HEADERS = [(b"content-type", b"application/json")]
_encode = msgspec.json.Encoder().encode


def _length_and_authorization(scope: Scope) -> tuple[int | None, bytes | None]:
    """The first ``Content-Length`` (None: absent or not a number) and ``Authorization``, in one pass over the
    headers (the key check rides on the scan the fast path made anyway)."""
    length: bytes | None = None
    authorization = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value if length is None else length
        elif name == b"authorization":
            authorization = value
    return (int(length) if length is not None and length.isdigit() else None), authorization


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands the messages already read to the app first, then reads on."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


class PredictionFastPath:
    """ASGI wrapper in front of the Litestar app (see the module's docstring); ``runtime`` returns the worker's
    runtime, or None before its lifespan has opened it."""

    def __init__(self, app: ASGIApp, runtime: Callable[[], ServingRuntime | None]):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        length, authorization = _length_and_authorization(scope)
        runtime = self.runtime()
        if length is None or length > MAX_BODY_BYTES or runtime is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        gate = runtime.gate
        if gate is not None:  # the same check as the app's (serving.security), in the same order
            retry = None
            key = gate.admit_known(authorization)  # the common case: a known key, a token of its lease spent
            if key is None:
                key = gate.key_of_authorization(authorization)
                if key is None:
                    await self.app(scope, receive, send)  # 401 there
                    return
                retry = await gate.limiter.admit(key)
            scope[ADMITTED] = key  # type: ignore[literal-required]  # its token is taken: the route takes none
            if retry is not None or PREDICT not in key.scopes:
                if retry is not None:
                    scope[LIMITED] = retry  # type: ignore[literal-required]
                await self.app(scope, receive, send)  # 429 or 403 there
                return
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: the app sees it as it would have
                await self.app(scope, _replaying(messages, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        answered = await self._answer(scope, b"".join(chunks), runtime, send)
        if answered:
            record_request("POST", PATH, 200, time.perf_counter() - started)
        else:
            await self.app(scope, _replaying(messages, receive), send)

    async def _answer(self, scope: Scope, body: bytes, runtime: ServingRuntime, send: Send) -> bool:
        """Send the prediction and return True, or return False for the route to answer."""
        try:
            request = decode_request(body)
        except ValueError:
            return False
        entity = request.entity_id
        if entity is UNSET or request.entity_ids is not UNSET:  # a batch, or both: the route's to answer
            return False
        try:
            model, [outcome] = await runtime.predictor.predict([entity])
        except Exception:  # no model promoted, or a bug: the route raises it again and renders it
            return False
        if outcome.error is not None:
            scope[HANDED_OVER] = (model, [outcome])  # type: ignore[literal-required]
            return False
        await self._send_prediction(model, outcome, send)
        return True

    @staticmethod
    async def _send_prediction(model: LoadedModel, outcome: Outcome, send: Send) -> None:
        payload = _encode(prediction_of(model, outcome))
        headers = [*_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
