"""The prediction service's Litestar app: routes, typed request/response structs, error mapping, lifespan.

``create_app()`` is the factory Granian loads (``python -m serving``); every worker process builds its own
model holder, JVM, pools and Redis client at startup and closes them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import psycopg
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusController

from serving.predictor import Outcome, Predictor, age_seconds
from serving.request_metrics import RequestMetrics
from serving.runtime import ServingRuntime
from serving.scoring import LoadedModel, NoModelError
from shardctl.settings import TesseraSettings, get_settings

log = logging.getLogger(__name__)

EntityId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]


class PredictionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Give ``entity_id`` for one prediction, or ``entity_ids`` (1..max_batch ids) for a batch."""

    entity_id: EntityId | None = None
    entity_ids: list[EntityId] | None = None


class Prediction(msgspec.Struct):
    entity_id: str
    score: float
    label: str | None
    model: str
    model_version: int
    cached: bool
    feature_version: int
    features_event_ts: str
    features_written_at: str
    feature_age_seconds: float


class BatchItem(msgspec.Struct, omit_defaults=True):
    """One entity of a batch: ``status`` 200 with ``prediction``, or 404/503 with ``error``."""

    entity_id: str
    status: int
    prediction: Prediction | None = None
    error: str | None = None
    retry_after_seconds: int | None = None


class BatchResponse(msgspec.Struct):
    model: str
    items: list[BatchItem]


class ModelInfo(msgspec.Struct):
    model: str
    model_name: str
    version: int
    algorithm: str
    feature_set: str
    features: list[str]
    metrics: dict[str, float]
    created_at: str


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    model: str | None = None
    detail: str | None = None


def _prediction(model: LoadedModel, outcome: Outcome) -> Prediction:
    p = outcome.prediction
    assert p is not None
    return Prediction(
        outcome.entity_id,
        p.score,
        p.label,
        model.key,
        model.version.version,
        outcome.cached,
        p.feature_version,
        p.event_ts,
        p.written_at,
        round(age_seconds(p.written_at), 3),
    )


def _settings(state: State) -> TesseraSettings:
    return state.settings


@post(
    "/v1/predictions",
    status_code=200,
    summary="Score one entity or a batch",
    description=(
        'Body `{"entity_id": "c1"}` answers one prediction (404 unknown entity, 503 + Retry-After when its '
        'shard is down); `{"entity_ids": [...]}` (1..max_batch, default 100) answers a batch with a status per '
        "item. 422 for a malformed body; 503 when no model is promoted."
    ),
    raises=[NotFoundException, ServiceUnavailableException, ValidationException],
)
async def predict(data: PredictionRequest, state: State) -> Prediction | BatchResponse:
    settings = _settings(state)
    if (data.entity_id is None) == (data.entity_ids is None):
        raise ValidationException("give exactly one of entity_id (one prediction) or entity_ids (a batch)")
    batch = data.entity_ids
    if batch is not None and not batch:
        raise ValidationException("entity_ids is empty: give 1 to max_batch ids")
    if batch is not None and len(batch) > settings.serving.max_batch:
        raise ValidationException(f"entity_ids has {len(batch)} ids; at most {settings.serving.max_batch} per batch")
    predictor: Predictor = state.predictor
    try:
        model, outcomes = await predictor.predict(batch if batch is not None else [data.entity_id])  # type: ignore[list-item]
    except NoModelError as exc:
        raise ServiceUnavailableException(
            str(exc), headers={"Retry-After": str(settings.serving.retry_after_seconds)}
        ) from None
    retry_after = settings.serving.retry_after_seconds
    if batch is None:
        outcome = outcomes[0]
        if outcome.status == 404:
            raise NotFoundException(outcome.error)
        if outcome.status == 503:
            raise ServiceUnavailableException(outcome.error, headers={"Retry-After": str(retry_after)})
        return _prediction(model, outcome)
    by_id = {o.entity_id: o for o in outcomes}
    items = []
    for entity in batch:
        o = by_id[entity]
        if o.status == 200:
            items.append(BatchItem(entity, 200, prediction=_prediction(model, o)))
        else:
            items.append(
                BatchItem(entity, o.status, error=o.error, retry_after_seconds=retry_after if o.status == 503 else None)
            )
    return BatchResponse(model.key, items)


@get("/v1/models/current", summary="The promoted model this worker serves", raises=[ServiceUnavailableException])
async def current_model(state: State) -> ModelInfo:
    model = state.predictor.holder.current
    if model is None:
        raise ServiceUnavailableException(f"no version of model {_settings(state).model_name!r} is promoted yet")
    v = model.version
    return ModelInfo(
        model.key,
        v.model_name,
        v.version,
        v.algorithm,
        v.feature_set,
        list(v.features),
        dict(v.metrics),
        v.created_at.isoformat(),
    )


@get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health("ok")


def _catalog_reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@get("/readyz", summary="Readiness: a model is loaded and the catalog answers")
async def readyz(state: State) -> Response[Health]:
    model = state.predictor.holder.current
    settings = _settings(state)
    loop = asyncio.get_running_loop()
    catalog_ok = await loop.run_in_executor(state.io_pool, _catalog_reachable, settings.catalog_dsn)
    if model is None or not catalog_ok:
        detail = "no model promoted" if model is None else "catalog unreachable"
        return Response(Health("not ready", model and model.key, detail), status_code=503)
    return Response(Health("ready", model.key))


def _unprocessable(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    """Bad request bodies are 422 with the reason (Litestar's default is 400)."""
    body: dict[str, Any] = {"status_code": 422, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=422)


def _client_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    status = 422 if exc.status_code == 400 else exc.status_code
    return Response({"status_code": status, "detail": exc.detail}, status_code=status, headers=exc.headers)


def _internal_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s", request.url.path)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


def create_app(settings: TesseraSettings | None = None) -> Litestar:
    """Build the app; resources are opened in the lifespan of each worker process."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = await ServingRuntime.open(settings)
        app.state.settings = settings
        app.state.io_pool = runtime.io_pool
        app.state.predictor = runtime.predictor
        try:
            yield
        finally:
            await runtime.close()

    return Litestar(
        route_handlers=[predict, current_model, healthz, readyz, PrometheusController],
        lifespan=[lifespan],
        middleware=[RequestMetrics],
        exception_handlers={
            ValidationException: _unprocessable,
            HTTPException: _client_error,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(title="Tessera prediction service", version="1.0.0"),
        debug=False,
    )


__all__ = ["BatchItem", "BatchResponse", "ModelInfo", "Prediction", "PredictionRequest", "create_app"]
