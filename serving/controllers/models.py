"""``/v1/models``: the model this worker serves."""

from __future__ import annotations

from litestar import Controller, get

from serving.controllers.openapi import Models, RetryAfterDocumented, key_errors, problem
from serving.errors import NoModelError
from serving.schemas import ModelInfo
from serving.security import SECURITY, requires
from shardctl.store.api_keys import MODELS_READ


class ModelController(Controller):
    """The promoted model as this worker loaded it (the registry's other versions are `shardctl models`')."""

    path = "/v1/models"
    tags = ["models"]
    guards = [requires(MODELS_READ)]
    security = SECURITY

    @get(
        "/current",
        operation_id="getCurrentModel",
        summary="The promoted model this worker serves",
        responses={**key_errors(), 503: problem("No model is promoted yet: ask again after Retry-After")},
        operation_class=RetryAfterDocumented,
    )
    async def current(self, models: Models) -> ModelInfo:
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
