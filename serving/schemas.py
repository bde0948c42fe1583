"""The service's request and response bodies (msgspec Structs; their names and fields are the OpenAPI contract)."""

from __future__ import annotations

from typing import Annotated

import msgspec

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
