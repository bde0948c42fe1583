"""The service's route handlers. Each gets what it needs as typed parameters that Litestar injects (see
``serving.app``); the domain answers with outcomes and typed errors, ``serving.http_errors`` turns those into
status codes."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import SkipValidation
from msgspec import UNSET

from serving.errors import NoModelError
from serving.fast_path import HANDED_OVER
from serving.http_errors import PROBLEM_JSON, status_of
from serving.predictor import Outcome
from serving.runtime import ServingRuntime
from serving.schemas import (
    BatchItem,
    BatchResponse,
    Health,
    ModelInfo,
    Prediction,
    ProblemDetail,
    decode_request,
    prediction_of,
    request_schema,
)
from serving.scoring import LoadedModel, ModelHolder

# Injected objects are the worker's own, not client input: Litestar would otherwise convert (validate) each one
# against its type on every request.
Runtime = NamedDependency[SkipValidation[ServingRuntime]]
Models = NamedDependency[SkipValidation[ModelHolder]]


_encode = msgspec.json.Encoder().encode


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(ProblemDetail, description=description, media_type=PROBLEM_JSON, generate_examples=False)


@dataclass
class _RetryAfterDocumented(Operation):
    """An operation whose 503 answers carry ``Retry-After`` (seconds), documented as such in the OpenAPI."""

    def __post_init__(self) -> None:
        unavailable = (self.responses or {}).get("503")
        if isinstance(unavailable, OpenAPIResponse):
            retry = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="seconds", required=True)
            unavailable.headers = {"Retry-After": retry}


@dataclass
class _PredictOperation(_RetryAfterDocumented):
    """The prediction route reads its body itself (below): its request body is documented from the struct,
    with msgspec's own schema of it (the one the decoder enforces: lengths, pattern, no unknown fields)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(
            content={MediaType.JSON: OpenAPIMediaType(schema=request_schema())},  # type: ignore[arg-type]
            required=True,
        )


def _batch_item(model: LoadedModel, outcome: Outcome, retry_after: int) -> BatchItem:
    if outcome.error is None:
        return BatchItem(outcome.entity_id, 200, prediction=prediction_of(model, outcome))
    error = outcome.error
    return BatchItem(
        outcome.entity_id,
        status_of(error),
        error=error.message,
        retry_after_seconds=retry_after if error.retryable else None,
    )


@post(
    "/v1/predictions",
    status_code=200,
    summary="Score one entity or a batch",
    description=(
        'Body `{"entity_id": "c1"}` answers one prediction (404 unknown entity, 503 + Retry-After when its '
        'shard is down); `{"entity_ids": [...]}` (1..max_batch, default 100) answers a batch with a status per '
        "item. 422 for a malformed body; 503 when no model is promoted."
    ),
    responses={
        404: _problem("The entity has no features"),
        413: _problem("The body is over the request size limit (10 MB)"),
        422: _problem("The body is not a prediction request (the reason in detail)"),
        503: _problem("The entity's shard is down, or no model is promoted: ask again after Retry-After"),
    },
    operation_class=_PredictOperation,
)
async def predict(request: Request, runtime: Runtime) -> Prediction | BatchResponse:
    # Single predictions that succeed are answered by the fast path in front of Litestar (serving.fast_path);
    # this route answers the rest with the same decoder and encoder. The body is read once and decoded by
    # msgspec straight into the struct (no Litestar kwargs model for it). One dependency per handler: Litestar
    # resolves two or more through an anyio task group per request (measured: +110 us of CPU on a hit).
    try:
        data = decode_request(await request.body())
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    predictor, limits = runtime.predictor, runtime.serving
    one, batch = data.entity_id, data.entity_ids
    if (one is UNSET) == (batch is UNSET):
        raise ValidationException("give exactly one of entity_id (one prediction) or entity_ids (a batch)")
    if batch is UNSET:
        # The fast path (serving.fast_path) may already have computed this entity's outcome (an error to render).
        handed_over = request.scope.get(HANDED_OVER)
        model, [outcome] = handed_over or await predictor.predict([one])  # type: ignore[list-item]
        if outcome.error is not None:
            raise outcome.error
        return _encode(prediction_of(model, outcome))  # type: ignore[return-value]  # bytes go out as they are
    if len(batch) > limits.max_batch:
        raise ValidationException(f"entity_ids has {len(batch)} ids; at most {limits.max_batch} per batch")
    model, outcomes = await predictor.predict(batch)
    by_id = {o.entity_id: o for o in outcomes}
    items = [_batch_item(model, by_id[e], limits.retry_after_seconds) for e in batch]
    return _encode(BatchResponse(model.key, items))  # type: ignore[return-value]


@get(
    "/v1/models/current",
    summary="The promoted model this worker serves",
    responses={503: _problem("No model is promoted yet: ask again after Retry-After")},
    operation_class=_RetryAfterDocumented,
)
async def current_model(models: Models) -> ModelInfo:
    model = models.current
    if model is None:
        raise NoModelError(f"no version of model {models.model_name!r} is promoted yet")
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


@get(
    "/readyz",
    summary="Readiness: a model is loaded and the worker serves; the catalog's state is reported, not required",
    responses={503: ResponseSpec(Health, description="No model is loaded yet")},
)
async def readyz(runtime: Runtime) -> Response[Health]:
    # Predictions need the shards, Redis and the loaded model, not the catalog: a catalog outage must not take
    # every pod out of the load balancer at once. Its state comes from the promotion listener's connection
    # (no connection per probe).
    model = runtime.predictor.holder.current
    catalog = "connected" if runtime.catalog_connected() else "unreachable"
    if model is None:
        return Response(Health("not ready", None, "no model promoted", catalog), status_code=503)
    return Response(Health("ready", model.key, catalog=catalog))


ROUTES = [predict, current_model, healthz, readyz]
