"""``/v1/predictions``: score one entity or a batch. Single predictions that succeed are answered in front of
Litestar by ``serving.fast_path`` (same bytes); this controller answers the rest and owns the OpenAPI."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, post
from litestar.exceptions import ValidationException
from msgspec import UNSET

from serving.controllers.openapi import PredictOperation, Runtime, key_errors, problem
from serving.fast_path import HANDED_OVER, PATH
from serving.http_errors import status_of
from serving.predictor import Outcome
from serving.schemas import BatchItem, BatchResponse, Prediction, decode_request, prediction_of
from serving.scoring import LoadedModel
from serving.security import SECURITY, requires
from shardctl.store.api_keys import PREDICT

_encode = msgspec.json.Encoder().encode


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


class PredictionController(Controller):
    """Predictions of the promoted model for entities whose features the shards hold."""

    path = PATH
    tags = ["predictions"]
    guards = [requires(PREDICT)]
    security = SECURITY

    @post(
        operation_id="predict",
        status_code=200,
        summary="Score one entity or a batch",
        description=(
            'Body `{"entity_id": "c1"}` answers one prediction (404 unknown entity, 503 + Retry-After when its '
            'shard is down); `{"entity_ids": [...]}` (1..max_batch, default 100) answers a batch with a status per '
            "item. 422 for a malformed body; 503 when no model is promoted."
        ),
        responses={
            **key_errors(),
            404: problem("The entity has no features"),
            413: problem("The body is over the request size limit (10 MB)"),
            422: problem("The body is not a prediction request (the reason in detail)"),
            503: problem("The entity's shard is down, or no model is promoted: ask again after Retry-After"),
        },
        operation_class=PredictOperation,
    )
    async def predict(self, request: Request, runtime: Runtime) -> Prediction | BatchResponse:
        # The body is read once and decoded by msgspec straight into the struct (no Litestar kwargs model for it),
        # with the fast path's decoder and encoder. One dependency per handler: Litestar resolves two or more
        # through an anyio task group per request (measured: +110 us of CPU on a hit).
        try:
            data = decode_request(await request.body())
        except ValueError as exc:
            raise ValidationException(str(exc)) from None
        predictor, limits = runtime.predictor, runtime.serving
        one, batch = data.entity_id, data.entity_ids
        if (one is UNSET) == (batch is UNSET):
            raise ValidationException("give exactly one of entity_id (one prediction) or entity_ids (a batch)")
        if batch is UNSET:
            # The fast path may already have computed this entity's outcome (an error to render).
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
