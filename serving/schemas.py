"""The service's request and response bodies (msgspec Structs; their names and fields are the OpenAPI contract)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

if TYPE_CHECKING:
    from serving.predictor import Outcome
    from serving.scoring import LoadedModel

EntityId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]


class PredictionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Give ``entity_id`` for one prediction, or ``entity_ids`` (1..max_batch ids) for a batch; exactly one."""

    entity_id: EntityId | UnsetType = UNSET
    entity_ids: Annotated[list[EntityId], msgspec.Meta(min_length=1)] | UnsetType = UNSET


def request_schema() -> dict[str, Any]:
    """The request body's JSON Schema as the decoder enforces it (msgspec's own), plus what the handler checks:
    exactly one of the two fields."""
    (_,), components = msgspec.json.schema_components([PredictionRequest])
    schema = components["PredictionRequest"]
    schema["oneOf"] = [{"required": ["entity_id"]}, {"required": ["entity_ids"]}]
    return schema


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


def age_seconds(iso_ts: str) -> float:
    """Seconds since an ISO timestamp (feature freshness in responses)."""
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(iso_ts)).total_seconds())


def prediction_of(model: LoadedModel, outcome: Outcome) -> Prediction:
    """The answer for an outcome that holds a prediction (the route and the fast path send the same)."""
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
    """``/readyz`` also says whether the catalog answers (``catalog``: connected | unreachable), for operators:
    a catalog outage does not make the worker unready (predictions need only the shards, Redis and the model)."""

    status: str
    model: str | None = None
    detail: str | None = None
    catalog: str | None = None
    # The precomputing scorer (serving/scorer/), reported, never required: current | behind | down | absent
    # (no scorer has run on some shard) | unknown (this worker does not follow the change log); what it has not
    # covered is scored on demand.
    scorer: str | None = None
    scorer_lag_seconds: float | None = None


class FieldError(msgspec.Struct, omit_defaults=True):
    message: str
    key: str | None = None
    source: str | None = None


class ProblemDetail(msgspec.Struct, omit_defaults=True):
    """An error answer (RFC 9457, ``application/problem+json``): the message is in ``detail``; a malformed
    body's field errors, when there are several, in ``errors``."""

    status: int
    title: str
    detail: str
    type: str = "about:blank"
    errors: list[FieldError] | None = None


def decode_request(body: bytes) -> PredictionRequest:
    """The request body, straight into its struct; anything that is not one is a ``ValueError`` with the reason.

    JSON is UTF-8 whatever charset a client names; deep nesting stops at the first value of the wrong type
    (the decoder is typed), so no body can exhaust the stack."""
    if not body.strip():
        raise ValueError("the body is empty: send a JSON object with entity_id or entity_ids")
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid request body: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not valid JSON (UTF-8): {exc}") from None


_request_decoder = msgspec.json.Decoder(PredictionRequest)
