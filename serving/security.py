"""API keys in the Litestar app: the authentication middleware (401), the per-key rate limit (429), the scope
guards (403) and the OpenAPI security scheme. The check itself is ``serving.auth``'s, shared with the fast path.

Open without a key: ``/healthz`` and ``/readyz`` (the orchestrator's probes carry no credentials, and they
reveal only whether the worker runs and has a model), and the OpenAPI schema under ``/schema`` (it describes
the API, security scheme included, and holds no data: a client needs it to learn how to authenticate). Every
other route needs a key: ``predict`` for ``POST /v1/predictions``, ``models:read`` for ``/v1/models/...``,
``metrics`` for ``/metrics``.

Order of the checks, here and in the fast path alike: no valid key 401, over the key's rate limit 429, key
without the route's scope 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.handlers import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Guard, Receive, Scope, Send

from serving.auth import ADMITTED, LIMITED, Gate
from shardctl.store.api_keys import ApiKey

if TYPE_CHECKING:
    from serving.runtime import ServingRuntime

SCHEME = "apiKey"
SECURITY = [{SCHEME: []}]  # an operation's OpenAPI security requirement
COMPONENTS = Components(
    security_schemes={
        SCHEME: SecurityScheme(
            type="http",
            scheme="bearer",
            description="An API key from `shardctl keys create`, as `Authorization: Bearer tsr_...`",
        )
    }
)
OPEN_PATHS = ["^/schema"]  # plus the handlers marked ``exclude_from_auth`` (the probes)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tessera"'}

RuntimeOf = Callable[[], "ServingRuntime | None"]


def _gate(runtime: RuntimeOf) -> Gate:
    opened = runtime()
    if opened is None or opened.gate is None:
        raise RuntimeError("the API key check opens in the worker's lifespan, before the first request")
    return opened.gate


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """401 unless the request carries an active key; the key is then ``request.user``."""

    def __init__(self, app: ASGIApp, runtime: RuntimeOf, exclude: list[str] | None = None):
        super().__init__(app, exclude=exclude)
        self.runtime = runtime

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        key = connection.scope.get(ADMITTED) or _gate(self.runtime).key_of(connection.scope["headers"])
        if key is None:
            raise NotAuthorizedException(
                "a valid API key is required: send `Authorization: Bearer <key>` (`shardctl keys create`)",
                headers=_CHALLENGE,
            )
        return AuthenticationResult(user=key, auth=None)  # the key itself is kept nowhere


class PerKeyRateLimit:
    """429 + ``Retry-After`` once the authenticated key is over its limit (``serving.rate_limit``). Runs after
    ``ApiKeyAuthentication``; a request the fast path admitted already took its token."""

    def __init__(self, app: ASGIApp, runtime: RuntimeOf):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = scope.get("user")
        if isinstance(key, ApiKey):
            retry = scope.get(LIMITED)  # the fast path's verdict, when it made one
            if retry is None and scope.get(ADMITTED) is not key:
                retry = await _gate(self.runtime).limiter.admit(key)
            if retry is not None:
                raise TooManyRequestsException(
                    f"key {key.name!r} is over its rate limit: ask again after Retry-After",
                    headers={"Retry-After": str(retry)},
                )
        await self.app(scope, receive, send)


def requires(scope: str) -> Guard:
    """A guard: 403 unless the request's key has ``scope`` (no key: authentication is off, every route open)."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        key = connection.scope.get("user")
        if isinstance(key, ApiKey) and not key.allows(scope):
            raise PermissionDeniedException(f"key {key.name!r} lacks the scope {scope!r} this route needs")

    return guard
