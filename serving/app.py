"""The prediction service: ``create_service()`` is the factory Granian loads (``python -m serving``), the
Litestar app of ``create_app()`` behind the single-prediction fast path (``serving.fast_path``), every request
counted for the graceful drain.

One init plugin assembles the app: the controllers (``serving.controllers``), the middleware, error mapping,
and the dependencies handlers ask for by type (the predictor, the model holder, the worker's runtime, the
service's limits). Every worker process opens its own runtime (model holder, JVM, pools, Redis client) in the
lifespan and closes it at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp

from serving.body_framing import CompleteBodies
from serving.controllers import CONTROLLERS
from serving.drain import CountInFlight, InFlight
from serving.fast_path import PredictionFastPath
from serving.http_errors import exception_handlers, problem_details_plugin
from serving.request_metrics import RequestMetrics
from serving.runtime import ServingRuntime
from serving.schemas import BatchItem, BatchResponse, ModelInfo, Prediction, PredictionRequest
from serving.scoring import ModelHolder
from serving.security import COMPONENTS, OPEN_PATHS, ApiKeyAuthentication, PerKeyRateLimit
from serving.settings import ServingSettings
from shardctl.settings import TesseraSettings, get_settings


class ServingPlugin(InitPluginProtocol):
    """Builds the service into an app and owns the worker's runtime between startup and shutdown."""

    def __init__(self, settings: TesseraSettings, serving: ServingSettings):
        self.settings = settings
        self.serving = serving
        self._runtime: ServingRuntime | None = None
        self.in_flight = InFlight()

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        self._runtime = await ServingRuntime.open(self.settings, self.serving)
        try:
            yield
        finally:
            # Shutdown (SIGTERM): Granian has stopped accepting; let the requests it still runs finish, bounded.
            await self.in_flight.wait_idle(self.serving.drain_seconds)
            runtime, self._runtime = self._runtime, None
            await runtime.close()

    # Providers: plain attribute reads, called without a thread hop (requests only arrive after startup). Each
    # handler asks for one: Litestar resolves two or more dependencies of a handler in an anyio task group.
    def runtime(self) -> ServingRuntime:
        if self._runtime is None:
            raise RuntimeError("the worker's runtime opens in the lifespan, before the first request")
        return self._runtime

    def opened_runtime(self) -> ServingRuntime | None:
        """The runtime, or None before the lifespan opened it (the fast path then leaves requests to the app)."""
        return self._runtime

    def models(self) -> ModelHolder:
        return self.runtime().predictor.holder

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(CONTROLLERS)
        app_config.dependencies.update(
            {
                "runtime": Provide(self.runtime, sync_to_thread=False),
                "models": Provide(self.models, sync_to_thread=False),
            }
        )
        app_config.lifespan.append(self.lifespan)
        app_config.middleware.extend([RequestMetrics, CompleteBodies])
        if self.serving.auth:  # inside RequestMetrics: refusals are counted by status like any answer
            app_config.middleware.extend(
                [
                    DefineMiddleware(ApiKeyAuthentication, runtime=self.opened_runtime, exclude=OPEN_PATHS),
                    DefineMiddleware(PerKeyRateLimit, runtime=self.opened_runtime),
                ]
            )
        app_config.plugins.append(problem_details_plugin(self.serving.retry_after_seconds))
        app_config.exception_handlers.update(exception_handlers())
        app_config.openapi_config = OpenAPIConfig(
            title="Tessera prediction service", version="1.0.0", components=COMPONENTS
        )
        app_config.debug = False
        return app_config


def create_app(settings: TesseraSettings | None = None, serving: ServingSettings | None = None) -> Litestar:
    """Build the Litestar app (every route, its OpenAPI); resources are opened in each worker's lifespan."""
    return Litestar(plugins=[ServingPlugin(settings or get_settings(), serving or ServingSettings())])


def create_service(settings: TesseraSettings | None = None, serving: ServingSettings | None = None) -> ASGIApp:
    """What Granian serves: the app of ``create_app``, behind the fast path, counted for the drain."""
    app = create_app(settings, serving)
    plugin = app.plugins.get(ServingPlugin)
    return CountInFlight(PredictionFastPath(app, plugin.opened_runtime), plugin.in_flight)


__all__ = ["BatchItem", "BatchResponse", "ModelInfo", "Prediction", "PredictionRequest", "create_app", "create_service"]
